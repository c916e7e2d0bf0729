"""Image decoding, bad files, folder validation and the split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_tl.cli import main
from edge_tl.data import scan_image_folder, stratified_split
from edge_tl.errors import DataError
from edge_tl.preprocess import Preprocess, from_array, load_image

from .conftest import make_image, write_folder


def test_16bit_png_keeps_its_range(tmp_path: Path) -> None:
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (64, 64, 3)
    # A naive convert("RGB") saturates nearly everything to 255; the ramp must stay a ramp.
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255
    assert 100 < rgb[..., 0].mean() < 155
    assert (rgb[..., 0] == 255).mean() < 0.01


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "1", "CMYK"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    img = make_image(0, 1).convert(mode)
    path = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}"
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (64, 64)


def test_grey_image_replicates_channels(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    make_image(1, 2).convert("L").save(path)
    rgb = np.asarray(load_image(path)).astype(int)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_bgr_array_equals_rgb_array() -> None:
    arr = np.asarray(make_image(2, 3).convert("RGB")).copy()
    arr[..., 0] = 10  # make channels differ
    pre = Preprocess()
    a = pre(from_array(arr, "RGB"))
    b = pre(from_array(np.ascontiguousarray(arr[..., ::-1]), "BGR"))
    assert np.array_equal(a, b)


def _add_bad_files(cls_dir: Path) -> list[str]:
    (cls_dir / "empty.jpg").write_bytes(b"")
    good = cls_dir / next(p.name for p in cls_dir.iterdir() if p.suffix == ".jpg")
    (cls_dir / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    (cls_dir / "garbage.png").write_bytes(b"not an image at all" * 10)
    return ["empty.jpg", "truncated.jpg", "garbage.png"]


def test_bad_files_are_skipped_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_folder(tmp_path / "d", per_class=4)
    bad = _add_bad_files(root / "vertical")
    folder = scan_image_folder(root)
    skipped = sorted(Path(s["path"]).name for s in folder.skipped)
    assert skipped == sorted(bad)
    assert len(folder.samples) == 12
    assert all(name in caplog.text for name in bad)


def test_split_is_stratified_and_reproducible(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", per_class=10)
    folder = scan_image_folder(root)
    a = stratified_split(folder.samples, 0.2, seed=3)
    b = stratified_split(folder.samples, 0.2, seed=3)
    c = stratified_split(folder.samples, 0.2, seed=4)
    assert [s.path for s in a[1]] == [s.path for s in b[1]]
    assert [s.path for s in a[1]] != [s.path for s in c[1]]
    assert np.bincount([s.label for s in a[1]]).tolist() == [2, 2, 2]
    assert not {s.path for s in a[0]} & {s.path for s in a[1]}


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("no_images", "no images"),
        ("one_class", "at least two class"),
        ("empty_class", "no usable image"),
        ("missing", "not found"),
    ],
)
def test_unusable_folders_exit_2_with_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str, message: str
) -> None:
    root = tmp_path / "data"
    if layout == "no_images":
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
        (root / "a" / "notes.txt").write_text("x")
    elif layout == "one_class":
        write_folder(root, classes=("only",), per_class=3)
    elif layout == "empty_class":
        write_folder(root, classes=("a", "b"), per_class=3)
        for p in (root / "b").iterdir():
            p.write_bytes(b"")
    out = tmp_path / "run"
    code = main(["finetune", str(root), "--out", str(out), "--weights", "none", "--quiet"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not out.exists()


def test_scan_with_fixed_classes_requires_them(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", classes=("a", "b"), per_class=2)
    with pytest.raises(DataError, match="lacks class"):
        scan_image_folder(root, classes=["a", "b", "c"])


def test_split_json_lists_skipped_files(finetuned_run: Path) -> None:
    split = json.loads((finetuned_run / "finetune" / "split.json").read_text())
    assert split["seed"] == 0 and split["classes"] == ["blobs", "horizontal", "vertical"]
    assert len(split["train"]) + len(split["val"]) == 36
