"""Image decoding and the preprocessing contract, with numpy and Pillow only.

Training, evaluation, calibration, the bundle runtime and the device all preprocess through
``Preprocess.__call__``, so "the same preprocessing everywhere" is one function rather than a
promise kept by several. It reproduces torchvision's ``ImageClassification`` transform on PIL
images (resize of the short side with antialiasing, centre crop, scale to [0, 1], normalise).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

log = logging.getLogger("edge_tl")

# Truncated files must fail to decode, not come back half grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_INTERP = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

RESIZE_MODES = ("shorter", "full", "letterbox")

# Formats never read, though Pillow registers them: EPS is rendered by running Ghostscript on the file
# (an external program on untrusted camera input); WMF/EMF need a Windows handler; MPEG, BUFR, GRIB
# and HDF5 are identify-only stubs (MPEG "decodes" to a black frame: a silent wrong answer).
REFUSED_FORMATS = frozenset({"EPS", "WMF", "MPEG", "BUFR", "GRIB", "HDF5"})


def _readable_formats() -> tuple[list[str], tuple[str, ...]]:
    Image.init()  # load every plugin, so the lists below are complete
    formats = [f for f in Image.OPEN if f not in REFUSED_FORMATS]
    suffixes = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in formats}
    return formats, tuple(sorted(suffixes))


# What folder scans (finetune, bench --data, calibration, predict, watch) take as images: every suffix
# of a format Pillow reads, so a .gif or .jp2 in a class folder is not silently dropped. Files with
# other suffixes are counted and named by the scans, never ignored without a word.
_FORMATS, IMAGE_SUFFIXES = _readable_formats()

# Bounds on one image, so that one file can never take the process's memory. Decoding costs 3 bytes
# a pixel in RGB (a 16-bit frame up to ~10 while it is converted), so 64 Mpx stays under ~0.7 GB and
# is more than any area-scan QC camera delivers (the model sees 224 x 224 of it). The aspect bound is
# for the "shorter" resize, whose long side is unbounded: an 8000 x 1 strip would become 2,048,000 x
# 256 pixels (1.5 GB); at 100:1 it is at most 256 x 25,600 (20 MB), and no part photo is longer.
_DEFAULT_MAX_PIXELS = 64_000_000


def _max_pixels() -> int:
    raw = os.environ.get("EDGE_TL_MAX_PIXELS", "")
    try:
        return int(raw) if raw else _DEFAULT_MAX_PIXELS
    except ValueError:  # a typo in the environment must not stop every import of edge-tl
        warnings.warn(f"EDGE_TL_MAX_PIXELS={raw!r} is not a whole number; using {_DEFAULT_MAX_PIXELS}",
                      stacklevel=1)
        return _DEFAULT_MAX_PIXELS


MAX_PIXELS = _max_pixels()
MAX_ASPECT = 100.0
# Pillow's own bomb check (a warning past 89 Mpx, an error past 179 Mpx) is redundant under MAX_PIXELS;
# only a larger MAX_PIXELS asked for in the environment moves it.
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, MAX_PIXELS)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Bit depths a deeper-than-8-bit integer image is read at (see ``bit_depth``).
CONTAINER_DEPTHS = (10, 12, 14, 16)


class ImageRejected(ValueError):
    """A file that Pillow would decode but that is refused: too many pixels, or too elongated."""


def bit_depth(max_value: int) -> int:
    """The bit depth an integer image deeper than 8 bits is read at: the smallest of 10, 12, 14 and 16
    bits that holds its brightest value (beyond 16 bits: that value's bit length).

    Cameras write 10-, 12- and 14-bit sensor data into 16-bit containers without saying so (PNG,
    TIFF and PGM have no field that every writer fills); dividing 12-bit data by 65535 leaves 17
    grey levels of near-black. The rule is decided per image from its own pixels, so training,
    calibration and the runtime read a file identically.
    """
    value = max(int(max_value), 0)
    for depth in CONTAINER_DEPTHS:
        if value < (1 << depth):
            return depth
    return value.bit_length()


# How a deep image's bit depth was decided (``Image.info["bit_depth_basis"]`` of a decoded image).
BASIS_RANGE = "brightest pixel"
BASIS_SBIT = "sBIT chunk"
BASIS_SBIT_SCALED = "sBIT chunk, data scaled to 16 bits"


def decide_bit_depth(max_value: int, significant_bits: int | None = None) -> tuple[int, str]:
    """(bit depth, basis) an integer image deeper than 8 bits is read at.

    A PNG's sBIT chunk (``significant_bits``) names the sensor's depth: a dark 12-bit frame whose
    brightest pixel is 900 is still divided by 4095, where the range rule (``bit_depth``) alone would
    read it as 10-bit and brighter than it is. The PNG specification has writers scale such data up to
    the full 16 bits; when the pixels exceed the sBIT range they were scaled that way and are divided
    by 65535. Without the chunk, the range rule decides.
    """
    value = max(int(max_value), 0)
    if significant_bits is not None and 1 <= significant_bits <= 16:
        if value < (1 << significant_bits):
            return significant_bits, BASIS_SBIT
        return 16, BASIS_SBIT_SCALED
    return bit_depth(value), BASIS_RANGE


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_significant_bits(path: str | os.PathLike[str]) -> int | None:
    """The colour channels' significant bits from a PNG's sBIT chunk, or None (no chunk, not a PNG).

    Pillow reads the chunk but keeps nothing of it, so the chunks before the image data are walked
    here (lengths only: nothing is decoded). Alpha's entry is left out: it is not image content.
    """
    import struct

    try:
        with open(path, "rb") as fh:
            if fh.read(8) != _PNG_SIGNATURE:
                return None
            colour_type = None
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND"):
                    return None  # sBIT must precede the image data
                if kind == b"IHDR" and length >= 10:
                    colour_type = fh.read(10)[9]
                    fh.seek(length - 10 + 4, os.SEEK_CUR)
                elif kind == b"sBIT" and 1 <= length <= 4:
                    body = fh.read(length)
                    # grey: 1 byte; RGB and palette: 3; grey + alpha: 2; RGBA: 4 (alpha last)
                    colours = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}.get(colour_type if colour_type is not None else 0, 1)
                    return max(body[:colours]) or None
                else:
                    fh.seek(length + 4, os.SEEK_CUR)  # the body and its CRC
    except OSError:
        return None


def _to_8bit(values: np.ndarray, depth: int) -> np.ndarray:
    """Integer samples of ``depth`` bits -> uint8, rounding half up (exactly v * 255 / (2**depth - 1))."""
    top = (1 << depth) - 1
    if depth <= 16:
        # Integer arithmetic: exact, and 4 bytes a sample instead of float64's 8 on big frames.
        v = np.clip(values, 0, top).astype(np.uint32)
        return ((v * 510 + top) // (2 * top)).astype(np.uint8)
    v = np.clip(values.astype(np.float64), 0, top)
    return np.floor(v * (255.0 / top) + 0.5).astype(np.uint8)


def _grey_or_rgb(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 2:
        return Image.fromarray(arr, "L").convert("RGB")
    return Image.fromarray(np.ascontiguousarray(arr[:, :, :3]), "RGB")


def to_rgb(img: Image.Image, significant_bits: int | None = None) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without saturating or crushing high bit depths.

    Pillow's own ``convert("RGB")`` clips 16-bit and 32-bit greyscale to 255 (a white image); integer
    images are rescaled from their bit depth (``decide_bit_depth``: the PNG's sBIT chunk when
    ``significant_bits`` gives it, else the brightest pixel: 12-bit data in a 16-bit file is divided
    by 4095, not 65535), floating-point ones from [0, 1], [0, 255] or their integer bit depth.
    """
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        depth, basis = decide_bit_depth(int(arr.max(initial=0)), significant_bits)
        out = _grey_or_rgb(_to_8bit(arr, depth))
        out.info["bit_depth"], out.info["bit_depth_basis"] = depth, basis
        return out
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(arr.max(initial=0))
        top = 1.0 if peak <= 1.0 else (255.0 if peak <= 255 else float((1 << bit_depth(int(np.ceil(peak)))) - 1))
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def check_size(width: int, height: int) -> None:
    """Raise ImageRejected for an image over MAX_PIXELS or more elongated than MAX_ASPECT (see there)."""
    pixels = width * height
    if pixels > MAX_PIXELS:
        raise ImageRejected(f"{width}x{height} is {pixels / 1e6:.0f} Mpx, over the {MAX_PIXELS / 1e6:.0f} Mpx "
                            "limit for one image (EDGE_TL_MAX_PIXELS)")
    if min(width, height) and max(width, height) / min(width, height) > MAX_ASPECT:
        raise ImageRejected(f"{width}x{height} is more elongated than {MAX_ASPECT:.0f}:1; resizing it would "
                            "need unbounded memory and no part photo has that shape")


# 16-bit colour: Pillow keeps only the high byte of each sample (it has no 16-bit colour mode). A
# second decode of the same file with another unpacker of the same bits per pixel (so PNG's row
# filters undo identically) recovers the rest: for RGB(A) the opposite byte order's unpacker, which
# reads the low bytes; for grey + alpha a 32-bit integer unpacker, which reads grey and alpha whole.
_OTHER_ORDER = {"B": "L", "L": "B", "N": "B" if sys.byteorder == "little" else "L"}
_NATIVE = "L" if sys.byteorder == "little" else "B"


def _rawmode(args: Any) -> str | None:
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _with_rawmode(args: Any, rawmode: str) -> Any:
    return rawmode if isinstance(args, str) else (rawmode, *args[1:])


def _second_decode(img: Image.Image) -> tuple[str, list[Any], str] | None:
    """(mode, tiles, byte order) that decode the rest of a 16-bit colour image, or None for other images.

    Pillow opens 16-bit RGB as "RGB", RGBA as "RGBA" and grey + alpha as "RGBA" (grey repeated), all
    from rawmodes "<layout>;16<byte order>".
    """
    if img.mode not in ("RGB", "RGBA", "LA") or not img.tile:
        return None
    raws = {_rawmode(tile.args) for tile in img.tile}
    if len(raws) != 1:
        return None
    raw = raws.pop()
    if raw is None or raw[:-1] not in ("RGB;16", "RGBA;16", "LA;16") or raw[-1] not in _OTHER_ORDER:
        return None
    order = _NATIVE if raw[-1] == "N" else raw[-1]
    if raw.startswith("LA;"):
        mode, second = "I", f"I;32{order}"
    elif raw.split(";")[0] == img.mode:
        mode, second = img.mode, raw[:-1] + _OTHER_ORDER[raw[-1]]
    else:
        return None
    return mode, [tile._replace(args=_with_rawmode(tile.args, second)) for tile in img.tile], order


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
              7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}  # as ImageOps.exif_transpose


