"""The bench report (``RUN/reports/<target>.json``) as a typed model.

``bench_target`` builds each report as a plain dict and ``writer.write_reports`` checks it against
:class:`Report` before anything is written (:func:`check_report`), so a misspelt or mistyped field fails
at once, in the tests, instead of leaving a report that a reader later misreads. The dict itself is what
is written: the JSON is the same with or without this module.

Readers that want typed access load a report with :func:`load_report`. Reports of earlier edge-tl
versions still load: every field added since the first bench (``task``, ``session``, ``host_load``, …)
has a default, and ``eval_set`` may still be the bare path the first versions wrote.

How open each part is, and why:
- the top level forbids unknown fields: it is the contract that readers, the index and ``bundle`` rely
  on, so a new field is added here on purpose;
- ``candidate`` and ``reference`` type every field they have today and accept more: measurements are
  added to them often (agreement split by margin, new anomaly figures) and an older reader must still
  load a newer report;
- parts whose content belongs to another module (profile, host, versions, host load, layers, transfer,
  adaptation, OOD, anomaly plot, detection pictures) stay ``dict[str, Any]``.

Units: latencies in ms; ``top1_drop``/``auroc_drop`` in percentage points and AUROC points; ``top1``,
``agreement``, rates and recalls are fractions in [0, 1]; sizes and memory in MB (10^6 bytes); speedups
are ratios (×); throughput in images per second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ArtifactError
from ..target_manifest import fields_text


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    # Typed fields are checked; fields added later (or by other work) pass through.
    model_config = ConfigDict(extra="allow")


class Latency(_Closed):
    """Per-call wall time of one runner (``bench.latency.percentiles``), all in ms."""

    p50: float = Field(description="median, ms")
    p90: float | None = Field(None, description="90th percentile, ms")
    p95: float = Field(description="95th percentile, ms (the max_p95_ms gate's value)")
    p99: float | None = Field(None, description="99th percentile, ms")
    mean: float | None = Field(None, description="mean, ms")
    min: float | None = Field(None, description="fastest call, ms")
    n: int | None = Field(None, description="timed calls")
    samples: list[float] | None = Field(None, description="every timed call in order, ms")
    block_p50_ms: list[float] | None = Field(
        None, description="median of each timing block, ms (timings taken in alternating blocks only)")


class Spread(_Open):
    """Spread of the per-block ratio of two runners' block medians (``hostload.ratio_spread``), in ×."""

    n_blocks: int
    min: float
    p10: float
    p50: float
    p90: float
    max: float
    rel_iqr: float | None = Field(None, description="interquartile range / median (a fraction)")
    p90_over_p10: float | None = Field(None, description="p90 / p10 of the ratio; above the limit: unreliable")


class Gate(_Closed):
    """One gate judged by ``gates.verdicts``."""

    name: str = Field(description="max_top1_drop, min_agreement, max_p95_ms, max_auroc_drop, …")
    limit: float = Field(description="the profile's limit, in the value's unit")
    value: float | None = Field(description="the measured value (percentage points, fraction or ms); None: "
                                            "not computed, or not measured")
    passed: bool | None = Field(description="None: not measured (neither passed nor failed)")
    status: str | None = Field(None, description='"not measured" for a gate skipped by --no-latency')
    on: str | None = Field(None, description="which answers an agreement gate judged, in words (the confident ones)")


class Session(_Open):
    """The bench invocation that wrote the report (reports of one session were measured together)."""

    id: str
    started: str | None = Field(None, description="UTC, ISO 8601")
    host: str | None = None
    targets: list[str] | None = None
    eval_set_sha256: str | None = None


