"""Anomaly graphs: an ImageNet backbone's mid-level patch features scored against good parts.

One ``AnomalyModel`` is what every stage after ``finetune --task anomaly`` handles: it is saved as a
plain state_dict, exported to ONNX like a classifier and run by the same runners. Its outputs:

- ``logits`` (N, 2) for the classes ``[good, defect]``: ``[0, s - 1]`` where ``s`` is the image's
  normalised anomaly score (raw score / threshold, so 1.0 *is* the threshold). The threshold and the
  normalisation therefore live inside the graph and cannot be lost in export, and every tool built for
  classifiers (argmax decisions, agreement, INT8 gates, the runtime's review band) works unchanged:
  argmax = ``defect`` exactly when ``s > 1``.
- ``anomaly_map`` (N, 1, h, w): each patch's normalised distance (same scale), at stride 8.

Methods: one file each (:mod:`.padim`, :mod:`.patchcore`), registered by name in :mod:`.methods`; the
head a method builds turns the features into a raw distance map (N, 1, h, w).

Features (every method): the backbone's last blocks at stride 8 and at stride 16, each averaged over a
3×3 neighbourhood (PatchCore's local aggregation), the stride-16 map upsampled to stride 8, both
concatenated, and optionally reduced by a fixed random projection (a 1×1 convolution; Johnson-
Lindenstrauss).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .. import builders
from ..errors import ConfigError
from .methods import method_for


@dataclass(frozen=True)
class AnomalySpec:
    """Everything needed to rebuild an ``AnomalyModel`` skeleton before its state_dict is loaded."""

    arch: str
    method: str
    cut8: int  # number of backbone stages up to and including the last stride-8 one
    cut16: int  # ... the last stride-16 one
    channels: int  # concatenated feature channels before projection
    dim: int  # feature dimension after projection (== channels when there is none)
    bank: int  # PatchCore: bank entries; PaDiM: patch positions
    grid: int  # feature map side (input side / 8)
    clusters: int = 1  # PaDiM: modes of the good images, one Gaussian per position each

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnomalySpec:
        # Runs fitted before ``clusters`` existed have one mode.
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def backbone_stages(model: Any, arch: str) -> list[Any]:
    """The backbone as an ordered list of modules that run one after the other (head excluded)."""
    from ..models import runnable_blocks

    return runnable_blocks(model, arch)


def stride_cuts(stages: list[Any], input_size: int) -> tuple[int, int, list[int]]:
    """(cut8, cut16, channels): how many stages reach the last stride-8 and stride-16 outputs, and
    those outputs' channel counts (``models.stride_taps``)."""
    from ..models import stride_taps

    found = stride_taps(stages, input_size, (8, 16))
    if found is None:
        raise ConfigError(f"the backbone has no stride-8 and stride-16 stages at input {input_size}")
    (cut8, c8), (cut16, c16) = found
    return cut8, cut16, [c8, c16]


def _torch_modules() -> Any:
    """Module classes are defined lazily: ``import edge_tl`` must not import torch."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class PatchFeatures(nn.Module):
        """(N, 3, H, W) image -> (N, dim, H/8, W/8) locally aggregated patch features."""

        def __init__(self, stages: list[nn.Module], cut8: int, cut16: int, channels: int, dim: int) -> None:
            super().__init__()
            self.to8 = nn.Sequential(*stages[:cut8])
            self.to16 = nn.Sequential(*stages[cut8:cut16])
            self.project = nn.Conv2d(channels, dim, 1, bias=False) if dim != channels else nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f8 = self.to8(x)
            f16 = self.to16(f8)
            f8 = F.avg_pool2d(f8, 3, 1, 1, count_include_pad=False)
            f16 = F.avg_pool2d(f16, 3, 1, 1, count_include_pad=False)
            f16 = F.interpolate(f16, size=f8.shape[-2:], mode="bilinear", align_corners=False)
            return self.project(torch.cat([f8, f16], 1))

    class AnomalyModel(nn.Module):
        """Image -> logits (N, 2) = [0, s - 1] (``with_map`` adds anomaly_map (N, 1, h, w)), ``s`` = score /
        threshold."""

        def __init__(self, features: nn.Module, head: nn.Module) -> None:
            super().__init__()
            self.features = features
            self.head = head
            self.register_buffer("threshold", torch.ones(()))

        def raw(self, x: torch.Tensor) -> torch.Tensor:
            """Un-normalised distance map (N, 1, h, w)."""
            return self.head(self.features(x))

        # What the exported graph returns, in order (``stages.export.export_onnx`` reads it).
        output_names = ("logits", "anomaly_map")

        def with_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            amap = self.raw(x) / self.threshold
            s = amap.flatten(1).max(1, keepdim=True).values
            return torch.cat([torch.zeros_like(s), s - 1.0], 1), amap

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """Logits only, like a classifier: every torch-side comparison uses this."""
            return self.with_map(x)[0]

        def for_export(self) -> nn.Module:
            # In eval mode: the exporter puts a module back into the mode it found it in, and a wrapper
            # left in training mode would put this model's BatchNorms into training mode with it.
            return _WithMap(self).eval()

    class _WithMap(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.model.with_map(x)

    return PatchFeatures, AnomalyModel


def build_anomaly_model(spec: AnomalySpec, backbone_state: dict | None = None) -> Any:
    """An ``AnomalyModel`` for ``spec``: the ImageNet backbone (``backbone_state``, or empty for a
    state_dict to be loaded next), a zero bank and threshold 1. In eval mode."""
    from ..models import build_backbone

    method = method_for(spec.method)
    PatchFeatures, AnomalyModel = _torch_modules()
    backbone = build_backbone(spec.arch, backbone_state)
    stages = backbone_stages(backbone, spec.arch)
    features = PatchFeatures(stages, spec.cut8, spec.cut16, spec.channels, spec.dim)
    return AnomalyModel(features, method.head(spec.bank, spec.dim, spec.clusters)).eval()


def _from_manifest(manifest: dict[str, Any]) -> Any:
    """The checkpoint loader's builder for ``task = "anomaly"`` (:mod:`edge_tl.builders`)."""
    return build_anomaly_model(AnomalySpec.from_dict(manifest["anomaly"]))


builders.register("anomaly", _from_manifest)
