"""What a detection bench measures on: the run's held-out validation split, or another labelled box folder
(``bench --data DIR``), each with the identity its reports carry (``eval_set``).

The split is read by :func:`.export.held_out` (every validation image checked against the sha256
``split.json`` records); a ``--data`` folder by :func:`.data.read_detection_set` in any layout it reads
(Pascal VOC, COCO, YOLO) with the run's classes, so a box of another class is a bad annotation and its
image is left out, named in a warning and counted in the identity (``left_out``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from .export import HeldOut


def split_identity(stage: Path, n: int) -> dict[str, Any]:
    """The report's ``eval_set`` for a detection run's held-out validation rows (``split.json``), named by
    the sha256 of their paths and boxes (a changed split is another evaluation set)."""
    from ..manifest import read_json

    split = read_json(stage / "split.json")
    rows = sorted(json.dumps(r, sort_keys=True) for r in split.get("val") or [])
    digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    return {"kind": "validation split", "name": "validation split", "folder": split.get("root"),
            "path": str(stage / "split.json"), "n": n, "sha256": digest}


def folder_set(manifest: dict[str, Any], data_dir: str | Path, quiet: bool = True) -> tuple[HeldOut, dict[str, Any]]:
    """Every usable image of the labelled box folder ``data_dir`` (``bench --data``), decoded through the
    run's preprocessing (``manifest``: the fine-tune's), and its ``eval_set``: kind ``folder``, name, folder,
    layout, image and box counts, images left out, and ``sha256`` of the image list (relative path, boxes and
    labels, sha256 of the file's bytes: ``evalset.list_sha256``, as a classifier's ``--data`` set).

    DataError (one line) when the folder is missing, holds no annotation or no usable box."""
    from ..evalset import list_sha256
    from ..preprocess import Preprocess
    from .data import read_detection_set
    from .train import decode_frames, image_digests, normalise

    root = Path(data_dir)
    ds = read_detection_set(root, "auto", list(manifest["classes"]))
    pre = Preprocess.from_dict(manifest["preprocessing"])
    frames = decode_frames(ds.root, ds.images, pre, quiet, "decode (--data)")
    digests = image_digests(ds.root, [a.path for a in ds.images])
    entries = [(a.path, json.dumps({"boxes": np.round(a.boxes, 3).tolist(), "labels": a.labels.tolist()}),
                digests[a.path]) for a in ds.images]
    ident = {"kind": "folder", "name": root.resolve().name, "folder": str(root.resolve()), "n": len(ds.images),
             "sha256": list_sha256(entries), "format": ds.format, "boxes": ds.n_boxes, "left_out": len(ds.issues)}
    return HeldOut(frames, normalise(frames.images, pre).numpy(), pre, ds.root), ident


def data_note(ident: dict[str, Any]) -> str:
    """The report's note saying which folder a ``--data`` bench measured on."""
    left = f"; {ident['left_out']} image(s) left out (bad annotation, another class, or unreadable)" \
        if ident.get("left_out") else ""
    return (f"bench --data: measured on {ident['folder']} ({ident['format']} layout, {ident['n']} images, "
            f"{ident['boxes']} boxes{left}), not on the run's validation split")
