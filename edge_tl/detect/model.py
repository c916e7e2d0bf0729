"""The detector: an ImageNet backbone's stride-16 and stride-32 taps and an FCOS-style head.

FCOS (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019): anchor-free; every
feature-map location predicts a class heatmap (sigmoid, trained with focal loss), the distances ``l t r b``
from itself to the four sides of its box (trained with GIoU loss) and a centre-ness (BCE). Edge-sized
here: two levels only (strides 16 and 32, the backbone's last block at each stride, found by running a
dummy image through ``models.runnable_blocks``), a top-down sum of the two taps (a two-level FPN), and
towers of depthwise-separable convolutions (MobileNet's, as SSDLite uses them: Sandler et al., 2018) with
BatchNorm and ReLU6, shared by the two levels.

Which level learns a box follows the training boxes: a location takes a box when its largest distance to
the box's sides lies in its level's range, and the two ranges meet at ``boundary``, the median over the
training boxes of half their longer side (in input pixels): the largest distance at a box's centre, so
each level takes about half of the boxes. Positives are the locations within ``radius`` strides of the
box's centre (FCOS's centre sampling) and inside it; a box that gets none on either level takes the
location inside it nearest its centre. A location inside two boxes takes the smaller one.

The graph's outputs (``forward``, what is exported): ``boxes`` (B, K, 4) x1 y1 x2 y2 in the input's pixels,
clipped to the input, and ``scores`` (B, K, C) = sqrt(sigmoid(class) * sigmoid(centre-ness)) per class
(the geometric mean keeps them on a probability scale for thresholds), K = (S/16)² + (S/32)² locations for
an S×S input. Decoding is inside the graph (Exp, Mul, Add, Concat, Clip, Sigmoid, Sqrt: plain ops every
backend and INT8 quantiser handles); NMS is outside, in :func:`edge_tl.runtime.nms.nms`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import builders
from ..errors import ConfigError

STRIDES = (16, 32)
DEFAULT_WIDTH = 96  # head channels: SSDLite's extra layers are 128-256 wide; the two levels need less
TOWER_DEPTH = 2
CENTRE_RADIUS = 1.5  # FCOS's centre-sampling radius, in strides
PRIOR = 0.01  # initial foreground probability of the class heatmap (focal loss's bias init, Lin et al. 2017)
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
REG_CLAMP = 10.0  # exp() argument cap: a box up to e^10 strides, far beyond any input; keeps fp16 / INT8 finite


@dataclass(frozen=True)
class DetectorSpec:
    """Everything that rebuilds a detector skeleton before its state_dict is loaded (manifest ``detect``)."""

    arch: str
    num_classes: int
    input_size: int
    cut16: int  # backbone blocks up to and including the last stride-16 one
    cut32: int  # ... the last stride-32 one
    channels: tuple[int, int]  # channels of the two taps
    boundary: float  # input pixels: largest box-side distance that the stride-16 level takes
    width: int = DEFAULT_WIDTH
    radius: float = CENTRE_RADIUS
    strides: tuple[int, int] = STRIDES
    box_stats: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"], d["strides"] = list(self.channels), list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorSpec:
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        kw["channels"] = tuple(kw["channels"])
        if "strides" in kw:
            kw["strides"] = tuple(kw["strides"])
        return cls(**kw)

    @property
    def grid(self) -> list[int]:
        """Feature-map side per level (the backbone's convolutions round up)."""
        return [math.ceil(self.input_size / s) for s in self.strides]

    @property
    def locations(self) -> int:
        return sum(g * g for g in self.grid)


def stride_taps(blocks: list[Any], input_size: int) -> tuple[int, int, tuple[int, int]]:
    """(cut16, cut32, channels): how many of the runnable ``blocks`` reach the last stride-16 and stride-32
    outputs, and their channels (``models.stride_taps``). ConfigError when the backbone has no stride-16 or
    stride-32 output at ``input_size``."""
    from ..models import stride_taps as taps

    found = taps(blocks, input_size, (16, 32))
    if found is None:
        raise ConfigError(f"the backbone has no stride-16 and stride-32 outputs at input {input_size} px "
                          "(detection needs both; --input-size must be at least 64)")
    (cut16, c16), (cut32, c32) = found
    return cut16, cut32, (c16, c32)


def box_statistics(sizes: np.ndarray, input_size: int) -> dict[str, Any]:
    """What the head is sized from: ``sizes`` (N, 2) training box widths and heights in input pixels.
    Returns percentiles (5, 25, 50, 75, 95) of width, height and sqrt(area), the count, and ``boundary``
    (module docstring), kept between one stride-16 cell and the input's half so both levels stay in use."""
    sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
    q = [5, 25, 50, 75, 95]
    half_long = sizes.max(1) / 2 if len(sizes) else np.array([input_size / 4])
    lo, hi = float(STRIDES[0]), max(float(STRIDES[0]), input_size / 2)
    boundary = float(np.clip(np.median(half_long), lo, hi))
    pct = (lambda v: [round(float(x), 2) for x in np.percentile(v, q)]) if len(sizes) else (lambda v: None)
    return {"boxes": len(sizes), "pixels": f"input ({input_size}x{input_size})", "percentiles": q,
            "width": pct(sizes[:, 0]), "height": pct(sizes[:, 1]), "sqrt_area": pct(np.sqrt(sizes.prod(1))),
            "boundary": boundary,
            "boundary_rule": f"median of half the longer box side, clipped to [{lo:g}, {hi:g}]: stride 16 takes "
                             "locations whose largest distance to the box's sides is at most this, stride 32 the rest"}


@functools.lru_cache(maxsize=1)
def _torch_modules() -> Any:
    """Module classes, defined on first use: ``import edge_tl`` must not import torch."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def conv_bn(cin: int, cout: int, k: int = 1, groups: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    def dwsep(cin: int, cout: int) -> nn.Sequential:
        """Depthwise 3×3 then pointwise 1×1, each with BatchNorm and ReLU6 (MobileNet's block)."""
        return nn.Sequential(conv_bn(cin, cin, 3, groups=cin), conv_bn(cin, cout, 1))

    class FCOSHead(nn.Module):
        """(f16 (B, c16, S/16, S/16), f32 (B, c32, S/32, S/32)) -> raw outputs over both levels' locations,
        stride 16's first, row-major: class logits (B, K, C), box distances l t r b in input pixels
        (B, K, 4), centre-ness logits (B, K, 1)."""

        def __init__(self, channels: tuple[int, int], width: int, num_classes: int, strides: tuple[int, int]):
            super().__init__()
            self.strides = strides
            self.lat16, self.lat32 = conv_bn(channels[0], width), conv_bn(channels[1], width)
            self.fuse16 = dwsep(width, width)
            self.cls_tower = nn.Sequential(*(dwsep(width, width) for _ in range(TOWER_DEPTH)))
            self.reg_tower = nn.Sequential(*(dwsep(width, width) for _ in range(TOWER_DEPTH)))
            self.cls_out = nn.Conv2d(width, num_classes, 1)
            self.reg_out = nn.Conv2d(width, 4, 1)
            self.ctr_out = nn.Conv2d(width, 1, 1)  # on the regression tower, as FCOS's later versions
            self.scales = nn.Parameter(torch.ones(len(strides)))  # FCOS's learnable per-level scale
            nn.init.constant_(self.cls_out.bias, -math.log((1 - PRIOR) / PRIOR))
            for m in (self.cls_out, self.reg_out, self.ctr_out):
                nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(self.reg_out.bias)
            nn.init.zeros_(self.ctr_out.bias)

        def forward(self, f16: torch.Tensor, f32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            p32 = self.lat32(f32)
            if tuple(f16.shape[-2:]) == (2 * p32.shape[-2], 2 * p32.shape[-1]):
                # Every input size a detector takes (a multiple of 32): a fixed 2x, so the exported Resize
                # reads constant scales. Sizes taken from the stride-16 tap (Shape -> Resize) made NNCF's
                # full bias correction of the ONNX graph fail (nncf 3.4: KeyError on a backbone node).
                up = F.interpolate(p32, scale_factor=2.0, mode="nearest")
            else:
                up = F.interpolate(p32, size=f16.shape[-2:], mode="nearest")
            p16 = self.fuse16(self.lat16(f16) + up)
            cls, reg, ctr = [], [], []
            for i, (p, stride) in enumerate(zip((p16, p32), self.strides, strict=True)):
                c = self.cls_tower(p)
                r = self.reg_tower(p)
                cls.append(self.cls_out(c).flatten(2))
                dist = torch.exp((self.scales[i] * self.reg_out(r)).clamp(max=REG_CLAMP)) * float(stride)
                reg.append(dist.flatten(2))
                ctr.append(self.ctr_out(r).flatten(2))
            return (torch.cat(cls, 2).transpose(1, 2), torch.cat(reg, 2).transpose(1, 2),
                    torch.cat(ctr, 2).transpose(1, 2))

    class Detector(nn.Module):
        """Image (B, 3, S, S), normalised as the manifest's preprocessing says -> (boxes (B, K, 4) input
        pixels x1 y1 x2 y2, scores (B, K, C)); ``raw`` gives the training outputs (FCOSHead)."""

        output_names = ("boxes", "scores")

        def __init__(self, blocks: list[nn.Module], spec: DetectorSpec) -> None:
            super().__init__()
            self.spec = spec
            self.blocks = nn.ModuleList(blocks[:spec.cut32])
            self.head = FCOSHead(spec.channels, spec.width, spec.num_classes, spec.strides)
            pts, strd = [], []
            for g, s in zip(spec.grid, spec.strides, strict=True):
                ys, xs = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
                pts.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], 1))
                strd.append(np.full(g * g, s))
            # Constants of the graph (not saved: rebuilt from the spec).
            self.register_buffer("points", torch.tensor(np.concatenate(pts), dtype=torch.float32), persistent=False)
            self.register_buffer("strides", torch.tensor(np.concatenate(strd), dtype=torch.float32),
                                 persistent=False)

        def taps(self, h: torch.Tensor, start: int = 0, f16: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
            """(f16, f32) from ``h``, the output of the first ``start`` blocks (the image when 0); ``f16``
            must be given when ``start`` is past the stride-16 tap."""
            if start == self.spec.cut16:
                f16 = h
            for i in range(start, self.spec.cut32):
                h = self.blocks[i](h)
                if i + 1 == self.spec.cut16:
                    f16 = h
            assert f16 is not None, "start past the stride-16 tap needs f16"
            return f16, h

        def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return self.head(*self.taps(x))

        def decode(self, cls: torch.Tensor, reg: torch.Tensor, ctr: torch.Tensor,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            """Raw outputs -> (boxes (B, K, 4) in input pixels, clipped; scores (B, K, C))."""
            p = self.points.unsqueeze(0)
            boxes = torch.cat([p - reg[..., :2], p + reg[..., 2:]], -1).clamp(0.0, float(self.spec.input_size))
            scores = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr))
            return boxes, scores

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.decode(*self.raw(x))

    class Prefix(nn.Module):
        """The frozen first ``cut`` blocks -> one (B, D) row per image: their output and, when the
        stride-16 tap lies inside them (and is not their output), that tap too, flattened and
        concatenated (what a cached fit stores)."""

        def __init__(self, det: Detector, cut: int) -> None:
            super().__init__()
            self.det, self.cut = det, cut

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f16 = None
            for i in range(self.cut):
                x = self.det.blocks[i](x)
                if i + 1 == self.det.spec.cut16:
                    f16 = x
            parts = [x] if f16 is None or self.cut == self.det.spec.cut16 else [f16, x]
            return torch.cat([p.flatten(1) for p in parts], 1)

    class Tail(nn.Module):
        """The trainable rest, from a :class:`Prefix` row (B, D) to the raw outputs."""

        def __init__(self, det: Detector, cut: int, shapes: list[tuple[int, ...]]) -> None:
            super().__init__()
            self.det, self.cut, self.shapes = det, cut, shapes

        def forward(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            sizes = [int(np.prod(s)) for s in self.shapes]
            parts = [p.reshape(-1, *s) for p, s in zip(flat.split(sizes, 1), self.shapes, strict=True)]
            f16 = parts[0] if len(parts) == 2 else None
            return self.det.head(*self.det.taps(parts[-1], self.cut, f16))

    return FCOSHead, Detector, Prefix, Tail


def build_detector(spec: DetectorSpec, backbone_state: dict | None = None, seed: int = 0) -> Any:
    """A ``Detector`` for ``spec``: the registry's backbone (``backbone_state`` loaded, e.g. ImageNet's; None
    leaves it empty for a state_dict to come) and a new head initialised from ``seed`` alone. Eval mode."""
    import torch

    from ..models import build_backbone, runnable_blocks

    _, Detector, _, _ = _torch_modules()
    backbone = build_backbone(spec.arch, backbone_state)
    blocks = runnable_blocks(backbone, spec.arch)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        det = Detector(blocks, spec)
    finally:
        torch.random.set_rng_state(state)
    return det.eval()


def prefix_and_tail(det: Any, cut: int) -> tuple[Any, Any]:
    """(Prefix, Tail) modules cutting ``det`` after ``cut`` blocks (0 < cut <= spec.cut32), sharing its
    modules; ``Tail(Prefix(x))`` equals ``det.raw(x)``."""
    import torch

    _, _, Prefix, Tail = _torch_modules()
    spec = det.spec
    if not 0 < cut <= spec.cut32:
        raise ConfigError(f"the frozen part must end inside the backbone's {spec.cut32} blocks, got {cut}")
    x = torch.zeros(1, 3, spec.input_size, spec.input_size)
    shapes = []
    with torch.inference_mode():
        for i in range(cut):
            x = det.blocks[i](x)
            if i + 1 == spec.cut16 and cut != spec.cut16:
                shapes.append(tuple(x.shape[1:]))
    shapes.append(tuple(x.shape[1:]))
    return Prefix(det, cut), Tail(det, cut, shapes)


# ---------------------------------------------------------------- training targets and loss


def assign_targets(points: Any, strides: Any, boxes: Any, labels: Any, num_classes: int, boundary: float,
                   radius: float = CENTRE_RADIUS) -> tuple[Any, Any, Any, Any]:
    """FCOS targets of one image (module docstring for the rules).

    ``points`` (K, 2) location centres and ``strides`` (K,) in input pixels; ``boxes`` (N, 4) x1 y1 x2 y2 in
    input pixels, ``labels`` (N,). Returns (positive mask (K,) bool, class targets (K, C) one-hot float,
    target boxes (K, 4), centre-ness targets (K,) in [0, 1]); the last two mean something at positives only.
    """
    import torch

    k = len(points)
    cls_t = torch.zeros(k, num_classes, device=points.device)
    if not len(boxes):
        return torch.zeros(k, dtype=torch.bool, device=points.device), cls_t, torch.zeros(k, 4, device=points.device), \
            torch.zeros(k, device=points.device)
    px, py = points[:, :1], points[:, 1:]
    ltrb = torch.stack([px - boxes[:, 0], py - boxes[:, 1], boxes[:, 2] - px, boxes[:, 3] - py], -1)  # (K, N, 4)
    inside = ltrb.min(-1).values > 0
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    rad = radius * strides[:, None]
    centre = ((px - cx).abs() < rad) & ((py - cy).abs() < rad)
    maxreg = ltrb.max(-1).values
    small = strides[:, None] == min(STRIDES)
    in_range = torch.where(small, maxreg <= boundary, maxreg > boundary)
    ok = inside & centre & in_range
    # A box no location takes (small against its level's stride, or cut off its range by the centre
    # sampling): the location inside it nearest its centre, on either level.
    lonely = ~ok.any(0)
    if lonely.any():
        d = torch.where(inside, (px - cx) ** 2 + (py - cy) ** 2, torch.full_like(maxreg, float("inf")))
        nearest = d.argmin(0)
        take = lonely & torch.isfinite(d.min(0).values)
        ok[nearest[take], torch.nonzero(take).squeeze(1)] = True
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).expand(k, -1)
    area = torch.where(ok, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(1)
    pos = torch.isfinite(best_area)
    cls_t[pos, labels[best[pos]]] = 1.0
    target = boxes[best]
    d = ltrb[torch.arange(k, device=points.device), best].clamp(min=1e-6)
    lr, tb = d[:, [0, 2]], d[:, [1, 3]]
    ctr_t = torch.sqrt((lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values))
    return pos, cls_t, target, ctr_t


def detection_loss(det: Any, raw: tuple[Any, Any, Any], targets: Any) -> Any:
    """FCOS's loss over a batch: sigmoid focal loss of the class heatmap (summed, over the positives), GIoU
    loss of the decoded boxes weighted by the centre-ness targets, BCE of the centre-ness (over the
    positives). ``raw``: :meth:`Detector.raw`'s outputs; ``targets`` (B, M, 5): x1 y1 x2 y2 (input pixels)
    and the label per row, rows with label -1 are padding. A scalar."""
    import torch
    import torch.nn.functional as F
    from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

    cls, reg, ctr = (t.float() for t in raw)
    spec = det.spec
    pos_l, cls_l, box_l, ctr_l = [], [], [], []
    for i in range(len(cls)):
        t = targets[i]
        t = t[t[:, 4] >= 0]
        pos, cls_t, box_t, ctr_t = assign_targets(det.points, det.strides, t[:, :4], t[:, 4].long(),
                                                  spec.num_classes, spec.boundary, spec.radius)
        pos_l.append(pos)
        cls_l.append(cls_t)
        box_l.append(box_t[pos])
        ctr_l.append(ctr_t[pos])
    pos = torch.stack(pos_l)
    n_pos = max(1.0, float(pos.sum()))
    loss_cls = sigmoid_focal_loss(cls, torch.stack(cls_l), FOCAL_ALPHA, FOCAL_GAMMA, reduction="sum") / n_pos
    if not pos.any():
        return loss_cls
    p = det.points.unsqueeze(0).expand(len(cls), -1, -1)[pos]
    r = reg[pos]
    pred = torch.cat([p - r[:, :2], p + r[:, 2:]], 1)
    box_t, ctr_t = torch.cat(box_l), torch.cat(ctr_l)
    giou = generalized_box_iou_loss(pred, box_t, reduction="none")
    loss_box = (giou * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
    loss_ctr = F.binary_cross_entropy_with_logits(ctr[pos].squeeze(-1), ctr_t, reduction="sum") / n_pos
    return loss_cls + loss_box + loss_ctr


def _from_manifest(manifest: dict[str, Any]) -> Any:
    """The checkpoint loader's builder for ``task = "detect"`` (:mod:`edge_tl.builders`)."""
    return build_detector(DetectorSpec.from_dict(manifest["detect"]))


builders.register("detect", _from_manifest)
# The detection run's own export, bench and bundle (``stages.export``, ``bench.run`` and ``stages.bundle``
# branch to them by task).
builders.register_step("detect", "export", "edge_tl.detect.ship:export_detect")
builders.register_step("detect", "describe_export", "edge_tl.detect.ship:describe_detect")
builders.register_step("detect", "bench", "edge_tl.detect.ship:bench_detect")
builders.register_step("detect", "bundle", "edge_tl.detect.bundle:bundle_detect")
