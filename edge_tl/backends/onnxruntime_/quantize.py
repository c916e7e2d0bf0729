"""The ONNX quantiser: INT8 as a QDQ graph, which ONNX Runtime and TensorRT both execute (the table's
``quantiser`` of both; TensorRT's ``explicit_qdq`` asks for its explicit-quantisation form).

``quantize`` makes it with ``onnxruntime.quantization`` (``quantize_qdq``: static QDQ in the form the
runtime wants, layers kept in float by re-quantising without them) or with NNCF (``nncf_onnx``, whose
fallback bypasses activation quantisers: ``onnx_graph.without``, ``sensitivity``). On TensorRT a NNCF graph
that misses the gate on the selection set is replaced by the QDQ path with its layer fallback. The gates and
the search are the export stage's, handed in as ``rules`` (``int8.FallbackRules``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ConfigError, require
from ...manifest import atomic_path
from ..int8 import quiet_library_logging, rel_error
from ..table import facts

# The quantiser's members (``int8.Quantizer``) that NNCF's ONNX path shares live in ``onnx_graph``
from .onnx_graph import (  # noqa: F401 - MODEL, QUANTIZER_OP, without, sensitivity: Quantizer members
    MODEL,
    QUANTIZER_OP,
    WHERE,
    fixed_float,
    host_threads,
    logits,
    preprocess_graph,
    sensitivity,
    without,
)

if TYPE_CHECKING:
    from ...calibration import CalibrationSet
    from ...preprocess import Preprocess
    from ...targets import Target
    from ..int8 import FallbackRules, Judge

log = logging.getLogger("edge_tl")

CAL_BATCH = 8  # images per calibration inference (ranges are min/max over all of them anyway)


# --------------------------------------------------------------------------------------------------
# The quantiser's entry points (``int8.Quantizer``)


def settings(target: Target) -> dict[str, Any]:
    return ort_settings(target)


def quantize(target: Target, settings: dict[str, Any], float_onnx: Path, out_dir: Path, cset: CalibrationSet,
             judge: Judge, float_values: dict[str, Any] | None, pre: Preprocess, rules: FallbackRules,
             ) -> tuple[list[str], dict[str, Any]]:
    """``quantizer.method`` ``onnx_qdq``: ``quantize_qdq``; ``nncf``: NNCF's graph (``nncf_onnx``), and when
    it misses the gate on the selection set and has no fallback of its own (TensorRT), the QDQ path."""
    if target.quantizer.method != "nncf":
        return quantize_qdq(target, settings, float_onnx, out_dir, cset, judge, float_values, rules)
    from .nncf_onnx import quantize_nncf

    files, info = quantize_nncf(target, float_onnx, out_dir, cset, judge, float_values, pre, rules)
    if info["fallback"]["status"] == "needed":
        # NNCF's graph misses the gate on the selection set: the QDQ path below can keep chosen layers
        # in float (chosen on the same selection set; validation still only judges).
        first = {k: v for k, v in info["fallback"].items() if k not in ("selection", "float_layers")}
        first_quantizer = info["quantizer"]
        files, info = quantize_qdq(target, settings, float_onnx, out_dir, cset, judge, float_values, rules)
        info["fallback"]["first_try"] = first | {
            "quantizer": first_quantizer,
            "status": "missed the gate on the selection set; replaced by onnx_qdq with fallback"}
    return files, info


def from_qdq(qdq: bytes, target: Target, out_dir: Path) -> tuple[list[str], Any]:
    dest = out_dir / target.model_file
    with atomic_path(dest) as tmp:
        tmp.write_bytes(qdq)
    return [dest.name], qdq


# --------------------------------------------------------------------------------------------------
# ONNX Runtime QDQ (quantize_static)


class _Reader:
    """ONNX Runtime CalibrationDataReader over preprocessed images (duck-typed: get_next/rewind)."""

    def __init__(self, input_name: str, inputs: np.ndarray, batch: int = CAL_BATCH) -> None:
        self.input_name = input_name
        self.batches = [inputs[i:i + batch] for i in range(0, len(inputs), batch)]
        self.start, self.end = 0, len(self.batches)
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= self.end:
            return None
        self.pos += 1
        return {self.input_name: self.batches[self.pos - 1]}

    def rewind(self) -> None:
        self.pos = self.start

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.batches))
        self.pos = start_index


def ort_settings(target: Target) -> dict[str, Any]:
    """The quantize_static arguments for this target's QDQ form (and a readable summary)."""
    q = target.quantizer
    explicit = facts(target.backend).explicit_qdq  # TensorRT: every QDQ pair is an order to its builder
    if explicit and (q.activations != "int8" or not q.symmetric_activations):
        raise ConfigError(f"{target.name}: {target.backend} needs symmetric int8 activations (zero point 0); set "
                          "quantizer.activations = 'int8' and quantizer.symmetric_activations = true")
    if explicit and not q.per_channel:
        log.warning("%s: %s runs per-channel weight scales best; per_channel is off", target.name, target.backend)
    if explicit:
        form = f"{target.backend} explicit precision: symmetric int8 activations and weights, zero point 0"
    elif q.activations == "uint8":
        form = "x86 u8s8: unsigned activations, signed weights (VNNI / AVX2 kernels)"
    else:
        form = "s8s8: signed activations and weights (ARM64 SDOT / I8MM kernels)"
    return {
        "activations": q.activations, "weights": q.weights, "per_channel": q.per_channel,
        "activation_symmetric": q.symmetric_activations, "weight_symmetric": True,
        # reduce_range (7-bit weights) only helps x86 CPUs without VNNI; the dev hosts have VNNI and
        # ARM/TensorRT never need it.
        "reduce_range": False, "calibration_method": q.calibration_method, "form": form,
        # TensorRT takes int8 Q/DQ only and adds biases in float itself; an int32 bias DQ is rejected
        # (onnx-tensorrt#850). The CPU kernels want the int32 bias (it folds into QLinearConv).
        "quantize_bias": not explicit,
    }


