"""``edge-tl select``: rank candidate source models on the user's data before training anything.

A candidate is (architecture, weights source, input size). For each one this measures, on the training
split only (``finetune``'s split; validation is left for ``--verify``):

- transferability from frozen pooled features: LogME (``logme``) and cross-validated linear and kNN
  probes (``probe.cv_probes``) on at most ``per_class`` images per class;
- latency on the target's backend: the candidate's fp32 graph exported and timed in this process
  (batch 1, the target's threads and warm-up). Weights do not change a graph's speed, so each
  (architecture, size) is timed once. For an INT8 target the INT8 graph is timed too, made by the
  target's quantiser from noise calibration: its speed is measured, its accuracy is not estimated.

Candidates are ranked by probe top-1 (LogME breaks ties). A candidate whose weights do not resolve is
listed with the reason. Transfer that does not help is flagged: a pretrained source whose probe is no
better than the random-initialised (scratch) candidate of the same architecture, or a run source worse
than the ImageNet source it could be replaced by. ``verify`` fine-tunes the top K and reports Kendall's
tau between each score and the real validation top-1, so the user sees whether the ranking held on
their data (the literature finds no score reliable everywhere: You et al. 2021; Agostinelli et al. 2022).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the dependency list installs tomli there
    import tomli as tomllib

log = logging.getLogger("edge_tl")

DEFAULT_SIZES = (160, 192, 224)
# The smallest margin by which a probe top-1 counts as better than another (see ``margin``).
NO_BETTER_MARGIN = 0.01


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One source to score: ``weights`` is imagenet, none (scratch), run:RUN or a state_dict path."""

    arch: str
    weights: str
    input_size: int | None = None
    # a default scratch candidate is scored only when a pretrained one of its architecture was
    if_pretrained: bool = False

    @property
    def name(self) -> str:
        src = {"imagenet": "imagenet", "none": "scratch"}.get(self.weights)
        if src is None:
            src = Path(self.weights.removeprefix("run:")).name or self.weights
            src = f"run:{src}" if self.weights.startswith("run:") else src
        return f"{self.arch}/{src}" + (f"@{self.input_size}" if self.input_size else "")


def default_candidates(sizes: tuple[int, ...] = DEFAULT_SIZES, sources: tuple[str, ...] = ()) -> list[Candidate]:
    """Every registry architecture's ImageNet weights at each size, a scratch candidate of each at the
    largest size, and each earlier run in ``sources`` at its own contract."""
    from ..models import architectures

    out = [Candidate(a, "imagenet", s) for a in architectures() for s in sizes]
    out += [Candidate(a, "none", max(sizes), if_pretrained=True) for a in architectures()]
    out += [Candidate(_run_arch(r), f"run:{r}", None) for r in sources]
    return out


def _run_arch(run: str) -> str:
    from ..manifest import read_manifest

    path = Path(run)
    stage = path if (path / "manifest.json").is_file() else path / "finetune"
    try:
        return str(read_manifest(stage)["arch"])
    except Exception as exc:  # noqa: BLE001 - any unreadable run is a bad --source
        raise ConfigError(f"--source {run}: not an edge-tl run ({exc})") from None


