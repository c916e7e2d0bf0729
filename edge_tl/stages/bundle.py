"""``edge-tl bundle``: an exported target -> a self-checking deployment folder for the runtime.

The bundle holds the target's model file(s) (for TensorRT the ONNX/QDQ graph the device builds its
engine from), ``bundle.json`` (classes, the preprocessing contract, the QC decision policy, the target
profile, versions, golden expectations) and the sha256 of every file (``SHA256SUMS``). Golden images
are original validation image files, at least one per class, whose expected logits are computed
here by the target's own backend through the runtime's preprocessing, and checked against the full
torch model's logits in ``eval.npz``. The finished folder is opened with ``edge_tl.runtime`` before
it replaces ``--out``, so a bundle that its own runtime would refuse is never written.
See ``edge_tl/runtime/bundlefile.py`` for the layout and ``edge_tl/runtime/policy.py`` for the policy.

A task with a bundle of its own (detection: ``edge_tl.detect.bundle``, registered with
``builders.register_step(task, "bundle", ...)``) gets the checks every bundle shares here, then writes its
bundle with the helpers below (:func:`refuse_unbenched`, :func:`copy_golden`, :func:`manifest_head`,
:func:`input_section`, :func:`model_section`, :func:`provenance`, :func:`finish`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import RunnerSpec, availability, open_runner
from ..backends.table import facts
from ..bench.run import run_task
from ..bench.schema import Gate, load_report
from ..builders import step_for
from ..errors import ArtifactError, ConfigError
from ..evalset import ensure_eval_set, load_eval_set, with_reference
from ..manifest import (
    MANIFEST,
    check_writable,
    read_json,
    read_manifest,
    sha256_file,
    staged_folder,
    versions,
    write_json,
)
from ..preprocess import Preprocess, load_image
from ..rundir import RunDir
from ..runtime.bundlefile import (
    BUNDLE_JSON,
    FORMAT,
    FORMAT_VERSION,
    GOLDEN_DIR,
    SUMS,
    tolerance_for,
    write_sums,
)
from ..runtime.policy import (
    Policy,
    make_policy,
    policy_stats,
    review_added,
    tune_for_escape,
    tune_ok_threshold,
)
from ..target_manifest import read_target_manifest
from ..targets import Target, command, get_target

log = logging.getLogger("edge_tl")

DEFAULT_MAX_FALSE_REJECT = 0.01


def model_files(target: Target) -> list[str]:
    """The files of the target's model: model.onnx, or model.xml + model.bin."""
    main = target.model_file
    return [main, str(Path(main).with_suffix(".bin"))] if main.endswith(".xml") else [main]


def golden_backend(target: Target) -> tuple[str, str]:
    """Where the golden expectations are computed: the target's own backend, or for one that builds its
    engine on the device (TensorRT) its stand-in on the same graph (ONNX Runtime)."""
    known = facts(target.backend)
    if known.engine_on_device and known.stand_in is not None:
        return known.stand_in
    return target.backend, target.device


GOLDEN_ANOMALY_MARGIN = 0.25


def pick_golden(candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray, n: int, n_classes: int,
                min_margin: float, classes: list[str] | None = None) -> list[int]:
    """Indices of golden images: at least one per class, then round-robin up to ``n``.

    Preferred: images that both the candidate and the reference classify correctly with a top-1 margin
    of at least ``min_margin`` logits, most confident first, so a golden mismatch on a device means a
    real difference (preprocessing, backend) and not a coin flip at a class boundary.
    """
    pred, ref_pred = candidate.argmax(1), reference.argmax(1)
    top2 = np.sort(candidate, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    per_class: list[list[int]] = []
    for c in range(n_classes):
        name = repr(classes[c]) if classes is not None else str(c)
        mine = np.flatnonzero(labels == c)
        good = [i for i in mine if pred[i] == c and ref_pred[i] == c]
        pool = good or [i for i in mine if pred[i] == ref_pred[i]]
        pool.sort(key=lambda i: (-margin[i], i))
        strong = [i for i in pool if margin[i] >= min_margin]
        per_class.append(strong or pool[:1])
        if not len(mine):
            log.warning("no golden image for class %s: it has no validation image (too few images to hold one "
                        "out at fine-tune time), so the device cannot check it", name)
        elif not pool:
            log.warning("no usable golden image for class %s (each of its %d validation image(s) gets another "
                        "answer from the candidate than from the reference)", name, len(mine))
        elif not strong:
            log.warning("class %s has no golden candidate with a top-1 margin of %.2g logits; using the "
                        "best one (margin %.3g)", name, min_margin, margin[pool[0]])
    chosen: list[int] = []
    n = max(n, sum(1 for p in per_class if p))
    rank = 0
    while len(chosen) < n and any(rank < len(p) for p in per_class):
        for p in per_class:
            if rank < len(p) and len(chosen) < n:
                chosen.append(int(p[rank]))
        rank += 1
    return chosen


def _check_out(out: Path) -> None:
    if out.exists() and not (out / BUNDLE_JSON).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an edge-tl bundle; refusing to replace it "
                          "(choose another --out)")


