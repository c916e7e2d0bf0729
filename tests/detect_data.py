"""A tiny synthetic detection set with exact boxes, written in the Pascal VOC, COCO and YOLO layouts.

Each image is a dark, noisy background with one or two non-overlapping rectangles: class ``bright`` is a
flat bright rectangle, class ``striped`` a rectangle of bright and dark horizontal stripes. Box corners are
whole pixels, so every layout stores them exactly (YOLO as fractions of the image, which read back to the
same pixels within float rounding).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["bright", "striped"]


def synthetic_images(n: int = 24, size: int = 96, seed: int = 0,
                     ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``n`` (image (size, size, 3) uint8, boxes (N, 4) float32 x1 y1 x2 y2, labels (N,)) triples."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.normal(30, 8, (size, size)).clip(0, 255)
        boxes, labels = [], []
        for k in range(1 + i % 2):
            for _ in range(50):
                w, h = (int(v) for v in rng.integers(size // 5, size // 2, 2))
                x1, y1 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                cand = (x1, y1, x1 + w, y1 + h)
                if all(cand[2] <= b[0] - 2 or cand[0] >= b[2] + 2 or cand[3] <= b[1] - 2 or cand[1] >= b[3] + 2
                       for b in boxes):
                    break
            label = (i + k) % 2
            x1, y1, x2, y2 = cand
            if label == 0:
                img[y1:y2, x1:x2] = 220
            else:
                yy = np.arange(y1, y2)[:, None]
                img[y1:y2, x1:x2] = np.where((yy // 3) % 2 == 0, 230, 60)
            boxes.append(cand)
            labels.append(label)
        arr = np.repeat(img.astype(np.uint8)[:, :, None], 3, 2)
        out.append((arr, np.asarray(boxes, np.float32), np.asarray(labels, np.int64)))
    return out


def _voc_xml(name: str, size: int, boxes: np.ndarray, labels: np.ndarray) -> str:
    objs = "".join(
        f"<object><name>{CLASSES[c]}</name><difficult>0</difficult><bndbox><xmin>{b[0]:g}</xmin><ymin>{b[1]:g}</ymin>"
        f"<xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax></bndbox></object>" for b, c in zip(boxes, labels, strict=True))
    return (f"<annotation><filename>{name}</filename><size><width>{size}</width><height>{size}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def write_set(root: Path, layout: str, n: int = 24, size: int = 96, seed: int = 0) -> Path:
    """Write the synthetic set under ``root`` in ``layout`` (voc | coco | yolo); returns ``root``."""
    data = synthetic_images(n, size, seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    coco: dict = {"images": [], "annotations": [],
                  "categories": [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)]}
    for i, (arr, boxes, labels) in enumerate(data):
        name = f"img_{i:03d}.png"
        Image.fromarray(arr).save(root / "images" / name)
        if layout == "voc":
            (root / "annotations").mkdir(exist_ok=True)
            (root / "annotations" / f"img_{i:03d}.xml").write_text(_voc_xml(name, size, boxes, labels))
        elif layout == "yolo":
            (root / "labels").mkdir(exist_ok=True)
            lines = [f"{c} {(b[0] + b[2]) / 2 / size:.8f} {(b[1] + b[3]) / 2 / size:.8f} {(b[2] - b[0]) / size:.8f} "
                     f"{(b[3] - b[1]) / size:.8f}" for b, c in zip(boxes, labels, strict=True)]
            (root / "labels" / f"img_{i:03d}.txt").write_text("\n".join(lines) + "\n")
        elif layout == "coco":
            coco["images"].append({"id": i + 1, "file_name": name, "width": size, "height": size})
            for b, c in zip(boxes, labels, strict=True):
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1,
                                            "category_id": int(c) + 1, "iscrowd": 0,
                                            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                                            "area": float((b[2] - b[0]) * (b[3] - b[1]))})
        else:
            raise ValueError(layout)
    if layout == "yolo":
        (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    if layout == "coco":
        (root / "annotations.json").write_text(json.dumps(coco))
    return root