class _Accuracy(_Open):
    """Fields the reference and the candidate share."""

    format: str = Field(description="backend: torch for the reference, the target's backend for the candidate")
    precision: str = Field(description="what ran: fp32, fp16, int8, 'mostly float', …")
    top1: float | None = Field(None, description="top-1 accuracy, fraction")
    balanced_accuracy: float | None = Field(None, description="mean per-class recall, fraction")
    per_class_recall: dict[str, float | None] | None = Field(
        None, description="recall per class, fraction (None: no image of the class)")
    latency_ms: Latency | None = Field(None, description="batch-1 latency; None: not timed")
    throughput_ips: float | None = Field(None, description="images per second at the profile's batch size")
    size_mb: float | None = Field(None, description="model file(s) on disk, MB")
    # anomaly runs (``metrics.decision_metrics``)
    n_good: int | None = None
    n_defect: int | None = None
    auroc: float | None = Field(None, description="image AUROC, in [0, 1]")
    f1: float | None = None
    false_reject_rate: float | None = Field(None, description="good images called defect, fraction")
    escape_rate: float | None = Field(None, description="defect images called good, fraction")
    # detection runs (``detect.evaluate.detection_metrics``, on the held-out validation images)
    map50: float | None = Field(None, description="detect: mAP at IoU 0.5, fraction")
    map50_95: float | None = Field(None, description="detect: mAP over IoU 0.50:0.05:0.95, fraction")
    per_class_ap50: dict[str, float | None] | None = Field(
        None, description="detect: AP at IoU 0.5 per class, fraction (None: no ground-truth box of the class)")


class Reference(_Accuracy):
    """The full fp32 torch model (or the adapted one) every candidate is compared with."""

    model: str | None = Field(None, description="which torch model: full fine-tuned, or adapted")
    latency_shared: dict[str, Any] | None = Field(
        None, description="timed once in this bench session alongside another target: timed_with, measured_at")


class Candidate(_Accuracy):
    """The exported target as measured on this host."""

    precision_state: dict[str, Any] | None = Field(
        None, description="an INT8 target's graph as counted (bench.precision.precision_state)")
    top1_drop: float | None = Field(None, description="reference top-1 minus candidate top-1, percentage points")
    balanced_accuracy_drop: float | None = Field(None, description="reference balanced accuracy minus the "
                                                 "candidate's, percentage points")
    agreement: float | None = Field(None, description="share of images with the reference's argmax, fraction")
    confusion: list[list[int]] | None = Field(None, description="rows: true class, columns: predicted")
    batch1_ips: float | None = Field(None, description="1000 / batch-1 p50, images per second")
    throughput_mode: dict[str, Any] | None = Field(
        None, description="several requests in flight (bench.latency.measure_streams)")
    peak_rss_mb: float | None = Field(None, description="peak resident memory of a process that loads it, MB")
    model_rss_mb: float | None = Field(None, description="resident memory the model alone adds, MB")
    memory: dict[str, Any] | None = None
    source_stage: str | None = Field(None, description="finetune, prune or adapt")
    source: dict[str, Any] | None = Field(None, description="the stage it came from; a pruned one's own drop")
    target_manifest_sha256: str | None = Field(
        None, description="sha256 of the target manifest measured (bundle refuses a report of another export)")
    float_layers: list[dict[str, Any] | str] | None = None
    engine: dict[str, Any] | None = Field(None, description="TensorRT engine sidecar")
    float_parts_precision: str | None = None
    float_same_backend_p50_ms: float | None = Field(None, description="the float graph on the same backend, ms")
    int8_same_backend_p50_ms: float | None = Field(None, description="timed alongside it, ms")
    int8_speedup_over_float: float | None = Field(None, description="float p50 / INT8 p50, ×")
    int8_speedup_spread: Spread | None = None
    # anomaly runs (``metrics.compare``)
    decision_agreement: float | None = Field(None, description="same ok/defect decision as the reference, fraction")
    max_score_drift: float | None = Field(None, description="max |Δ normalised score|, in units of the threshold")
    auroc_drop: float | None = Field(None, description="reference AUROC minus candidate AUROC (in [0, 1] units)")
    # detection runs
    map50_drop: float | None = Field(None, description="detect: reference mAP@0.5 minus candidate's, percentage points")
    box_agreement: float | None = Field(
        None, description="detect: share of the reference's boxes the candidate matches (same class, IoU >= 0.5)")
    box_agreement_confident: float | None = Field(
        None, description="detect: the same share over the reference's boxes scoring >= 0.3 (min_box_agreement gates "
        "it)")
    confident_boxes: int | None = Field(None, description="detect: how many reference boxes score >= 0.3")
    box_match: dict[str, Any] | None = Field(None, description="detect: detect.evaluate.box_agreement's counts")
    # both tasks: agreement split at the answer noise (``metrics.margin_agreement``, ``margin_fields``)
    agreement_confident: float | None = Field(
        None, description="agreement (anomaly: decision agreement) of the answers whose reference margin exceeds "
        "the answer noise: what the agreement gate judges, fraction")
    confident_n: int | None = Field(None, description="images in that confident part")
    confident_interval: list[float] | None = Field(None, description="Wilson 95 % interval of it, [low, high]")
    near_tie_n: int | None = Field(None, description="images whose reference margin is within the noise")
    near_tie_share: float | None = Field(None, description="their share of the images, fraction")
    near_tie_agreement: float | None = Field(None, description="their agreement, fraction (None: no image)")
    answer_noise: float | None = Field(
        None, description="95th percentile of |Δ margin| (logits; anomaly: |Δ score| in threshold units)")
    answer_noise_source: str | None = Field(None, description="where the noise was measured, in words")
    top1_drop_from_noise: dict[str, Any] | None = Field(
        None, description="metrics.drop_from_noise: the drop this graph's margin changes give redealt at random "
        "(mean, 95 % interval, p_value of the measured drop; points)")
    agreement_curve: list[dict[str, float]] | None = Field(
        None, description="[{margin, n, agreement}]: agreement of the answers with reference margin ≥ margin")


