"""One settings model per stage: the options of ``finetune``, ``prune``, ``export``, ``bench`` and ``bundle``.

Each model is the single declaration of its stage's options (name, type, default, limits, help). The
CLI builds its options from it (``cli.options.settings_command``), the pipeline file's tables *are* these
models (``[finetune]`` is :class:`FinetuneSettings`), and the Python API validates its keyword
arguments with them; each model's ``run`` method is the one call into its stage, so the three front doors
cannot drift apart. Errors name the option the way its front door spells it (``--ok-class``,
``bundle.ok_classes``, ``ok_classes=``), through :func:`validate` and the pipeline loader.

Field metadata for the CLI lives in ``json_schema_extra``: ``flags`` (the option's names when they are
not ``--field-name``), ``metavar``, ``argument`` (a positional argument, with its metavar).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .anomaly.methods import method_for
from .anomaly.methods import names as anomaly_methods
from .errors import ConfigError

log = logging.getLogger("edge_tl")

# The anomaly methods registered when the package was imported: a new method needs no edit here.
AnomalyMethodName = Literal[anomaly_methods()]  # type: ignore[valid-type]


def opt(default: Any, text: str, *, flags: tuple[str, ...] | None = None, metavar: str | None = None,
        argument: str | None = None, expects: str | None = None, **limits: Any) -> Any:
    """A field with its help text and CLI spelling (see the module docstring). ``expects``: what a value of a
    field of several types must be, for the error when it is none of them ("a count of modes or auto")."""
    extra = {k: v for k, v in (("flags", flags), ("metavar", metavar), ("argument", argument),
                               ("expects", expects)) if v is not None}
    return Field(default, description=text, json_schema_extra=extra or None, **limits)


class StageSettings(BaseModel):
    """Strict (a TOML ``"3"`` is not an int), closed (an unknown key is an error) and frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


DEVICE_HELP = "Where to train: auto (cuda when available) | cpu | cuda."
MOVED_DATA_HELP = ("The run's images moved here (the same class folders and file names; checked against the sha256 "
                   "in RUN/finetune/split.json). Default: the folder the run was fine-tuned on.")


