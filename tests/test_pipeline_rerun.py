"""Issue 24 item 11: `edge-tl run` checks the whole file before any work, names file keys, and skips stages
whose outputs are up to date (--force redoes them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_tl.cli import main
from edge_tl.errors import ConfigError

TARGET = "cpu-onnxruntime-fp32"


def _pipeline(tmp_path: Path, data: Path, bundle: str = "", export: str = f'targets = ["{TARGET}"]\nood = false\n',
              epochs: int = 2) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(f'[finetune]\ndata = "{data}"\nout = "run"\nepochs = {epochs}\nworkers = 0\n\n'
                    f"[export]\n{export}\n[bundle]\ntarget = \"{TARGET}\"\nout = \"bundle\"\n{bundle}")
    return path


@pytest.mark.parametrize(("bundle", "export", "key", "says"), [
    ('ok_classes = ["good"]\n', None, "bundle.ok_classes", "unknown class(es) good"),
    ("max_escape = 0.05\n", None, "bundle.max_escape", "name it with bundle.ok_classes"),
    ('ok_classes = ["blobs"]\nmax_escape = 0.05\nok_threshold = 0.5\n', None, "bundle.max_escape", "give one of"),
    ('defect_classes = ["nope"]\n', None, "bundle.defect_classes", "unknown class(es) nope"),
    ("", 'targets = ["cpu-onnxruntime-fp33"]\n', "export.targets", "cpu-onnxruntime-fp33"),
    ("", 'targets = ["cpu-openvino-fp32"]\n', "bundle.target", "neither one of [export] targets"),
    ("", f'targets = ["{TARGET}"]\ncalibration = "missing"\n', "export.calibration", "not found"),
])
def test_the_whole_file_is_checked_before_any_work(tmp_path: Path, image_folder: Path, bundle: str,
                                                   export: str | None, key: str, says: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = _pipeline(tmp_path, image_folder, bundle, *([export] if export else []))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"key '{key}'" in err[0] and says in err[0], err
    assert "--" not in err[0]  # a file key, never a CLI flag
    assert not (tmp_path / "run").exists()  # nothing ran


def test_stage_errors_name_the_file_key(tmp_path: Path) -> None:
    """A ConfigError a stage raises (after the up-front checks) names the file's key, not the flag."""
    from edge_tl.pipeline import _as_keys

    with pytest.raises(ConfigError, match=r"name it with bundle\.ok_classes; see bundle\.max_escape") as err, \
            _as_keys(tmp_path / "p.toml", "bundle"):
        raise ConfigError("name it with --ok-class; see --max-escape")
    assert str(err.value).startswith(str(tmp_path / "p.toml"))


def test_rerun_skips_up_to_date_stages_and_force_redoes_them(tmp_path: Path, image_folder: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from edge_tl.pipeline import run_pipeline

    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    path = _pipeline(tmp_path, data, "allow_failed = true\n")
    run, target = tmp_path / "run", tmp_path / "run" / "targets" / TARGET

    def made() -> dict[str, str]:
        return {"finetune": json.loads((run / "finetune" / "manifest.json").read_text())["files"]["model.pt"],
                "export": (target / "manifest.json").read_text(),
                "bundle": (tmp_path / "bundle" / "bundle.json").read_text()}

    def skipped() -> set[str]:
        return {line.split(":")[0][len("skip "):] for line in capsys.readouterr().err.splitlines()
                if line.endswith(": up to date (--force to redo)")}

    run_pipeline(path)
    err = capsys.readouterr().err
    assert f"exported {TARGET} from finetune: agreement " in err  # one line per export, as `edge-tl export` says
    assert "skip " not in err
    first = made()
    tuned, _, shipped = run_pipeline(path)  # nothing changed: every stage is skipped, results handed back
    assert skipped() == {"finetune", f"export {TARGET}", "bundle"}
    assert made() == first and tuned["stage"] == "finetune" and shipped["target"]["name"] == TARGET

    path.write_text(path.read_text().replace("[bundle]\n", "[bundle]\ngolden = 3\n"))  # a bundle setting
    run_pipeline(path)
    assert skipped() == {"finetune", f"export {TARGET}"}
    second = made()
    assert second["bundle"] != first["bundle"] and second["export"] == first["export"]

    (data / "blobs" / "blobs_000.jpg").unlink()  # the data changed: everything downstream is redone
    run_pipeline(path)
    assert skipped() == set()
    third = made()
    assert third["finetune"] != second["finetune"] and third["export"] != second["export"]

    # --force: every stage again (the file cut to its [finetune] table, the same settings, to keep it short).
    path.write_text(path.read_text().split("[export]")[0])
    def started() -> float:
        return json.loads((run / "finetune" / "manifest.json").read_text())["timings"]["started"]

    before = started()
    assert main(["run", str(path)]) == 0 and skipped() == {"finetune"} and started() == before
    assert main(["run", str(path), "--force"]) == 0 and skipped() == set() and started() > before


def test_a_failed_bench_skips_the_bundle_and_exits_1(tmp_path: Path, image_folder: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The bench's verdict is the run's answer: its target is not shipped, and `run` exits 1 (a gate failed),
    not 2 (bad input), with one warning that names the failed gate and bundle.allow_failed."""
    profile = tmp_path / "tight.toml"
    builtin = Path(__file__).parent.parent / "targets" / f"{TARGET}.toml"
    profile.write_text(builtin.read_text().replace("[gates]\n", "[gates]\nmax_p95_ms = 1e-6\n"))
    path = _pipeline(tmp_path, image_folder, export='targets = ["tight.toml"]\nood = false\n')
    path.write_text(path.read_text().replace(f'target = "{TARGET}"', 'target = "tight.toml"')
                    .replace("[bundle]", "[bench]\n\n[bundle]"))
    assert main(["run", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    skip = [ln for ln in err.splitlines() if "bundle skipped" in ln]
    assert len(skip) == 1 and "max_p95_ms" in skip[0] and "bundle.allow_failed" in skip[0], err
    assert "Traceback" not in err and not (tmp_path / "bundle").exists()
