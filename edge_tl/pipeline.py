"""``edge-tl run PIPELINE.toml``: the whole chain from one file.

The file has one table per stage, each holding that command's options (docs/pipeline.md lists every
key); relative paths, profile files included, are taken from the file's folder. Stages run in the
fixed order finetune -> prune -> export -> bench -> bundle.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FinetuneStep(_Strict):
    """``[finetune]``: the options of ``edge-tl finetune`` (``data`` is DATA_DIR)."""

    data: str
    out: str
    arch: str = "mobilenet_v2"
    weights: str = "imagenet"
    mode: Literal["linear", "partial", "full"] = "linear"
    epochs: int | None = None
    unfreeze: int = 3
    progressive: bool = False
    lr: float | None = None
    backbone_lr_scale: float = 0.1
    batch_size: int = Field(32, ge=1)
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    workers: int = Field(2, ge=0)
    patience: int = 5
    views: int = 2
    balance: Literal["none", "weights", "sampler"] = "none"
    resize: Literal["shorter", "full", "letterbox", "auto"] | None = None  # None: shorter; full for anomaly
    engine: Literal["auto", "onnxruntime", "torch"] = "auto"
    input_size: int | None = Field(None, ge=32, le=1024)
    baseline: Literal["none", "scratch"] = "none"  # classify only
    # --task anomaly (good-only anomaly detection; ``data`` holds good images)
    task: Literal["classify", "anomaly"] = "classify"
    method: Literal["padim", "patchcore"] = "padim"
    val: str | None = None
    ok_class: str | None = None
    coreset: float = Field(0.01, gt=0, le=1)
    bank_size: int | None = Field(None, ge=1)
    dim: int | None = Field(None, ge=1)
    clusters: Literal["auto"] | Annotated[int, Field(ge=1, le=8)] = "auto"
    holdout: float | None = Field(None, ge=0, lt=1)
    max_false_reject: float | None = Field(None, gt=0, lt=1)


class PruneStep(_Strict):
    """``[prune]``: the options of ``edge-tl prune`` (``device`` defaults to the fine-tune's)."""

    ratio: float = Field(gt=0, lt=1)
    round_to: Literal[8, 16, 32] = 16
    recover: Literal["auto", "full", "partial", "head"] = "auto"
    recover_epochs: int | None = None
    importance: Literal["l2", "taylor"] = "l2"
    steps: int | None = Field(None, ge=1)
    device: str | None = None


class ExportStep(_Strict):
    """``[export]``: ``edge-tl export`` once per target (``source`` is ``--from``)."""

    targets: list[str]
    calibration: str | None = None
    source: Literal["finetune", "prune"] | None = None
    qat: int = Field(0, ge=0)
    ood: bool = True  # the ood_score output (`--no-ood` is ood = false)


class BenchStep(_Strict):
    """``[bench]``: the options of ``edge-tl bench`` (``json`` is ``--json``)."""

    targets: list[str] | None = None  # default: the exported ones
    all_targets: bool = False
    export: bool = False
    data: str | None = None
    layers: bool = False
    json_path: str | None = Field(None, alias="json")  # the TOML key is `json`, as the option
    wait_quiet: float = Field(0.0, ge=0)


class BundleStep(_Strict):
    """``[bundle]``: the options of ``edge-tl bundle`` (``ok_classes``/``defect_classes`` are the repeatable
    ``--ok-class``/``--defect-class``)."""

    target: str
    out: str
    golden: int = Field(8, ge=1)
    ok_classes: list[str] | None = None
    defect_classes: list[str] | None = None
    max_escape: float | None = Field(default=None, ge=0, lt=1)
    max_false_reject: float | None = Field(default=None, ge=0, lt=1)
    ok_threshold: float | None = Field(default=None, ge=0, le=1)
    defect_threshold: float = Field(0.5, ge=0, le=1)
    ood_limit: float | None = Field(default=None, gt=0)
    ood: bool = True  # review out-of-distribution images (`--no-ood` is ood = false)


class Pipeline(_Strict):
    finetune: FinetuneStep
    prune: PruneStep | None = None
    export: ExportStep | None = None
    bench: BenchStep | None = None
    bundle: BundleStep | None = None


# CLI options with no pipeline key, and why (tests/test_cli_conventions.py checks every other option of
# these commands is a key of its table, and docs/pipeline.md documents every key).
CLI_ONLY = {
    "finetune": {"quiet": "`edge-tl run --quiet` covers every stage"},
    "prune": {"run": "the run is [finetune] out", "quiet": "`edge-tl run --quiet`"},
    "export": {"run": "the run is [finetune] out", "quiet": "`edge-tl run --quiet`"},
    "bench": {"run": "the run is [finetune] out", "quiet": "`edge-tl run --quiet`"},
    "bundle": {"run": "the run is [finetune] out", "quiet": "`edge-tl run --quiet`"},
}
# CLI option name -> pipeline key, where they differ.
CLI_TO_KEY = {
    "finetune": {"data_dir": "data"},
    "export": {"target": "targets", "from_": "source", "no_ood": "ood"},
    "bench": {"target": "targets", "json_path": "json"},
    "bundle": {"ok_class": "ok_classes", "defect_class": "defect_classes", "no_ood": "ood"},
}
STEPS: dict[str, type[_Strict]] = {"finetune": FinetuneStep, "prune": PruneStep, "export": ExportStep,
                                  "bench": BenchStep, "bundle": BundleStep}


def step_keys(step: str) -> list[str]:
    """The TOML keys of one table, in order (aliases as written in the file)."""
    return [f.alias or name for name, f in STEPS[step].model_fields.items()]


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
        if first["type"] == "extra_forbidden":
            import difflib

            table, name = (str(first["loc"][0]), str(first["loc"][-1])) if len(first["loc"]) > 1 else ("", key)
            known = step_keys(table) if table in STEPS else list(Pipeline.model_fields)
            near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            msg += f"; did you mean {near[0]}?" if near else f"; known: {', '.join(known)}"
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

    def rel_target(t: str) -> str:
        """A profile file is relative to the pipeline file too; a built-in target is a name."""
        return rel(t) if t.endswith(".toml") else t

    ft = p.finetune
    run = rel(ft.out)
    if ft.weights in ("imagenet", "none"):
        weights = ft.weights
    elif ft.weights.startswith("run:"):  # run:PATH, PATH relative to the file like every other path
        weights = "run:" + rel(ft.weights[len("run:"):])
    else:
        weights = rel(ft.weights)
    if ft.task == "anomaly":
        from .anomaly.fit import fit_anomaly

        if ft.baseline != "none":
            raise ConfigError(f"{path}: key 'finetune.baseline': for task = \"classify\" only")
        if weights.startswith("run:"):
            raise ConfigError(f"{path}: key 'finetune.weights': run: is for task = \"classify\" only")

        tuned = fit_anomaly(rel(ft.data), run, arch=ft.arch, weights=weights, method=ft.method,
                            val_dir=rel(ft.val) if ft.val else None, ok_class=ft.ok_class, holdout=ft.holdout,
                            coreset=ft.coreset, bank_size=ft.bank_size, dim=ft.dim, resize=ft.resize,
                            input_size=ft.input_size, max_false_reject=ft.max_false_reject, seed=ft.seed,
                            clusters=ft.clusters, engine=ft.engine, quiet=quiet)
    else:
        tuned = finetune(rel(ft.data), run, arch=ft.arch, weights=weights, val_fraction=ft.val_fraction,
                         resize=ft.resize, input_size=ft.input_size, baseline=ft.baseline,
                         train_cfg=TrainConfig(mode=ft.mode, epochs=ft.epochs, unfreeze=ft.unfreeze, seed=ft.seed,
                                               device=ft.device, quiet=quiet, views=ft.views, balance=ft.balance,
                                               engine=ft.engine, patience=ft.patience,
                                               progressive=ft.progressive, batch_size=ft.batch_size,
                                               workers=ft.workers, backbone_lr_scale=ft.backbone_lr_scale,
                                               lr=ft.lr))
    if p.prune is not None:
        from .stages.prune import prune

        pr = p.prune
        prune(run, pr.ratio, recover_epochs=pr.recover_epochs, quiet=quiet, recover=pr.recover,
              device=pr.device or ft.device, importance=pr.importance, steps=pr.steps, round_to=pr.round_to)
    exported: list[str] = []
    if p.export is not None:
        for t in p.export.targets:
            export(run, rel_target(t), calibration=rel(p.export.calibration) if p.export.calibration else None,
                   source=p.export.source, quiet=quiet, qat_epochs=p.export.qat, ood=p.export.ood)
            exported.append(t)
    reports: list[dict[str, Any]] = []
    if p.bench is not None:
        from .bench.run import bench

        bn = p.bench
        chosen = None if bn.all_targets else [rel_target(t) for t in (bn.targets or exported)]
        options: dict[str, Any] = {}  # only what differs from bench()'s defaults
        if bn.export:
            options["export"] = True
        if bn.layers:
            options["layers"] = True
        reports = bench(run, chosen, data=rel(bn.data) if bn.data else None, quiet=quiet,
                        json_path=rel(bn.json_path) if bn.json_path else None, wait_quiet=bn.wait_quiet, **options)
    shipped = None
    if p.bundle is not None:
        from .stages.bundle import bundle

        b = p.bundle
        shipped = bundle(run, rel_target(b.target), rel(b.out), n_golden=b.golden, ok_classes=b.ok_classes,
                         defect_classes=b.defect_classes, max_escape=b.max_escape,
                         max_false_reject=b.max_false_reject, ok_threshold=b.ok_threshold,
                         defect_threshold=b.defect_threshold, ood_limit=b.ood_limit, use_ood=b.ood, quiet=quiet)
    return tuned, reports, shipped
