"""Host load while timing: the sampler, the block-ratio spread, --wait-quiet, and a bench on a busy host."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_tl.bench import hostload
from edge_tl.bench.hostload import OTHER_SHARE_MAX, SPREAD_MAX, HostLoad, ratio_spread, spread_reason, wait_for_quiet

from .test_html import parse, synthetic_report

needs_proc = pytest.mark.skipif(not Path("/proc/stat").is_file() or not Path("/proc/self/stat").is_file(),
                                reason="CPU shares are read from /proc (Linux)")


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def _spinning() -> Iterator[int]:
    """One busy-looping child process per CPU this process may use, killed afterwards."""
    n = _cpus()
    if n > 16:
        pytest.skip("too many CPUs to load every one of them from a test")
    procs = [subprocess.Popen([sys.executable, "-S", "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.3)  # let them start spinning
        yield n
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)


@pytest.fixture
def spinners() -> Iterator[int]:
    with _spinning() as n:
        yield n


@needs_proc
def test_sampler_reports_busy_when_other_processes_spin(spinners: int) -> None:
    with HostLoad(own_threads=1, pre_window_s=0.3) as load:
        time.sleep(1.0)
    s = load.summary()
    assert s["during"]["measured"] and s["before"]["measured"]
    # Every CPU has a spinner: other processes use far more than the threshold, before and during.
    assert s["during"]["other_cpu_share"] > OTHER_SHARE_MAX
    assert s["before"]["other_cpu_share"] > OTHER_SHARE_MAX
    assert s["busy"] is True and load.busy
    assert any("other processes used" in r for r in s["reasons"])
    assert "BUSY" in hostload.describe(s)


@needs_proc
def test_own_work_is_not_counted_as_other_processes() -> None:
    # No spinners: whatever else runs on this machine is not asserted (CI hosts are noisy), but this
    # process's own busy loop must land in own_cpu_share, not in other_cpu_share.
    with HostLoad(own_threads=1, pre_window_s=0) as load:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            pass
    d = load.summary()["during"]
    assert d["measured"] and 0.0 <= d["other_cpu_share"] <= 1.0
    assert d["own_cpu_share"] * d["cpus"] > 0.3  # at least a third of a core, spent by us
    assert d["own_cpu_share"] + d["other_cpu_share"] <= 1.0 + 1e-9


def test_without_proc_the_shares_are_not_measured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hostload, "_PROC_STAT", tmp_path / "missing")
    assert hostload.snapshot() is None
    with HostLoad(own_threads=2, pre_window_s=0.05) as load:
        pass
    s = load.summary()
    assert s["during"]["measured"] is False and s["before"]["measured"] is False
    assert "during timing: not measured" in hostload.describe(s)
    t0 = time.monotonic()
    w = wait_for_quiet(5.0)
    assert w["measured"] is False and w["quiet"] is None and time.monotonic() - t0 < 1.0


def test_block_ratio_spread_from_known_samples() -> None:
    from edge_tl.bench.latency import block_ratio_spread

    # Ratios 1, 2, ..., 11 (reference 2r ms against candidate 2 ms): numpy's linear percentiles give
    # p10 = 2, p25 = 3.5, p50 = 6, p75 = 8.5, p90 = 10.
    ref = {"block_p50_ms": [2.0 * r for r in range(1, 12)]}
    cand = {"block_p50_ms": [2.0] * 11}
    sp = block_ratio_spread(ref, cand)
    assert sp is not None
    assert sp["n_blocks"] == 11 and sp["min"] == 1.0 and sp["max"] == 11.0
    assert (sp["p10"], sp["p50"], sp["p90"]) == pytest.approx((2.0, 6.0, 10.0))
    assert sp["rel_iqr"] == pytest.approx(5.0 / 6.0) and sp["p90_over_p10"] == pytest.approx(5.0)
    assert "varied 5.00×" in (spread_reason(sp) or "")
    steady = ratio_spread([10.0, 10.4, 9.8, 10.1], [2.0, 2.0, 2.1, 2.0])
    assert steady is not None and steady["p90_over_p10"] < SPREAD_MAX and spread_reason(steady) is None
    assert ratio_spread([], []) is None


def test_measure_paired_keeps_each_blocks_median() -> None:
    from edge_tl.bench.latency import block_ratio_spread, measure_paired

    def sleeper(ms: float):  # stand-in runners: only the timing helper is under test
        def run(x: np.ndarray) -> np.ndarray:
            time.sleep(ms / 1000)
            return x
        return run

    ref, cand = measure_paired(sleeper(3.0), sleeper(1.0), np.zeros(1), warmup=1, iterations=20, rounds=5)
    assert len(ref["block_p50_ms"]) == len(cand["block_p50_ms"]) == 5
    for lat in (ref, cand):
        blocks = np.asarray(lat["samples"]).reshape(5, 4)  # 5 blocks of 4 calls, in order
        assert lat["block_p50_ms"] == pytest.approx(np.median(blocks, axis=1).tolist())
    sp = block_ratio_spread(ref, cand)
    assert sp is not None and sp["n_blocks"] == 5 and 1.5 < sp["p50"] < 4.0


@needs_proc
def test_wait_quiet_gives_up_at_its_limit_and_says_so(spinners: int) -> None:
    t0 = time.monotonic()
    w = wait_for_quiet(1.5, poll_s=0.5)
    took = time.monotonic() - t0
    assert 1.3 <= took <= 2.2 and w["waited_s"] <= 1.5 + 0.3
    assert w["quiet"] is False and w["limit_s"] == 1.5 and len(w["polls"]) >= 2
    assert all(p >= OTHER_SHARE_MAX for p in w["polls"])
    with HostLoad(own_threads=1, pre_window_s=0, wait=w) as load:
        pass
    assert any("never became quiet" in r for r in load.reasons())


def test_reports_mark_an_unreliable_speedup() -> None:
    from edge_tl.bench.html import render_html, render_index
    from edge_tl.bench.report import markdown, summary_table

    r = synthetic_report()
    r["reference"]["balanced_accuracy"], r["candidate"]["balanced_accuracy"] = 0.9712, 0.9423
    r["host_load"] = {"measured": True, "busy": True, "wait": None,
                      "reasons": ["other processes used 91 % of the CPUs during timing, limit 25 %"],
                      "before": {"load_avg_1m": 3.2, "measured": True, "other_cpu_share": 0.88},
                      "during": {"measured": True, "other_cpu_share": 0.91, "own_cpu_share": 0.09,
                                 "steal_share": 0.0}}
    r["timing_reliable"], r["unreliable_reasons"] = False, r["host_load"]["reasons"]
    r["speedup_spread"] = ratio_spread([10.0, 40.0, 90.0], [1.0, 1.0, 1.1])
    md = markdown(r)
    assert "7.50× (unreliable: host busy)" in md and "UNRELIABLE: host busy" in md
    assert "Host load:" in md and "during timing: other processes 91 %" in md and "BUSY" in md
    assert "| balanced accuracy | 0.971 | 0.942 |" in md and "3 blocks" in md
    assert "UNRELIABLE: host busy" in summary_table([r]) and "0.942" in summary_table([r])
    page = render_html(r)
    parse(page)
    assert 'class="warn"' in page and "UNRELIABLE timings: host busy" in page and "94.23 %" in page
    index = render_index([r, synthetic_report("cpu-onnxruntime-int8", seed=1)], "run")
    parse(index)
    assert index.count("unreliable: host busy") == 1 and index.count("<th>bal. acc.</th>") == 1
    quiet = synthetic_report() | {"timing_reliable": True}
    assert "unreliable" not in markdown(quiet).lower() and 'class="warn"' not in render_html(quiet)


@needs_proc
def test_bench_on_a_busy_host_is_marked_unreliable(run_copy: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from edge_tl.cli import main
    from edge_tl.stages.export import export
    from edge_tl.targets import get_target

    # The built-in profile cut down to keep this test short on a loaded host: torch eager with 2 threads
    # stalls at its per-operator barriers when a spinner holds a core (1-2 s per call seen on 2 cores),
    # with 1 thread it merely shares; batch 1 because throughput runs at least 5 batches.
    profile = tmp_path / "cpu-onnxruntime-fp32.toml"
    builtin = Path(get_target("cpu-onnxruntime-fp32").source).read_text()
    for key, value in (("batch_size", 1), ("threads", 1)):
        builtin = re.sub(rf"(?m)^{key} = \d+$", f"{key} = {value}", builtin)
    profile.write_text("warmup = 1\niterations = 10\n" + builtin)
    export(run_copy, str(profile))  # before loading the host: only the bench is under test
    out = tmp_path / "r.json"
    with _spinning():
        t0 = time.monotonic()
        code = main(["bench", str(run_copy), "-t", str(profile), "--wait-quiet", "1", "--json", str(out)])
    assert code == 0, capsys.readouterr().err[-2000:]
    report = json.loads(out.read_text())
    console = capsys.readouterr()
    load = report["host_load"]
    assert report["timing_reliable"] is False and load["busy"] is True
    assert load["during"]["other_cpu_share"] > OTHER_SHARE_MAX
    assert load["wait"]["quiet"] is False and load["wait"]["waited_s"] <= 1.3
    assert time.monotonic() - t0 > 1.0
    assert any(n.startswith("UNRELIABLE TIMING (host busy)") for n in report["notes"])
    assert any("never became quiet" in r for r in report["unreliable_reasons"])
    assert report["speedup"] is not None  # kept in the report, but marked
    assert report["speedup_spread"]["n_blocks"] == 10 and report["profile"]["threads"] == 1
    assert "(unreliable: host busy)" in console.out and "UNRELIABLE: host busy" in console.out
    assert "UNRELIABLE: host busy" in console.err  # the log warning, too
    for side in ("reference", "candidate"):
        assert 0.0 <= report[side]["balanced_accuracy"] <= 1.0
    page = (run_copy / "reports" / "cpu-onnxruntime-fp32.html").read_text()
    assert 'class="warn"' in page and "unreliable: host busy" in (run_copy / "reports" / "index.html").read_text()
