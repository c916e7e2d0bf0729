"""Model builders by task: how :func:`edge_tl.checkpoint.load_model` rebuilds a saved model that is not a
plain classifier, without the checkpoint layer importing the task's code.

A task registers a builder for its name (``anomaly.model`` registers ``"anomaly"``); the package root
imports the built-in tasks, so the registry is filled whenever ``edge_tl`` is imported. A builder takes the
stage's manifest and returns the module skeleton (eval mode) its ``model.pt`` state_dict loads into.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

Builder = Callable[[dict[str, Any]], Any]

_BUILDERS: dict[str, Builder] = {}


def register(task: str, builder: Builder) -> None:
    """Make ``builder`` rebuild the saved models of ``task`` (a manifest's ``task`` value)."""
    _BUILDERS[task] = builder


def builder_for(task: str | None) -> Builder | None:
    """The builder registered for ``task``; None for a plain classifier (or an unknown task)."""
    return _BUILDERS.get(task) if task else None


# A task's own steps where a lower layer branches on the task (``stages.export``, ``bench.run``): "module:function"
# names, imported when called, so the lower layer never imports the task's code (which imports the stages).
_STEPS: dict[tuple[str, str], str] = {}


def register_step(task: str, step: str, target: str) -> None:
    """Make ``step`` (e.g. ``"export"``) of a ``task`` run call ``target`` ("package.module:function")."""
    _STEPS[(task, step)] = target


def step_for(task: str | None, step: str) -> Callable[..., Any] | None:
    """The function registered for ``step`` of ``task`` (imported now); None when the task has none."""
    target = _STEPS.get((task, step)) if task else None
    if target is None:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
