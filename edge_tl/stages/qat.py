"""Quantisation-aware training (``export --qat N``): a few epochs of fine-tuning with fake quantisation.

Post-training quantisation fixes the weights and only chooses ranges; where INT8 rounding moves the
logits of near-tie images across the decision boundary (elpv: 32 of 525 validation images sit closer
to it than the INT8 model's median logit error), no choice of ranges holds the agreement gate.
QAT lets the weights adapt to the rounding: the model is prepared with fake quantisers at the places
the runtime quantises (``torch.ao.quantization``'s FX graph mode: Conv+BN folded, activations per
tensor, weights per output channel, straight-through gradients; Jacob et al., CVPR 2018), their
ranges initialised on the calibration images, then trained for ``epochs`` with knowledge
distillation from the float model (``training.distillation_loss``: the target is the float model's
answer, so agreement is what is learned) at a small learning rate, BatchNorm folded beforehand.

Why torch.ao and not NNCF's torch QAT: on a CPU, NNCF's fake quantisers compile a C++ extension at
first use (measured here: minutes on 2 cores, and a timeout under load), while torch's fake-quant ops
are built in and export to standard ``QuantizeLinear``/``DequantizeLinear`` pairs that both ONNX
Runtime and OpenVINO read. The epoch that ships is chosen on the selection set (training images that
are neither calibration nor validation images); validation only judges it (``quantize.fallback.held_out``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Sample
from ..efficientnet_lite import traceable
from ..preprocess import Preprocess

log = logging.getLogger("edge_tl")

QAT_LR = 1e-5  # OpenVINO's QAT guide: "a few epochs with a small learning rate, for example 1e-5"
QAT_IMAGES_PER_EPOCH = 640  # bounds an epoch's CPU time; each epoch draws a fresh seeded subset
QAT_BATCH = 32


def qconfig_mapping(activations: str, symmetric: bool, reduce_range: bool) -> Any:
    """Fake quantisers in the runtime's form. ``activations`` ``uint8``: affine, per tensor;
    ``reduce_range`` keeps them to 7 bits, so u8×s8 pair sums cannot saturate the 16-bit accumulators
    of x86 CPUs without VNNI (torch's own x86 default does the same; NNCF halves the weights instead,
    its "overflow fix"). ``int8``: symmetric, zero point 0 (TensorRT, ARM64). Weights: signed 8-bit,
    symmetric, per output channel."""
    import torch
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, QConfig, QConfigMapping
    from torch.ao.quantization.observer import MovingAveragePerChannelMinMaxObserver

    if activations == "int8" or symmetric:
        act = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127,
                                     dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    else:
        act = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0,
                                     quant_max=127 if reduce_range else 255, dtype=torch.quint8,
                                     qscheme=torch.per_tensor_affine)
    # -128..127: the only signed range torch's ONNX exporter writes as QuantizeLinear (zero point 0)
    weight = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                    quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    return QConfigMapping().set_global(QConfig(activation=act, weight=weight))


def prepare(model: Any, crop: int, mapping: Any, calibration: np.ndarray, batch: int = 16) -> Any:
    """The FX-prepared QAT copy of ``model`` (left untouched) with observer ranges from ``calibration``
    ((N, 3, crop, crop) float32), observers then frozen: training moves weights, not ranges.

    BatchNorm is folded into the convolutions first (``torch.fx.experimental.optimization.fuse``, as
    the runtimes fold it; ``efficientnet_lite.traceable`` first fixes the Lite models' "same" padding and
    splits timm's BatchNorm+activation modules, which FX could neither trace nor fold): the exported graph
    is then plain Conv with QDQ weights, and training keeps the float model's BatchNorm statistics."""
    import torch
    from torch.ao.quantization import disable_fake_quant, disable_observer, enable_fake_quant, enable_observer
    from torch.ao.quantization.quantize_fx import prepare_qat_fx
    from torch.fx.experimental.optimization import fuse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice (torchao is its successor)
        folded = fuse(traceable(model, crop))
        qm = prepare_qat_fx(folded.train(), mapping, (torch.zeros(1, 3, crop, crop),))
    qm.eval()
    qm.apply(disable_fake_quant)
    qm.apply(enable_observer)
    with torch.no_grad():
        for i in range(0, len(calibration), batch):
            qm(torch.from_numpy(calibration[i:i + batch]))
    qm.apply(enable_fake_quant)
    qm.apply(disable_observer)
    return qm


def logits_of(qm: Any, inputs: np.ndarray, batch: int = 64) -> np.ndarray:
    """The fake-quantised model's logits (N, C) on ``inputs``."""
    import torch

    qm.eval()
    with torch.no_grad():
        return np.concatenate([qm(torch.from_numpy(inputs[i:i + batch])).numpy() for i in range(0, len(inputs), batch)])


def train(qm: Any, teacher: Any, root: Path, samples: list[Sample], pre: Preprocess, epochs: int, *,
          score: Callable[[Any], float] | None, seed: int = 0,
          quiet: bool = True) -> tuple[Any, list[dict[str, Any]], int]:
    """``epochs`` of distillation from ``teacher`` with fake quantisation, in the one epoch loop
    (``training.run_epochs``); returns ``qm`` in the state of the best epoch by ``score(qm)`` (higher is
    better; ties: the earlier epoch; epoch 0 is the calibrated, untrained model), the history (score,
    training loss, images, seconds per epoch) and the number of the epoch that state is from. Without a
    ``score`` (no images to judge on) the last epoch's state is kept."""
    import torch

    from ..progress import progress
    from ..training import ImageDataset, Verdict, _loader, distillation_loss, optimise, run_epochs

    teacher = teacher.cpu().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in qm.parameters() if p.requires_grad], lr=QAT_LR, weight_decay=0.0)
    crit = torch.nn.CrossEntropyLoss()
    gen = np.random.default_rng(seed)
    per_epoch = min(len(samples), QAT_IMAGES_PER_EPOCH)

    def loss_of(out: Any, y: Any, x: Any, _extra: Any) -> Any:
        with torch.no_grad():
            target = teacher(x)
        return distillation_loss(out, target, y, crit)

    def judge(epoch: int, seen: int) -> Verdict:
        s = score(qm)  # type: ignore[misc]
        return Verdict(s, {"score": s, "note": "calibrated, before training"} if epoch == 0
                       else {"score": s, "images": seen})

    with progress(quiet) as bar:
        task = bar.add_task("QAT", total=epochs * per_epoch, info="")

        def one_epoch(epoch: int) -> tuple[float, int]:
            drawn = [samples[i] for i in gen.permutation(len(samples))[:per_epoch]]  # a fresh seeded subset
            loader = _loader(ImageDataset(root, drawn, pre, train=True), QAT_BATCH, True, 0, seed + epoch)
            qm.train()

            def batches() -> Any:
                for x, y, _i, bad in loader:  # unreadable images come back as bad and are left out
                    if len(x):
                        yield x, y, None
                    bar.advance(task, len(x) + len(bad))

            return optimise(qm, batches(), opt, None, loss_of)  # constant rate: no schedule

        if score is None:
            history, _ = run_epochs(epochs, one_epoch, keep="last",
                                    after=lambda epoch, entry: bar.update(task, info=f"epoch {epoch}/{epochs}"))
            qm.eval()
            return qm, history, len(history)
        history, best = run_epochs(epochs, one_epoch, judge=judge, keep="best", saved=qm, judge_first=True,
                                   after=lambda epoch, entry: bar.update(
                                       task, info=f"epoch {epoch}/{epochs} selection score {entry['score']:.4f}"))
    qm.eval()
    return qm, history, best.epoch


def to_onnx(qm: Any, crop: int, opset: int) -> bytes:
    """The QAT model as an ONNX QDQ graph (input ``input``, output ``logits``, dynamic batch)."""
    import torch

    from ..onnx_export import export_onnx_bytes

    return export_onnx_bytes(qm.eval(), torch.zeros(1, 3, crop, crop), input_names=["input"],
                             output_names=["logits"], dynamic_batch=True, opset=max(opset, 13))
