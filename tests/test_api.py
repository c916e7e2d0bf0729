"""The Python API (issue 12, point 13): the chain as functions, lazily loaded, documented."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from edge_tl import api
from edge_tl.errors import ArtifactError, ConfigError

TARGET = "cpu-onnxruntime-fp32"


def test_importing_the_api_loads_no_heavy_package() -> None:
    code = ("import sys; from edge_tl import api; f = api.finetune; b = api.bench; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'openvino', 'typer', 'cv2') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_every_api_function_is_documented_with_units_and_errors() -> None:
    for name in api.__all__:
        doc = inspect.getdoc(getattr(api, name)) or ""
        assert len(doc) > 60, name
    for name in ("finetune", "prune", "export", "bench", "bundle"):
        doc = inspect.getdoc(getattr(api, name))
        assert "Raises" in doc or "raises" in doc or "not an exception" in doc, name
    assert "milliseconds" in inspect.getdoc(api.bench) and "percentage points" in inspect.getdoc(api.bench)
    assert "(N, 3, H, W)" in inspect.getdoc(api.finetune)


def test_finetune_through_the_api(image_folder: Path, tmp_path: Path) -> None:
    manifest = api.finetune(image_folder, tmp_path / "run", epochs=2, workers=0, seed=1)
    assert 0 <= manifest["metrics"]["val_top1"] <= 1 and manifest["mode"] == "partial"  # the default recipe
    assert (tmp_path / "run" / "finetune" / "manifest.json").is_file()
    with pytest.raises(ConfigError):
        api.finetune(image_folder, tmp_path / "run2", mode="sideways")


def test_export_bench_bundle_through_the_api(run_copy: Path, image_folder: Path, tmp_path: Path) -> None:
    run = run_copy
    # A user's profile (few timing iterations: the test stays short), passed by its path throughout.
    profile = tmp_path / "tiny-ort.toml"
    profile.write_text('backend = "onnxruntime"\nprecision = "fp32"\nbatch_size = 4\nwarmup = 1\niterations = 5\n')
    exported = api.export(run, str(profile))
    assert exported["target"]["name"] == "tiny-ort" and exported["validation"]["agreement"] == 1.0
    [report] = api.bench(run, [str(profile)])
    assert report["target"] == "tiny-ort" and isinstance(report["passed"], bool)
    assert report["candidate"]["latency_ms"]["p50"] > 0 and (run / "reports" / "tiny-ort.json").is_file()
    shipped = api.bundle(run, str(profile), tmp_path / "bundle", golden=3)
    assert shipped["target"]["name"] == "tiny-ort"
    image = next(image_folder.rglob("*.png"))
    with api.open_bundle(tmp_path / "bundle") as rt:
        p = rt.predict(image)
    assert p.label in shipped["classes"]
    assert p.decision in ("ok", "defect", "review") and p.batch_size == 1 and p.ms > 0
    # Errors are the one-line EdgeTLError subclasses the CLI prints.
    with pytest.raises(ConfigError, match="did you mean cpu-onnxruntime-fp32"):
        api.export(run, "cpu-onnxruntime-fp23")
    with pytest.raises(ArtifactError, match="not exported"):
        api.bundle(run, "cpu-openvino-fp32", tmp_path / "b2")


def test_api_without_torch_names_the_extra(image_folder: Path, tmp_path: Path) -> None:
    code = f"""
import sys
sys.modules["torch"] = None
from edge_tl import api
from edge_tl.errors import MissingExtraError
try:
    api.finetune({str(image_folder)!r}, {str(tmp_path / "run")!r})
except MissingExtraError as exc:
    print(exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "torch is not installed; install it with: pip install 'edge-tl[train]'", proc.stderr


def test_readme_example_calls_real_functions_with_real_keywords() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    calls = [node for node in ast.walk(ast.parse(block)) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
             and node.func.value.id == "api"]
    assert {c.func.attr for c in calls} >= {"finetune", "export", "bench", "bundle", "open_bundle"}
    for call in calls:
        fn = getattr(api, call.func.attr)  # AttributeError for a function that does not exist
        inspect.signature(fn).bind(*call.args, **{k.arg: None for k in call.keywords})


def test_api_warnings_print_as_the_cli_prints_them() -> None:
    """In a program with no logging set up, an API stage's warnings read ``warning: …`` (not logging's
    bare last-resort line) and its infos stay silent; a program that set up logging keeps its own."""
    import subprocess
    import sys

    script = ("import logging, sys\nfrom edge_tl.progress import api_warnings\nlog = logging.getLogger('edge_tl')\n"
              "if sys.argv[1] == 'configured': logging.basicConfig(format='MINE %(message)s')\n"
              "with api_warnings():\n    log.info('an info')\n    log.warning('3 duplicate file(s)')\n"
              "log.warning('after')\n")
    bare = subprocess.run([sys.executable, "-c", script, "bare"], capture_output=True, text=True, check=True)
    assert bare.stderr.splitlines() == ["warning: 3 duplicate file(s)", "after"]
    mine = subprocess.run([sys.executable, "-c", script, "configured"], capture_output=True, text=True, check=True)
    assert mine.stderr.splitlines() == ["MINE 3 duplicate file(s)", "MINE after"]


def test_api_finetune_runs_the_anomaly_task(tmp_path: Path) -> None:
    """Issue 25: the API's finetune fits a good-only anomaly model as `finetune --task anomaly` does, and
    refuses the options of the other task with the same check as the CLI and the pipeline file."""
    from .anomaly_data import write_anomaly_set

    data = write_anomaly_set(tmp_path / "set", n_good_val=8, n_defect=8)
    m = api.finetune(data / "train" / "good", tmp_path / "run", task="anomaly", val=data / "test", input_size=64)
    assert m["task"] == "anomaly" and m["classes"] == ["good", "defect"] and m["method"]["name"] == "padim"
    assert (tmp_path / "run" / "finetune" / "model.pt").is_file()
    with pytest.raises(ConfigError, match="baseline is for task='classify'"):
        api.finetune(data / "train" / "good", tmp_path / "run2", task="anomaly", baseline="scratch")
    with pytest.raises(ConfigError, match="option 'task': unknown value 'segment'"):
        api.finetune(data / "train" / "good", tmp_path / "run3", task="segment")


def test_an_option_of_another_task_is_an_error_on_every_front_door(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A new user's first day: `--task anomaly --unfreeze 3` fitted an anomaly model and dropped --unfreeze
    without a word (and `--task classify --method patchcore` trained a classifier). Each front door now
    says which task the option is for, in one line, before anything is read or trained."""
    from edge_tl.cli import main
    from edge_tl.errors import ConfigError as Bad
    from edge_tl.pipeline import run_pipeline

    data = tmp_path / "good"
    data.mkdir()
    for task, flag, value in (("anomaly", "--unfreeze", "3"), ("classify", "--method", "patchcore"),
                              ("detect", "--balance", "weights")):
        assert main(["finetune", str(data), "--task", task, flag, value, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{flag} is for --task" in err and f"--task {task} does not use" in err
    with pytest.raises(Bad, match="option 'epochs' is for task classify or detect, not 'anomaly'"):
        api.finetune(data, tmp_path / "r", task="anomaly", epochs=3)
    path = tmp_path / "p.toml"
    path.write_text(f'[finetune]\ndata = "{data}"\nout = "run"\ntask = "anomaly"\nmode = "full"\n')
    with pytest.raises(Bad, match=r'finetune.mode.*for task = "classify or detect"; task = "anomaly" does not use'):
        run_pipeline(path, quiet=True)
    assert not (tmp_path / "r").exists() and not (tmp_path / "run").exists()