class FinetuneSettings(StageSettings):
    """``edge-tl finetune`` / ``[finetune]`` / ``api.finetune``: fine-tune a classifier, or fit a good-only
    anomaly model (``task = "anomaly"``); ``tasks.fit_task`` makes the choice."""

    data: str = opt(..., "ImageFolder: one sub-folder per class.", argument="DATA_DIR")
    out: str = opt(..., "Run directory to write (RUN/finetune/).", metavar="RUN")
    arch: str = opt("mobilenet_v2", "Backbone (`edge-tl finetune --help` lists the registered ones).",
                    metavar="NAME")
    weights: str = opt("imagenet", "imagenet | none (random initialisation) | run:RUN (the backbone of an earlier "
                       "classification run: RUN, meaning RUN/finetune, or its finetune/ folder; same --arch; the new "
                       "run keeps its preprocessing) | PATH to a state_dict.", metavar="imagenet|none|run:RUN|PATH")
    mode: Literal["linear", "partial", "full"] = opt(
        "partial", "partial (default: the last --unfreeze blocks and the head train on cached activations of the "
        "frozen rest; measured better than linear on every set tried, benchmarks/default_recipe.py) | linear "
        "(frozen backbone, cached features; fastest) | full.", metavar="linear|partial|full")
    epochs: int | None = opt(None, "Epochs (default: partial: 15, where the frozen layers run once and an epoch is "
                             "cheap, 8 with --progressive; 30 linear; 8 full). Early stopping (--patience) may end "
                             "sooner; the manifest records both.", ge=1)
    unfreeze: int = opt(1, "partial: number of last blocks to train.", ge=1)
    progressive: bool = opt(False, "partial: unfreeze one more block per epoch.")
    lr: float | None = opt(None, "Learning rate of the head.", gt=0)
    backbone_lr_scale: float | None = opt(
        None, "partial/full: the unfrozen backbone blocks learn at this multiple of --lr (default: 1 partial, "
        "0.1 full).", ge=0)
    batch_size: int = opt(32, "Batch size.", ge=1)
    val_fraction: float = opt(0.2, "Held-out fraction per class.", gt=0, lt=1)
    seed: int = opt(0, "Seed for the split, the initialisation and augmentation.")
    device: str = opt("auto", DEVICE_HELP, metavar="auto|cpu|cuda")
    workers: int = opt(2, "Data-loading worker processes.", ge=0)
    cache_mb: int = opt(2048, "partial --progressive/full: decode the images once and augment on the training "
                        "device when they fit in MB (0: decode every epoch).", metavar="MB", ge=0)
    patience: int = opt(5, "Early stopping: epochs without validation improvement.", ge=1)
    views: int = opt(2, "partial: cached views per training image (1 plain + augmented); the frozen layers run once "
                     "per view.", ge=1)
    balance: Literal["none", "weights", "sampler"] = opt(
        "none", "Imbalanced classes: none | weights (loss weighted per class) | sampler (classes drawn equally "
        "often); early stopping then uses balanced accuracy.", metavar="none|weights|sampler")
    max_escape: float | None = opt(
        None, "classify: choose the epoch (and stop early) as the line judges the model: the share of good validation "
        "images passed as ok by the QC policy tuned to let at most RATE of the defects pass (as bundle "
        "--max-escape); needs an ok class (--ok-class, or a class named ok/good/pass/normal/no_defect).",
        metavar="RATE", ge=0, lt=1)
    resize: Literal["shorter", "full", "letterbox", "auto"] | None = opt(
        None, "How an image becomes the square input: shorter (resize + centre crop, ImageNet's recipe) | full "
        "(whole frame, squeezed) | letterbox (whole frame, padded) | auto (letterbox when the crop would drop a "
        "median > 45 %). Default: shorter; full for --task anomaly.", metavar="shorter|full|letterbox|auto")
    engine: Literal["auto", "onnxruntime", "torch"] = opt(
        "auto", "What runs the frozen layers once: auto (ONNX Runtime on a CPU) | onnxruntime | torch.",
        metavar="auto|onnxruntime|torch")
    input_size: int | None = opt(None, "Square input side in pixels (default: the weights' own, 224): larger keeps "
                                 "fine defects visible, at a latency cost.", metavar="N", ge=32, le=1024)
    baseline: Literal["none", "scratch"] = opt(
        "none", "scratch: also train the same --arch from random initialisation (same split, mode, epochs and seed; "
        "in linear mode a random frozen backbone with a trained head) and record what the transfer gained, per "
        "class too (metrics.baseline). classify only.", metavar="none|scratch")
    task: Literal["classify", "anomaly", "detect"] = opt(
        "classify", "classify (an ImageFolder of labelled classes) | anomaly (DATA_DIR holds good images only, or "
        "name the good class with --ok-class; PatchCore/PaDiM) | detect (boxes: Pascal VOC, COCO or YOLO, see "
        "--format; mode, input size, batch size and epochs default to the detector's own: partial, 320, 16, 30).",
        metavar="classify|anomaly|detect")
    format: Literal["auto", "voc", "coco", "yolo"] = opt(
        "auto", "detect: the annotation layout: voc (an XML per image) | coco (one JSON) | yolo (a txt per image) | "
        "auto (found from the folder).", metavar="auto|voc|coco|yolo")
    method: AnomalyMethodName = opt(  # type: ignore[valid-type]
        anomaly_methods()[0], "anomaly: " + " | ".join(f"{n} ({method_for(n).summary})" for n in anomaly_methods())
        + ".", metavar="|".join(anomaly_methods()))
    val: str | None = opt(None, "anomaly: labelled folder (a good/ok folder and defect folders) that sets the "
                          "threshold (one half) and gives AUROC (the other).", metavar="DIR")
    ok_class: str | None = opt(None, "anomaly: the good class folder in DATA_DIR or --val (default: the folder "
                               "named good or ok); classify with --max-escape: the good class.", metavar="NAME")
    coreset: float = opt(0.01, "anomaly (patchcore): bank size as a fraction of the training patches (greedy "
                         "coreset).", metavar="FRACTION", gt=0, le=1)
    bank_size: int | None = opt(None, "anomaly (patchcore): bank entries (overrides --coreset).", metavar="N", ge=1)
    dim: int | None = opt(None, "anomaly: random projection of the patch features to D dimensions (default: 64 for "
                          "padim, none for patchcore; fewer cost less per image).", metavar="D", ge=1)
    clusters: Literal["auto"] | Annotated[int, Field(ge=1, le=8)] = opt(
        "auto", "anomaly (padim): modes of the good images (k-means), one Gaussian per position each; auto picks "
        "1-3 on the --val threshold half (one mode without defect images).", metavar="auto|K",
        expects="a count of modes or auto (a count between 1 and 8)")
    holdout: float | None = opt(None, "anomaly: good images kept out of the fit for the threshold and the figures "
                                "(default 0.2 without --val, 0 with it).", metavar="FRACTION", ge=0, lt=1)
    max_false_reject: float | None = opt(
        None, "anomaly: set the threshold so that the false-reject rate's 95 % upper bound is within RATE (default "
        "with defect images: max balanced accuracy; without: 0.05).", metavar="RATE", gt=0, lt=1)

    def run(self, quiet: bool = True) -> dict[str, Any]:
        """Fit; returns the manifest (``RUN/finetune/manifest.json``)."""
        from .tasks import fit_task, fit_task_options, unused_option

        unused = unused_option(self.task, self.model_fields_set)
        if unused is not None:
            raise ConfigError(f"option {unused[0]!r} is for task {unused[1]}, not {self.task!r}: remove it")
        return fit_task(self.data, self.out, **fit_task_options(self.model_dump() | {"quiet": quiet},
                                                                 given=self.model_fields_set))


