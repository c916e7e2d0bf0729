"""Image decoding and the preprocessing contract, with numpy and Pillow only.

Training, evaluation, calibration, the bundle runtime and the device all preprocess through
``Preprocess.__call__``, so "the same preprocessing everywhere" is one function rather than a
promise kept by several. It reproduces torchvision's ``ImageClassification`` transform on PIL
images (resize of the short side with antialiasing, centre crop, scale to [0, 1], normalise).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

# Truncated files must fail to decode, not come back half grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_INTERP = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without saturating high bit depths.

    Pillow's own ``convert("RGB")`` clips 16-bit and 32-bit greyscale to 255 (a white image), so
    those are rescaled by their nominal range first.
    """
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else (255.0 if arr.max() <= 255 else 65535.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file fully into RGB; raises OSError/ValueError on corrupt or empty files."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def from_array(array: np.ndarray, color: str = "RGB") -> Image.Image:
    """Wrap a uint8 HxWxC (or HxW) camera frame as an RGB PIL image; ``color`` is RGB or BGR."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got {arr.dtype}")
    if arr.ndim == 2:
        return Image.fromarray(arr, "L").convert("RGB")
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    arr = arr[:, :, :3]
    if color.upper() == "BGR":
        arr = arr[:, :, ::-1]
    elif color.upper() != "RGB":
        raise ValueError(f"color must be RGB or BGR, got {color!r}")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


@dataclass(frozen=True)
class Preprocess:
    """The preprocessing contract that travels with every artifact (manifest key ``preprocessing``)."""

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    color: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["mean"], known["std"] = tuple(known["mean"]), tuple(known["std"])
        return cls(**known)

    def resize_and_crop(self, img: Image.Image) -> Image.Image:
        """Short side to ``resize`` (as torchvision.transforms.Resize(int)), then centre ``crop``."""
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), _INTERP[self.interpolation], reducing_gap=None)
        return center_crop(img, self.crop)

    def normalize(self, img: Image.Image) -> np.ndarray:
        """RGB PIL image -> CHW float32, scaled and normalised."""
        arr = np.asarray(img, dtype=np.float32) * np.float32(self.scale)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def __call__(self, img: Image.Image) -> np.ndarray:
        """Evaluation preprocessing of one RGB image to a CHW float32 array."""
        return self.normalize(self.resize_and_crop(img))

    def batch(self, images: list[Image.Image]) -> np.ndarray:
        """Preprocess several images into one NCHW float32 array."""
        return np.stack([self(im) for im in images]) if images else np.zeros(
            (0, 3, self.crop, self.crop), np.float32)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Centre crop as torchvision does (padding with black when the image is smaller)."""
    w, h = img.size
    if w < size or h < size:
        canvas = Image.new("RGB", (max(w, size), max(h, size)))
        canvas.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        img, (w, h) = canvas, canvas.size
    top = round((h - size) / 2.0)
    left = round((w - size) / 2.0)
    return img.crop((left, top, left + size, top + size))