def load_candidates(path: Path) -> list[Candidate]:
    """Candidates from a TOML file: ``[[candidate]]`` tables with ``arch``, ``weights`` (imagenet | none |
    run:RUN | PATH) and optional ``input_size``. ConfigError on anything else."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--candidates {path}: {exc}") from None
    rows = doc.get("candidate")
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"--candidates {path}: no [[candidate]] table")
    out = []
    for i, row in enumerate(rows):
        unknown = set(row) - {"arch", "weights", "input_size"}
        if unknown or "arch" not in row:
            raise ConfigError(f"--candidates {path}: candidate {i + 1} needs arch (and may set weights, "
                              f"input_size); unknown: {', '.join(sorted(unknown)) or 'none'}")
        from ..models import get_arch

        try:
            get_arch(str(row["arch"]))
        except ConfigError as exc:
            raise ConfigError(f"--candidates {path}: candidate {i + 1}: {exc}") from None
        out.append(Candidate(str(row["arch"]), str(row.get("weights", "imagenet")), row.get("input_size")))
    return out


# ------------------------------------------------------------------------------------------ scoring


def _prepare(c: Candidate, seed: int) -> tuple[Any, dict[str, Any], Any]:
    """(state or None, source description, preprocessing) of a candidate; ConfigError if it cannot resolve."""
    from ..stages.finetune import weights_preprocessing
    from ..weights import resolve_weights

    state, source = resolve_weights(c.arch, c.weights)
    pre = weights_preprocessing(c.arch, source, c.input_size)
    return state, source, pre


def subsample(samples: list, per_class: int | None, seed: int) -> list:
    """At most ``per_class`` samples of each class, drawn reproducibly from ``seed`` (all when None)."""
    if per_class is None:
        return list(samples)
    rng = np.random.default_rng(seed)
    labels = np.asarray([s.label for s in samples])
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep += sorted(rng.choice(idx, min(per_class, len(idx)), replace=False).tolist())
    return [samples[i] for i in sorted(keep)]


def score_candidate(c: Candidate, root: Path, samples: list, seed: int, cache_dir: Path | None,
                    engine: str = "auto", quiet: bool = True) -> dict[str, Any]:
    """The transferability row of one candidate: LogME, probe top-1s, feature seconds; or its reason."""
    from .embed import pooled_features
    from .logme import logme
    from .probe import cv_probes

    row: dict[str, Any] = {"name": c.name, "arch": c.arch, "weights": c.weights}
    try:
        state, source, pre = _prepare(c, seed)
    except ConfigError as exc:
        return row | {"status": "unavailable", "reason": str(exc)}
    row |= {"input_size": pre.crop, "source": source, "preprocessing": pre.to_dict(),
            "scratch": source.get("kind") == "none"}
    t0 = time.perf_counter()
    x, y, bad = pooled_features(c.arch, state, pre, root, samples, weights_id=source.get("sha256") or f"scratch:{seed}",
                                seed=seed, cache_dir=cache_dir, engine=engine, quiet=quiet, desc=f"features {c.name}")
    row["feature_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    row |= {"status": "scored", "logme": logme(x, y), **cv_probes(x, y, seed=seed), "images": len(y),
            "skipped": len(bad)}
    row["score_seconds"] = time.perf_counter() - t0
    return row


# ------------------------------------------------------------------------------------------ latency


def _export_fp32(arch: str, n_classes: int, size: int, dest: Path) -> None:
    import torch

    from ..models import build_model
    from ..onnx_export import export_onnx

    model = build_model(arch, n_classes, None).eval()
    export_onnx(model, torch.zeros(1, 3, size, size), dest, input_names=["input"], output_names=["logits"],
                dynamic_batch=False, opset=17)


def _int8_graph(target: Any, fp32: Path, size: int, work: Path) -> Path:
    """The target's INT8 form of ``fp32`` calibrated on noise: for timing only."""
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, 1, (1, 3, size, size)).astype(np.float32) for _ in range(8)]
    from ..backends.table import facts

    if facts(target.backend).graph == "openvino-ir":
        import openvino as ov

        from ..backends.openvino_.runner import shared_core, signal_stack_kept
        from ..errors import require

        nncf = require("nncf", "openvino")
        with signal_stack_kept():  # NNCF compiles through Cores of its own (see backends/openvino_/runner.py)
            q = nncf.quantize(shared_core().read_model(str(fp32)), nncf.Dataset(batches),
                              subset_size=len(batches), preset=nncf.QuantizationPreset.PERFORMANCE,
                              fast_bias_correction=True)
        dest = work / f"int8-{size}.xml"
        ov.save_model(q, str(dest))
        return dest
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter({"input": b} for b in batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    dest = work / f"int8-{size}.onnx"
    act = QuantType.QInt8 if target.quantizer.activations == "int8" else QuantType.QUInt8
    quantize_static(str(fp32), str(dest), _Reader(), quant_format=QuantFormat.QDQ, activation_type=act,
                    weight_type=QuantType.QInt8, per_channel=target.quantizer.per_channel)
    return dest


def measure_latency_for(target: Any, arch: str, size: int, n_classes: int, work: Path,
                        iterations: int = 60) -> dict[str, Any]:
    """p50/p95 latency (ms, batch 1) of ``arch`` at ``size`` on ``target``'s backend, fp32 and, for an
    INT8 target, INT8 (noise-calibrated). ``{"status": "unavailable", "reason"}`` when the backend
    cannot run here."""
    from ..backends.base import RunnerSpec, availability, open_runner
    from ..bench.latency import measure_latency

    reason = availability(target.backend, target.device)
    if reason:
        return {"status": "unavailable", "reason": reason}
    fp32 = work / f"{arch}-{size}.onnx"
    _export_fp32(arch, n_classes, size, fp32)
    x = np.random.default_rng(0).normal(0, 1, (1, 3, size, size)).astype(np.float32)
    graphs = {"fp32": fp32}
    if target.quantized:
        graphs["int8"] = _int8_graph(target, fp32, size, work)
    out: dict[str, Any] = {"status": "measured", "backend": target.backend, "threads": target.threads}
    for precision, path in graphs.items():
        runner = open_runner(RunnerSpec(path, target.backend, target.device, precision, target.threads, 1))
        try:
            lat = measure_latency(runner.run, x, min(target.warmup, 10), iterations, max_seconds=10.0)
        finally:
            runner.close()
        out[precision] = {"p50_ms": lat["p50"], "p95_ms": lat["p95"], "n": lat["n"]}
    out["int8_note"] = ("INT8 graph calibrated on noise: its speed is measured, its accuracy is not"
                        if target.quantized else None)
    return out


# ------------------------------------------------------------------------------------------ ranking


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scored rows by probe top-1 (then LogME), best first; rank numbers set; others appended."""
    scored = sorted((r for r in rows if r["status"] == "scored"),
                    key=lambda r: (-r["linear_top1"], -r["logme"]))
    for i, r in enumerate(scored, 1):
        r["rank"] = i
    return scored + [r for r in rows if r["status"] != "scored"]


def margin(row: dict[str, Any]) -> float:
    """How far apart two probe top-1s must be to count as different: the binomial standard error of
    ``row``'s cross-validated top-1 on its ``images`` (3.0 points at 0.77 on 200 images, 0.5 at 0.98 on
    600), and at least ``NO_BETTER_MARGIN``."""
    p, n = row["linear_top1"], max(1, row.get("images") or 1)
    return max(NO_BETTER_MARGIN, float(np.sqrt(p * (1 - p) / n)))


def flag_negative_transfer(rows: list[dict[str, Any]]) -> None:
    """Adds ``flags`` to each scored row: ``no_better_than_scratch`` (probe top-1 not above the best
    scratch candidate of the same architecture by more than ``margin``) and, for run sources,
    ``worse_than_imagenet`` (below the ImageNet candidate of the same architecture and size by more than
    ``margin``)."""
    scored = [r for r in rows if r["status"] == "scored"]
    for r in scored:
        r["flags"] = []
        if r["scratch"]:
            continue
        scratch = [s["linear_top1"] for s in scored if s["scratch"] and s["arch"] == r["arch"]]
        if scratch and r["linear_top1"] <= max(scratch) + margin(r):
            r["flags"].append("no_better_than_scratch")
        if r["source"].get("kind") == "run":
            imnet = [s["linear_top1"] for s in scored if s["source"].get("kind") == "imagenet"
                     and s["arch"] == r["arch"] and s["input_size"] == r["input_size"]]
            if imnet and r["linear_top1"] < max(imnet) - margin(r):
                r["flags"].append("worse_than_imagenet")


def pareto(rows: list[dict[str, Any]], precision: str) -> None:
    """Marks ``pareto: True`` on scored rows that no other row beats on both probe top-1 and latency."""
    pts = [r for r in rows if r["status"] == "scored" and _lat(r, precision) is not None]
    for r in pts:
        r["pareto"] = not any(o is not r and o["linear_top1"] >= r["linear_top1"]
                              and _lat(o, precision) <= _lat(r, precision)
                              and (o["linear_top1"] > r["linear_top1"] or _lat(o, precision) < _lat(r, precision))
                              for o in pts)


def _lat(row: dict[str, Any], precision: str) -> float | None:
    lat = row.get("latency") or {}
    return (lat.get(precision) or {}).get("p50_ms")


def recommend(rows: list[dict[str, Any]], precision: str, budget_ms: float | None) -> dict[str, Any] | None:
    """The best-ranked pretrained (non-scratch) candidate whose measured p50 fits ``budget_ms`` (any when
    no budget); among those within its ``margin`` of its probe top-1, the fastest."""
    pool = [r for r in rows if r["status"] == "scored" and not r["scratch"]]
    if budget_ms is not None:
        pool = [r for r in pool if _lat(r, precision) is not None and _lat(r, precision) <= budget_ms]
    if not pool:
        return None
    top = max(pool, key=lambda r: r["linear_top1"])
    close = [r for r in pool if r["linear_top1"] >= top["linear_top1"] - margin(top)]
    return min(close, key=lambda r: (_lat(r, precision) or float("inf"), -r["linear_top1"]))


def finetune_command(data_dir: Path, row: dict[str, Any]) -> str:
    cmd = f"edge-tl finetune {data_dir} --arch {row['arch']} --weights {row['weights']}"
    if not row["weights"].startswith("run:"):
        cmd += f" --input-size {row['input_size']}"
    return cmd + f" --out runs/{row['arch']}-{row['input_size']}"


# ------------------------------------------------------------------------------------------ verify


def verify(rows: list[dict[str, Any]], k: int, data_dir: Path, out: Path, seed: int, val_fraction: float,
           quiet: bool = True, workers: int = 2) -> dict[str, Any]:
    """Fine-tunes the top ``k`` scored candidates (``finetune``'s default linear mode, same split and seed)
    into ``out/verify/<n>`` and returns Kendall's tau between each score and the real validation top-1."""
    from scipy.stats import kendalltau

    from ..stages.finetune import finetune
    from ..training import TrainConfig

    top = [r for r in rows if r["status"] == "scored"][:k]
    for i, r in enumerate(top, 1):
        m = finetune(data_dir, out / "verify" / f"{i}-{r['arch']}-{r['input_size']}", arch=r["arch"],
                     weights=r["weights"], val_fraction=val_fraction,
                     input_size=None if r["weights"].startswith("run:") else r["input_size"],
                     train_cfg=TrainConfig(seed=seed, quiet=quiet, workers=workers))
        r["verified_val_top1"] = m["metrics"]["val_top1"]
        r["verified_val_balanced_accuracy"] = m["metrics"]["val_balanced_accuracy"]
    real = [r["verified_val_top1"] for r in top]
    result: dict[str, Any] = {"k": len(top), "candidates": [r["name"] for r in top], "val_top1": real}
    for key in ("linear_top1", "knn_top1", "logme"):
        tau = kendalltau([r[key] for r in top], real).statistic if len(top) >= 2 else float("nan")
        result[f"kendall_tau_{key}"] = None if tau is None or np.isnan(tau) else float(tau)
    return result


# ------------------------------------------------------------------------------------------ driver


def select(data_dir: str | Path, target: str, out: str | Path, *, candidates: list[Candidate] | None = None,
           budget_ms: float | None = None, per_class: int | None = 200, verify_k: int = 0, seed: int = 0,
           val_fraction: float = 0.2, engine: str = "auto", quiet: bool = True, workers: int = 2) -> dict[str, Any]:
    """Scores ``candidates`` (``default_candidates()`` when None) on ``data_dir``'s training split,
    measures their latency on ``target``, ranks them and writes ``out/select.json`` and
    ``out/select.html``. Returns the JSON's content. ``workers``: data-loading processes of the ``verify``
    fine-tunes (0 in a process that later kills children of its own: torch's loader installs a SIGCHLD
    handler). Raises ConfigError/DataError for bad input."""
    from ..data import scan_image_folder, stratified_split
    from ..manifest import check_writable, host_info, write_json
    from ..targets import get_target
    from .report import write_select_html

    tgt = get_target(target)
    if budget_ms is not None and budget_ms <= 0:
        raise ConfigError(f"--budget-ms must be positive, got {budget_ms}")
    if verify_k < 0:
        raise ConfigError(f"--verify must be 0 or more, got {verify_k}")
    out = Path(out)
    check_writable(out)
    data_dir = Path(data_dir)
    folder = scan_image_folder(data_dir)
    train, _val = stratified_split(folder.samples, val_fraction, seed)
    scored_on = subsample(train, per_class, seed)
    cands = candidates if candidates is not None else default_candidates()
    started = time.perf_counter()
    rows = []
    # scratch last: it is the baseline of the pretrained sources of its architecture
    for c in sorted(cands, key=lambda c: c.weights == "none"):
        pretrained = {r["arch"] for r in rows if r["status"] == "scored"}
        if c.if_pretrained and c.arch not in pretrained:
            # a random backbone alone is never the answer; without a pretrained one to compare it with
            # it would only cost time (resnet50's features at 224 px: minutes on 2 cores)
            rows.append({"name": c.name, "arch": c.arch, "weights": c.weights, "status": "unavailable",
                         "reason": f"no pretrained {c.arch} resolves here, so there is no transfer to compare "
                                   "scratch with"})
            continue
        rows.append(score_candidate(c, folder.root, scored_on, seed, out / "cache", engine, quiet))
        r = rows[-1]
        if r["status"] == "scored":
            log.info("select: %s LogME %.3f, probe top-1 %.4f (kNN %.4f)", r["name"], r["logme"],
                     r["linear_top1"], r["knn_top1"])
        else:
            log.info("select: %s unavailable: %s", r["name"], r["reason"])
    precision = "int8" if tgt.quantized else "fp32"
    latencies: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-tl-select-") as work:
        for r in rows:
            if r["status"] != "scored":
                continue
            key = (r["arch"], r["input_size"])
            if key not in latencies:
                latencies[key] = measure_latency_for(tgt, r["arch"], r["input_size"], len(folder.classes), Path(work))
            r["latency"] = latencies[key]
    rows = rank(rows)
    flag_negative_transfer(rows)
    pareto(rows, precision)
    rec = recommend(rows, precision, budget_ms)
    result: dict[str, Any] = {
        "data": str(folder.root.resolve()), "classes": folder.classes, "target": tgt.name, "precision": precision,
        "budget_ms": budget_ms, "seed": seed, "val_fraction": val_fraction, "per_class": per_class,
        "scored_on": {"split": "train", "images": len(scored_on),
                      "note": "scores use the training split only; validation is kept for --verify"},
        "candidates": rows, "recommendation": None, "seconds": time.perf_counter() - started,
        "host": host_info(),
    }
    if rec is not None:
        pool = [r for r in rows if r["status"] == "scored" and not r["scratch"]
                and (budget_ms is None or (_lat(r, precision) or float("inf")) <= budget_ms)]
        best = max(pool, key=lambda r: r["linear_top1"])
        why = ("the best probe top-1" if rec is best else
               f"the fastest within one standard error ({100 * margin(best):.1f} points) of the best probe "
               f"top-1, {best['name']} at {best['linear_top1']:.4f}")
        result["recommendation"] = {"name": rec["name"], "linear_top1": rec["linear_top1"],
                                    "p50_ms": _lat(rec, precision), "command": finetune_command(data_dir, rec),
                                    "why": why + (f", within {budget_ms} ms" if budget_ms is not None else "")}
    elif budget_ms is not None:
        result["recommendation_reason"] = f"no pretrained candidate measured within {budget_ms} ms on {tgt.name}"
    if verify_k:
        result["verify"] = verify(rows, verify_k, data_dir, out, seed, val_fraction, quiet, workers)
    result["seconds"] = time.perf_counter() - started
    write_json(out / "select.json", result)
    write_select_html(out / "select.html", result)
    return result
