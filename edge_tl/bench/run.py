"""``edge-tl bench``: the reference and a candidate measured in one process, the same way.

Accuracy comes from ``eval.npz`` (or ``--data``), so a device with no torch can bench too; then the
reference column's latency is missing and the report says why. Ratios (speedup over torch, INT8 over
float) come from timings taken side by side in alternating blocks, not one after the other. The host's
load while timing is recorded with them (``host_load``): torch eager slows down far more than the
engines on a busy host, so a speedup taken there is inflated, and the report says so
(``timing_reliable``).

Every report names its evaluation set (``eval_set``: kind, folder, image count, sha256 of the image
list), when it was measured (``measured_at``) and in which bench session (``session``): reports of
different sets or sessions are never compared as if they were one measurement. A ``--data`` bench is
written apart from the run's own reports (``reports/data-<name>-<sha8>/``). The candidate's memory is
measured in a fresh process (:mod:`.memory`); an INT8 target's precision is what its graph computes in
(:mod:`.precision`); besides batch-1 latency, the throughput with several requests in flight is
measured (``throughput_mode``).

The torch reference is timed once per bench invocation for each threads / batch / input size / device
and shared by the targets that match (``reference.latency_shared``): torch eager is the slow half of a
bench. ``latency=False`` (``--no-latency``) measures accuracy only. Each report says which stage its
candidate came from (``candidate.source``; a pruned one with the pruned float model's own drop) and
which export it measured (``candidate.target_manifest_sha256``, checked by ``bundle``).
"""

from __future__ import annotations

import contextlib
import logging
import platform
import re
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import RunnerSpec, availability, open_runner, open_streams, profile_layers
from ..backends.table import facts
from ..builders import step_for
from ..errors import ConfigError, EdgeTLError
from ..evalset import EvalSet, ensure_eval_set, eval_set_from_folder, load_eval_set, with_reference
from ..gates import all_passed, verdicts
from ..manifest import host_info, sha256_file, versions
from ..metrics import (
    agreement,
    agreement_curve,
    classification_metrics,
    drop_from_noise,
    margin_agreement,
    margin_fields,
)
from ..rundir import RunDir
from ..targets import Target, builtin_targets, get_target
from .hostload import HostLoad, spread_reason, wait_for_quiet
from .latency import block_ratio_spread, measure_latency, measure_paired, measure_streams, measure_throughput
from .memory import measure_model_memory
from .precision import precision_state

log = logging.getLogger("edge_tl")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_session() -> dict[str, Any]:
    """One bench invocation: every report it writes carries this id and start time."""
    return {"id": f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}", "started": _now(),
            "host": platform.node()}


