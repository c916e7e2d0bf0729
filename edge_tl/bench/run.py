"""``edge-tl bench``: the reference and a candidate measured in one process, the same way.

Accuracy comes from ``eval.npz`` (or ``--data``), so a device with no torch can bench too; then the
reference column's latency is missing and the report says why. The candidate is measured before
any other model is loaded, so its peak RSS is its own. Ratios (speedup over torch, INT8 over float)
come from timings taken side by side in alternating blocks, not one after the other. The host's load
while timing is recorded with them (``host_load``): torch eager slows down far more than the engines
on a busy host, so a speedup taken there is inflated, and the report says so (``timing_reliable``).
"""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import RunnerSpec, availability, open_runner
from ..errors import EdgeTLError
from ..evalset import EvalSet, ensure_eval_set, eval_set_from_folder, load_eval_set
from ..manifest import host_info, versions
from ..rundir import RunDir
from ..targets import Target, builtin_targets, get_target
from .accuracy import agreement, classification_metrics
from .hostload import HostLoad, spread_reason, wait_for_quiet
from .latency import block_ratio_spread, measure_latency, measure_paired, measure_throughput

log = logging.getLogger("edge_tl")


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _size_mb(folder: Path, model_file: str) -> float:
    path = folder / model_file
    if (folder / "model.engine").is_file() and path.suffix == ".onnx":
        path = folder / "model.engine"  # what a TensorRT device actually loads
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def measure(runner: Any, evalset: EvalSet, target: Target, latency: bool = True) -> dict[str, Any]:
    """Accuracy over the whole eval set, batch-1 latency (unless ``latency`` is False) and batched
    throughput of one runner."""
    bs = target.batch_size
    logits = np.concatenate([runner.run(evalset.inputs[i:i + bs]) for i in range(0, len(evalset.inputs), bs)])
    x1 = evalset.inputs[:1]
    xb = np.repeat(evalset.inputs[:1], bs, axis=0) if len(evalset.inputs) < bs else evalset.inputs[:bs]
    return {
        "logits": logits,
        "latency_ms": measure_latency(runner.run, x1, target.warmup, target.iterations) if latency else None,
        "throughput_ips": measure_throughput(runner.run, xb),
    }


def _gates(target: Target, values: dict[str, float | None]) -> list[dict[str, Any]]:
    out = []
    for name, limit in target.gates.model_dump().items():
        if limit is None:
            continue
        value = values.get(name)
        passed = value is not None and (value >= limit if name.startswith("min_") else value <= limit)
        out.append({"name": name, "limit": limit, "value": value, "passed": bool(passed)})
    return out


def _reference_device(target: Target) -> str:
    return "cuda" if target.backend == "tensorrt" or target.device.startswith("cuda") else "cpu"


def _reliability(host_load: dict[str, Any], spreads: dict[str, dict[str, Any] | None]) -> list[str]:
    """Why the timed figures cannot be trusted (empty when they can)."""
    reasons = list(host_load.get("reasons") or [])
    reasons += [r for what, sp in spreads.items() if (r := spread_reason(sp, what))]
    return reasons


