"""``edge-tl run PIPELINE.toml``: the whole chain from one file.

The file has one table per stage, each holding that command's options; relative paths are taken
from the file's folder. Stages run in the fixed order finetune -> prune -> export -> bench -> bundle.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FinetuneStep(_Strict):
    data: str
    out: str
    arch: str = "mobilenet_v2"
    weights: str = "imagenet"
    mode: Literal["linear", "partial", "full"] = "linear"
    epochs: int | None = None
    unfreeze: int = 3
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    views: int = 2
    backbone_lr_scale: float = 0.1
    lr: float | None = None
    balance: Literal["none", "weights", "sampler"] = "none"
    resize: Literal["shorter", "full", "letterbox", "auto"] = "shorter"
    engine: Literal["auto", "onnxruntime", "torch"] = "auto"
    patience: int = 5


class PruneStep(_Strict):
    ratio: float = Field(gt=0, lt=1)
    recover: Literal["auto", "full", "partial", "head"] = "auto"
    recover_epochs: int | None = None


class ExportStep(_Strict):
    targets: list[str]
    calibration: str | None = None
    source: Literal["finetune", "prune"] | None = None


class BenchStep(_Strict):
    targets: list[str] | None = None  # default: the exported ones
    data: str | None = None


class BundleStep(_Strict):
    target: str
    out: str
    ok_classes: list[str] | None = None
    max_escape: float | None = Field(default=None, ge=0, lt=1)
    max_false_reject: float | None = Field(default=None, ge=0, lt=1)


class Pipeline(_Strict):
    finetune: FinetuneStep
    prune: PruneStep | None = None
    export: ExportStep | None = None
    bench: BenchStep | None = None
    bundle: BundleStep | None = None


def load_pipeline(path: Path) -> Pipeline:
    """Parse and validate a pipeline file; errors name the file and the key."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read pipeline: {exc}") from exc
    try:
        return Pipeline.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{path}: key '{key}': {msg}") from None


def run_pipeline(path: Path, quiet: bool = False,
                 ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    """Run every stage the file names; returns the finetune manifest, the bench reports (the caller
    decides on failed gates) and the bundle's bundle.json (None without a bundle step)."""
    from .stages.export import export
    from .stages.finetune import finetune
    from .training import TrainConfig

    p = load_pipeline(path)
    here = path.parent

    def rel(s: str) -> str:
        return str((here / s).resolve()) if not Path(s).is_absolute() else s

    ft = p.finetune
    run = rel(ft.out)
    tuned = finetune(rel(ft.data), run, arch=ft.arch, weights=ft.weights if ft.weights in ("imagenet", "none")
             else rel(ft.weights), val_fraction=ft.val_fraction, resize=ft.resize,
             train_cfg=TrainConfig(mode=ft.mode, epochs=ft.epochs, unfreeze=ft.unfreeze, seed=ft.seed,
                                   device=ft.device, quiet=quiet, views=ft.views, balance=ft.balance,
                                   engine=ft.engine, patience=ft.patience,
                                   backbone_lr_scale=ft.backbone_lr_scale, lr=ft.lr))
    if p.prune is not None:
        from .stages.prune import prune

        prune(run, p.prune.ratio, recover_epochs=p.prune.recover_epochs, quiet=quiet, recover=p.prune.recover,
              device=ft.device)
    exported: list[str] = []
    if p.export is not None:
        for t in p.export.targets:
            export(run, t, calibration=rel(p.export.calibration) if p.export.calibration else None,
                   source=p.export.source, quiet=quiet)
            exported.append(t)
    reports: list[dict[str, Any]] = []
    if p.bench is not None:
        from .bench.run import bench

        reports = bench(run, p.bench.targets or exported, data=rel(p.bench.data) if p.bench.data else None,
                        quiet=quiet)
    shipped = None
    if p.bundle is not None:
        from .stages.bundle import bundle

        b = p.bundle
        shipped = bundle(run, b.target, rel(b.out), ok_classes=b.ok_classes, max_escape=b.max_escape,
                         max_false_reject=b.max_false_reject, quiet=quiet)
    return tuned, reports, shipped
