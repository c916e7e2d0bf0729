"""The target manifest (``RUN/targets/<target>/manifest.json``) as a typed model.

``export`` checks the manifest it wrote before its staged folder replaces the old one
(:func:`check_target_manifest`), so an export that records a field wrongly never lands. ``bench`` and
``bundle`` read it through :func:`read_target_manifest`, which also checks the files' sha256 (as
``manifest.read_manifest`` does) and names the field when a manifest does not fit.

Manifests of earlier exports still load: only ``stage`` is required on reading; the fields every export
writes today are required on writing only (:data:`WRITTEN`). Unknown fields are allowed: a backend's
export hook (``backends.base.after_export``) adds its own (TensorRT: ``tensorrt_graph``, ``engine``), and
adding a backend must not mean editing this file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ArtifactError
from .manifest import MANIFEST, read_manifest


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Parent(BaseModel):
    """The artifact a stage was made from (the source stage's ``model.pt``)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    sha256: str


class ExportValidation(_Open):
    """The exported graph run on this host (or the backend's stand-in) against the torch model it came from."""

    backend: str
    device: str
    n: int = Field(description="images")
    agreement: float = Field(description="share of images with the torch model's argmax, fraction")
    disagreements: int = Field(description="images whose argmax changed")
    max_abs_logit_diff: float = Field(description="max |Δlogit| over every image and class")


class DetectValidation(ExportValidation):
    """A detection graph run on this host against the torch detector, after NMS, on the run's held-out
    validation images (``detect.ship.validate_detect``). The shared fields read for boxes: ``agreement`` is
    the share of torch's boxes the target matches (same class, IoU >= ``match_iou``), ``disagreements`` the
    boxes of either side left unmatched, ``max_abs_logit_diff`` the max |Δ score| of the raw scores."""

    task: Literal["detect"]
    match_iou: float
    max_abs_box_diff: float = Field(description="max |Δ coordinate| of the raw boxes, input pixels")
    max_abs_score_diff: float = Field(description="max |Δ score| of the raw scores")
    map50_torch: float | None = Field(description="mAP@0.5 of torch, fraction (None: no ground-truth box)")
    map50_target: float | None = Field(description="mAP@0.5 of the target, fraction")
    map50_95_torch: float | None = None
    map50_95_target: float | None = None
    passed: bool


class TargetManifest(_Open):
    """``RUN/targets/<target>/manifest.json``: what ``export`` made, from what, and how it checked it."""

    stage: Literal["export"]
    created: str | None = Field(None, description="local time, %Y-%m-%dT%H:%M:%S%z")
    parent: Parent | None = None
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256")
    versions: dict[str, str] = Field(default_factory=dict)
    target: dict[str, Any] | None = Field(None, description="the target profile (targets.Target)")
    model_file: str | None = Field(None, description="the file the backend opens (model.onnx, model.xml)")
    source_stage: str | None = Field(None, description="finetune, prune or adapt")
    arch: str | None = None
    classes: list[str] | None = None
    preprocessing: dict[str, Any] | None = None
    structure: dict[str, Any] | None = Field(None, description="a pruned model's layer widths")
    task: Literal["classification", "anomaly", "detect"] | None = Field(
        None, description="detect: a detector's graph (boxes, scores; NMS outside); absent: the finetune's task")
    validation: ExportValidation | None = Field(
        None, description="None: the target cannot run on the host; a detect export's is a DetectValidation")
    seconds: float | None = Field(None, description="export wall time, s")
    ood: dict[str, Any] | None = Field(None, description="the OOD score's fit and this target's limit")
    # INT8 targets (``stages.quantize.quantize_for_target``)
    calibration: dict[str, Any] | None = None
    quantizer: dict[str, Any] | None = None
    float_layers: list[dict[str, Any] | str] | None = Field(None, description="layers the fallback kept float")
    float_by_design: dict[str, Any] | None = Field(
        None, description="detect: the graph's nodes no quantiser touches (the box and score decode) and why")
    fallback: dict[str, Any] | None = None
    speed_check: dict[str, Any] | None = None
    gate_reference: str | None = None
    int8_speedup_over_float: float | None = Field(None, description="float p50 / INT8 p50 at export, ×")
    answer_noise: dict[str, Any] | None = Field(
        None, description="the shipped INT8 graph's answer noise on the selection images (metrics.answer_noise)")


    @model_validator(mode="after")
    def _detect_validation(self) -> TargetManifest:
        # A detector's check has fields of its own (boxes, mAP), typed by DetectValidation; keeping the field's
        # declared type the shared one leaves a classifier's errors named ``validation.<field>``.
        if self.task == "detect" and self.validation is not None and not isinstance(self.validation,
                                                                                    DetectValidation):
            self.validation = DetectValidation.model_validate(self.validation.model_dump())
        return self


# Written by every export today: a manifest missing one was written wrong (not merely old).
WRITTEN = ("created", "parent", "files", "versions", "target", "model_file", "source_stage", "arch", "classes",
           "preprocessing", "structure", "validation", "seconds")


def check_target_manifest(manifest: dict[str, Any]) -> TargetManifest:
    """The manifest ``export`` just wrote, checked: a field of the wrong type raises pydantic's
    ValidationError, a missing one ValueError (an edge-tl bug: it fails loudly, in the tests)."""
    model = TargetManifest.model_validate(manifest)
    missing = [k for k in WRITTEN if k not in manifest]
    if missing:
        raise ValueError(f"the target manifest lacks {', '.join(missing)}")
    return model


def fields_text(exc: ValidationError, limit: int = 5) -> str:
    """The first ``limit`` problems of ``exc`` as ``field.path: message`` (an unknown field: "unknown field")."""
    lines = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
             f"{'unknown field' if e['type'] == 'extra_forbidden' else e['msg']}" for e in exc.errors()[:limit]]
    more = exc.error_count() - limit
    return "; ".join(lines) + (f" (and {more} more)" if more > 0 else "")


def _parse(manifest: dict[str, Any], folder: str | os.PathLike[str]) -> TargetManifest:
    try:
        return TargetManifest.model_validate(manifest)
    except ValidationError as exc:
        raise ArtifactError(f"{Path(folder) / MANIFEST} is not a target manifest this edge-tl can read: "
                            f"{fields_text(exc)}") from None


def load_target_manifest(folder: str | os.PathLike[str], verify: bool = True) -> TargetManifest:
    """The typed manifest of an exported target (``verify``: check every listed file's sha256);
    ArtifactError when it is missing, changed, or does not fit."""
    return _parse(read_manifest(folder, verify), folder)


def read_target_manifest(folder: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """``manifest.read_manifest`` of a target folder, checked against :class:`TargetManifest`; the dict
    as read (callers that index it keep working)."""
    manifest = read_manifest(folder, verify)
    _parse(manifest, folder)
    return manifest
