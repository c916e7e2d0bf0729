"""Target profiles: one TOML file per deployment target, validated strictly.

Profiles live in the top-level ``targets/`` folder (shipped inside the wheel as ``edge_tl/_targets``);
``--target`` also takes a path to a user's own file. Unknown keys and wrong types are errors that
name the file and the key.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .backends.openvino_ import OPENVINO_PRESET  # the manifest and `edge-tl targets NAME` say it
from .backends.table import BACKENDS, facts
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# A backend is any name of the backend table (``backends/table.py``); ``Target`` checks it.
Backend = str
Precision = Literal["fp32", "fp16", "bf16", "int8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Gates(_Strict):
    """Pass/fail limits checked by ``edge-tl bench``; a missing gate is not checked."""

    max_top1_drop: float | None = Field(None, ge=0, description="points of top-1 below the reference")
    min_agreement: float | None = Field(None, ge=0, le=1, description="fraction of argmax equal to reference")
    # Top-1 can hold while a small defect class loses most of its recall; balanced accuracy (mean per-class
    # recall) shows it. Per-class recall on few images moves in large steps, so its limit is wider than top-1's.
    max_balanced_accuracy_drop: float | None = Field(None, ge=0, description="points of balanced accuracy "
                                                     "(mean per-class recall) below the reference")
    max_p95_ms: float | None = Field(None, gt=0, description="batch-1 latency budget, 95th percentile")
    # Anomaly runs (finetune --task anomaly) are gated on these instead of the two top-1 gates above.
    max_auroc_drop: float | None = Field(None, ge=0, le=1, description="anomaly: image AUROC below the reference")
    min_decision_agreement: float | None = Field(None, ge=0, le=1,
                                                 description="anomaly: fraction of ok/defect decisions equal to "
                                                 "the reference's")
    # Detection runs (finetune --task detect): the mAP@0.5 drop against the torch detector, and the share of its
    # confident boxes the candidate finds (``detect.evaluate.box_agreement``).
    max_map_drop: float | None = Field(None, ge=0, description="detect: points of mAP@0.5 below the reference")
    min_box_agreement: float | None = Field(None, ge=0, le=1,
                                            description="detect: share of the reference's boxes scoring at least "
                                            "0.3 that the candidate finds (same class, IoU >= 0.5)")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        # Profiles and target manifests written before the design's name was adopted say max_map50_drop.
        if isinstance(data, dict) and "max_map50_drop" in data:
            data = dict(data)
            old = data.pop("max_map50_drop")
            data.setdefault("max_map_drop", old)
        return data


class Quantizer(_Strict):
    """How the INT8 graph for this target is made (ignored by float targets)."""

    method: Literal["none", "onnx_qdq", "nncf"] = "none"
    activations: Literal["uint8", "int8"] = "uint8"
    weights: Literal["int8"] = "int8"
    per_channel: bool = True
    symmetric_activations: bool = False
    calibration_size: int = Field(300, ge=1)
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    accuracy_fallback: bool = True
    # NNCF graphs of a classifier: subtract the INT8 graph's mean logit error on the calibration images at
    # the output (``backends.int8.logit_offset``), before the accuracy fallback chooses.
    correct_logit_offset: bool = True


class Target(_Strict):
    """One deployment target."""

    name: str
    description: str = ""
    backend: Backend
    device: str = "cpu"  # onnxruntime: cpu|cuda|tensorrt ; openvino: CPU|GPU|NPU ; tensorrt: cuda:0
    precision: Precision
    batch_size: int = Field(8, ge=1)
    threads: int = Field(2, ge=1)
    input_size: int | None = Field(None, ge=16)
    opset: int = Field(17, ge=13)
    warmup: int = Field(20, ge=0)
    iterations: int = Field(200, ge=1)
    quantizer: Quantizer = Quantizer()
    gates: Gates = Gates()
    source: str = Field("", exclude=True)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; choose {', '.join(BACKENDS)}")
        return value

    @property
    def quantized(self) -> bool:
        return self.precision == "int8"

    @property
    def cli_ref(self) -> str:
        """What ``--target`` takes to select this profile again: the name of a built-in profile, the
        file's path (as it was given) for a user's own profile."""
        if not self.source:
            return self.name
        path = Path(self.source)
        try:
            builtin = path.resolve().parent == targets_dir().resolve()
        except ConfigError:
            builtin = False
        return self.name if builtin and path.stem == self.name else self.source

    def to_toml(self) -> str:
        """This profile as a TOML file that ``load_target_file`` reads back to the same profile."""
        return dump_toml(self)

    @property
    def model_file(self) -> str:
        """The file in ``targets/<name>/`` that the runner opens (TensorRT builds its engine from it)."""
        return facts(self.backend).model_file


def command(verb: str, run_root: str | Path, target: Target, *extra: str) -> str:
    """A shell command that works as printed: ``edge-tl VERB RUN --target REF ...``, paths quoted.

    ``REF`` is ``target.cli_ref``: a user's profile is named by its file, which ``--target`` finds;
    its ``name`` alone would be an unknown built-in target.
    """
    import shlex

    words = ["edge-tl", verb, str(run_root), "--target", target.cli_ref, *extra]
    return " ".join(shlex.quote(w) for w in words)


def _toml_value(value: object) -> str:
    import json
    import math

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _openvino_ptq(target: Target) -> bool:
    """Whether ``target`` is quantised by NNCF on the OpenVINO model (``OPENVINO_PRESET``)."""
    return facts(target.backend).graph == "openvino-ir" and target.quantized and target.quantizer.method == "nncf"


def dump_toml(target: Target) -> str:
    """A profile as TOML: every key with its value; unset optional keys as comments."""
    data = target.model_dump()
    lines = [f"# edge-tl target profile {target.name!r} (from {target.source or 'memory'}).",
             "# Save it as a file, change what your line needs, and pass the file to --target:",
             f"#   edge-tl targets {target.name} > my-line.toml && edge-tl export RUN --target my-line.toml",
             "# Unknown keys are an error; a commented key is unset (its default applies)."]
    tables: list[tuple[str, dict]] = []
    notes = {"input_size": "unset: the fine-tuned model's own input size",
             "device": "onnxruntime: cpu|cuda|tensorrt; openvino: CPU|GPU|NPU; tensorrt: cuda:0",
             "batch_size": "images per inference call (throughput); latency is timed at batch 1",
             "threads": "CPU threads of the backend"}
    for key, value in data.items():
        note = f"  # {notes[key]}" if key in notes else ""
        if isinstance(value, dict):
            tables.append((key, value))
        elif key == "name":
            lines.append(f"# name = {_toml_value(value)}  # unset: the file's name without .toml (keep your copy's "
                         "own name: it is its folder in RUN/targets/)")
        elif value is None:
            lines.append(f"# {key} = (unset){note}")
        else:
            lines.append(f"{key} = {_toml_value(value)}{note}")
    for table, values in tables:
        doc = {"quantizer": "how the INT8 graph is made (ignored by float targets)",
               "gates": "pass/fail limits checked by `edge-tl bench`; an unset gate is not checked"}.get(table, "")
        lines.append("")
        if table == "quantizer" and _openvino_ptq(target):
            lines.append(f"# OpenVINO post-training INT8 (NNCF), preset {OPENVINO_PRESET}")
        lines.append(f"[{table}]" + (f"  # {doc}" if doc else ""))
        for key, value in values.items():
            field = type(getattr(target, table)).model_fields.get(key)
            note = f"  # {field.description}" if field is not None and field.description else ""
            if table == "quantizer" and key in ("activations", "symmetric_activations") and _openvino_ptq(target):
                note = "  # --qat only; post-training INT8 for OpenVINO: see the note above [quantizer]"
            lines.append(f"# {key} = (unset){note}" if value is None else f"{key} = {_toml_value(value)}{note}")
    return "\n".join(lines) + "\n"


def targets_dir() -> Path:
    """Where the built-in profiles live: the installed copy, else the source tree's ``targets/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_targets", here.parent / "targets"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("built-in target profiles not found (edge_tl/_targets or ./targets)")


