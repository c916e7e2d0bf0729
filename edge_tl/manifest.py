"""Artifact manifests, content hashes and atomic writes.

Every stage writes its files under a temporary name and renames them into place, so an interrupted
run never leaves a half-written file where a good one was. Each stage folder carries a
``manifest.json`` naming its parent artifact by sha256, which is how a later stage (or a device)
knows exactly what it was built from.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ArtifactError

MANIFEST = "manifest.json"

log = logging.getLogger("edge_tl")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(dest: Path) -> list[Path]:
    """Remove temporaries of ``dest`` left by a killed process (SIGTERM/SIGKILL skip ``finally``).

    Temporaries are named ``.NAME.PID-XXXX.tmp`` (staging) and ``.NAME.old-PID`` (swap); one whose
    process is gone, or that carries no PID (an older edge-tl's ``.NAME.XXXX.tmp``), is stale. A live
    process's temporary (the same stage running concurrently) is left alone. Returns what was removed.
    """
    import re
    import shutil

    # mkdtemp/mkstemp add 8 characters of [a-z0-9_]; a sibling's temporaries (".NAME.json.…") never match.
    name = re.escape(dest.name)
    pattern = re.compile(rf"^\.{name}\.(?:(?:(\d+)-)?[a-z0-9_]{{8}}\.tmp|old-(\d+))$")
    removed = []
    try:
        entries = list(dest.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None:
            continue
        pid = m.group(1) or m.group(2)
        if pid is not None and _pid_alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


def _named(exc: OSError, path: Path) -> OSError:
    """``exc`` with ``path`` as its file name when it has none (a failed write(2) names no file)."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


def _write_failure(exc: BaseException, dest: Path, written: Path) -> OSError | None:
    """The OS reason behind a failed write that was not reported as an OSError (torch's and
    OpenVINO's C++ writers raise RuntimeError "file write failed"), or None when there is none to see:
    the disk is full, or a file reached the file-size limit (RLIMIT_FSIZE, ``ulimit -f``)."""
    if isinstance(exc, OSError):
        return _named(exc, dest)
    if not isinstance(exc, Exception):
        return None
    with contextlib.suppress(OSError):
        st = os.statvfs(written if written.is_dir() else written.parent)
        if st.f_bavail == 0:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))
    limit = _fsize_limit()
    if limit is not None:
        files = [written] if written.is_file() else list(written.rglob("*")) if written.is_dir() else []
        with contextlib.suppress(OSError):
            if any(f.is_file() and f.stat().st_size >= limit for f in files):
                return OSError(errno.EFBIG, f"{os.strerror(errno.EFBIG)} (the file-size limit, ulimit -f, is "
                               f"{limit} bytes)", str(dest))
    return None


def _fsize_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def check_writable(*paths: str | os.PathLike[str], need: int = 1 << 20) -> None:
    """Raise OSError naming the path and the reason unless each output folder in ``paths`` can be
    written, before a stage starts long work (a minute of training, then "cannot write --out").

    A folder that does not exist yet is checked at its first existing ancestor, which must be a
    folder (``--out`` below a regular file is ENOTDIR) where a file can be created (a probe file is
    made and removed: permissions, read-only mounts and ACLs all answer the same way), with at least
    ``need`` bytes free and a file-size limit (``ulimit -f``) of at least ``need`` bytes. Nothing is
    left behind: the folders themselves are only made when the stage writes.
    """
    for raw in paths:
        path = Path(raw)
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise OSError(errno.ENOTDIR, f"{os.strerror(errno.ENOTDIR)} ({probe} is a file)", str(path))
        try:
            fd, tmp = tempfile.mkstemp(prefix=".edge-tl-probe-", dir=probe)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OSError(exc.errno, reason if probe == path else f"{reason} ({probe})", str(path)) from None
        os.close(fd)
        os.unlink(tmp)
        free = None
        with contextlib.suppress(OSError):
            st = os.statvfs(probe)
            free = st.f_bavail * st.f_frsize
        if free is not None and free < need:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({free} bytes free at {probe}, at least "
                          f"{need} needed)", str(path))
        limit = _fsize_limit()
        if limit is not None and limit < need:
            raise OSError(errno.EFBIG, f"{os.strerror(errno.EFBIG)}: the file-size limit (ulimit -f) is {limit} "
                          f"bytes, below the {need} an artifact needs", str(path))


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the block succeeds.

    A failure to write is an OSError naming ``dest`` (see ``_write_failure``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}-", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; artifacts are meant to be shared
        os.replace(tmp_path, dest)
    except BaseException as exc:
        reason = _write_failure(exc, dest, tmp_path)
        if reason is None or reason is exc:
            raise
        raise reason from exc
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


# The instruction-set extensions that decide how fast INT8 and fp32 kernels run: the same graph is 2-4x
# apart between an AVX2-only box and one with VNNI or AMX, so no latency figure means much without them.
CPU_FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
                         "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "bf16")


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The speed-relevant ISA flags of this CPU, from ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``).

    Returns them in :data:`CPU_FLAGS_THAT_MATTER` order; an empty list where the file is unreadable
    (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    have: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            have.update(value.split())
            break
    return [f for f in CPU_FLAGS_THAT_MATTER if f in have]


def host_info() -> dict[str, Any]:
    """What machine a measurement or build was made on, with the CPU's speed-relevant ISA flags."""
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
        "cpu_flags": cpu_flags(),
    }


def host_text(host: dict[str, Any] | None) -> str:
    """"AMD EPYC 9R14, 2 CPUs, x86_64, flags avx2 avx512f avx512_vnni" for a :func:`host_info` dict;
    "host unknown" for none (reports older than the field)."""
    if not host:
        return "host unknown"
    flags = host.get("cpu_flags")
    flag_text = ("flags not recorded" if flags is None else
                 "flags " + " ".join(flags) if flags else "none of the AVX2/VNNI/AMX/NEON flags")
    return f"{host.get('cpu', '?')}, {host.get('cpu_count', '?')} CPUs, {host.get('machine', '?')}, {flag_text}"


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
    crash or Ctrl-C mid-stage). A process killed mid-stage cannot clean up after itself: its
    ``.NAME.PID-XXXX.tmp`` folder is removed by the next run of the stage (``clean_stale``). A failure
    to write is an OSError naming ``dest`` (see ``_write_failure``).
    """
    import shutil

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in clean_stale(dest):
        log.info("removed %s, left by an interrupted run", stale)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}-", suffix=".tmp", dir=dest.parent))
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
    except BaseException as exc:
        reason = _write_failure(exc, dest, tmp)
        if isinstance(reason, OSError) and reason.filename and Path(reason.filename).is_relative_to(tmp):
            # A file of the hidden staging folder (an atomic write inside it): name it where it belongs.
            reason = OSError(reason.errno, reason.strerror, str(dest / Path(reason.filename).relative_to(tmp)))
        if reason is None or reason is exc:
            raise
        raise reason from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