class PruneSettings(StageSettings):
    """``edge-tl prune RUN`` / ``[prune]`` / ``api.prune``."""

    ratio: float = opt(0.3, "Share of each layer's channels to remove (0 < ratio < 1); kept counts are rounded to "
                       "multiples of --round-to.", gt=0, lt=1)
    round_to: Literal[8, 16, 32] = opt(16, "Kept channel counts are multiples of this: 16 (default; x86 VNNI and "
                                       "tensor-core INT8 work in blocks of 16 channels), 8 or 32.")
    recover: Literal["auto", "full", "partial", "head"] = opt(
        "auto", "How the pruned model recovers: full | partial (train end to end on the labels and the unpruned "
        "model's logits) | head (retrain the head only: fast, keeps most of the loss) | auto (full for a linear "
        "fine-tune, else the fine-tune's mode).", metavar="auto|full|partial|head")
    recover_epochs: int | None = opt(None, "Recovery epochs after each pruning step; 0: only recompute BatchNorm "
                                     "statistics (default: 30 for head, else half the end-to-end epochs spread over "
                                     "the steps).", ge=0)
    importance: Literal["l2", "taylor"] = opt("l2", "Channel ranking: l2 (weight magnitude) | taylor (loss gradient "
                                              "x weight on training images).", metavar="l2|taylor")
    steps: int | None = opt(None, "Pruning rounds, each followed by recovery (default: 1 for head recovery + l2, "
                            "else one per 10 % of ratio, up to 5).", ge=1)
    device: str | None = opt(None, "auto | cpu | cuda (recovery and calibration; default auto, in a pipeline file "
                             "the fine-tune's).", metavar="auto|cpu|cuda")
    data: str | None = opt(None, MOVED_DATA_HELP, metavar="DIR")

    def run(self, run: str | Path, quiet: bool = True) -> dict[str, Any]:
        """Prune ``run``'s fine-tuned model; returns ``RUN/prune/manifest.json``."""
        from .stages.prune import prune

        return prune(run, self.ratio, recover_epochs=self.recover_epochs, importance=self.importance,
                     steps=self.steps, quiet=quiet, device=self.device or "auto", recover=self.recover,
                     round_to=self.round_to, data=self.data)


class ExportSettings(StageSettings):
    """``edge-tl export RUN`` / ``[export]`` / ``api.export``: once per target."""

    targets: list[str] = opt(..., "Target name (`edge-tl targets`) or the path of a profile file (.toml); "
                             "repeatable.", flags=("--target", "-t"), metavar="NAME|PATH", min_length=1)
    calibration: str | None = opt(None, "INT8: folder of (unlabelled) images to calibrate on, e.g. from the "
                                  "production camera. Default: the training split.", metavar="DIR|LIST")
    source: Literal["finetune", "prune", "adapt"] | None = opt(
        None, "finetune | prune | adapt (default: prune when present, else finetune; an adapted model only when "
        "asked for).", flags=("--from",), metavar="finetune|prune|adapt")
    qat: int = opt(0, "INT8: quantisation-aware training for N epochs (distilled from the float model) instead of "
                   "post-training quantisation; for models whose INT8 graph misses the gate. 0: off.", metavar="N",
                   ge=0)
    ood: bool = opt(True, "The ood_score output (out-of-distribution score) in the classifier's graph "
                    "(--no-ood: none).", flags=("--ood/--no-ood",))
    data: str | None = opt(None, MOVED_DATA_HELP, metavar="DIR")

    def run(self, run: str | Path, target: str, quiet: bool = True) -> dict[str, Any]:
        """Export ``target`` (one of ``targets``); returns its manifest."""
        from .stages.export import export

        return export(run, target, calibration=self.calibration, source=self.source, quiet=quiet,
                      qat_epochs=self.qat, ood=self.ood, data=self.data)


