"""Anomaly methods by name: the one registry ``fit``, the model builder, the CLI and the pipeline file read.

A method is one file (``padim.py``, ``patchcore.py``) that calls :func:`register` with an
:class:`AnomalyMethod`: how it fits good images' patch features (its statistics or memory bank) and the
torch head that scores patches against them. The shared stage flow (images, features, modes, threshold,
manifest) is ``fit.py``'s; the graph around the head is ``model.py``'s. A new method is a new file here
and one import line in ``anomaly/__init__.py``. Torch-free: the heads are built inside functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class FitOptions:
    """The fit options a method may use (each method ignores the others')."""

    coreset: float = 0.01  # PatchCore: bank as a fraction of the training patches
    bank_size: int | None = None  # PatchCore: bank entries (overrides coreset)
    seed: int = 0


@dataclass(frozen=True)
class Fitted:
    """What a method's fit returns."""

    buffers: dict[str, np.ndarray]  # the head's state_dict entries (float32), by buffer name
    size: int  # AnomalySpec.bank: PatchCore's bank entries, PaDiM's patch positions
    stored: tuple[str, ...]  # the buffers the manifest's bank size and sha256 cover, in order
    info: dict[str, Any] = field(default_factory=dict)  # the manifest's method fields


@dataclass(frozen=True)
class AnomalyMethod:
    name: str
    source: str  # the paper, for the manifest
    summary: str  # one phrase for --method's help
    # (features per batch [(B, D, h, w)], mode of each image (N,), options) -> Fitted
    fit: Callable[[list[np.ndarray], np.ndarray, FitOptions], Fitted]
    # (bank, dim, clusters) -> the head module (features (N, D, h, w) -> raw distance map (N, 1, h, w))
    head: Callable[[int, int, int], Any]
    default_dim: Callable[[int], int]  # feature channels -> projected dimension when --dim is not given
    modes: bool = False  # whether --clusters may split the good images into modes (one fit each)
    why_no_modes: str = ""  # the --clusters error's reason when it may not


_METHODS: dict[str, AnomalyMethod] = {}


def register(method: AnomalyMethod) -> AnomalyMethod:
    """Make ``method`` available under its name (to ``--method``, the fit and the model builder)."""
    _METHODS[method.name] = method
    return method


def names() -> tuple[str, ...]:
    """The registered methods' names, in registration order (the default first)."""
    return tuple(_METHODS)


def method_for(name: str) -> AnomalyMethod:
    """The method registered as ``name``; ConfigError naming the choices for an unknown one."""
    if name not in _METHODS:
        raise ConfigError(f"unknown --method {name!r}; choose {', '.join(_METHODS)}")
    return _METHODS[name]