def bench_target(run: RunDir, target: Target, evalset: EvalSet, quiet: bool = True,
                 wait_quiet: float = 0.0) -> dict[str, Any]:
    """Measure one target; returns the report (with ``skipped`` set when this host cannot run it).

    ``wait_quiet``: wait up to this many seconds for other processes to leave the CPUs before timing;
    when they never do, the figures are still measured and marked unreliable.
    """
    base: dict[str, Any] = {"target": target.name, "profile": target.model_dump(), "eval_set": evalset.source,
                            "n": len(evalset.labels), "classes": evalset.classes, "host": host_info(),
                            "versions": versions(), "notes": []}
    ref_metrics = classification_metrics(evalset.logits, evalset.labels, evalset.classes)
    reference: dict[str, Any] = {"format": "torch", "precision": "fp32", "top1": ref_metrics["top1"],
                                 "balanced_accuracy": ref_metrics["balanced_accuracy"], "latency_ms": None,
                                 "throughput_ips": None, "size_mb": None}
    folder = run.target(target.name)
    reason = availability(target.backend, target.device)
    if reason is None and not (folder / "manifest.json").is_file():
        reason = f"not exported (run `edge-tl export {run.root} --target {target.name}`)"
    if reason is not None:
        return base | {"reference": reference, "candidate": None, "speedup": None, "gates": [],
                       "passed": True, "skipped": reason, "host_load": None, "timing_reliable": None}
    from ..manifest import read_manifest

    manifest = read_manifest(folder)
    spec = RunnerSpec(folder / target.model_file, target.backend, target.device, target.precision,
                      target.threads, target.batch_size)
    runner = open_runner(spec)
    wait = wait_for_quiet(wait_quiet) if wait_quiet > 0 else None
    flat: dict[str, Any] | None = None
    ref: dict[str, Any] | None = None
    # The load is recorded from the candidate's first timed call to the reference's last.
    with HostLoad(own_threads=target.threads, wait=wait) as load, contextlib.closing(runner):
        cand = measure(runner, evalset, target)
        peak = _peak_rss_mb()  # before any other model is loaded
        precision = getattr(runner, "precision", target.precision)
        float_parts = getattr(runner, "float_precision", None)
        engine = getattr(runner, "build_info", None)
        x1 = evalset.inputs[:1]
        if target.quantized and (folder / "float.onnx").is_file():
            # INT8 has to earn its place: the float graph on the same backend, timed alongside.
            # TensorRT's float baseline is fp16 (an fp32 engine would cost another long build on a Jetson).
            float_precision = "fp16" if target.backend == "tensorrt" else "fp32"
            frunner = open_runner(RunnerSpec(folder / "float.onnx", target.backend, target.device, float_precision,
                                             target.threads, target.batch_size))
            try:
                flat, int8_lat = measure_paired(frunner.run, runner.run, x1, target.warmup, target.iterations)
            finally:
                frunner.close()
        if availability("torch", _reference_device(target)) is None:
            ref_runner = open_runner(RunnerSpec(run.finetune, "torch", _reference_device(target), "fp32",
                                                target.threads, target.batch_size))
            try:
                ref = measure(ref_runner, evalset, target, latency=False)
                # The speedup is a ratio of two timings: take them side by side (measure_paired).
                ref["latency_ms"], cand["latency_ms"] = measure_paired(ref_runner.run, runner.run, x1,
                                                                       target.warmup, target.iterations)
            finally:
                ref_runner.close()
    metrics = classification_metrics(cand["logits"], evalset.labels, evalset.classes)
    candidate = {
        "format": target.backend, "precision": precision, "top1": metrics["top1"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "top1_drop": (ref_metrics["top1"] - metrics["top1"]) * 100.0,
        "agreement": agreement(cand["logits"], evalset.logits),
        "per_class_recall": metrics["per_class_recall"], "confusion": metrics["confusion"],
        "latency_ms": cand["latency_ms"], "throughput_ips": cand["throughput_ips"],
        "size_mb": _size_mb(folder, target.model_file), "peak_rss_mb": peak,
        "source_stage": manifest.get("source_stage"), "float_layers": manifest.get("float_layers"),
        "engine": engine, "float_parts_precision": float_parts,
    }
    if flat is not None:
        ratio = flat["p50"] / int8_lat["p50"]
        candidate["float_same_backend_p50_ms"] = flat["p50"]
        candidate["int8_same_backend_p50_ms"] = int8_lat["p50"]
        candidate["int8_speedup_over_float"] = ratio
        candidate["int8_speedup_spread"] = block_ratio_spread(flat, int8_lat)
        if ratio < 1.0:
            base["notes"].append(f"INT8 is SLOWER than the float model on this host ({ratio:.2f}× of float "
                                 "speed): ship the float target here")
    if ref is not None:
        reference |= {"latency_ms": ref["latency_ms"], "throughput_ips": ref["throughput_ips"],
                      "size_mb": (run.finetune / "model.pt").stat().st_size / 1e6}
        base["timing"] = (f"batch-1 latency of the reference and the candidate timed in alternating blocks "
                          f"({target.iterations} calls each, {target.threads} threads, {target.warmup} warm-up calls)")
    else:
        base["notes"].append("no torch on this host: reference accuracy comes from eval.npz, "
                             "its latency was not measured")
    speedup = reference["latency_ms"]["p50"] / candidate["latency_ms"]["p50"] if reference["latency_ms"] else None
    speedup_spread = block_ratio_spread(reference["latency_ms"], candidate["latency_ms"]) if ref else None
    host_load = load.summary()
    if wait is not None and wait["quiet"] is not False:
        base["notes"].append(f"waited {wait['waited_s']:.1f} s for a quiet host before timing" if wait["quiet"]
                             else "--wait-quiet: the host's CPU use cannot be measured here, did not wait")
    unreliable = _reliability(host_load, {"speedup": speedup_spread,
                                          "INT8 speed-up over float": candidate.get("int8_speedup_spread")})
    if unreliable:
        what = "host busy" if host_load["busy"] else "ratio unstable"
        figure = f"speedup {speedup:.2f}× and latencies" if speedup is not None else "latencies"
        base["notes"].append(f"UNRELIABLE TIMING ({what}): {figure} are not to be trusted: " + "; ".join(unreliable)
                             + ". Re-run on a quiet host (or with --wait-quiet SECONDS).")
        log.warning("UNRELIABLE: %s (%s): %s of %s are not to be trusted", what, "; ".join(unreliable),
                    figure, target.name)
    gates = _gates(target, {"max_top1_drop": candidate["top1_drop"], "min_agreement": candidate["agreement"],
                            "max_p95_ms": candidate["latency_ms"]["p95"]})
    return base | {"reference": reference, "candidate": candidate, "speedup": speedup,
                   "speedup_spread": speedup_spread, "host_load": host_load, "timing_reliable": not unreliable,
                   "unreliable_reasons": unreliable, "gates": gates, "passed": all(g["passed"] for g in gates),
                   "skipped": None}


def bench(run_dir: str | Path, targets: list[str] | None, data: str | None = None,
          json_path: str | None = None, quiet: bool = True, wait_quiet: float = 0.0) -> list[dict[str, Any]]:
    """Bench the named targets (or, with None, every built-in target) and write their reports.

    ``wait_quiet``: before timing each target, wait up to this many seconds for a quiet host.
    """
    from .report import write_reports

    run = RunDir(Path(run_dir))
    if data is not None:
        evalset = eval_set_from_folder(run, Path(data), quiet)
    elif run.eval_npz.is_file():
        evalset = load_eval_set(run.eval_npz)
    else:
        evalset = load_eval_set(ensure_eval_set(run, quiet))
    if len(evalset.labels) == 0:
        raise EdgeTLError("the evaluation set is empty")
    chosen = [get_target(t) for t in targets] if targets else list(builtin_targets().values())
    reports = []
    for target in chosen:
        report = bench_target(run, target, evalset, quiet, wait_quiet=wait_quiet)
        if targets and len(targets) == 1 and report["skipped"]:
            raise EdgeTLError(f"cannot bench {target.name} here: {report['skipped']}")
        write_reports(report, run.reports, Path(json_path) if json_path and len(chosen) == 1 else None)
        reports.append(report)
    return reports