class BenchSettings(StageSettings):
    """``edge-tl bench RUN`` / ``[bench]`` / ``api.bench``."""

    targets: list[str] | None = opt(None, "Target(s) to bench (repeatable; in a pipeline file default: the "
                                    "exported ones).", flags=("--target", "-t"), metavar="NAME|PATH")
    all_targets: bool = opt(False, "Every built-in target; the ones this host cannot run (or not exported) are "
                            "reported as skipped.")
    export: bool = opt(False, "First export each chosen target this host can run and that is not exported yet "
                       "(with --all-targets: every CPU/GPU target of this host, as `yolo benchmark` does); the "
                       "others are skipped with the reason.")
    data: str | None = opt(None, "Another labelled folder with the same classes to evaluate on; its reports go to "
                           "RUN/reports/data-<name>-<sha8>/ (the run's own stay as they are) and its preprocessed "
                           "images and reference logits are cached in RUN/evalsets/.", metavar="DIR")
    layers: bool = opt(False, "Also print where the time goes: the top layers of one batch-1 call with their time "
                       "share and precision (OpenVINO performance counters, ONNX Runtime profiler).")
    json_path: str | None = Field(None, alias="json", description=(
        "Also write the JSON here: with one target its report, with several (or --all-targets) a JSON list of "
        "their reports in bench order, skipped ones included (written atomically)."),
        json_schema_extra={"flags": ("--json",), "metavar": "PATH"})
    wait_quiet: float = opt(0.0, "Before timing, wait up to this long for other processes to leave the CPUs; if "
                            "they never do, bench anyway and mark the timings unreliable.", metavar="SECONDS", ge=0)
    latency: bool = opt(True, "Time the models (--no-latency: accuracy only, a check on new data: latency, "
                        "throughput and speedup are null and a latency gate is reported as not measured).",
                        flags=("--latency/--no-latency",))

    def run(self, run: str | Path, quiet: bool = True) -> list[dict[str, Any]]:
        """Bench the chosen targets (``targets`` None and not ``all_targets``: every built-in one); returns
        the reports in bench order."""
        from .orchestrate import bench

        options: dict[str, Any] = {}  # only what differs from bench()'s defaults
        if self.layers:
            options["layers"] = True
        if not self.latency:
            options["latency"] = False
        return bench(run, None if self.all_targets else self.targets, data=self.data, quiet=quiet,
                     json_path=self.json_path, wait_quiet=self.wait_quiet, export=self.export, **options)


