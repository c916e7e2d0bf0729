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
from .models import build_model, set_submodule

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
    """Resize layers of a freshly built ``model`` to ``structure`` (from describe_structure)."""
    import torch.nn as nn

    for name, spec in structure.items():
        old = model.get_submodule(name)
        kind = spec["type"]
        if kind == "Conv2d" and isinstance(old, nn.Conv2d):
            if (old.in_channels, old.out_channels, old.groups) == (spec["in"], spec["out"], spec["groups"]):
                continue
            new: nn.Module = nn.Conv2d(spec["in"], spec["out"], old.kernel_size, old.stride, old.padding,
                                       old.dilation, spec["groups"], bias=old.bias is not None,
                                       padding_mode=old.padding_mode)
        elif kind == "BatchNorm2d" and isinstance(old, nn.BatchNorm2d):
            if old.num_features == spec["num_features"]:
                continue
            new = nn.BatchNorm2d(spec["num_features"], eps=old.eps, momentum=old.momentum, affine=old.affine,
                                 track_running_stats=old.track_running_stats)
        elif kind == "Linear" and isinstance(old, nn.Linear):
            if (old.in_features, old.out_features) == (spec["in"], spec["out"]):
                continue
            new = nn.Linear(spec["in"], spec["out"], bias=old.bias is not None)
        else:
            raise ArtifactError(f"structure entry {name} ({kind}) does not match {type(old).__name__}")
        set_submodule(model, name, new)
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
