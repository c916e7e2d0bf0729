"""INT8 by quantisation-aware training (``export --qat``) instead of post-training quantisation.

The training itself is ``stages/qat.py``; this module judges its QDQ graph like any other INT8 graph,
in the form of the target's backend (``Quantizer.from_qdq``, ``Quantizer.logits``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ...backends.int8 import Quantizer
from ...calibration import CalibrationSet, SelectionSet
from ...errors import DataError, require
from ...preprocess import Preprocess
from ...rundir import RunDir
from ...targets import Target
from ..ood_fit import graft_ood
from .fallback import Judge, fallback_start, gate_margin, held_out


def quantize_qat(backend: Quantizer, target: Target, run: RunDir, model: Any, out_dir: Path, cset: CalibrationSet,
                 judge: Judge, sel: SelectionSet | None, float_values: dict[str, Any] | None, pre: Preprocess,
                 epochs: int, quiet: bool, float_onnx: Path | None = None) -> tuple[list[str], dict[str, Any]]:
    """Quantisation-aware training (``stages/qat.py``), then the same verdicts as post-training INT8.

    Trains on the training split less the selection and validation images, keeps the epoch whose
    fake-quantised model does best against the gate on the selection set (epoch 0: calibrated, not
    trained), exports it as a QDQ graph (ONNX Runtime, TensorRT) or converts that to OpenVINO IR, and
    judges the graph the runtime will execute on the selection set and then on validation. No float
    layers are searched for: QAT is for the models where that search ends mostly float. ``float_onnx``: the
    exported float graph, whose ``ood_score`` subgraph (if any) is attached to the QAT graph (``graft_ood``)."""
    from .. import qat

    require("torch", "train")
    q = target.quantizer
    mapping = qat.qconfig_mapping(q.activations, q.symmetric_activations,
                                  # u8×s8 kernels of x86 CPUs without VNNI (ONNX Runtime's and OpenVINO's alike)
                                  # saturate 8-bit activations: elpv's QAT graph with them flipped 294 of 525
                                  # answers in OpenVINO. 7 bits are safe on every x86 CPU the graph may meet.
                                  reduce_range=True)
    t0 = time.perf_counter()
    root, train, val = run.split()
    held = {im["path"] for im in sel.images} if sel is not None else set()
    samples = [s for s in train if s.path not in held and s.path not in {v.path for v in val}]
    if not samples:
        # Caught before any training: the epoch is chosen on the selection images, so they may not train it.
        raise DataError(f"--qat: none of the training split's {len(train)} image(s) is left to train on (the INT8 "
                        f"selection set holds {len(held)} of them, to choose the epoch, and validation judges): "
                        "fine-tune on more images, or export without --qat (post-training INT8)")
    qm = qat.prepare(model, pre.crop, mapping, cset.inputs)

    def score(m: Any) -> float:
        values = judge.on_selection(lambda inputs: qat.logits_of(m, inputs))
        return gate_margin(values, target.gates) + values["agreement"] * 1e-3
    # Nothing to choose on without a selection set: the last epoch ships. ``best``: the epoch that ships.
    qm, history, best = qat.train(qm, model, root, samples, pre, epochs,
                                  score=None if judge.select is None else score, quiet=quiet)
    # The trained graph has logits only; the float graph's ood_score subgraph is attached to its features.
    qdq = qat.to_onnx(qm, pre.crop, target.opset)
    if float_onnx is not None:
        qdq = graft_ood(qdq, float_onnx)
    seconds = time.perf_counter() - t0
    files, runnable = backend.from_qdq(qdq, target, out_dir)
    where = backend.WHERE

    def logits(inputs: np.ndarray) -> np.ndarray:
        return backend.logits(runnable, inputs, target.threads, target.batch_size)
    fallback = fallback_start(target, judge, float_values, where, logits)
    if "before" in fallback:
        fallback["after"] = fallback["before"]
    if fallback["status"] == "needed":
        fallback |= {"status": "cannot pass", "message": (
            f"the QAT graph misses the gate on the selection set ({'; '.join(fallback['before']['failed'])}) "
            "after " f"{epochs} epoch(s): shipped as trained; try more --qat epochs or use the fp32 target")}
    fallback["float_layers"] = []
    held_out(target, fallback, judge, where, logits)
    quantizer = {
        "method": "qat", "library": _torch_version(),
        "algorithm": ("quantisation-aware training (torch.ao FX fake quantisation, distilled from "
                      f"the float model at lr {qat.QAT_LR:g}, BatchNorm folded first)"),
        "activations": ("int8 symmetric, per tensor" if q.activations == "int8" or q.symmetric_activations
                        else "uint8 affine, per tensor" + (" (7-bit: no saturation on x86 without VNNI)"
                                                           if mapping_reduced(mapping) else "")),
        "weights": "int8 symmetric, per channel",
        "epochs": epochs, "chosen_epoch": best, "images_per_epoch": min(len(samples), qat.QAT_IMAGES_PER_EPOCH),
        "trained_on": f"{len(samples)} training images (not selection, not validation)",
        "chosen_on": (f"{len(judge.select.labels)} selection images (gate margin of the fake-quantised model)"
                      if judge.select is not None else "no selection set: the last epoch"),
        "history": history, "seconds": seconds}
    return files, {"quantizer": quantizer, "float_layers": [], "fallback": fallback}


def mapping_reduced(mapping: Any) -> bool:
    """Whether the QConfigMapping's activation quantiser keeps to 7 bits."""
    act = mapping.global_qconfig.activation()
    return bool(act.quant_max == 127 and act.quant_min == 0)


def _torch_version() -> str:
    import torch

    return f"torch {torch.__version__} (torch.ao.quantization)"