def _calibrate_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def _qdq(pre_path: Path, out_path: Path, settings: dict[str, Any], cache: Path,
         reader: _Reader | None = None, exclude: list[str] | tuple[str, ...] = ()) -> None:
    """One quantize_static call; ranges come from ``cache`` (computed from ``reader`` the first time)."""
    import onnx

    qz = require("onnxruntime.quantization", "runtime")
    qtype = {"uint8": qz.QuantType.QUInt8, "int8": qz.QuantType.QInt8}
    exclude = [*exclude, *fixed_float(onnx.load(str(pre_path), load_external_data=False))]
    extra: dict[str, Any] = {"ActivationSymmetric": settings["activation_symmetric"],
                             "WeightSymmetric": settings["weight_symmetric"],
                             "QuantizeBias": settings["quantize_bias"]}
    method = _calibrate_method(settings["calibration_method"])
    if reader is not None and settings["calibration_method"] != "minmax":
        # Histogram calibrators keep every activation of a collect pass in memory: collect in chunks.
        n = len(reader)
        extra["CalibStridedMinMax"] = max(d for d in range(1, 5) if n % d == 0)
    with quiet_library_logging():
        qz.quantize_static(str(pre_path), str(out_path), reader, quant_format=qz.QuantFormat.QDQ,
                           per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                           activation_type=qtype[settings["activations"]],
                           weight_type=qtype[settings["weights"]], nodes_to_exclude=list(exclude),
                           calibrate_method=method, extra_options=extra, calibration_cache_path=str(cache))


def quantized_nodes(model: Any) -> list[str]:
    """Names of the compute nodes of a QDQ graph that read a DequantizeLinear output, in graph order."""
    producers = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") or not n.name:
            continue
        if any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input):
            out.append(n.name)
    return out


_FOLDED_ACTIVATIONS = ("Relu", "Clip")