class Report(_Closed):
    """One target's bench report: classification, anomaly, detection, or skipped (``skipped`` set, no candidate)."""

    task: Literal["classification", "anomaly", "detect"] | None = Field(None, description="None: written before tasks")
    target: str
    profile: dict[str, Any] = Field(default_factory=dict, description="the target profile (targets.Target)")
    eval_set: dict[str, Any] | str | None = Field(
        None, description="kind, name, folder, n, sha256 of the image list; a bare path in early reports")
    n: int | None = Field(None, description="images in the evaluation set")
    classes: list[str] = Field(default_factory=list)
    host: dict[str, Any] = Field(default_factory=dict, description="manifest.host_info")
    versions: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    session: Session | None = None
    measured_at: str | None = Field(None, description="UTC, ISO 8601, when the candidate was measured")
    transfer: dict[str, Any] | None = Field(None, description="the backbone's sources and baseline")
    adaptation: dict[str, Any] | None = Field(None, description="for a target exported from RUN/adapt")
    ood: dict[str, Any] | None = Field(None, description="share of images above the OOD limit, with scores")
    anomaly_plot: dict[str, Any] | None = Field(None, description="scores and heat maps for the anomaly page")
    detect_plot: dict[str, Any] | None = Field(
        None, description="detect: evaluation images (JPEG data URIs) with ground-truth, reference and candidate "
        "boxes in original pixels, and ground-truth boxes per class (detect.gallery.gallery)")
    reference: Reference
    candidate: Candidate | None = Field(None, description="None for a skipped target")
    speedup: float | None = Field(None, description="reference p50 / candidate p50, ×")
    speedup_spread: Spread | None = None
    host_load: dict[str, Any] | None = Field(None, description="bench.hostload.HostLoad.summary")
    timing: str | None = Field(None, description="how the latencies were taken, in words")
    timing_reliable: bool | None = Field(None, description="None: nothing timed")
    unreliable_reasons: list[str] | None = None
    latency_measured: bool | None = Field(None, description="False under --no-latency")
    gates: list[Gate] = Field(default_factory=list)
    passed: bool
    skipped: str | None = Field(None, description="why the target was not measured here")
    layers: dict[str, Any] | None = Field(None, description="per-layer timings (--layers), or {error}")


def check_report(report: dict[str, Any]) -> Report:
    """``report`` as a :class:`Report`; a field that does not fit raises pydantic's ValidationError (a
    report being written wrong is a bug in edge-tl, not in the user's input: it fails loudly)."""
    return Report.model_validate(report)


def parse_report(data: Any, where: str | Path) -> Report:
    """``data`` (a report read from ``where``) as a :class:`Report`, or an ArtifactError naming the
    file and the fields that do not fit."""
    if not isinstance(data, dict):
        raise ArtifactError(f"{where} is not a bench report (a JSON {type(data).__name__}, not an object)")
    try:
        return Report.model_validate(data)
    except ValidationError as exc:
        raise ArtifactError(f"{where} is not a bench report this edge-tl can read: {fields_text(exc)}") from None


def load_report(path: str | Path) -> Report:
    """Read ``RUN/reports/<target>.json`` (missing or broken file, or one that does not fit: ArtifactError)."""
    from ..manifest import read_json

    return parse_report(read_json(path), path)
