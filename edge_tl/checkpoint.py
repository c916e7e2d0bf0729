"""Saving and rebuilding torch models without pickled code.

``model.pt`` holds a plain state_dict (tensors only, loadable with ``weights_only=True``). The
manifest beside it says how to rebuild the module tree: the architecture, the number of classes and,
for a pruned model, the shape of every Conv2d/BatchNorm2d/Linear (``structure``), which is applied
to a freshly built architecture before the state_dict is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .builders import builder_for
from .errors import ArtifactError, require
from .manifest import atomic_path, read_manifest
from .models import build_model

if TYPE_CHECKING:
    import torch.nn as nn

MODEL_FILE = "model.pt"


def describe_structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Shapes of every layer whose width pruning can change, keyed by module path."""
    import torch.nn as nn

    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = {"type": "Conv2d", "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.BatchNorm2d):
            out[name] = {"type": "BatchNorm2d", "num_features": m.num_features}
        elif isinstance(m, nn.Linear):
            out[name] = {"type": "Linear", "in": m.in_features, "out": m.out_features}
    return out


def apply_structure(model: nn.Module, structure: dict[str, dict[str, Any]]) -> nn.Module:
    """Resize layers of a freshly built ``model`` to ``structure`` (from describe_structure).

    Layers are resized in place, as torch-pruning resizes them, so a subclass keeps what it adds (timm's
    BatchNorm with its activation, the EfficientNet-Lite "same"-padding convolution); the new tensors are
    empty until the state_dict is loaded.
    """
    import torch
    import torch.nn as nn

    def fresh(*shape: int) -> nn.Parameter:
        return nn.Parameter(torch.empty(*shape))

    for name, spec in structure.items():
        m: Any = model.get_submodule(name)
        kind = spec["type"]
        if kind == "Conv2d" and isinstance(m, nn.Conv2d):
            m.in_channels, m.out_channels, m.groups = spec["in"], spec["out"], spec["groups"]
            m.weight = fresh(spec["out"], spec["in"] // spec["groups"], *m.kernel_size)
            if m.bias is not None:
                m.bias = fresh(spec["out"])
        elif kind == "BatchNorm2d" and isinstance(m, nn.BatchNorm2d):
            n = m.num_features = spec["num_features"]
            if m.affine:
                m.weight, m.bias = fresh(n), fresh(n)
            if m.track_running_stats:
                m.running_mean, m.running_var = torch.zeros(n), torch.ones(n)
        elif kind == "Linear" and isinstance(m, nn.Linear):
            m.in_features, m.out_features = spec["in"], spec["out"]
            m.weight = fresh(spec["out"], spec["in"])
            if m.bias is not None:
                m.bias = fresh(spec["out"])
        else:
            raise ArtifactError(f"structure entry {name} ({kind}) does not match {type(m).__name__}")
    return model


def save_state(model: nn.Module, dest: Path) -> None:
    """Save a state_dict atomically (tensors only)."""
    import torch

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(dest) as tmp:
        torch.save(state, tmp)


def load_model(stage_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved in a finetune/ or prune/ folder; returns (model in eval mode, manifest)."""
    torch = require("torch", "train")
    stage_dir = Path(stage_dir)
    manifest = read_manifest(stage_dir)
    build = builder_for(manifest.get("task"))  # a task's own model (anomaly), registered by the task
    if build is not None:
        model = build(manifest)
        model.load_state_dict(torch.load(stage_dir / MODEL_FILE, map_location="cpu", weights_only=True))
        return model.eval(), manifest
    model = build_model(manifest["arch"], len(manifest["classes"]))
    if manifest.get("structure"):
        apply_structure(model, manifest["structure"])
    state = torch.load(stage_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), manifest