def keep_float(qmodel: Any, names: list[str] | tuple[str, ...], float_model: Any) -> Any:
    """A copy of QDQ graph ``qmodel`` in which the nodes ``names`` compute in float.

    Mirrors what quantize_static does with ``nodes_to_exclude``: their quantised initialisers
    (weights, bias) become the float originals, and an activation input leaves its Q/DQ pair only
    when nothing else keeps that tensor quantised (a quantised producer quantises its outputs). Made
    in milliseconds instead of a re-quantisation, it is used to *measure* and *search*; the shipped
    graph is always made, and re-checked, by quantize_static.
    """
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    g = m.graph
    producers = {o: n for n in g.node for o in n.output}
    f_producers = {o: n for n in float_model.graph.node for o in n.output}
    f_nodes = {n.name: n for n in float_model.graph.node}
    f_inits = {i.name: i for i in float_model.graph.initializer}
    # The quantiser reuses some original names (a bias DQ's output keeps the bias name): ours get a suffix.
    defined = {i.name for i in g.initializer} | {i.name for i in g.input} | set(producers)
    new_nodes: list[tuple[Any, Any]] = []  # (insert after this node, node)

    def float_initializer(name: str) -> str:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(f_inits[name])
        tensor.name = f"{name}__float"
        if tensor.name not in defined:
            g.initializer.append(tensor)
            defined.add(tensor.name)
        return tensor.name

    def float_activation(tensor: str) -> str:
        """The float value of ``tensor``: where the quantiser folded a Relu/Clip into the Q range, the
        producer's raw output is unclipped, so the activation is put back for the float reader."""
        act, made_by = f_producers.get(tensor), producers.get(tensor)
        if act is None or act.op_type not in _FOLDED_ACTIVATIONS or made_by is None or made_by.op_type == act.op_type:
            return tensor
        out = f"{tensor}__float"
        if out not in defined:
            node = onnx.NodeProto()
            node.CopyFrom(act)
            node.name = f"{act.name}__float"
            node.input[0] = tensor
            for i in range(1, len(node.input)):
                if node.input[i] in f_inits:
                    node.input[i] = float_initializer(node.input[i])
            node.output[0] = out
            new_nodes.append((made_by, node))
            defined.add(out)
        return out

    wanted = set(names)
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def stays_quantized(q: Any) -> bool:
        """Whether quantize_static would still quantize tensor ``q.input[0]`` with ``names`` excluded:
        its producer is quantized (outputs of quantized nodes get Q/DQ) or another reader wants it."""
        made_by = producers.get(q.input[0])
        if made_by is not None and made_by.name not in wanted:
            return True
        readers = [c for dq in consumers.get(q.output[0], []) for c in consumers.get(dq.output[0], [])]
        return any(r.name not in wanted for r in readers)

    for node in g.node:
        if node.name not in wanted:
            continue
        fnode = f_nodes.get(node.name)
        for idx, inp in enumerate(list(node.input)):
            dq = producers.get(inp)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                if not stays_quantized(q):
                    node.input[idx] = float_activation(q.input[0])
            elif fnode is not None and idx < len(fnode.input) and fnode.input[idx] in f_inits:
                node.input[idx] = float_initializer(fnode.input[idx])
    for after, node in new_nodes:  # keep the node list topologically sorted
        pos = next(i for i, n in enumerate(g.node) if n is after or n.name == after.name)
        g.node.insert(pos + 1, node)
    return m


def layer_sensitivity(pre_path: Path, q_path: Path, inputs: np.ndarray, threads: int = 2,
                      ) -> tuple[float, list[dict[str, Any]]]:
    """Each quantised node kept in float alone: how much of the INT8 logit error it removes.

    Returns the all-INT8 relative logit error and one row per node (``name``, ``op_type``,
    ``sensitivity`` = error removed, ``error_if_float``), most sensitive first.
    """
    import onnx

    float_model = onnx.load(str(pre_path))
    qmodel = onnx.load(str(q_path))
    ops = {n.name: n.op_type for n in qmodel.graph.node}
    ref = logits(str(pre_path), inputs, threads)
    base = rel_error(logits(str(q_path), inputs, threads), ref)
    rows = []
    for name in quantized_nodes(qmodel):
        variant = keep_float(qmodel, [name], float_model).SerializeToString()
        err = rel_error(logits(variant, inputs, threads), ref)
        rows.append({"name": name, "op_type": ops[name], "sensitivity": base - err, "error_if_float": err})
    rows.sort(key=lambda r: (-r["sensitivity"], r["name"]))
    return base, rows


