"""Output to a file or CI is plain, ordered lines (issue 24, item 13): no library progress bar thousands of
characters wide, no ANSI colour codes, no torch notice for a CPU-only host, no lr_scheduler warning, stdout
not held back behind stderr; and the Python API with ``quiet=True`` prints nothing of other libraries."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from .conftest import write_folder

EDGE_TL = [sys.executable, "-m", "edge_tl"]
# As a user's shell runs it: this machine's PYTHONUNBUFFERED would hide stdout's block buffering.
PLAIN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
# ONNX Runtime's INT8 target: NNCF's two progress bars, ONNX Runtime's warnings (in colour) from the
# sessions NNCF opens, and torch's CUDA notice when NNCF loads its extensions, all in one export.
TARGET = "cpu-onnxruntime-int8"
MAX_LINE = 300
# Our own one-line warnings are not wrapped on purpose (one record per line for grep); the limit is for
# what other libraries draw.
OWN = ("warning: ", "error: ")


def test_export_to_a_pipe_prints_plain_ordered_lines(run_copy: Path) -> None:
    done = subprocess.run([*EDGE_TL, "export", str(run_copy), "--target", TARGET, "--no-ood"], env=PLAIN_ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    text = done.stdout.decode()
    assert done.returncode == 0, text[-3000:]
    lines = text.splitlines()
    assert "\x1b[" not in text  # no colour codes (ONNX Runtime's warnings carried them)
    assert not [ln for ln in lines if len(ln) > MAX_LINE and not ln.startswith(OWN)], \
        [ln[:120] for ln in lines if len(ln) > MAX_LINE]
    assert "No CUDA runtime" not in text and "lr_scheduler" not in text
    # NNCF's steps are still there, one short line each, before the stage's summary, which comes last
    nncf = [i for i, ln in enumerate(lines) if ln.startswith(("Statistics collection", "Applying"))]
    summary = [i for i, ln in enumerate(lines) if ln.startswith(f"exported {TARGET} from finetune")]
    assert nncf and len(summary) == 1 and max(nncf) < summary[0] == len(lines) - 1, lines


def test_stdout_is_not_held_back_behind_stderr_in_a_pipe() -> None:
    """`bench` and `run` print their table on stdout, then "gate failed: ..." on stderr; in a pipe the table
    came after it (and after later stages' lines): stdout was block-buffered. Under the CLI each stdout line
    is written when it is printed."""
    code = (f"import sys\nfrom edge_tl.cli import main\nmain(['targets', '{TARGET}'])\n"
            "print('TABLE ON STDOUT')\nprint('gate failed: on stderr', file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], env=PLAIN_ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=120).stdout.decode().splitlines()
    assert out[-2:] == ["TABLE ON STDOUT", "gate failed: on stderr"], out[-5:]


def test_api_export_quiet_prints_nothing(run_copy: Path, capfd: pytest.CaptureFixture[str],
                                         caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_tl import api

    # Our warnings go to the "edge_tl" logger as in any program that has not set up logging (the CLI's
    # handler, from another test's main(), would print them to stderr).
    edge_log = logging.getLogger("edge_tl")
    monkeypatch.setattr(edge_log, "handlers", [])
    monkeypatch.setattr(edge_log, "propagate", True)
    caplog.set_level(logging.WARNING, logger="edge_tl")
    manifest = api.export(run_copy, TARGET, ood=False, quiet=True)
    assert manifest["target"]["name"] == TARGET
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out[-2000:], err[-2000:])


def test_an_unreadable_first_batch_does_not_step_the_schedule_before_the_optimizer(tmp_path: Path) -> None:
    """torch warned "Detected call of `lr_scheduler.step()` before `optimizer.step()`" when a batch had no
    readable image (a file moved during training): the schedule advanced without a step of the optimizer."""
    from edge_tl.data import Sample, scan_image_folder
    from edge_tl.models import build_model
    from edge_tl.preprocess import Preprocess
    from edge_tl.training import Dist, ImageDataset, TrainConfig, _fit_end_to_end, _loader

    folder = scan_image_folder(write_folder(tmp_path / "data", per_class=8))
    train, val = folder.samples[::2] + folder.samples[1::4], folder.samples[3::4]
    # cache_mb=0: the per-epoch loader, where a file can vanish between two epochs' reads
    cfg = TrainConfig(mode="full", epochs=1, batch_size=1, workers=0, seed=0, quiet=True, cache_mb=0)
    pre = Preprocess(resize=72, crop=64)
    # The loader's first draw (same seed, same order as in the fit) is the image that went away.
    _, _, first, _ = next(iter(_loader(ImageDataset(folder.root, train, pre, train=True), 1, True, 0, cfg.seed)))
    train[int(first[0])] = Sample("moved-away.png", train[int(first[0])].label)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history, _, skipped = _fit_end_to_end(build_model("mobilenet_v2", 3), "mobilenet_v2", folder.root, train,
                                              val, pre, cfg, "cpu", Dist())
    assert [s["path"] for s in skipped] == ["moved-away.png"] and len(history) == 1  # precondition
    assert not [str(w.message) for w in caught if "lr_scheduler" in str(w.message)]