def _run_chunks(runner: Any, x: np.ndarray, batch: int, output: int = 0) -> np.ndarray:
    """Output ``output`` of the model (0: logits) over ``x`` in batches."""
    def one(chunk: np.ndarray) -> np.ndarray:
        return runner.run(chunk) if output == 0 else runner.run_outputs(chunk)[output]

    return np.concatenate([np.asarray(one(x[i:i + batch]), np.float32) for i in range(0, len(x), batch)])


def bench_verdict(run: RunDir, t: Target) -> tuple[dict[str, Any], str | None]:
    """What the run's own bench says of the exported ``t``: ``{report, passed, failed_gates, ...}`` for
    the bundle manifest, and why it must not ship (None when its bench passed).

    Read from ``RUN/reports/<target>.json`` (a ``--data`` bench is a check on other images, not this
    verdict). A report of another export (``candidate.target_manifest_sha256`` is not the manifest's
    sha256 now: re-exported since, or written before reports recorded it) counts as no bench at all.
    """
    path = run.reports / f"{t.name}.json"
    bench_cmd = command("bench", run.root, t)
    facts: dict[str, Any] = {"report": str(path), "passed": None}
    if not path.is_file():
        return facts | {"status": "not benched"}, (f"{t.name} has not been benched ({path} is missing); run "
                                                   f"`{bench_cmd}` first")
    try:
        report = load_report(path)
    except ArtifactError as exc:  # written by another edge-tl, or edited: as good as no bench
        return facts | {"status": "not benched"}, f"{exc}; run `{bench_cmd}` again"
    cand = report.candidate
    facts |= {"measured_at": report.measured_at, "session": report.session.id if report.session else None}
    if report.skipped or cand is None:
        return facts | {"status": "not benched"}, (f"the bench of {t.name} was skipped "
                                                   f"({report.skipped}); run `{bench_cmd}` where it runs")
    if cand.target_manifest_sha256 != sha256_file(run.target(t.name) / MANIFEST):
        return facts | {"status": "stale"}, (f"{path} measured another export of {t.name} (exported again "
                                             f"since, or an older edge-tl); run `{bench_cmd}` again first")
    failed = [g for g in report.gates if g.passed is False]
    facts |= {"passed": not failed, "status": "failed" if failed else "passed",
              "failed_gates": [g.name for g in failed],
              "gates_not_measured": [g.name for g in report.gates if g.passed is None]}
    if not failed:
        return facts, None

    def show(g: Gate) -> str:
        sign = ">" if g.name.startswith("max_") else "<"
        value = "not measured" if g.value is None else f"{g.value:.4g}"
        return f"{g.name} {value} {sign} {g.limit:g}"

    return facts, f"{t.name} FAILED its bench ({'; '.join(show(g) for g in failed)}; {path})"


