"""Artifact manifests, content hashes and atomic writes.

Every stage writes its files under a temporary name and renames them into place, so an interrupted
run never leaves a half-written file where a good one was. Each stage folder carries a
``manifest.json`` naming its parent artifact by sha256, which is how a later stage (or a device)
knows exactly what it was built from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ArtifactError

MANIFEST = "manifest.json"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; artifacts are meant to be shared
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically (sorted keys off, indented, numpy scalars converted)."""
    write_bytes(dest, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, turning a missing or broken file into an ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"missing {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc


def versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact, for whatever is importable without cost."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "edge-tl": _edge_tl_version()}
    for dist in ("torch", "torchvision", "onnx", "onnxruntime", "openvino", "nncf", "torch-pruning",
                 "tensorrt", "numpy", "pillow"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def _edge_tl_version() -> str:
    from . import __version__

    return __version__


def host_info() -> dict[str, Any]:
    """What machine a measurement or build was made on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
    }


def write_manifest(folder: str | os.PathLike[str], stage: str, *, parent: Path | None = None,
                   files: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    """Write ``folder/manifest.json`` with hashes of ``files`` and the parent artifact's hash.

    Call it last: a folder whose manifest exists is complete.
    """
    folder = Path(folder)
    manifest: dict[str, Any] = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parent": None,
        "files": {name: sha256_file(folder / name) for name in (files or [])},
        "versions": versions(),
    }
    if parent is not None:
        manifest["parent"] = {"path": str(parent), "sha256": sha256_file(parent)}
    manifest.update(fields)
    write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """Read a stage's manifest; with ``verify``, check every listed file's sha256."""
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST)
    if verify:
        for name, digest in manifest.get("files", {}).items():
            path = folder / name
            if not path.is_file():
                raise ArtifactError(f"{path} is listed in {folder / MANIFEST} but missing")
            if sha256_file(path) != digest:
                raise ArtifactError(f"{path} changed since it was written (sha256 mismatch)")
    return manifest


@contextlib.contextmanager
def staged_folder(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a whole stage folder under a temporary name, then swap it in for ``dest``.

    If the block raises, ``dest`` is left exactly as it was (a previous good artifact survives a
    crash or Ctrl-C mid-stage).
    """
    import shutil

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