class Steps:
    """Plain progress lines on stderr (``bench [2/5] cpu-openvino-int8: timing batch 1…``), one per
    step, flushed at once: a bench is never silent for minutes, in a terminal or in a log."""

    def __init__(self, quiet: bool, total: int = 1) -> None:
        self.quiet, self.total, self.index, self.target = quiet, total, 0, ""
        self.t0 = time.monotonic()

    def start(self, target: str) -> None:
        self.index += 1
        self.target = target
        self.t0 = time.monotonic()

    def every(self, seconds: float, what: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback that says "<what> done of total timed calls" at most every ``seconds``."""
        last = [time.monotonic()]

        def tick(done: int, total: int) -> None:
            if time.monotonic() - last[0] >= seconds:
                last[0] = time.monotonic()
                self(f"{what} {done} of {total} timed calls each…")
        return tick

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        where = f"[{self.index}/{self.total}] " if self.total > 1 else ""
        print(f"bench {where}{self.target}: {message} ({time.monotonic() - self.t0:.0f} s)", file=sys.stderr,
              flush=True)


def _size_mb(folder: Path, model_file: str) -> float:
    path = folder / model_file
    if (folder / "model.engine").is_file() and path.suffix == ".onnx":
        path = folder / "model.engine"  # what a TensorRT device actually loads
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def measure(runner: Any, evalset: EvalSet, target: Target, latency: bool = True,
            throughput: bool = True) -> dict[str, Any]:
    """Accuracy over the whole eval set, batch-1 latency (unless ``latency`` is False) and batched
    throughput (unless ``throughput`` is False) of one runner."""
    bs = target.batch_size
    logits = np.concatenate([runner.run(evalset.inputs[i:i + bs]) for i in range(0, len(evalset.inputs), bs)])
    x1 = evalset.inputs[:1]
    xb = np.repeat(evalset.inputs[:1], bs, axis=0) if len(evalset.inputs) < bs else evalset.inputs[:bs]
    return {
        "logits": logits,
        "latency_ms": measure_latency(runner.run, x1, target.warmup, target.iterations) if latency else None,
        "throughput_ips": measure_throughput(runner.run, xb) if throughput else None,
    }


def target_gates(target: Target, values: dict[str, float | None],
                 not_measured: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Each gate of ``target`` judged on ``values`` (:func:`edge_tl.gates.verdicts`)."""
    return verdicts(target.gates.model_dump(), values, not_measured)


NO_LATENCY_TEXT = ("nothing was timed: latency, throughput and speedup are not measured, and a latency gate "
                   "is reported as not measured (neither passed nor failed)")


def reference_key(ref_folder: Path, target: Target, evalset: EvalSet) -> tuple[Any, ...]:
    """What the torch reference's timing depends on: its model, device, threads, batch and input size.
    Targets of one bench with the same key share one timing of it (``bench_target(ref_cache=...)``)."""
    return (str(ref_folder.resolve()), _reference_device(target), target.threads, target.batch_size,
            tuple(evalset.inputs.shape[1:]))


def candidate_source(run: RunDir, manifest: dict[str, Any], evalset: EvalSet, reference_top1: float,
                     target: Target, say: Steps, cache: dict[tuple[Any, ...], dict[str, Any]] | None = None,
                     ) -> dict[str, Any]:
    """Which stage the candidate was exported from and, for a pruned one, the pruned float model's own
    top-1 drop against the reference: the bench compares with the full model, so a candidate's drop is
    pruning and quantisation together, and this says how much of it pruning alone costs.

    Measured on ``evalset`` with the pruned torch model where this host has torch; else the prune
    manifest's validation figures (the same held-out split when no ``--data`` was given). ``cache``: the
    bench's shared cache (several targets exported from one pruned model measure it once)."""
    stage = manifest.get("source_stage") or "finetune"
    out: dict[str, Any] = {"stage": stage}
    if stage != "prune":
        return out
    from ..manifest import read_json

    pm_path = run.prune / "manifest.json"
    pm = read_json(pm_path) if pm_path.is_file() else {}
    out["ratio"] = pm.get("ratio")
    key = ("pruned float", str(run.prune.resolve()))
    if cache is not None and key in cache:
        return out | cache[key]
    if (run.prune / "model.pt").is_file() and availability("torch", "cpu") is None:
        say("the pruned float model alone (torch fp32): accuracy…")
        runner = open_runner(RunnerSpec(run.prune, "torch", "cpu", "fp32", target.threads, target.batch_size))
        try:
            logits = measure(runner, evalset, target, latency=False, throughput=False)["logits"]
        finally:
            runner.close()
        top1 = classification_metrics(logits, evalset.labels, evalset.classes)["top1"]
        measured = {"float_top1": top1, "float_top1_drop": (reference_top1 - top1) * 100.0,
                    "float_agreement": agreement(logits, evalset.logits),
                    "float_from": f"the pruned torch model on this evaluation set ({len(evalset.labels)} images)"}
        if cache is not None:
            cache[key] = measured
        return out | measured
    met = pm.get("metrics") or {}
    if met.get("val_top1") is None:
        return out | {"float_top1": None, "float_top1_drop": None, "float_from": "not available (no torch here, "
                      "no prune manifest)"}
    return out | {"float_top1": met["val_top1"], "float_top1_drop": met.get("val_top1_drop"),
                  "float_from": "the prune manifest (validation split; no torch on this host)"}


def target_noise(manifest: dict[str, Any], target: Target) -> tuple[float, str]:
    """The answer noise a target's answers are split at (``metrics.margin_agreement``), and where it came from.

    An INT8 export records its shipped graph's noise on the selection images (``answer_noise`` in the
    target manifest, ``metrics.answer_noise``): read, not re-measured, so bench, export and bundle split
    at the same number and never on the images the verdict is taken on. A float target is not measured
    (its export builds no selection set, and a float graph's logits differ from torch's by float rounding
    only): noise 0, every answer but an exact tie is confident, as the agreement gate always judged it.
    """
    record = manifest.get("answer_noise")
    if record and record.get("value") is not None:
        return float(record["value"]), str(record.get("measured_on") or "the export's selection images")
    if target.quantized:
        return 0.0, ("not measured (exported before edge-tl recorded answer noise, or without a gate or "
                     "labelled images): 0, every answer judged; export again to measure it")
    return 0.0, "not measured (float target): 0, every answer judged"


def _reference_device(target: Target) -> str:
    return facts(target.backend).reference_device or ("cuda" if target.device.startswith("cuda") else "cpu")


def _reliability(host_load: dict[str, Any], spreads: dict[str, dict[str, Any] | None]) -> list[str]:
    """Why the timed figures cannot be trusted (empty when they can)."""
    reasons = list(host_load.get("reasons") or [])
    reasons += [r for what, sp in spreads.items() if (r := spread_reason(sp, what))]
    return reasons


def target_arg(target: Target) -> str:
    """What to pass to ``--target`` for ``target``: a built-in profile's name, else its file."""
    from ..targets import targets_dir

    source = Path(target.source) if target.source else None
    if source is None or source.resolve().parent == targets_dir().resolve():
        return target.name
    return str(source)


def host_cannot_run(target: Target) -> str | None:
    """Why this host cannot run ``target`` (backend missing, or a profile made for other hardware), else
    None. Built-in profile names say the hardware: ``arm64-*`` needs an ARM CPU, ``jetson-*`` a Jetson."""
    reason = availability(target.backend, target.device)
    if reason is not None:
        return reason
    machine = platform.machine().lower()
    if target.name.startswith("arm64") and machine not in ("aarch64", "arm64"):
        return f"an arm64 profile; this host is {machine or 'not ARM'}"
    if target.name.startswith("jetson") and not Path("/etc/nv_tegra_release").is_file():
        return "a Jetson profile; this host is not a Jetson"
    return None


def _layer_summary(result: dict[str, Any], top: int = 10) -> dict[str, Any]:
    layers = sorted(result["layers"], key=lambda r: -r["ms"])
    total = sum(r["ms"] for r in layers) or 1.0
    by_precision: dict[str, float] = {}
    for r in layers:
        by_precision[r["precision"]] = by_precision.get(r["precision"], 0.0) + r["ms"] / total
    return {"tool": result["tool"], "calls": result["calls"], "n_layers": len(layers), "total_ms": total,
            "by_precision": dict(sorted(by_precision.items(), key=lambda kv: -kv[1])),
            "top": [r | {"share": r["ms"] / total} for r in layers[:top]]}


def run_task(run: RunDir) -> str | None:
    """The finetune manifest's ``task`` (anomaly, detect; None for a classifier or a run without one here)."""
    from ..manifest import read_json

    path = run.finetune / "manifest.json"
    return read_json(path).get("task") if path.is_file() else None


def is_anomaly_run(run: RunDir) -> bool:
    """True for a ``finetune --task anomaly`` run (its reports carry AUROC and decision figures)."""
    return run_task(run) == "anomaly"


def ood_facts(runner: Any, evalset: EvalSet, target: Target, ood: dict[str, Any]) -> dict[str, Any]:
    """The share of ``evalset``'s images whose ood_score exceeds the target's limit, with the scores and
    the validation images' scores (from the export) for the report's two distributions."""
    bs = target.batch_size
    scores = np.concatenate([np.asarray(runner.run_outputs(evalset.inputs[i:i + bs])[1], np.float64).reshape(-1)
                             for i in range(0, len(evalset.inputs), bs)])
    limit = float(ood["limit"])
    return {"limit": limit, "limit_source": ood.get("limit_source"), "n": len(scores),
            "share_flagged": float(np.mean(scores > limit)) if len(scores) else None,
            "data": evalset.describe().get("name"), "scores": [round(float(v), 4) for v in scores[:2000]],
            "validation_scores": ood.get("validation_scores"), "fitted_on": (ood.get("fitted_on") or {}).get("what")}


def adaptation_facts(run: RunDir, target: Target) -> dict[str, Any] | None:
    """For a target exported from ``RUN/adapt``: the method, the unlabelled set and, where ``--target-val``
    gave labels, source-only vs adapted accuracy on the new line (``adapt``'s report). Else None."""
    from ..manifest import read_json

    tm, am = run.target(target.name) / "manifest.json", run.adapt / "manifest.json"
    if not (tm.is_file() and am.is_file()) or read_json(tm).get("source_stage") != "adapt":
        return None
    m = read_json(am)
    return {"method": m.get("method"), "unlabeled": {k: (m.get("unlabeled") or {}).get(k)
                                                     for k in ("root", "n_images", "n_skipped")},
            "report": m.get("report")}


def transfer_facts(run: RunDir) -> dict[str, Any] | None:
    """Where the model's backbone came from (the chain of sources, newest first) and, when finetune ran
    ``--baseline scratch``, how it compares with training from random weights. None without a finetune
    manifest (a device benching from eval.npz) or for an anomaly run."""
    from ..manifest import read_json

    path = run.finetune / "manifest.json"
    if not path.is_file():
        return None
    m = read_json(path)
    if m.get("task") == "anomaly":
        return None
    chain, w = [], m.get("weights") or {}
    while w:
        chain.append({k: w.get(k) for k in ("kind", "path", "sha256", "enum") if w.get(k) is not None})
        w = w.get("parent") or {}
    return {"sources": chain, "baseline": (m.get("metrics") or {}).get("baseline"), "classes": m.get("classes")}


def bench_target(run: RunDir, target: Target, evalset: EvalSet, quiet: bool = True,
                 wait_quiet: float = 0.0, session: dict[str, Any] | None = None, layers: bool = False,
                 steps: Steps | None = None, memory: bool = True, throughput_s: float = 2.0,
                 latency: bool = True, ref_cache: dict[tuple[Any, ...], dict[str, Any]] | None = None,
                 ) -> dict[str, Any]:
    """Measure one target; returns the report (with ``skipped`` set when this host cannot run it).

    ``wait_quiet``: wait up to this many seconds for other processes to leave the CPUs before timing;
    when they never do, the figures are still measured and marked unreliable. ``layers``: also profile
    where one batch-1 call's time goes (``report["layers"]``). ``memory``: measure the candidate's own
    resident memory in a fresh process. ``throughput_s``: seconds of the throughput-mode run (0: skip).
    ``latency=False``: accuracy only: nothing is timed (latency, throughput and speedup are null, a
    latency gate is "not measured"). ``ref_cache``: the torch reference's timings by what they depend on
    (:func:`reference_key`), shared by the targets of one bench invocation: it is timed once, not per target.
    """
    say = steps or Steps(True)
    anomaly = is_anomaly_run(run)
    base: dict[str, Any] = {"task": "anomaly" if anomaly else "classification", "target": target.name,
                            "profile": target.model_dump(), "eval_set": evalset.describe(),
                            "n": len(evalset.labels), "classes": evalset.classes, "host": host_info(),
                            "versions": versions(), "notes": [], "session": session or new_session(),
                            "measured_at": _now(), "transfer": transfer_facts(run)}
    base["adaptation"] = adaptation_facts(run, target)
    folder = run.target(target.name)
    run.check_fresh(folder, target.cli_ref)  # a target of a replaced model is refused, naming the re-export
    ref_model = "full fine-tuned fp32 torch model"
    if (folder / "manifest.json").is_file():
        from ..manifest import read_json

        evalset, ref_model = with_reference(run, evalset, read_json(folder / "manifest.json"), folder)
    ref_metrics = classification_metrics(evalset.logits, evalset.labels, evalset.classes)
    reference: dict[str, Any] = {"format": "torch", "precision": "fp32", "model": ref_model,
                                 "top1": ref_metrics["top1"], "balanced_accuracy": ref_metrics["balanced_accuracy"],
                                 "per_class_recall": ref_metrics["per_class_recall"],
                                 "latency_ms": None, "throughput_ips": None, "size_mb": None}
    reason = availability(target.backend, target.device)
    if reason is None and not (folder / "manifest.json").is_file():
        reason = f"not exported (run `edge-tl export {run.root} --target {target_arg(target)}`)"
    if reason is not None:
        return base | {"reference": reference, "candidate": None, "speedup": None, "gates": [],
                       "passed": True, "skipped": reason, "host_load": None, "timing_reliable": None}
    from ..target_manifest import read_target_manifest

    manifest = read_target_manifest(folder)
    if manifest.get("source_stage") == "adapt" and evalset.identity.get("kind") == "validation split":
        base["notes"].append("this target was adapted to a new line (RUN/adapt); the validation split is the old "
                             "line's, where it may do worse: bench it with --data on labelled new-line images")
    spec = RunnerSpec(folder / target.model_file, target.backend, target.device, target.precision,
                      target.threads, target.batch_size)
    mem: dict[str, Any] = {}
    if memory:
        say("memory of the model alone (fresh process)…")
        mem = measure_model_memory(spec.model_path, spec.backend, spec.device, spec.precision, spec.threads,
                                   spec.max_batch, tuple(evalset.inputs.shape[1:]))
        if mem.get("error"):
            base["notes"].append(f"the candidate's memory could not be measured: {mem['error']}")
    state = precision_state(folder, target.model_file, target.backend, manifest) if target.quantized else None
    runner = open_runner(spec)
    wait = wait_for_quiet(wait_quiet) if wait_quiet > 0 and latency else None
    flat: dict[str, Any] | None = None
    ref: dict[str, Any] | None = None
    streams_result: dict[str, Any] | None = None
    # The load is recorded from the candidate's first timed call to the reference's last.
    load = HostLoad(own_threads=target.threads, wait=wait) if latency else None
    with load or contextlib.nullcontext(), contextlib.closing(runner):
        base["measured_at"] = _now()
        say(f"accuracy on {len(evalset.labels)} images, batch-1 latency ({target.iterations} calls), "
            f"batch-{target.batch_size} throughput…" if latency else
            f"accuracy on {len(evalset.labels)} images (--no-latency: nothing timed)…")
        cand = measure(runner, evalset, target, latency=latency, throughput=latency)
        if manifest.get("ood") and hasattr(runner, "run_outputs"):
            base["ood"] = ood_facts(runner, evalset, target, manifest["ood"])
            base["notes"].append(f"out of distribution: {base['ood']['share_flagged']:.1%} of the {base['ood']['n']} "
                                 f"images score above the limit {base['ood']['limit']:.3g} (review in the runtime)")
        if anomaly:
            from ..manifest import read_json
            from .anomaly_plot import plot_data

            pre = read_json(run.finetune / "manifest.json")["preprocessing"]
            base["anomaly_plot"] = plot_data(runner, evalset, cand["logits"], target.batch_size, pre["mean"],
                                             pre["std"])
        precision = getattr(runner, "precision", target.precision)
        float_parts = getattr(runner, "float_precision", None)
        engine = getattr(runner, "build_info", None)
        x1 = evalset.inputs[:1]
        xb = (np.repeat(evalset.inputs[:1], target.batch_size, axis=0) if len(evalset.inputs) < target.batch_size
              else evalset.inputs[:target.batch_size])
        if throughput_s > 0 and latency:
            say(f"throughput mode: several requests in flight at batch {target.batch_size}…")
            streams = open_streams(spec)
            try:
                streams_result = measure_streams(streams, xb, seconds=throughput_s)
            finally:
                streams.close()
        if target.quantized and (folder / "float.onnx").is_file() and latency:
            say("INT8 vs the float graph on the same backend, alternating blocks…")
            # INT8 has to earn its place: the float graph on the same backend, timed alongside.
            # TensorRT's float baseline is fp16 (an fp32 engine would cost another long build on a Jetson).
            float_precision = facts(target.backend).float_baseline
            frunner = open_runner(RunnerSpec(folder / "float.onnx", target.backend, target.device, float_precision,
                                             target.threads, target.batch_size))
            try:
                flat, int8_lat = measure_paired(frunner.run, runner.run, x1, target.warmup, target.iterations)
            finally:
                frunner.close()
        ref_folder = run.adapt if manifest.get("source_stage") == "adapt" else run.finetune
        key = reference_key(ref_folder, target, evalset)
        if latency and ref_cache is not None and key in ref_cache:
            # Timed earlier in this invocation with the same threads, batch, input and device: torch eager
            # is the slow half of every bench (minutes per target on a busy host), so it is timed once.
            shared = ref_cache[key]
            say(f"reference (torch fp32): latency shared with {shared['timed_with']} (timed once in this bench)")
            ref = {"latency_ms": shared["latency_ms"], "throughput_ips": shared["throughput_ips"],
                   "shared": {k: shared[k] for k in ("timed_with", "measured_at")}}
        elif latency and availability("torch", _reference_device(target)) is None:
            say("reference (torch fp32): accuracy, then latency in alternating blocks with the candidate…")
            ref_runner = open_runner(RunnerSpec(ref_folder, "torch", _reference_device(target), "fp32",
                                                target.threads, target.batch_size))
            try:
                ref = measure(ref_runner, evalset, target, latency=False)
                # The speedup is a ratio of two timings: take them side by side (measure_paired).
                ticks = say.every(10.0, "reference vs candidate:")
                ref["latency_ms"], cand["latency_ms"] = measure_paired(ref_runner.run, runner.run, x1,
                                                                       target.warmup, target.iterations,
                                                                       on_block=ticks)
            finally:
                ref_runner.close()
            if ref_cache is not None:
                ref_cache[key] = {"latency_ms": ref["latency_ms"], "throughput_ips": ref["throughput_ips"],
                                  "timed_with": target.name, "measured_at": _now()}
    layer_info: dict[str, Any] | None = None
    if layers:
        say("per-layer timings (profiler)…")
        try:
            layer_info = _layer_summary(profile_layers(spec, evalset.inputs[:1]))
        except NotImplementedError as exc:
            layer_info = {"error": str(exc)}
    metrics = classification_metrics(cand["logits"], evalset.labels, evalset.classes)
    source = candidate_source(run, manifest, evalset, ref_metrics["top1"], target, say, ref_cache)
    if state is not None:
        precision = state["precision"]  # "int8", "mostly float" or "float": what the graph computes in
    candidate = {
        "format": target.backend, "precision": precision, "precision_state": state, "top1": metrics["top1"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "top1_drop": (ref_metrics["top1"] - metrics["top1"]) * 100.0,
        "balanced_accuracy_drop": (ref_metrics["balanced_accuracy"] - metrics["balanced_accuracy"]) * 100.0,
        "agreement": agreement(cand["logits"], evalset.logits),
        "per_class_recall": metrics["per_class_recall"], "confusion": metrics["confusion"],
        "latency_ms": cand["latency_ms"], "throughput_ips": cand["throughput_ips"],
        "batch1_ips": 1000.0 / cand["latency_ms"]["p50"] if cand["latency_ms"] else None,
        "throughput_mode": streams_result,
        "size_mb": _size_mb(folder, target.model_file),
        "peak_rss_mb": mem.get("process_peak_rss_mb"), "model_rss_mb": mem.get("model_rss_mb"),
        "memory": mem or None,
        "source_stage": manifest.get("source_stage"), "source": source,
        # which export this report measured: bundle refuses a report of an older export (re-exported since)
        "target_manifest_sha256": sha256_file(folder / "manifest.json"),
        "float_layers": manifest.get("float_layers"),
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
    if ref is not None and ref.get("shared"):
        reference |= {"latency_ms": ref["latency_ms"], "throughput_ips": ref["throughput_ips"],
                      "size_mb": (ref_folder / "model.pt").stat().st_size / 1e6, "latency_shared": ref["shared"]}
        base["timing"] = (f"reference latency timed once in this bench session, alongside "
                          f"{ref['shared']['timed_with']} (alternating blocks), and shared by every target with the "
                          f"same threads, batch, input size and device; this candidate timed alone "
                          f"({target.iterations} calls, {target.threads} threads, {target.warmup} warm-up calls)")
    elif ref is not None:
        reference |= {"latency_ms": ref["latency_ms"], "throughput_ips": ref["throughput_ips"],
                      "size_mb": (ref_folder / "model.pt").stat().st_size / 1e6}
        base["timing"] = (f"batch-1 latency of the reference and the candidate timed in alternating blocks "
                          f"({target.iterations} calls each, {target.threads} threads, {target.warmup} warm-up calls)")
    elif latency:
        base["notes"].append("no torch on this host: reference accuracy comes from eval.npz, "
                             "its latency was not measured")
    else:
        base["timing"] = NO_LATENCY_TEXT
        base["notes"].append(f"accuracy only (--no-latency): {NO_LATENCY_TEXT}")
    base["latency_measured"] = latency
    lat_ok = reference["latency_ms"] and candidate["latency_ms"]
    speedup = reference["latency_ms"]["p50"] / candidate["latency_ms"]["p50"] if lat_ok else None
    # per-block ratios exist only for timings taken side by side (not for a shared reference)
    paired = ref is not None and not ref.get("shared")
    speedup_spread = block_ratio_spread(reference["latency_ms"], candidate["latency_ms"]) if paired else None
    host_load = load.summary() if load is not None else None
    if wait is not None and wait["quiet"] is not False:
        base["notes"].append(f"waited {wait['waited_s']:.1f} s for a quiet host before timing" if wait["quiet"]
                             else "--wait-quiet: the host's CPU use cannot be measured here, did not wait")
    unreliable = _reliability(host_load or {}, {"speedup": speedup_spread,
                                                "INT8 speed-up over float": candidate.get("int8_speedup_spread")})
    if unreliable:
        what = "host busy" if (host_load or {}).get("busy") else "ratio unstable"
        figure = f"speedup {speedup:.2f}× and latencies" if speedup is not None else "latencies"
        base["notes"].append(f"UNRELIABLE TIMING ({what}): {figure} are not to be trusted: " + "; ".join(unreliable)
                             + ". Re-run on a quiet host (or with --wait-quiet SECONDS).")
        log.warning("UNRELIABLE: %s (%s): %s of %s are not to be trusted", what, "; ".join(unreliable),
                    figure, target.name)
    p95 = (candidate["latency_ms"] or {}).get("p95")
    not_measured: tuple[str, ...] = () if latency else ("max_p95_ms",)
    # The agreement gate judges the answers the reference is sure of (margin above the target's noise,
    # measured by its export on the selection images): the one definition export's fallback uses.
    noise, noise_source = target_noise(manifest, target)
    split = margin_agreement(cand["logits"], evalset.logits, noise, anomaly)
    candidate |= margin_fields(split) | {"answer_noise_source": noise_source,
                                         "agreement_curve": agreement_curve(cand["logits"], evalset.logits, anomaly)}
    agreement_gate = "min_decision_agreement" if anomaly else "min_agreement"
    if split["confident"]["n"] == 0:
        not_measured += (agreement_gate,)
    if anomaly:
        from ..metrics import compare

        figures = compare(cand["logits"], evalset.logits, evalset.labels)
        candidate |= figures["candidate"]
        reference |= figures["reference"]
        gates = target_gates(target, {"max_auroc_drop": candidate["auroc_drop"],
                                      "min_decision_agreement": candidate["agreement_confident"],
                                      "max_p95_ms": p95}, not_measured)
    else:
        candidate["top1_drop_from_noise"] = drop_from_noise(cand["logits"], evalset.logits, evalset.labels)
        gates = target_gates(target, {"max_top1_drop": candidate["top1_drop"],
                                      "max_balanced_accuracy_drop": candidate["balanced_accuracy_drop"],
                                      "min_agreement": candidate["agreement_confident"], "max_p95_ms": p95},
                             not_measured)
    for g in gates:
        if g["name"] == agreement_gate:
            g["on"] = (f"{split['confident']['n']} confident answers (reference margin > noise {noise:.3g}); "
                       f"{split['near_tie']['n']} near-ties reported, not gated")
    chance = candidate.get("top1_drop_from_noise")
    drop_failed = any(g["name"] == "max_top1_drop" and g["passed"] is False for g in gates)
    if chance and drop_failed and chance["p_value"] >= 0.05:
        lo, hi = chance["interval"]
        base["notes"].append(
            f"the top-1 drop {candidate['top1_drop']:.2f} is within what this graph's answer noise loses when its "
            f"margin changes are redealt among images of like margin ({lo:.2f} to {hi:.2f} points, p = "
            f"{chance['p_value']:.2f}): its changed answers are near-tie coin tosses, not a systematic error; the "
            "gate judges the drop all the same")
    if state is not None and state["precision"] != "int8":
        base["notes"].append(f"an INT8 profile whose graph is {state['label']}: it runs as a float model "
                             "with quantise/dequantise hops; compare with the float target")
    report = base | {"reference": reference, "candidate": candidate, "speedup": speedup,
                     "speedup_spread": speedup_spread, "host_load": host_load,
                     "timing_reliable": not unreliable if latency else None,
                     "unreliable_reasons": unreliable if latency else None, "gates": gates,
                     "passed": all_passed(gates),
                     "skipped": None}
    if layer_info is not None:
        report["layers"] = layer_info
    lat = candidate["latency_ms"]
    from .labels import headline_figure
    from .report import source_text, verdict_text

    h = headline_figure(report)
    headline = f"{h.label} {h.text(candidate.get(h.key))}" + (
        f", decision agreement {candidate['decision_agreement']:.4f}" if anomaly and candidate.get("auroc") is not None
        else "")

    came = source_text(source)
    say(f"done: {headline} on {evalset.describe()['name']}, "
        + (f"p50 {lat['p50']:.2f} ms, " if lat else "latency not measured (--no-latency), ")
        + (f"{streams_result['images_per_s']:.0f} img/s in throughput mode, " if streams_result else "")
        + (f"{came}, " if came else "") + verdict_text(report))
    return report


def reports_dir_for(run: RunDir, evalset: EvalSet, data: str | None) -> Path:
    """``reports/`` for the run's own evaluation set; ``reports/data-<name>-<sha8>/`` for a ``--data``
    folder, so a bench on other images never overwrites (or mixes with) the run's own reports."""
    if data is None:
        return run.reports
    return data_reports_dir(run, evalset.describe())


def data_reports_dir(run: RunDir, ident: dict[str, Any]) -> Path:
    """``reports/data-<name>-<sha8>/`` of a ``--data`` evaluation set (``ident``: its ``eval_set``)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(ident.get("name") or "data")).strip("-.")[:40] or "data"
    return run.reports / f"data-{slug}-{str(ident.get('sha256') or '')[:8]}"


# Before a target is benched: (why it is skipped, or None; whether that skip is a failure). ``bench --export``
# passes one that exports the target first (``edge_tl.orchestrate``).
Prepare = Callable[[RunDir, Target, Steps], tuple[str | None, bool]]


def bench(run_dir: str | Path, targets: list[str] | None, data: str | None = None,
          json_path: str | None = None, quiet: bool = True, wait_quiet: float = 0.0,
          prepare: Prepare | None = None, layers: bool = False, progress: bool | None = None,
          latency: bool = True) -> list[dict[str, Any]]:
    """Bench the named targets (or, with None, every built-in target) and write their reports.

    ``wait_quiet``: before timing each target, wait up to this many seconds for a quiet host.
    ``prepare``: called before each target; a reason it returns skips the target (reported as skipped, with
    the reason; a failed skip fails the report). ``edge_tl.orchestrate.bench(export=True)`` passes one that
    first exports every chosen target this host can run. ``layers``: also record per-layer timings.
    ``progress``: plain step lines on stderr (default: unless ``quiet``). ``json_path``: also write the
    report there: one named target's report, or with several (or every built-in) target a JSON list of
    their reports in bench order (rewritten atomically after each target, so a bench that stops half-way
    keeps what it measured).
    ``latency=False``: accuracy only, nothing timed (see :func:`bench_target`). The torch reference is
    timed once per invocation for each set of threads, batch, input size and device, and shared.
    """
    from ..manifest import check_writable, write_json
    from .writer import write_reports

    if layers and not latency:
        raise ConfigError("--layers times every layer; it cannot go with --no-latency")
    if json_path is not None:
        check_writable(json_path)  # before minutes of benching, not after
    run = RunDir(Path(run_dir))
    chosen = [get_target(t) for t in targets] if targets else list(builtin_targets().values())
    own = step_for(run_task(run), "bench")
    if own is not None:
        # A detection run is judged on boxes (mAP, box agreement), not on an eval set of logits (detect.ship);
        # it reads ``data`` (another labelled folder) itself.
        if layers:
            raise ConfigError(f"--layers is not built for {run_task(run)} runs yet; bench without it")
        return own(run, chosen, json_path=json_path, quiet=quiet, wait_quiet=wait_quiet, prepare=prepare,
                   progress=progress, latency=latency, several=targets is None or len(chosen) > 1, data=data)
    if prepare is None:
        # Refuse a stale target before the evaluation set's minute of preprocessing, not after it
        # (``--export`` re-exports stale targets itself).
        for target in chosen:
            if (run.target(target.name) / "manifest.json").is_file():
                run.check_fresh(run.target(target.name), target.cli_ref)
    steps = Steps(quiet if progress is None else not progress)
    if data is not None:
        evalset = eval_set_from_folder(run, Path(data), quiet)
    elif run.eval_npz.is_file():
        evalset = load_eval_set(run.eval_npz)
    else:
        evalset = load_eval_set(ensure_eval_set(run, quiet))
    if len(evalset.labels) == 0:
        raise EdgeTLError("the evaluation set is empty")
    steps.total = len(chosen)
    session = new_session() | {"targets": [t.name for t in chosen], "eval_set_sha256": evalset.describe()["sha256"]}
    out_dir = reports_dir_for(run, evalset, data)
    reports: list[dict[str, Any]] = []
    ref_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
    several = targets is None or len(chosen) > 1  # --json: a list for --all-targets or several targets

    def keep(report: dict[str, Any]) -> None:
        reports.append(report)
        if json_path is not None and several:
            write_json(json_path, reports)

    for target in chosen:
        steps.start(target.name)
        if prepare is not None:
            reason, failed = prepare(run, target, steps)
            if reason is not None:
                ident = evalset.describe()
                report = {"task": "anomaly" if is_anomaly_run(run) else "classification",
                          "target": target.name, "profile": target.model_dump(), "eval_set": ident,
                          "n": ident["n"], "classes": evalset.classes, "host": host_info(),
                          "versions": versions(), "notes": [], "session": session, "measured_at": _now(),
                          "reference": {"format": "torch", "precision": "fp32", "top1": classification_metrics(
                              evalset.logits, evalset.labels, evalset.classes)["top1"], "latency_ms": None},
                          "candidate": None, "speedup": None, "gates": [], "passed": not failed,
                          "skipped": reason, "host_load": None, "timing_reliable": None}
                if targets and len(targets) == 1 and not failed:
                    raise EdgeTLError(f"cannot bench {target.name} here: {reason}")
                write_reports(report, out_dir, None, index_root=run.reports)
                keep(report)
                continue
        report = bench_target(run, target, evalset, quiet, wait_quiet=wait_quiet, session=session,
                              layers=layers, steps=steps, latency=latency, ref_cache=ref_cache)
        if targets and len(targets) == 1 and report["skipped"]:
            raise EdgeTLError(f"cannot bench {target.name} here: {report['skipped']}")
        write_reports(report, out_dir, Path(json_path) if json_path and not several else None,
                      index_root=run.reports)
        keep(report)
    if not steps.quiet:
        print(f"reports: {out_dir}  (run index: {run.reports / 'index.html'})", file=sys.stderr, flush=True)
    return reports