def choose_target(run_dir: str | Path, preferred: Sequence[str]) -> tuple[str, list[str]]:
    """The first of ``preferred`` (target names or profile files, in order of preference) that may ship from
    ``run_dir``, and why each one before it was passed over (one line each).

    A target is passed over when its bench did not pass (:func:`bench_verdict`), or when it is INT8 and a
    later target that passed, timed in the same bench session, is at least as fast at batch 1 (p50): INT8
    ships only where it is faster on the host that measured it. When none may ship, the first is returned
    with no notes, and :func:`bundle` refuses it with its own reason.
    """
    run = RunDir(Path(run_dir))
    targets = [get_target(name) for name in preferred]
    judged = []
    for t in targets:
        _, refusal = bench_verdict(run, t)
        report = load_report(run.reports / f"{t.name}.json") if refusal is None else None
        latency = report.candidate.latency_ms if report is not None and report.candidate is not None else None
        judged.append((t, refusal, report.session.id if report is not None and report.session else None,
                       latency.p50 if latency is not None else None))
    notes: list[str] = []
    for i, (t, refusal, session, p50) in enumerate(judged):
        if refusal is not None:
            notes.append(refusal)
            continue
        if t.quantized and p50 is not None:
            faster = next(((u, q) for u, r, s, q in judged[i + 1:]
                           if r is None and s == session and q is not None and q <= p50), None)
            if faster is not None:
                notes.append(f"{t.name} is not faster than {faster[0].name} on this host (batch-1 p50 {p50:.3g} ms "
                             f"vs {faster[1]:.3g} ms, same bench session)")
                continue
        return preferred[i], notes
    return preferred[0], []  # bundle's own refusal of the first says why