def load_target_file(path: Path) -> Target:
    """Parse and validate one profile file."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read profile: {exc}") from exc
    raw.setdefault("name", path.stem)
    try:
        return Target.model_validate({**raw, "source": str(path)})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(file)"
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{path}: key '{key}': {msg}{more}") from None


def builtin_targets() -> dict[str, Target]:
    """All built-in profiles by name."""
    out: dict[str, Target] = {}
    for path in sorted(targets_dir().glob("*.toml")):
        t = load_target_file(path)
        if t.name in out:
            raise ConfigError(f"duplicate target name {t.name!r} in {path}")
        out[t.name] = t
    return out


def get_target(name_or_path: str) -> Target:
    """A built-in profile by name, or a user's profile by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            near = _closest(path.name, [p.name for p in path.parent.glob("*.toml")] if path.parent.is_dir() else [])
            hint = f"; did you mean {path.parent / near}?" if near else ""
            raise ConfigError(f"target profile not found: {path}{hint}")
        return load_target_file(path)
    targets = builtin_targets()
    if name_or_path not in targets:
        near = _closest(name_or_path, list(targets))
        hint = f"did you mean {near}? " if near else ""
        raise ConfigError(f"unknown target {name_or_path!r}; {hint}`edge-tl targets` lists: {', '.join(targets)}")
    return targets[name_or_path]


def _closest(word: str, choices: list[str]) -> str | None:
    """The choice most like ``word`` (difflib), or None when none is close."""
    import difflib

    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return found[0] if found else None