def _deep_colour(path: str | os.PathLike[str], high: Image.Image, plan: tuple[str, list[Any], str],
                 significant_bits: int | None = None) -> Image.Image:
    """8-bit RGB of a 16-bit colour file from its high bytes (``high``, loaded) and a second decode."""
    mode, tiles, order = plan
    grey = mode == "I"  # grey + alpha: one 32-bit word per pixel, grey first in the file
    hi = np.asarray(high).astype(np.uint16)
    try:
        with Image.open(path, formats=_FORMATS) as second:
            second._mode = mode  # the unpacker's mode; the file is the same
            second.tile = tiles
            second.load()
            rest = np.asarray(second)
        if grey:
            word = rest.view(np.uint32)
            values = ((word >> 16) if order == "B" else (word & 0xFFFF)).astype(np.uint16)[..., None]
        else:
            values = (hi << 8) | rest
    except Exception:  # noqa: BLE001 - an unpacker this Pillow lacks: the high bytes still have the range
        log.debug("%s: 16-bit colour read from its high bytes only", path)
        values = hi[..., :1] << 8 if grey else hi << 8
    colour = values[..., :1] if grey else values[..., :3]  # alpha is not image content
    depth, basis = decide_bit_depth(int(colour.max(initial=0)), significant_bits)
    out = _grey_or_rgb(_to_8bit(colour[..., 0] if grey else colour, depth))
    method = _TRANSPOSE.get(high.getexif().get(0x0112, 1))
    if method is not None:
        out = out.transpose(method)
    out.info["bit_depth"], out.info["bit_depth_basis"] = depth, basis
    return out


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file fully into 8-bit RGB.

    Raises ImageRejected for an image over the size bounds (checked from the header, before any pixel
    is decoded) and whatever the decoder raises for a corrupt, truncated or empty file: not only
    OSError (Pillow's DecompressionBombError, for one, is a bare Exception), so callers treat any
    Exception as "this file cannot be read".
    """
    try:
        img = Image.open(path, formats=_FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own check, past twice its limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.0f} Mpx, " if found else ""
        raise ImageRejected(f"{size}over the {MAX_PIXELS / 1e6:.0f} Mpx limit for one image "
                            "(EDGE_TL_MAX_PIXELS)") from None
    with img:
        check_size(*img.size)
        plan = _second_decode(img)
        deep = plan is not None or img.mode.startswith("I;16") or img.mode == "I"
        sbit = png_significant_bits(path) if deep and img.format == "PNG" else None
        img.load()
        if plan is not None:
            return _deep_colour(path, img, plan, sbit)
        return to_rgb(img, sbit)


def _is_deep(path: str | os.PathLike[str]) -> bool:
    """Whether a file holds integer samples deeper than 8 bits (from its header: nothing is decoded)."""
    with Image.open(path, formats=_FORMATS) as img:
        return img.mode.startswith("I;16") or img.mode == "I" or _second_decode(img) is not None


# At most this many images are decoded to describe a data set's bit depths (every n-th file).
BIT_DEPTH_SAMPLE = 200


def describe_bit_depths(paths: list[Path] | list[str]) -> dict[str, Any] | None:
    """What a data set's deeper-than-8-bit images were read as, for the manifest's preprocessing and
    one log line; None when no image is deeper than 8 bits.

    Every file's header is read; up to ``BIT_DEPTH_SAMPLE`` of the deep ones, spread over the list, are
    decoded by ``load_image`` (the one decoder training, calibration, bench and the runtime share) to
    see the depth and its basis. ``mixed`` is set when they were read at different depths: frames of
    one camera then differ in brightness by how bright their brightest pixel happens to be.
    """
    from collections import Counter

    deep = []
    for p in paths:
        try:
            if _is_deep(p):
                deep.append(p)
        except Exception:  # noqa: BLE001 - unreadable files are the scan's to report
            continue
    if not deep:
        return None
    step = max(1, len(deep) // BIT_DEPTH_SAMPLE)
    depths: Counter[int] = Counter()
    bases: Counter[str] = Counter()
    for p in deep[::step]:
        try:
            info = load_image(p).info
        except Exception:  # noqa: BLE001 - as above
            continue
        depths[int(info.get("bit_depth", 16))] += 1
        bases[str(info.get("bit_depth_basis", BASIS_RANGE))] += 1
    return {"deep_images": len(deep), "of": len(paths), "decoded": sum(depths.values()),
            "depths": {str(d): n for d, n in sorted(depths.items())}, "basis": dict(bases.most_common()),
            "mixed": len(depths) > 1,
            "rule": "per image: the PNG sBIT chunk when present, else the smallest of 10, 12, 14, 16 bits "
                    "that holds the brightest pixel"}


def record_bit_depths(pre: Preprocess, paths: list[Path] | list[str], quiet: bool = False) -> Preprocess:
    """``pre`` with what ``describe_bit_depths`` found in ``paths`` as ``extra["bit_depth"]`` (so the
    manifest's preprocessing says what was assumed), said once in the log: a warning when the images
    were read at different depths, else an info line (silent with ``quiet``). Without images deeper than
    8 bits, ``pre`` without that key."""
    import dataclasses

    summary = describe_bit_depths(paths)
    if summary is None:  # 8-bit data; a --weights run: source's record is about other images
        return pre if "bit_depth" not in pre.extra else dataclasses.replace(
            pre, extra={k: v for k, v in pre.extra.items() if k != "bit_depth"})
    if summary["mixed"]:
        log.warning("%s", bit_depth_line(summary))
    elif not quiet:
        log.info("%s", bit_depth_line(summary))
    return dataclasses.replace(pre, extra={**pre.extra, "bit_depth": summary})


def bit_depth_line(summary: dict[str, Any]) -> str:
    """One log line saying what ``describe_bit_depths`` found."""
    depths = ", ".join(f"{d}-bit {n}" for d, n in summary["depths"].items())
    basis = ", ".join(f"{b} {n}" for b, n in summary["basis"].items())
    line = (f"{summary['deep_images']} of {summary['of']} images are deeper than 8 bits; read as {depths} "
            f"(of {summary['decoded']} decoded; decided by {basis})")
    if summary["mixed"]:
        line += ("; the depths differ between images: if they come from one camera, the darker frames read "
                 "brighter than they are (write the sensor's depth in a PNG sBIT chunk to fix it)")
    return line


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
    # How the image becomes a crop x crop square (RESIZE_MODES): "shorter" is torchvision's ImageNet
    # recipe (short side to ``resize``, centre crop: it drops the ends of elongated parts), "full"
    # squeezes the whole frame into the square, "letterbox" fits the long side and pads with the mean
    # pixel (rounded to the 8-bit grid, so it normalises to ~0 and stays exact for INT8 pixel inputs).
    resize_mode: str = "shorter"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["mean"], known["std"] = tuple(known["mean"]), tuple(known["std"])
        return cls(**known)

    @property
    def pad_color(self) -> tuple[int, ...]:
        """The letterbox fill: the mean pixel on the 8-bit grid."""
        return tuple(round(m * 255) for m in self.mean)

    def resize_and_crop(self, img: Image.Image) -> Image.Image:
        """The ``crop`` x ``crop`` square the model sees, per ``resize_mode``.

        ``shorter``: short side to ``resize`` (as torchvision.transforms.Resize(int)), then centre crop.
        """
        w, h = img.size
        if self.resize_mode == "full":
            return img.resize((self.crop, self.crop), _INTERP[self.interpolation], reducing_gap=None)
        if self.resize_mode == "letterbox":
            f = self.crop / max(w, h)
            new_w, new_h = max(1, round(w * f)), max(1, round(h * f))
            if (new_w, new_h) != (w, h):
                img = img.resize((new_w, new_h), _INTERP[self.interpolation], reducing_gap=None)
            canvas = Image.new("RGB", (self.crop, self.crop), self.pad_color)
            canvas.paste(img, ((self.crop - new_w) // 2, (self.crop - new_h) // 2))
            return canvas
        return center_crop(self.resize_short_side(img), self.crop)

    def resize_short_side(self, img: Image.Image) -> Image.Image:
        """The image with its short side at ``resize`` and its aspect kept (torchvision's Resize(int))."""
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), _INTERP[self.interpolation], reducing_gap=None)
        return img

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


def crop_loss(width: int, height: int, resize: int, crop: int) -> float:
    """Share of an image's area that the ``shorter`` recipe (short side to ``resize``, centre ``crop``)
    throws away: 0.23 for a square at 256/224, 0.62 for a 2:1 tile."""
    aspect = max(width, height) / max(1, min(width, height))
    return 1.0 - (min(crop, resize) ** 2) / (resize * resize * aspect)


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
