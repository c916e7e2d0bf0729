"""The task a run is: the one place the classify / anomaly choice is made, for the CLI, the pipeline file
and the API. It sits above ``stages`` and ``anomaly`` (``anomaly.fit`` uses the fine-tune's preprocessing
helpers, so ``stages.finetune`` cannot import it back): the choice imports both, neither imports it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError

TASKS = ("classify", "anomaly", "detect")
# The finetune options by where they go, under the names the CLI and the API share: every task's, the
# classifier's TrainConfig fields, and anomaly.fit's (the labelled folder is ``val`` there, ``val_dir`` here).
COMMON_OPTIONS = ("task", "arch", "weights", "resize", "input_size", "seed", "engine", "quiet", "val_fraction",
                  "baseline")
TRAIN_OPTIONS = ("mode", "epochs", "unfreeze", "progressive", "lr", "batch_size", "device", "workers", "cache_mb",
                 "patience", "views", "backbone_lr_scale", "balance", "max_escape", "ok_class")
ANOMALY_OPTIONS = {"method": "method", "val": "val_dir", "ok_class": "ok_class", "holdout": "holdout",
                   "coreset": "coreset", "bank_size": "bank_size", "dim": "dim", "clusters": "clusters",
                   "max_false_reject": "max_false_reject"}
# The detector's options; those it has defaults of its own for (mode, input size, batch size, views ...) are passed
# only when the user gave them.
DETECT_OPTIONS = ("mode", "epochs", "unfreeze", "lr", "batch_size", "device", "views", "patience", "format",
                  "input_size")
DETECT_OWN_DEFAULTS = ("mode", "batch_size", "input_size", "unfreeze", "patience", "views")


def fit_task_options(options: dict[str, Any], given: set[str] | None = None) -> dict[str, Any]:
    """:func:`fit_task`'s keyword arguments from one flat dict of finetune options (a command's or an API
    call's parameters): the common ones as they are, the rest sorted into ``train``, ``anomaly`` and
    ``detect``. ``given``: the options the user set (None: all), for the detector's own defaults."""
    return {**{k: options[k] for k in COMMON_OPTIONS},
            "train": {k: options[k] for k in TRAIN_OPTIONS},
            "anomaly": {dest: options[k] for k, dest in ANOMALY_OPTIONS.items()},
            "detect": {k: options[k] for k in DETECT_OPTIONS
                       if k not in DETECT_OWN_DEFAULTS or given is None or k in given}}


def task_option_error(task: str, weights: str, baseline: str) -> tuple[str, str] | None:
    """(option, why) when an option does not go with ``task``, else None: the one check behind the
    CLI's, the pipeline file's and the API's errors, each of which names the option its own way
    (``--baseline``, ``finetune.baseline``, ``baseline=``). ``why`` reads after "is for the classify
    task"; for an unknown task the option is "task" and ``why`` is the whole message."""
    from .weights import RUN_PREFIX

    if task not in TASKS:
        return "task", f"unknown task {task!r}; choose {' or '.join(TASKS)}"
    if task != "classify" and baseline != "none":
        return "baseline", f" (an {task} model has no from-scratch counterpart)"
    if task != "classify" and weights.startswith(RUN_PREFIX):
        return "weights", f"; an {task} model starts from imagenet, none or a state_dict file"
    return None


def unused_option(task: str, given: set[str] | frozenset[str]) -> tuple[str, str] | None:
    """(option, the tasks that use it) for the first option in ``given`` (those the user set) that ``task``
    would silently ignore, else None: ``--task anomaly --unfreeze 3`` trained nothing and said nothing. The
    one check behind the CLI's, the pipeline file's and the API's errors, each spelling the option its way."""
    used = {"classify": {*TRAIN_OPTIONS}, "anomaly": {*ANOMALY_OPTIONS}, "detect": {*DETECT_OPTIONS}}
    for name in sorted(given):
        if name in COMMON_OPTIONS or task not in used or name in used[task]:
            continue
        users = [t for t in TASKS if name in used[t]]
        if users:  # an option of no task (data, out) is the settings model's business
            return name, " or ".join(users)
    return None


def fit_task(data_dir: str | Path, out: str | Path, *, task: str = "classify", arch: str = "mobilenet_v2",
             weights: str = "imagenet", resize: str | None = None, input_size: int | None = None, seed: int = 0,
             engine: str = "auto", quiet: bool = True, val_fraction: float = 0.2, baseline: str = "none",
             train: dict[str, Any] | None = None, anomaly: dict[str, Any] | None = None,
             detect: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``finetune`` stage of every task, chosen here once for the CLI, the pipeline and the API.

    ``task="classify"``: ``stages.finetune.finetune`` with a ``TrainConfig`` of ``train`` (its fields: mode, epochs,
    unfreeze, ...) plus ``seed``, ``engine`` and ``quiet``. ``task="anomaly"``: ``anomaly.fit.fit_anomaly``
    with ``anomaly`` (method, val_dir, ok_class, holdout, coreset, bank_size, dim, clusters,
    max_false_reject). ``task="detect"``: ``detect.train.fit_detector`` with ``detect`` (mode, epochs, input size,
    format ...: only those given, the detector has defaults of its own). The other tasks' dicts are not read; the
    front doors refuse an option the user gave for another task (:func:`unused_option`).
    Returns the stage's manifest; ConfigError
    for an option that does not go with the task (:func:`task_option_error`)."""
    wrong = task_option_error(task, weights, baseline)
    if wrong is not None:
        raise ConfigError(wrong[1] if wrong[0] == "task" else
                          f"{wrong[0]}{' run:' if wrong[0] == 'weights' else ''} is for task='classify'{wrong[1]}")
    if task == "detect":
        from .detect.train import fit_detector

        options = {k: v for k, v in (detect or {}).items() if v is not None}
        return fit_detector(data_dir, out, arch=arch, weights=weights, seed=seed, quiet=quiet,
                            val_fraction=val_fraction, engine=engine, **(({"resize": resize} if resize else {})
                                                                           | options))
    if task == "anomaly":
        from .anomaly.fit import fit_anomaly

        return fit_anomaly(data_dir, out, arch=arch, weights=weights, resize=resize, input_size=input_size,
                           seed=seed, engine=engine, quiet=quiet, **(anomaly or {}))
    from .stages.finetune import finetune
    from .training import TrainConfig

    cfg = TrainConfig(**(train or {}), seed=seed, engine=engine, quiet=quiet)
    return finetune(data_dir, out, arch=arch, weights=weights, val_fraction=val_fraction, train_cfg=cfg,
                    resize=resize, input_size=input_size, baseline=baseline)