class BundleSettings(StageSettings):
    """``edge-tl bundle RUN`` / ``[bundle]`` / ``api.bundle``."""

    target: str = opt(..., "An exported target of the run (its name, or the profile file it was exported with).",
                      flags=("--target", "-t"), metavar="NAME|PATH")
    out: str = opt(..., "Bundle folder to write (an old bundle there is replaced atomically).", metavar="DIR")
    fallback: list[str] | None = opt(None, "A target to ship instead when --target failed its bench, or is INT8 and "
                                     "not faster than this one in the same bench (repeatable: tried in order; "
                                     "bundle.json records why).", flags=("--fallback",), metavar="NAME|PATH")
    golden: int = opt(8, "Golden images to include (at least one per class).", ge=1)
    ok_classes: list[str] | None = opt(None, "A class that passes QC (repeatable). Default: a class named "
                                       "ok/good/pass/normal/no_defect, if any.", flags=("--ok-class",),
                                       metavar="CLASS")
    defect_classes: list[str] | None = opt(None, "A defect class (repeatable); the others are ok classes.",
                                           flags=("--defect-class",), metavar="CLASS")
    max_escape: float | None = opt(None, "Tune the ok threshold instead to the lowest that passes at most this share "
                                   "of the validation defects as ok (low-confidence ok answers go to review). "
                                   "Detection: the highest box threshold that passes at most this share of the "
                                   "validation images with a defect box as ok.",
                                   metavar="RATE", ge=0, lt=1)
    max_false_reject: float | None = opt(None, "Tune the ok threshold on the validation set to this false-reject "
                                         "rate (default 0.01). Detection: the lowest box threshold that rejects at "
                                         "most this share of the images without a defect box.",
                                         metavar="RATE", ge=0, lt=1)
    ok_threshold: float | None = opt(None, "Fixed ok threshold instead of tuning.", metavar="P", ge=0, le=1)
    defect_threshold: float = opt(0.5, "Confidence a defect answer needs; below it the decision is 'review'. "
                                  "Detection: the score a box of a defect class needs to make the part a defect "
                                  "(when not tuned).", metavar="P", ge=0, le=1)
    ood_limit: float | None = opt(None, "ood_score above which an image is 'review' (out_of_distribution). "
                                  "Default: calibrated on this target's validation scores at the export's "
                                  "false-alarm rate (about 1.0 for fp32).", metavar="X", gt=0)
    ood: bool = opt(True, "Review out-of-distribution images (--no-ood: do not).", flags=("--ood/--no-ood",))
    allow_failed: bool = opt(False, "Ship a target whose bench failed, or that has no bench report of this export "
                             "(refused otherwise); bundle.json records it.")

    def run(self, run: str | Path, quiet: bool = True) -> dict[str, Any]:
        """Write the bundle; returns ``bundle.json``."""
        from .stages.bundle import bundle, choose_target

        target, passed_over = choose_target(run, [self.target, *(self.fallback or [])])
        for line in passed_over:
            log.warning("not shipped: %s", line)
        return bundle(run, target, self.out, self.golden, ok_classes=self.ok_classes,
                      defect_classes=self.defect_classes, max_false_reject=self.max_false_reject,
                      ok_threshold=self.ok_threshold, defect_threshold=self.defect_threshold,
                      max_escape=self.max_escape, ood_limit=self.ood_limit, use_ood=self.ood,
                      allow_failed=self.allow_failed, passed_over=passed_over, quiet=quiet)


class AdaptSettings(StageSettings):
    """``edge-tl adapt RUN`` / ``api.adapt``: a new line, camera or product variant from unlabelled images
    (AdaBN, self-training); recorded in RUN/adapt/manifest.json. None means the documented default."""

    unlabeled: str = opt(..., "Unlabelled images of the new line, camera or variant (every image below DIR; "
                         "sub-folder names are ignored).", metavar="DIR")
    method: Literal["adabn", "self-train", "both"] = opt(
        "adabn", "adabn (re-estimate BatchNorm statistics on DIR: seconds) | self-train (confident, "
        "augmentation-consistent, class-balanced pseudo-labels) | both (AdaBN, then self-training).",
        metavar="adabn|self-train|both")
    target_val: str | None = opt(None, "Labelled images of the new domain (one folder per class, the run's "
                                 "classes): only to report source-only vs adapted accuracy, never to train or choose "
                                 "anything.", metavar="DIR")
    source: Literal["finetune", "prune"] | None = opt(None, "finetune | prune (default: prune when present).",
                                                      flags=("--from",), metavar="finetune|prune")
    # Self-training. 0.8, not FixMatch's 0.95: fine-tunes use label smoothing 0.1, which caps a confident
    # answer near 0.95 for two classes and 0.91 for ten.
    threshold: float = opt(0.8, "self-train: softmax confidence a pseudo-label needs.", gt=0, lt=1)
    class_factor: float = opt(2.0, "self-train: at most this times the smallest class's count of pseudo-labels "
                              "per class.", ge=1)
    epochs: int | None = opt(None, "self-train: epochs per round (default: 5 on cached features or activations, 2 "
                             "end to end).", ge=1)
    rounds: int = opt(5, "self-train: most rounds; it stops earlier when fewer than --tolerance of the "
                      "pseudo-labels change.", ge=1)
    tolerance: float = opt(0.02, "self-train: stop when fewer than this share of the pseudo-labels change between "
                           "rounds.", ge=0, lt=1)
    distill: float = opt(0.5, "self-train: weight of the KL term to the starting model's logits (limits drift); "
                         "0: off.", ge=0)
    views: int = opt(3, "self-train: views per image (the plain one and augmented ones).", ge=1)
    lr: float | None = opt(None, "self-train: learning rate (default: the fine-tune's own).", gt=0)
    # AdaBN: the statistics of every pixel of 512 images are stable, as in prune's recalibration.
    bn_images: int = opt(512, "AdaBN: unlabelled images whose statistics are averaged.", ge=1)
    anchor: bool = opt(True, "AdaBN: first re-anchor the BatchNorm statistics on the fine-tune's training images "
                       "without changing the model (right for a frozen backbone, whose statistics are ImageNet's); "
                       "--no-anchor: plain AdaBN.", flags=("--anchor/--no-anchor",))
    data: str | None = opt(None, "AdaBN anchor: " + MOVED_DATA_HELP[0].lower() + MOVED_DATA_HELP[1:], metavar="DIR")
    seed: int = opt(0, "Seed for augmentation, image order and training.")
    device: str = opt("auto", "auto | cpu | cuda.", metavar="auto|cpu|cuda")

    # What the manifest records as the method's settings (the paths are recorded beside them).
    RECORDED: ClassVar[tuple[str, ...]] = ("method", "bn_images", "anchor", "threshold", "class_factor",
                                           "epochs", "rounds", "tolerance", "distill", "views", "lr", "seed")

    def run(self, run: str | Path, quiet: bool = True) -> dict[str, Any]:
        """Adapt; returns ``RUN/adapt/manifest.json``."""
        from .stages.adapt import adapt_run

        return adapt_run(run, self, quiet=quiet)[1]


