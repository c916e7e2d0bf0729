"""``edge-tl predict`` with some inputs missing (issue 24, item 8): every readable image gets its answer,
each missing or unreadable one an error line in its place, and the exit code is 2 at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_tl.cli import main

from .conftest import make_image


@pytest.fixture(scope="module")
def bundle(fp32_bundle: Path) -> Path:
    return fp32_bundle


def test_a_missing_image_does_not_stop_the_others(bundle: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.png"
    make_image(0, 1).save(good)
    missing = tmp_path / "missing.jpg"
    assert main(["predict", str(bundle), str(good), str(missing)]) == 2
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].endswith(str(good)) and "error" not in lines[0]
    assert lines[1] == f"error   {missing}: no such file or folder"
    assert err.strip().splitlines() == [f"error: 1 of 2 image(s) could not be classified; first: {missing}: "
                                        "no such file or folder"]


def test_json_stays_valid_with_missing_and_unreadable_inputs(bundle: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(3):
        make_image(k, 10 + k).save(folder / f"f{k}.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    gone_dir, gone_file = tmp_path / "gone", tmp_path / "gone.png"
    args = ["predict", str(bundle), str(gone_dir), str(folder), str(broken), str(gone_file), "--json"]
    assert main(args) == 2
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]  # every line is JSON
    assert [Path(r["path"]).name for r in rows] == ["gone", "f0.png", "f1.png", "f2.png", "broken.png", "gone.png"]
    answered = [r for r in rows if "error" not in r]
    assert len(answered) == 3 and all(r["decision"] in ("ok", "defect", "review") for r in answered)
    assert rows[0]["error"] == f"{gone_dir}: no such file or folder" and "cannot read image" in rows[4]["error"]
    assert "3 of 6 image(s) could not be classified" in err


def test_only_missing_inputs_is_one_line(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(bundle), str(tmp_path / "a.png"), str(tmp_path / "b.png")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: no such file or folder: {tmp_path / 'a.png'}, {tmp_path / 'b.png'}\n"
