"""OpenVINO INT8 after a fine-tune in the same Python process (issue 24, the segfault).

OpenVINO's CPU plugin gives the thread that loads it, once per ``ov.Core``, an alternate signal stack and
unmaps it on release; Cores released in creation order left the thread on unmapped pages, and the next
signal with a Python handler (torch's SIGCHLD handler, left by DataLoader workers, when bench's memory
probe exited) killed the process (``backends/openvino_/runner.py``). Each check runs in a fresh child Python
process: on the broken code the child dies of SIGSEGV and the test fails instead of taking pytest with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_quantize import profile

ROOT = Path(__file__).resolve().parents[1]

# Every Python handler runs on the alternate signal stack (SA_ONSTACK): deliver one now, so a stale stack
# is a SIGSEGV here rather than a crash, or a corrupted heap, whenever a child process next exits.
SIGNAL_NOW = """
import os, signal
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
os.kill(os.getpid(), signal.SIGUSR1)
assert got, "the signal handler did not run"
"""


def run_child(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``script`` then ``SIGNAL_NOW`` in a fresh Python process; fails unless it exits 0."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script) + SIGNAL_NOW, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    died = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    assert proc.returncode == 0, f"child {died}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def tiny_onnx(path: Path) -> Path:
    """A one-convolution ONNX graph OpenVINO compiles in milliseconds."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["logits"], pads=[1, 1, 1, 1])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_openvino_runners_released_in_creation_order_leave_signals_working(tmp_path: Path) -> None:
    """speed_check's float and INT8 runners (a dict, released first-created first) used to leave the main
    thread's signal stack on unmapped pages: the next handled signal was a SIGSEGV."""
    pytest.importorskip("openvino")
    model = tiny_onnx(tmp_path / "tiny.onnx")
    run_child("""
        import sys
        import numpy as np
        from edge_tl.backends import RunnerSpec, open_runner

        x = np.zeros((1, 3, 8, 8), np.float32)
        runners = {k: open_runner(RunnerSpec(sys.argv[1], "openvino", "CPU", "fp32", 1, 1)) for k in ("float", "int8")}
        for r in runners.values():
            r.run(x)
            r.close()
        del runners, r
    """, str(model), timeout=120)


def test_signal_stack_kept_survives_cores_it_does_not_own(tmp_path: Path) -> None:
    """NNCF compiles through ov.Cores of its own; ``signal_stack_kept`` puts the thread's signal stack back
    however they were released."""
    pytest.importorskip("openvino")
    model = tiny_onnx(tmp_path / "tiny.onnx")
    run_child("""
        import sys
        import openvino as ov
        from edge_tl.backends.openvino_.runner import signal_stack_kept, signal_stack_usable

        with signal_stack_kept():
            first, second = ov.Core(), ov.Core()  # two plugins, as NNCF's engines make them
            a = first.compile_model(sys.argv[1], "CPU")
            b = second.compile_model(sys.argv[1], "CPU")
            del first, a  # the first-created released first: its unmapped stack is what the second restores
            del second, b
        assert signal_stack_usable(), "the signal stack is left on unmapped memory"
    """, str(model), timeout=120)


def test_finetune_openvino_int8_export_bench_in_one_process(image_folder: Path, tmp_path: Path) -> None:
    """The README's Python API chain in one process, with DataLoader workers as the API's default: a report
    is written and the process lives on (before the fix the child died of SIGSEGV every time)."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    target = profile(tmp_path, "cpu-openvino-int8")  # 6 calibration images; timings as conftest shortens them
    run = tmp_path / "run"
    proc = run_child("""
        import json, sys
        from edge_tl import api

        data, run, target = sys.argv[1:4]
        api.finetune(data, run, mode="linear", epochs=3, input_size=64, workers=2)
        api.export(run, target)
        [report] = api.bench(run, [target])
        print(json.dumps({"target": report["target"], "passed": report["passed"]}))
    """, str(image_folder), str(run), target, timeout=300)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    written = json.loads((run / "reports" / f"{result['target']}.json").read_text())
    assert written["candidate"]["precision"] == "int8"
    assert written["passed"] == result["passed"]