def quantize_qdq(target: Target, settings: dict[str, Any], float_onnx: Path, out_dir: Path,
                 cset: CalibrationSet, judge: Judge, float_values: dict[str, Any] | None, rules: FallbackRules,
                 ) -> tuple[list[str], dict[str, Any]]:
    """Static QDQ with ``quantize_static``; when the gate misses on the selection set, the layers most
    sensitive to quantisation (``layer_sensitivity``) are excluded, as few as pass (searched on
    ``keep_float`` approximations, confirmed on re-quantised graphs)."""
    import onnx

    ort = require("onnxruntime", "runtime")
    dest = out_dir / target.model_file
    threads = host_threads(target)
    with tempfile.TemporaryDirectory(prefix="edge-tl-quant-") as work_str:
        work = Path(work_str)
        pre_path, cache = work / "pre.onnx", work / "ranges.json"
        preprocess_graph(float_onnx, pre_path)
        input_name = onnx.load(str(pre_path), load_external_data=False).graph.input[0].name
        t0 = time.perf_counter()
        # Histogram calibrators stack a chunk's activations into one array: equal batches (one image) only.
        cal_batch = CAL_BATCH if settings["calibration_method"] == "minmax" else 1
        _qdq(pre_path, work / "q-0.onnx", settings, cache, reader=_Reader(input_name, cset.inputs, cal_batch))
        calib_seconds = time.perf_counter() - t0

        trials: dict[int, dict[str, Any]] = {}  # graphs made by quantize_static (what ships)
        approx: dict[int, dict[str, Any]] = {}  # keep_float approximations (for the search)
        ranked: list[dict[str, Any]] = []
        models: dict[str, Any] = {}

        def logits_of(model: str | bytes) -> Callable[[np.ndarray], np.ndarray]:
            # The batch size export's validation and bench use: near-ties can depend on it.
            return lambda inputs: logits(model, inputs, threads, target.batch_size)

        def evaluate(model: str | bytes, k: int) -> dict[str, Any]:
            # Chosen on the selection set only; validation judges the shipped graph (held_out).
            values = judge.on_selection(logits_of(model))
            return values | {"k": k, "margin": rules.gate_margin(values, target.gates)}

        def real(k: int) -> dict[str, Any]:
            if k not in trials:
                path = work / f"q-{k}.onnx"
                if not path.exists():
                    _qdq(pre_path, path, settings, cache, exclude=[r["name"] for r in ranked[:k]])
                trials[k] = evaluate(str(path), k)
            return trials[k]

        def approximate(k: int) -> dict[str, Any]:
            if k not in approx:
                variant = keep_float(models["q"], [r["name"] for r in ranked[:k]], models["float"])
                approx[k] = evaluate(variant.SerializeToString(), k)
            return approx[k]

        chosen = 0
        fallback = rules.fallback_start(target, judge, float_values, WHERE, logits_of(str(work / "q-0.onnx")))
        if fallback["status"] not in ("no gates", "disabled"):
            if fallback["status"] == "needed":
                n_sens = min(rules.SENSITIVITY_IMAGES, len(cset.inputs))
                base_err, ranked = layer_sensitivity(pre_path, work / "q-0.onnx", cset.inputs[:n_sens],
                                                     threads)
                models["q"], models["float"] = onnx.load(str(work / "q-0.onnx")), onnx.load(str(pre_path))
                n = len(ranked)
                # Search on fast approximations, then confirm on real quantize_static graphs from the
                # guess upwards (usually one re-quantisation).
                guess = rules.search_fewest(n, approximate)
                found = rules.search_fewest(n, real, failing=(guess if guess is not None else n) - 1)
                fallback |= {"candidates": n, "int8_logit_error": base_err,
                             "sensitivity_measured_on": f"{n_sens} calibration images ({cset.source}), "
                             "logit error vs the float graph, one layer kept in float at a time"}
                if found is not None:
                    chosen = found
                    fallback["status"] = "passed"
                else:
                    # Nothing passes: ship the best graph measured (the all-INT8 one among them), and say so.
                    real(0)
                    chosen = max(trials.values(), key=lambda t: (t["margin"], -t["k"]))["k"]
                    fallback |= {"status": "cannot pass", "shipped": "best measured", "message": (
                        f"INT8 cannot pass the gate on the selection set even with all {n} quantised layers in "
                        f"float: shipping the best graph measured, which still fails ({chosen} in float, "
                        f"{'; '.join(trials[chosen]['failed'])}); bench will fail this target; "
                        "use the fp32 target or calibrate on images closer to production (--calibration)")}
            fallback["after"] = rules.short(real(chosen))
            fallback["trials"] = [
                rules.trial_record(t, float_layers=t["k"], graph=graph)
                for graph, table in (("approximate", approx), ("quantize_static", trials))
                for _, t in sorted(table.items())]
        shutil.copyfile(work / f"q-{chosen}.onnx", dest)
        fallback["float_layers"] = [r["name"] for r in ranked[:chosen]]
        rules.held_out(target, fallback, judge, WHERE, logits_of(str(dest)))

    float_layers = [
        {"name": r["name"], "op_type": r["op_type"], "sensitivity": r["sensitivity"], "rank": i + 1,
         "reason": rules.float_reason(fallback, i, len(ranked))}
        for i, r in enumerate(ranked[:chosen])
    ]
    fallback["float_layers"] = [r["name"] for r in float_layers]
    model = onnx.load(str(dest), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if facts(target.backend).explicit_qdq and (opset is None or opset < 13):
        raise ConfigError(f"{target.name}: the QDQ graph has opset {opset}; {target.backend}'s per-channel QDQ "
                          "needs opset >= 13 (raise the profile's opset)")
    quantizer = {"method": "onnx_qdq", "library": f"onnxruntime {ort.__version__}", "format": "QDQ",
                 "opset": opset, "calibration_seconds": calib_seconds, **settings}
    return [dest.name], {"quantizer": quantizer, "float_layers": float_layers, "fallback": fallback}
