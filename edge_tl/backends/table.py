"""The backend table: every backend's ``BackendFacts``, collected from its folder.

Each backend is a folder, ``backends/<name>_/``, whose ``__init__.py`` declares its facts (``FACTS``:
runner, converter, quantiser, model file, graph format, pip extra, thread safety, what a device needs)
and holds their modules. Targets, export, convert, quantise, bench, bundle, select and the runtime read
these facts instead of comparing a backend's name (``tests/test_backend_table.py`` fails on such a
comparison outside ``edge_tl/backends/``). Adding a backend: its folder, its import and its place in
``_FOLDERS`` below, a pip extra in ``pyproject.toml`` (and a profile in ``targets/``). This module imports
nothing heavy: the torch-free runtime reads it (each folder's ``__init__`` imports only ``descriptor``).
"""

from __future__ import annotations

from ..errors import ConfigError
from .descriptor import BackendFacts, GraphFormat
from .onnxruntime_ import FACTS as ONNXRUNTIME
from .openvino_ import FACTS as OPENVINO
from .tensorrt_ import FACTS as TENSORRT
from .torch_ import FACTS as TORCH

# One line per backend folder; the order is the order messages list the backends in.
_FOLDERS = (TORCH, ONNXRUNTIME, OPENVINO, TENSORRT)

BACKENDS: dict[str, BackendFacts] = {b.name: b for b in _FOLDERS}


def facts(backend: str) -> BackendFacts:
    """The table's entry for ``backend``; ConfigError naming the known ones for any other name."""
    try:
        return BACKENDS[backend]
    except KeyError:
        raise ConfigError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}") from None


__all__ = ["BACKENDS", "BackendFacts", "GraphFormat", "facts"]