STAGES: dict[str, type[StageSettings]] = {"finetune": FinetuneSettings, "prune": PruneSettings,
                                           "export": ExportSettings, "bench": BenchSettings,
                                           "bundle": BundleSettings}


def keys(model: type[StageSettings]) -> list[str]:
    """The pipeline file's keys of one table, in order (aliases as written in the file)."""
    return [f.alias or name for name, f in model.model_fields.items()]


def _flags(model: type[StageSettings], name: str) -> list[str]:
    """Every CLI spelling of the field ``name`` (``--ood/--no-ood`` is two)."""
    extra = model.model_fields[name].json_schema_extra
    declared = (extra if isinstance(extra, dict) else {}).get("flags") or ("--" + name.replace("_", "-"),)
    return [f for flag in declared for f in str(flag).split("/")]


def key_of_flag(model: type[StageSettings], flag: str) -> str | None:
    """The pipeline key of the CLI option ``flag`` (``--ok-class`` is ``ok_classes``), None if it has none."""
    return next((f.alias or n for n, f in model.model_fields.items() if flag in _flags(model, n)), None)


def cli_flag(model: type[StageSettings], key: str) -> str:
    """How the CLI spells the field ``key``: ``--ok-class`` for ``ok_classes``, ``DATA_DIR`` for ``data``."""
    name = next((n for n, f in model.model_fields.items() if key in (n, f.alias)), key)
    extra = model.model_fields[name].json_schema_extra if name in model.model_fields else None
    extra = extra if isinstance(extra, dict) else {}
    if extra.get("argument"):
        return str(extra["argument"])
    flags = extra.get("flags")
    if flags:
        return str(flags[0]).split("/")[0]
    return "--" + name.replace("_", "-")


def validate(model: type[StageSettings], values: dict[str, Any], name: Callable[[str], str]) -> Any:
    """``model`` from ``values`` given in code or on a command line (typed loosely: a path object is its
    string, an int where a float goes is fine); the first error is one ConfigError line naming the option
    as ``name(key)`` spells it, with the closest known option for an unknown one."""
    plain = {k: os.fspath(v) if isinstance(v, os.PathLike) else
             [os.fspath(x) if isinstance(x, os.PathLike) else x for x in v] if isinstance(v, tuple | list) else v
             for k, v in values.items()}
    try:
        return model.model_validate(plain, strict=False)
    except ValidationError as exc:
        raise ConfigError(error_text(model, exc, name)) from None


def error_text(model: type[StageSettings], exc: ValidationError, name: Callable[[str], str]) -> str:
    """The first error of ``exc`` in one line: ``{name(key)}: {why}``."""
    first = exc.errors()[0]
    key = str(first["loc"][0]) if first["loc"] else ""
    if first["type"] == "extra_forbidden":
        import difflib

        known = keys(model)
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        return f"{name(key)}: unknown option" + (f"; did you mean {name(near[0])}?" if near else "")
    same = [e for e in exc.errors() if e["loc"][:1] == first["loc"][:1]]
    if len(same) > 1:  # a field of several types: each branch said why; the field says it in one line
        extra = model.model_fields[key].json_schema_extra if key in model.model_fields else None
        expects = extra.get("expects") if isinstance(extra, dict) else None
        if expects:
            return f"{name(key)}: {first['input']!r} is not {expects}"
    if first["type"] == "literal_error":
        return f"{name(key)}: unknown value {first['input']!r}; choose {first['ctx']['expected']}"
    return f"{name(key)}: {first['msg']}"
