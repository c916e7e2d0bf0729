"""Anomaly heat maps as PNG overlays (numpy and Pillow only: this runs on the device)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..manifest import atomic_path


def overlay(crop: Image.Image, amap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``crop`` (the model's input image, RGB) with ``amap`` (h, w, normalised: 1.0 = the threshold)
    drawn over it: transparent below half the threshold, then yellow to red, opaque from 1.5×."""
    heat = Image.fromarray(np.asarray(amap, np.float32), mode="F").resize(crop.size, Image.Resampling.BILINEAR)
    h = np.clip((np.asarray(heat) - 0.5) / 1.0, 0.0, 1.0)  # 0 at 0.5×, 1 at 1.5× the threshold
    rgb = np.stack([np.full_like(h, 255.0), 255.0 * (1.0 - h), np.zeros_like(h)], -1)
    a = (alpha * h)[..., None]
    base = np.asarray(crop.convert("RGB"), np.float32)
    return Image.fromarray((base * (1 - a) + rgb * a).clip(0, 255).astype(np.uint8), "RGB")


def save_overlay(crop: Image.Image, amap: np.ndarray, dest: Path) -> Path:
    """Write the overlay atomically to ``dest`` (PNG)."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        overlay(crop, amap).save(f, format="PNG")
    return dest