def bundle(run_dir: str | Path, target: str, out: str | Path, n_golden: int = 8, *,
           ok_classes: list[str] | None = None, defect_classes: list[str] | None = None,
           max_false_reject: float | None = None, ok_threshold: float | None = None,
           defect_threshold: float = 0.5, max_escape: float | None = None, ood_limit: float | None = None,
           use_ood: bool = True, allow_failed: bool = False, passed_over: Sequence[str] = (),
           quiet: bool = True) -> dict[str, Any]:
    """Write the deployment bundle of ``run_dir``'s exported ``target`` to ``out``; returns bundle.json.

    A target whose bench failed, or that has no bench report of this export (:func:`bench_verdict`),
    is refused (ArtifactError) unless ``allow_failed``; then it ships with a warning, and bundle.json's
    ``bench`` says so (``allowed_failed``: true).

    Policy: ``ok_classes``/``defect_classes`` split the classes (default: see ``make_policy``);
    ``ok_threshold`` fixes the ok threshold, otherwise, when there is an ok class, it is tuned on the
    validation set to ``max_false_reject`` (default 1%), or, with ``max_escape``, to the lowest threshold
    that passes at most that share of the validation defects as ok (``tune_for_escape``);
    ``defect_threshold`` is the confidence a defect
    answer needs before it is acted on (below it: ``review``). ``ood_limit``: the model's ood_score above
    which an image is ``review`` with the reason ``out_of_distribution`` (``edge_tl/ood.py``); by default the
    limit the export calibrated for this target (``stages.export.validate``). ``use_ood=False`` switches it
    off; an export without the output has nothing to use. ``passed_over``: why preferred targets were not
    shipped (:func:`choose_target`), recorded in bundle.json's ``bench``.
    """
    t = get_target(target)
    run = RunDir(Path(run_dir))
    out = Path(out)
    folder = run.target(t.name)
    if not (folder / MANIFEST).is_file():
        raise ArtifactError(f"{t.name} is not exported in {run.root}; run "
                            f"`{command('export', run.root, t)}` first")
    run.check_fresh(folder, t.cli_ref)  # a target of a replaced model is refused, naming the re-export
    if sum(v is not None for v in (ok_threshold, max_false_reject, max_escape)) > 1:
        raise ConfigError("give one of --ok-threshold, --max-false-reject and --max-escape")
    if n_golden < 1:
        raise ConfigError(f"--golden must be at least 1, got {n_golden}")
    if ood_limit is not None and not ood_limit > 0:  # before any work (NaN included)
        raise ConfigError(f"--ood-limit must be above 0, got {ood_limit}")
    _check_out(out)
    check_writable(out)
    own = step_for(run_task(run), "bundle")
    if own is not None:
        # A detector: boxes, a box policy, golden boxes (``detect.bundle``); the shared checks are done.
        return own(run, t, out, n_golden, ok_classes=ok_classes, defect_classes=defect_classes,
                   max_false_reject=max_false_reject, ok_threshold=ok_threshold, defect_threshold=defect_threshold,
                   max_escape=max_escape, ood_limit=ood_limit, use_ood=use_ood, allow_failed=allow_failed,
                   passed_over=passed_over, quiet=quiet)
    tm = read_target_manifest(folder)
    classes: list[str] = list(tm["classes"])
    base_policy = make_policy(classes, ok_classes, defect_classes,
                              0.5 if ok_threshold is None else ok_threshold, defect_threshold)
    if (max_false_reject is not None or max_escape is not None) and not base_policy.ok_classes:
        raise ConfigError("--max-false-reject and --max-escape need an ok class (a false reject is a good part "
                          "not passed); name it with --ok-class")
    # after the options are checked (a typo is reported first), before any work
    verdict = refuse_unbenched(run, t, allow_failed, passed_over)
    pre = Preprocess.from_dict(tm["preprocessing"])
    files = model_files(t)
    evalset, ref_model = with_reference(run, load_eval_set(ensure_eval_set(run, quiet)), tm, folder)
    if list(evalset.classes) != classes:
        raise ArtifactError(f"{run.eval_npz} has classes {evalset.classes}, the export has {classes}")
    backend, device = golden_backend(t)
    reason = availability(backend, device)
    if reason is not None:
        raise ConfigError(f"cannot compute the golden outputs of {t.name} here ({backend} on {device}): "
                          f"{reason}")
    tol = tolerance_for(t.precision)
    split_root = Path(read_json(run.finetune / "split.json")["root"])
    started = time.perf_counter()

    runner = open_runner(RunnerSpec(folder / t.model_file, backend, device, t.precision, t.threads,
                                    t.batch_size))
    try:
        cand = _run_chunks(runner, evalset.inputs, t.batch_size)
        # An anomaly graph's logits are [0, s - 1]: its margin is |s - 1| in units of the threshold, where a
        # quarter of the threshold is far from a coin flip (a classifier's margin is in logits).
        margin = GOLDEN_ANOMALY_MARGIN if anomaly_section(run)["task"] == "anomaly" else 1.0
        picks = pick_golden(cand, evalset.logits, evalset.labels, n_golden, len(classes),
                            min_margin=max(margin, 4 * tol["atol"]), classes=classes)
        policy, tuning = base_policy, None
        if max_escape is not None:
            policy, tuning = tune_for_escape(base_policy, cand, evalset.labels, max_escape)
            if not tuning["target_met"]:
                log.warning("escape target %.3g not met: %s", max_escape, tuning["reason"])
        elif ok_threshold is None and base_policy.ok_classes:
            target_fr = DEFAULT_MAX_FALSE_REJECT if max_false_reject is None else max_false_reject
            policy, tuning = tune_ok_threshold(base_policy, cand, evalset.labels, target_fr)
            if not tuning["target_met"]:
                log.warning("false-reject target %.3g not met: %s", target_fr, tuning["reason"])
        ood = tm.get("ood") if use_ood else None
        val_ood = None
        if ood is not None:
            val_ood = _run_chunks(runner, evalset.inputs, t.batch_size, output=1)
            limit_source = "given (--ood-limit)"
            if ood_limit is None:
                ood_limit, limit_source = ood["limit"], ood["limit_source"]
            policy = replace(policy, ood_limit=float(ood_limit))
        policy, guard = noise_guard(policy, tm, t, cand, evalset.logits)
        stats = policy_stats(policy, cand, evalset.labels, val_ood)

        with staged_folder(out) as tmp:
            golden_files = copy_golden(tmp, folder, files, split_root,
                                       [(evalset.paths[i], classes[evalset.labels[i]]) for i in picks])
            x = pre.batch([load_image(tmp / rel) for rel in golden_files])
            drift = float(np.abs(x - evalset.inputs[picks]).max()) if len(picks) else 0.0
            if drift > 1e-4:
                raise ArtifactError(f"golden images no longer preprocess to their eval.npz inputs (max "
                                    f"diff {drift:.3g}): the images changed or Pillow differs from the one "
                                    f"that built {run.eval_npz}; rebuild it")
            expected = _run_chunks(runner, x, t.batch_size)
            golden_ood = _run_chunks(runner, x, t.batch_size, output=1) if ood is not None else None
            reference = evalset.logits[picks]
            ref_diff = float(np.abs(expected - reference).max()) if len(picks) else 0.0
            # An unpruned fp32 model must reproduce its torch reference (full or adapted) within the fp32 tolerance.
            if t.precision == "fp32" and tm.get("source_stage") in ("finetune", "adapt"):
                bound = tol["atol"] + tol["rtol"] * np.abs(reference)
                if (np.abs(expected - reference) > bound).any():
                    raise ArtifactError(f"{t.name} differs from the torch reference on golden images by "
                                        f"{ref_diff:.3g} (> fp32 tolerance); re-export the target")
            images = [{"file": rel, "class": classes[int(evalset.labels[i])],
                       "top1": classes[int(e.argmax())], "logits": e.tolist(),
                       "reference_logits": r.tolist(), "source": evalset.paths[i],
                       **({"ood_score": float(golden_ood[j])} if golden_ood is not None else {})}
                      for j, (rel, i, e, r) in enumerate(zip(golden_files, picks, expected, reference, strict=True))]
            all_files = [*files, *golden_files]
            manifest = {
                **manifest_head(run, t),
                "classes": classes,
                **anomaly_section(run),
                "ood": None if ood is None else ood | {
                    "limit": float(ood_limit), "limit_source": limit_source,
                    "validation_flagged": float(np.mean(val_ood > ood_limit)) if len(val_ood) else None,
                    "rule": "ood_score > limit: decision review, reason out_of_distribution"},
                "preprocessing": pre.to_dict(),
                "input": input_section(pre),
                "model": model_section(t, files),
                "policy": policy.to_dict() | {"tuning": tuning, "validation": stats, "noise_guard": guard},
                "target": t.model_dump(),
                "golden": {"expected_from": {"backend": backend, "device": device, "precision": t.precision},
                           "tolerance": tol, "top1": "must equal",
                           "reference": f"{ref_model} (eval.npz images)",
                           "reference_max_abs_logit_diff": ref_diff, "images": images},
                **provenance(run, folder, tm, verdict),
            }
            finish(tmp, manifest, all_files, t)
    finally:
        runner.close()
    log.debug("bundle written in %.1f s", time.perf_counter() - started)
    return manifest


