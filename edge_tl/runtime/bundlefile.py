"""The bundle on disk: ``bundle.json``, ``SHA256SUMS``, the model file(s) and ``golden/`` images.

::

    BUNDLE/
      bundle.json   format version, classes, preprocessing contract, decision policy, target profile,
                    model file(s), golden expectations + tolerance, versions, files + sha256
      SHA256SUMS    sha256 of every other file, bundle.json included (``sha256sum -c SHA256SUMS`` works)
      model.onnx | model.xml + model.bin      (TensorRT: model.onnx, the engine is built on the device)
      golden/NN-<class>-<name>                the original image files, byte for byte

A bundle is opened only when every file listed in SHA256SUMS still has its hash (a changed byte is a
refusal naming the file), ``bundle.json`` agrees with SHA256SUMS, and the format version is one this
runtime reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..manifest import sha256_file

BUNDLE_JSON = "bundle.json"
SUMS = "SHA256SUMS"
FORMAT = "edge-tl-bundle"
FORMAT_VERSION = 1
GOLDEN_DIR = "golden"

# Golden-image tolerance by the precision the bundle runs in: |got - expected| <= atol + rtol * |expected|
# on every logit, and the same top-1. Expected logits come from the backend on the build host (for
# TensorRT from ONNX Runtime on the same graph), so the allowance covers another host, another backend
# build and, for fp16/int8, another kernel choice. fp32 drift measured across ORT/OpenVINO/torch is ~2e-5.
TOLERANCE = {
    "fp32": {"atol": 1e-3, "rtol": 1e-3},
    "bf16": {"atol": 0.15, "rtol": 0.03},
    "fp16": {"atol": 0.1, "rtol": 0.02},
    "int8": {"atol": 0.35, "rtol": 0.05},
}


def write_sums(folder: Path, names: list[str]) -> None:
    """Write ``folder/SHA256SUMS`` for ``names`` (sha256sum's format: digest, two spaces, name)."""
    lines = [f"{sha256_file(folder / n)}  {n}\n" for n in sorted(names)]
    (folder / SUMS).write_text("".join(lines))


def read_sums(folder: Path) -> dict[str, str]:
    """Parse SHA256SUMS; a missing or malformed file is an ArtifactError."""
    path = folder / SUMS
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: the bundle cannot be verified")
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or any(c not in "0123456789abcdef" for c in digest):
            raise ArtifactError(f"{path} line {n} is malformed: the bundle was changed or corrupted")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{path} line {n} names a file outside the bundle: {name}")
        out[name] = digest
    if BUNDLE_JSON not in out:
        raise ArtifactError(f"{path} does not cover {BUNDLE_JSON}")
    return out


def verify_files(folder: Path, sums: dict[str, str]) -> None:
    """Check every hash in ``sums``; the first mismatch or missing file raises, naming it."""
    for name, digest in sums.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"bundle file {path} is missing; refusing to load the bundle")
        if sha256_file(path) != digest:
            raise ArtifactError(f"bundle file {path} does not match its sha256 in {SUMS} (changed or "
                                "corrupted); refusing to load the bundle")


def read_bundle(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read ``bundle.json``; with ``verify`` (the default) check every file's hash and the format first."""
    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError(f"bundle not found: {folder}")
    if not (folder / BUNDLE_JSON).is_file():
        raise ArtifactError(f"{folder} is not an edge-tl bundle (no {BUNDLE_JSON}); make one with "
                            "`edge-tl bundle RUN --target T --out DIR`")
    sums = read_sums(folder) if verify else {}
    if verify:
        verify_files(folder, sums)
    try:
        manifest = json.loads((folder / BUNDLE_JSON).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{folder / BUNDLE_JSON} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{folder / BUNDLE_JSON} is not an edge-tl bundle manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(f"{folder} is bundle format {version}; this edge-tl reads format "
                            f"{FORMAT_VERSION} and older: upgrade edge-tl on this device")
    if verify:
        for name, digest in manifest.get("files", {}).items():
            if sums.get(name) != digest:
                raise ArtifactError(f"{folder / BUNDLE_JSON} and {SUMS} disagree about {name}; refusing to "
                                    "load the bundle")
    return manifest


def tolerance_for(precision: str) -> dict[str, float]:
    """The golden-image tolerance a bundle of ``precision`` states."""
    return dict(TOLERANCE.get(precision, TOLERANCE["int8"]))
