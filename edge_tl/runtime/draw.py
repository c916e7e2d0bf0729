"""``predict --draw``: an answer drawn on its image with Pillow (``ImageDraw``), for a person to look at.

A detection bundle's answer: the boxes that decide (a defect class at or above its threshold, and ok-class
boxes at or above the lowest threshold) outlined in their class's colour with ``class score``, in the
image's own pixels; a classifier's or anomaly bundle's: no boxes. Both get a banner with the decision
(and the label and score) in the top-left corner.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..manifest import atomic_path

# Distinct, colour-blind-friendly outline colours (Okabe-Ito), one per class index.
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
           (204, 121, 167), (255, 255, 255))
DECISION_COLOURS = {"ok": (0, 158, 115), "defect": (213, 94, 0), "review": (240, 228, 66)}


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)  # scalable where Pillow has FreeType
    except (TypeError, OSError):  # an older Pillow, or one without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int],
           font: Any, bounds: tuple[int, int]) -> None:
    """``text`` on a filled box of ``colour`` with its top-left at ``xy``, kept inside the image."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    x = min(max(0.0, xy[0]), max(0.0, bounds[0] - w))
    y = min(max(0.0, xy[1]), max(0.0, bounds[1] - h))
    draw.rectangle((x, y, x + w, y + h), fill=colour)
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    draw.text((x + 2 - left, y + 2 - top), text, fill=ink, font=font)


def draw_prediction(image: Image.Image, prediction: Any, classes: list[str] | None = None,
                    policy: Any = None) -> Image.Image:
    """A copy of ``image`` (RGB) with ``prediction`` drawn on it (see the module docstring).

    ``classes`` gives each box class its colour; ``policy`` (a ``runtime.boxes.BoxPolicy``) says which boxes
    decide (all boxes are drawn without it)."""
    img = image.convert("RGB").copy()
    draw = ImageDraw.Draw(img)
    w, h = img.size
    font = _font(max(10, round(min(w, h) / 28)))
    width = max(1, round(min(w, h) / 200))
    boxes = prediction.boxes or []
    text_h = draw.textbbox((0, 0), "Ag", font=font)[3] + 4
    lowest = None
    if policy is not None:
        finite = [t for t in policy.thresholds if math.isfinite(t)]
        lowest = min(finite) if finite else None
    for b in reversed(boxes):  # the highest score drawn last, on top
        k = classes.index(b["class"]) if classes and b["class"] in classes else 0
        limit = policy.thresholds[k] if policy is not None else None
        if limit is not None and not math.isfinite(limit):
            limit = lowest  # an ok-class box is shown when it is as sure as a deciding one
        if limit is not None and b["score"] < limit:
            continue
        colour = PALETTE[k % len(PALETTE)]
        draw.rectangle((b["x1"], b["y1"], b["x2"], b["y2"]), outline=colour, width=width)
        _label(draw, (b["x1"], b["y1"] - text_h), f"{b['class']} {b['score']:.2f}", colour, font, (w, h))
    if prediction.boxes is None:
        banner = f"{prediction.decision}: {prediction.label} {prediction.score:.2f}"
    elif prediction.decision == "defect":
        banner = f"defect: {prediction.label} {prediction.score:.2f}"
    else:
        banner = f"ok (top defect box {prediction.score:.2f})" if prediction.score > 0 else "ok"
    _label(draw, (0, 0), banner, DECISION_COLOURS.get(prediction.decision, (255, 255, 255)), font, (w, h))
    return img


def save_drawn(image: Image.Image, prediction: Any, dest: str | os.PathLike[str], classes: list[str] | None = None,
               policy: Any = None) -> Path:
    """Write :func:`draw_prediction` of ``image`` as a PNG at ``dest`` (atomically: a temp file, renamed)."""
    out = Path(dest)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        draw_prediction(image, prediction, classes, policy).save(tmp, format="PNG")
    return out