def refuse_unbenched(run: RunDir, t: Target, allow_failed: bool, passed_over: Sequence[str] = ()) -> dict[str, Any]:
    """The bundle manifest's ``bench`` (:func:`bench_verdict`, with ``passed_over``: why preferred targets were
    not shipped); ArtifactError when the target must not ship, unless ``allow_failed`` (then a warning, and the
    verdict says so)."""
    verdict, refusal = bench_verdict(run, t)
    if refusal is not None:
        if not allow_failed:
            raise ArtifactError(f"{refusal}; refusing to bundle it (--allow-failed ships it anyway, recorded in "
                                "bundle.json)")
        log.warning("shipping anyway (--allow-failed): %s", refusal)
        verdict |= {"allowed_failed": True, "why": refusal}
    if passed_over:
        verdict["passed_over"] = list(passed_over)
    return verdict


def copy_golden(tmp: Path, folder: Path, files: list[str], split_root: Path,
                picks: list[tuple[str, str]]) -> list[str]:
    """Copy the model ``files`` from ``folder`` and the golden images (``picks``: (path under ``split_root``,
    tag)) into the staged bundle ``tmp``; returns the golden files' names in the bundle
    (``golden/NN-<tag>-<name>``). ArtifactError when a validation image is gone."""
    for name in files:
        shutil.copyfile(folder / name, tmp / name)
    (tmp / GOLDEN_DIR).mkdir()
    golden_files = []
    for k, (path, tag) in enumerate(picks):
        src = split_root / path
        if not src.is_file():
            raise ArtifactError(f"golden image {src} (from the validation split) is missing")
        rel = f"{GOLDEN_DIR}/{k:02d}-{tag}-{src.name}"
        shutil.copyfile(src, tmp / rel)  # the original bytes: the device decodes them itself
        golden_files.append(rel)
    return golden_files


def manifest_head(run: RunDir, t: Target) -> dict[str, Any]:
    """The first fields of every bundle.json: format, version, name, creation time."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "name": f"{run.root.name}-{t.name}",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def input_section(pre: Preprocess) -> dict[str, Any]:
    """bundle.json's ``input``: the model input's name, layout, type and shape, and what the runtime takes."""
    return {"name": "input", "layout": "NCHW", "dtype": "float32", "shape": [None, 3, pre.crop, pre.crop],
            "accepts": "image file, PIL image, or uint8 HxWxC array with its colour order (RGB/BGR)"}


def model_section(t: Target, files: list[str]) -> dict[str, Any]:
    """bundle.json's ``model``: the file(s) and how the runtime opens them."""
    return {"file": t.model_file, "files": files, "backend": t.backend, "device": t.device,
            "precision": t.precision, "batch_size": t.batch_size, "threads": t.threads,
            **({"engine": f"built on the device from {t.model_file} on first open, then cached"}
               if facts(t.backend).engine_on_device else {})}


