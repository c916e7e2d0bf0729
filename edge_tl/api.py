"""The Python API of the whole chain: the same stages as the CLI, as functions.

::

    from edge_tl import api

    run = "runs/parts"
    api.finetune("data/parts", run, mode="partial", unfreeze=1)    # RUN/finetune/
    api.prune(run, 0.3)                                            # optional: RUN/prune/
    api.export(run, "cpu-openvino-int8")                           # RUN/targets/cpu-openvino-int8/
    [report] = api.bench(run, ["cpu-openvino-int8"])               # RUN/reports/cpu-openvino-int8.*
    print(report["passed"], report["candidate"]["latency_ms"]["p50"], report["speedup"])
    api.bundle(run, "cpu-openvino-int8", "bundles/parts", max_escape=0.05)
    with api.open_bundle("bundles/parts") as rt:                   # on the device: no torch
        print(rt.predict("part_0042.png").decision)

Every function takes and returns plain values (paths as ``str`` or ``Path``; manifests and reports as
the dicts written beside the artifacts, JSON-ready). Errors are the exceptions of ``edge_tl.errors``,
all subclasses of ``EdgeTLError`` with a one-line message (the CLI prints exactly that line):

* ``MissingExtraError``: an optional package is not installed (``finetune``/``prune``/``export`` need
  ``edge-tl[train]``; OpenVINO targets ``edge-tl[openvino]``); its message names the extra;
* ``DataError``: the image folder cannot be used; ``ConfigError``: a bad option, target or profile;
* ``ArtifactError``: a stage's input is missing or changed since it was written (a sha256 mismatch).

Stages import torch, ONNX Runtime and OpenVINO only when called, so importing this module is cheap
(it is ``edge_tl.api``, not the package's top level, because ``edge_tl.bench`` is the bench package).
Progress is silent by default (``quiet=True``: no progress, nor NNCF's bars or torch's and ONNX Runtime's
notices; our warnings go to the ``edge_tl`` logger); pass ``quiet=False`` for the CLI's progress output.
Conventions throughout: images are classified at the profile's input size (square, NCHW float32
after the preprocessing recorded in the manifests); times are milliseconds; ``top1`` and agreement
are fractions in [0, 1]; ``top1_drop`` is in percentage points.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

PathLike = str | os.PathLike[str]
_Stage = TypeVar("_Stage", bound=Callable[..., Any])


def _require_training() -> None:
    from .errors import require

    require("torch", "train")
    require("torchvision", "train")


def _library_output(stage: _Stage) -> _Stage:
    """Runs ``stage`` inside ``progress.library_output(quiet)``, as the CLI runs its commands: with
    ``quiet`` (the default here) NNCF's progress bars, torch's and ONNX Runtime's notices print nothing
    either, not only our own progress."""
    import functools
    import inspect

    signature = inspect.signature(stage)

    @functools.wraps(stage)
    def run(*args: Any, **kwargs: Any) -> Any:
        from .progress import api_warnings, library_output

        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with library_output(bool(bound.arguments["quiet"])), api_warnings():
            return stage(*args, **kwargs)

    return run  # type: ignore[return-value]


@_library_output
def finetune(data_dir: PathLike, out: PathLike, *, quiet: bool = True, **options: Any) -> dict[str, Any]:
    """Fine-tune an ImageNet backbone on an ImageFolder, or with ``task="anomaly"`` fit a good-only
    anomaly model; writes ``out/finetune/``.

    ``options``: the fields of ``edge_tl.settings.FinetuneSettings``, the same as ``edge-tl finetune``'s
    options and the pipeline file's ``[finetune]`` keys, with the same defaults and limits (``arch``,
    ``weights``: ``"imagenet"`` | ``"none"`` | ``"run:RUN"`` | a state_dict path, ``mode``: ``"linear"`` |
    ``"partial"`` | ``"full"``, ``epochs``, ``unfreeze``, ``balance``, ``input_size``, ``baseline``, ``task``,
    and the anomaly options ``method``, ``val``, ``holdout``, ``coreset``, ``clusters`` ...).
    ``data_dir``: one sub-folder per class (any image format Pillow reads, any size; each image is resized
    to the backbone's input). ``val_fraction`` of each class is held out (stratified, by ``seed``); the
    first ``export`` or ``bench`` stores them as ``RUN/eval.npz``, preprocessed (N, 3, H, W), with the
    model's (N, classes) float32 logits as the reference for every later comparison.

    Returns the manifest (``out/finetune/manifest.json``): ``metrics`` (``val_top1``,
    ``val_balanced_accuracy`` as fractions, ``per_class_recall``, ``epochs``: best (1-based), run, planned),
    ``timings`` (``train_seconds``, ``device``), ``data`` (``n_images``, classes), the preprocessing contract;
    an anomaly run's carries ``task: "anomaly"``, AUROC and the threshold instead of top-1. Raises
    MissingExtraError without torch, DataError for an unusable folder, ConfigError for a bad or unknown
    option (naming it) or one that does not go with the task.
    """
    _require_training()
    from .settings import FinetuneSettings

    return _settings(FinetuneSettings, {"data": data_dir, "out": out, **options}).run(quiet)


@_library_output
def prune(run: PathLike, ratio: float = 0.3, *, quiet: bool = True, **options: Any) -> dict[str, Any]:
    """Remove ``ratio`` (0 < ratio < 1) of every prunable layer's output channels, fine-tune to
    recover, and write ``RUN/prune/``; ``export`` then uses it by default.

    ``options``: the fields of ``edge_tl.settings.PruneSettings`` (``edge-tl prune``'s options, ``[prune]``'s
    keys): ``round_to`` (8, 16 or 32: kept channel counts are its multiples), ``recover`` (``"full"``,
    ``"partial"``, ``"head"`` or ``"auto"``), ``recover_epochs`` (0 only recomputes BatchNorm statistics),
    ``importance``, ``steps``, ``device``, ``data`` (where the run's images are now when they moved,
    checked against split.json's sha256). Returns the manifest: channel counts per layer, MACs and
    parameters before and after, and the recovered validation metrics. Raises MissingExtraError without
    torch/torch-pruning, ArtifactError when ``RUN/finetune`` is missing, ConfigError for a bad option,
    DataError when the run's images are gone or differ.
    """
    _require_training()
    from .settings import PruneSettings

    return _settings(PruneSettings, {"ratio": ratio, **options}).run(run, quiet)


def _settings(model: Any, values: dict[str, Any]) -> Any:
    """``model`` from an API call's keyword arguments; a ConfigError names the keyword."""
    from .settings import validate

    return validate(model, values, lambda key: f"option {key!r}")


@_library_output
def adapt(run: PathLike, unlabeled: PathLike, *, quiet: bool = True, **options: Any) -> dict[str, Any]:
    """Adapt the run's classifier to a new line, camera or product variant from the unlabelled images under
    ``unlabeled`` and write ``RUN/adapt/`` (``export(..., source="adapt")`` ships it).

    ``options``: the fields of ``edge_tl.settings.AdaptSettings`` (``edge-tl adapt``'s options): ``method``
    (``"adabn"``: BatchNorm statistics re-estimated on the new images; ``"self-train"``: confident,
    augmentation-consistent, class-balanced pseudo-labels; ``"both"``), ``target_val`` (a labelled folder of
    the new domain with the run's classes, only for the report: ``manifest["report"]``, source-only vs
    adapted top-1 and balanced accuracy), ``source`` (``"finetune"`` or ``"prune"``; default prune when
    present), ``threshold``, ``class_factor``, ``epochs``, ``rounds``, ``tolerance``, ``distill``, ``views``,
    ``bn_images``, ``anchor``, ``lr``, ``seed``, ``device``, ``data``. Returns the manifest. Raises
    MissingExtraError without torch, ArtifactError when the run has no model, ConfigError for a bad option
    or an anomaly run, DataError when no unlabelled image is readable or ``target_val`` has other classes.
    """
    _require_training()
    from .settings import AdaptSettings

    return _settings(AdaptSettings, {"unlabeled": unlabeled, **options}).run(run, quiet)


@_library_output
def export(run: PathLike, target: str, *, quiet: bool = True, **options: Any) -> dict[str, Any]:
    """Export the run's model for one target (a built-in name or a profile file's path) to
    ``RUN/targets/<name>/``: ONNX, an INT8 QDQ graph, OpenVINO IR or the ONNX a TensorRT engine is
    built from, then check it against the torch model on ``eval.npz`` where this host can run it.

    ``options``: the fields of ``edge_tl.settings.ExportSettings`` but ``targets`` (``edge-tl export``'s
    options, ``[export]``'s keys): ``calibration`` (INT8: a folder of unlabelled images to calibrate on;
    default the training split), ``source`` (``"finetune"``, ``"prune"`` or ``"adapt"``; default prune when
    present, else finetune), ``qat`` (INT8: epochs of quantisation-aware training instead of post-training
    quantisation; ``manifest["quantizer"]["history"]`` has the selection-set score per epoch), ``ood``
    (a classifier's graph gets a second output, ``ood_score``; ``manifest["ood"]``), ``data`` (where the
    run's images are now when they moved; DataError on a sha256 mismatch).
    Returns the target manifest; ``manifest["validation"]`` holds ``agreement`` (fraction of argmax
    equal to the torch model's) and ``max_abs_logit_diff``, or is None when this host cannot run the
    target. Raises MissingExtraError (torch, onnx, openvino, nncf), ConfigError for an unknown target
    (with the closest name) or option, ArtifactError when the run has no model.
    """
    from .settings import ExportSettings

    return _settings(ExportSettings, {"targets": [target], **options}).run(run, target, quiet)


@_library_output
def bench(run: PathLike, targets: list[str] | None = None, *, quiet: bool = True,
          **options: Any) -> list[dict[str, Any]]:
    """Measure each target against the full fp32 torch model in one process; write and return reports.

    ``targets``: names or profile paths (None: every built-in target; those this host cannot run, or
    not exported, come back with ``report["skipped"]`` saying why). ``options``: the fields of
    ``edge_tl.settings.BenchSettings`` (``edge-tl bench``'s options, ``[bench]``'s keys): ``data`` (another
    labelled folder with the same classes instead of the run's held-out split), ``export`` (first export the
    chosen targets this host can run that are not exported yet), ``layers`` (per-layer timings),
    ``wait_quiet`` (seconds to wait for a quiet host before timing), ``json_path`` (also write the JSON
    there: one target its report, several a list in bench order), ``latency=False`` (accuracy only, nothing
    timed: latency figures null, a latency gate ``passed: None``, "not measured"). The torch reference is
    timed once per call for each threads / batch / input size / device.

    Each report is the JSON of ``RUN/reports/<target>.json``: ``reference`` and ``candidate`` with
    ``top1`` (fraction), ``latency_ms`` (``p50``/``p90``/``p99``/``mean``, batch 1, milliseconds),
    ``throughput_ips`` (images per second at the profile's batch size); the candidate's ``top1_drop``
    (percentage points), ``agreement`` (fraction), ``size_mb``; ``speedup`` (reference p50 / candidate
    p50); ``gates`` and ``passed``. A failed gate is not an exception here: check ``report["passed"]``
    (the CLI exits 1). Raises ArtifactError when the run has no ``eval.npz`` and cannot make one.
    """
    from .settings import BenchSettings

    chosen = None if targets is None else [str(t) for t in targets]
    return _settings(BenchSettings, {"targets": chosen, **options}).run(run, quiet)


@_library_output
def bundle(run: PathLike, target: str, out: PathLike, *, quiet: bool = True, **options: Any) -> dict[str, Any]:
    """Package an exported target for a device in ``out``: model, preprocessing, QC policy, sha256 of
    every file and ``golden`` images with their expected logits (the runtime refuses to classify if it
    does not reproduce them). Open it with ``open_bundle(out)`` (``edge_tl.runtime``, no torch).

    ``options``: the fields of ``edge_tl.settings.BundleSettings`` (``edge-tl bundle``'s options,
    ``[bundle]``'s keys). The QC policy: ``ok_classes``/``defect_classes`` split the classes; the ok
    threshold (a softmax probability in [0, 1]) is fixed (``ok_threshold``) or tuned on the validation
    split to a false-reject rate (``max_false_reject``, default 0.01) or an escape rate (``max_escape``:
    the share of defects passed as ok); a defect answer below ``defect_threshold`` becomes ``review``.
    Give at most one of the three. An image whose ``ood_score`` exceeds ``ood_limit`` (default: the limit
    the export calibrated for this target) is ``review`` with the reason ``out_of_distribution``;
    ``ood=False`` (or, as before, ``use_ood=False``) switches that off. The target must have passed
    ``bench`` (its report of this export in ``RUN/reports/``) unless ``allow_failed`` (then
    ``bundle.json["bench"]`` records it). Returns ``bundle.json``. Raises ArtifactError when the target is
    not exported (the message gives the command that exports it), failed its bench or was not benched,
    ConfigError for a bad option.
    """
    from .settings import BundleSettings

    if "use_ood" in options:  # the keyword's name before the settings model
        options["ood"] = options.pop("use_ood")
    return _settings(BundleSettings, {"target": target, "out": out, **options}).run(run, quiet)


@_library_output
def run_pipeline(path: PathLike, *, quiet: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                                 dict[str, Any] | None]:
    """Run a pipeline file (docs/pipeline.md); returns (finetune manifest, bench reports, bundle.json
    or None). Raises ConfigError for a bad file (naming the key) before anything runs."""
    from .pipeline import load_pipeline
    from .pipeline import run_pipeline as run

    load_pipeline(Path(path))
    _require_training()
    return run(Path(path), quiet=quiet)


def open_bundle(path: PathLike, **kwargs: Any) -> Any:
    """Open a bundle for inference (``edge_tl.runtime.Runtime``; see ``edge_tl.runtime``)."""
    from .runtime import open_bundle as run_open

    return run_open(path, **kwargs)


__all__ = ["adapt", "bench", "bundle", "export", "finetune", "open_bundle", "prune", "run_pipeline"]