def provenance(run: RunDir, folder: Path, tm: dict[str, Any], verdict: dict[str, Any]) -> dict[str, Any]:
    """bundle.json's ``source`` (the run, the export and its validation), ``versions`` and ``bench``."""
    return {"source": {"run": str(run.root.resolve()), "arch": tm.get("arch"), "source_stage": tm.get("source_stage"),
                       "target_manifest_sha256": sha256_file(folder / MANIFEST),
                       "parent": tm.get("parent"), "export_validation": tm.get("validation")},
            "versions": versions(), "bench": verdict}


def finish(tmp: Path, manifest: dict[str, Any], all_files: list[str], t: Target) -> None:
    """Record every file's sha256 in ``manifest`` (``files``), write bundle.json and SHA256SUMS into the
    staged bundle ``tmp``, and open it with the runtime where this host can (:func:`_self_check`)."""
    manifest["files"] = {name: sha256_file(tmp / name) for name in all_files}
    write_json(tmp / BUNDLE_JSON, manifest)
    write_sums(tmp, [*all_files, BUNDLE_JSON])
    _self_check(tmp, t)


def noise_guard(policy: Policy, tm: dict[str, Any], t: Target, cand: np.ndarray,
                reference: np.ndarray) -> tuple[Policy, dict[str, Any]]:
    """The policy with its review band widened by the target's answer noise, and what that costs.

    The noise is the export's (``answer_noise`` in the target manifest: the shipped INT8 graph against the
    full model on the selection images, ``metrics.answer_noise``), the number bench split its answers at;
    a float target has none (0). Its cost is measured on the bundle's own evaluation images
    (``runtime.policy.review_added``: review over the fp32 policy with the same thresholds on the full model's
    logits of the same images). The thresholds are tuned first, on the unguarded rule: the guard only
    moves answers to review, so an escape target stays met, and the false-reject figures it reports
    (``policy.validation``) include the guard's cost.
    """
    record = tm.get("answer_noise") or {}
    value = record.get("value") if t.quantized else None
    if value:
        policy = replace(policy, noise_margin=float(value))
    guard = review_added(policy, cand, reference) | {
        "noise_source": record.get("measured_on") if value else
        ("not measured (float target): no widening" if not t.quantized else
         "not measured by this export (exported before answer noise was recorded, or without gates): no widening"),
        "images": f"the {len(cand)} evaluation images (eval.npz) the policy is tuned on"}
    if guard.get("n") and policy.noise_margin > 0:
        guard["summary"] = (f"noise guard {guard['noise_margin']:.3g}: review {guard['review_rate']:.1%} vs "
                            f"{guard['fp32_review_rate']:.1%} for fp32 on the same {guard['n']} images "
                            f"({guard['added_review_rate']:+.1%})")
    return policy, guard


def anomaly_section(run: RunDir) -> dict[str, Any]:
    """``task`` and, for an anomaly run, ``anomaly``: method, bank (entries, MB, sha256), PaDiM modes, threshold and
    normalisation. The bank and the threshold are constants inside the model file, whose sha256 the
    runtime checks on open: a changed byte in either refuses to open."""
    ft = read_manifest(run.finetune, verify=False)
    if ft.get("task") != "anomaly":
        return {"task": "classification"}
    return {"task": "anomaly", "anomaly": {"method": ft["method"]["name"], "bank": ft["bank"],
                                           "modes": ft.get("anomaly", {}).get("clusters", 1),
                                           "threshold": ft["threshold"], "normalisation": ft["normalisation"],
                                           "in_model_file": "bank, threshold and normalisation are constants "
                                                            "of the graph"}}


def _self_check(folder: Path, t: Target) -> None:
    """Open the staged bundle with the runtime (hashes, format, golden images) where this host can."""
    if availability(t.backend, t.device) is not None:
        log.info("%s cannot run here: the bundle's golden images are checked on the device when it opens",
                 t.name)
        return
    from ..runtime import Runtime

    with Runtime(folder):
        pass
    # The runtime must also find every file the SHA256SUMS lists (nothing stray was left out).
    listed = {line.split("  ", 1)[1] for line in (folder / SUMS).read_text().splitlines()}
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {SUMS}
    if listed != present:
        raise ArtifactError(f"bundle files and {SUMS} differ: {sorted(listed ^ present)}")
