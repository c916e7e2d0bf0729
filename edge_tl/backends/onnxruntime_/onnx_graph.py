"""What both ONNX quantisers (``quantize``'s QDQ path and ``nncf_onnx``) share: an ONNX Runtime session on
the CPU, its logits, the graph pre-processing, the nodes that stay float, and the layer fallback that
bypasses activation quantisers (``without``, ``sensitivity``: ``nncf_onnx`` hands this module to the
stage's ``bypass_fewest`` as its quantiser). ``quantize`` re-exports the ``Quantizer`` members among them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import require
from ...fixed_float import GraphView, float_names, judged
from ..int8 import EVAL_BATCH, LOGITS, OFFSET_NODE, quiet_library_logging, rel_error
from ..table import facts

if TYPE_CHECKING:
    from ...targets import Target

WHERE = "ONNX Runtime CPU"
QUANTIZER_OP = "QuantizeLinear"
MODEL = "graph"


def logits(model: Any, inputs: np.ndarray, threads: int = 2, batch: int = EVAL_BATCH) -> np.ndarray:
    """What the gates judge of ``model`` on ``inputs`` (``fixed_float.judged``: the logits; a detector's boxes
    and scores). ``model``: a path, the serialised graph, or a ModelProto."""
    if not isinstance(model, (str, bytes)):
        model = model.SerializeToString()
    sess = ort_session(model, threads)
    name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    return np.concatenate([judged(names, sess.run(None, {name: inputs[i:i + batch]}), inputs.shape[-1])
                           for i in range(0, len(inputs), batch)])


def fixed_float(model: Any) -> list[str]:
    """Names of the nodes of an ONNX model that must stay float (``fixed_float.float_names``)."""
    made_by = {o: n.name for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}
    view = GraphView({n.name: [made_by[i] for i in n.input if i in made_by] for n in model.graph.node},
                     [made_by[o] for o in outputs if o in made_by],
                     frozenset(n.name for n in model.graph.node if n.op_type in LAYER_OPS))
    return float_names(outputs, [n.name for n in model.graph.node], view)


LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers a walk back from the outputs stops at


def host_threads(target: Target) -> int:
    # Another backend's threads setting (TensorRT's) means nothing to ONNX Runtime on this host: a few cores.
    return target.threads if facts(target.backend).calibrates_with_target_threads else min(4, os.cpu_count() or 1)


def ort_session(model: str | bytes, threads: int = 2) -> Any:
    ort = require("onnxruntime", "runtime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def preprocess_graph(float_onnx: Path, dest: Path) -> None:
    """ORT's quantisation pre-processing: shape inference and the basic (standard-op) graph optimisations.

    Runs in a scratch folder: when symbolic shape inference gives up, ONNX Runtime saves its partial model as
    ``sym_shape_infer_temp.onnx`` plus an external-data file named by a uuid in the *current* folder
    (``onnxruntime/tools/symbolic_shape_infer.py``, ``infer_shapes``) and never removes them."""
    import tempfile

    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, out = str(Path(float_onnx).resolve()), str(Path(dest).resolve())
    with quiet_library_logging(), tempfile.TemporaryDirectory(prefix="edge-tl-prequant-") as scratch, _cwd(scratch):
        try:
            quant_pre_process(src, out)
        except Exception:  # noqa: BLE001 - symbolic shape inference fails on some graphs
            quant_pre_process(src, out, skip_symbolic_shape=True)


@contextlib.contextmanager
def _cwd(folder: str) -> Iterator[None]:
    """The current folder set to ``folder`` for the block (``contextlib.chdir`` arrived in Python 3.11)."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def shift_logits(qmodel: Any, offset: np.ndarray) -> Any:
    """A copy of ONNX graph ``qmodel`` whose ``logits`` output has ``offset`` (K,) subtracted by a float
    Add (``OFFSET_NODE``) after the node that made them; the output keeps its name."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    g = m.graph
    if LOGITS not in {o.name for o in g.output}:
        raise RuntimeError(f"the graph has no {LOGITS!r} output")
    raw = f"{LOGITS}__before_offset"
    for n in g.node:
        n.output[:] = [raw if o == LOGITS else o for o in n.output]
        n.input[:] = [raw if i == LOGITS else i for i in n.input]
    value = f"{OFFSET_NODE}/value"
    g.initializer.append(numpy_helper.from_array(-np.asarray(offset, np.float32).reshape(1, -1), value))
    g.node.append(onnx.helper.make_node("Add", [raw, value], [LOGITS], name=OFFSET_NODE))
    keep = [v for v in g.value_info if v.name != LOGITS]
    del g.value_info[:]
    g.value_info.extend(keep)
    return m


_FOLDED_INTO_Q = ("Relu", "Clip")


def fold_float_weights(model: Any) -> list[str]:
    """In place: every Conv of QDQ graph ``model`` that ONNX Runtime computes in float (its input is not
    dequantised, or its output is not read by QuantizeLinear alone, so no QLinearConv is fused) gets its
    DequantizeLinear weight (and bias) as a float initialiser of the same values; returns those Convs' names.

    Why: ORT keeps a DequantizeLinear of a constant as a node (constant folding spares Q/DQ) and runs it on
    every call, and a Conv whose weight is not an initialiser gets neither pre-packed weights nor the NCHWc
    float kernels. On the NEU-DET detector (mobilenet_v2, 320 px, 2 threads, AVX-512 VNNI host) the three
    activation quantisers the fallback bypassed left six such Convs in the stride-2/4 blocks, which took
    37 of 59 ms per image: the INT8 graph ran 1.06x the fp32 graph's time instead of 0.63x. The values are
    those the DequantizeLinear computes (``(q - zero_point) * scale``, float32), so the graph computes the
    same function; unused Q/DQ nodes and initialisers are removed."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def constant_dq(tensor: str) -> Any:
        dq = producers.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or any(i not in inits for i in dq.input if i):
            return None
        return dq

    def dequantized(dq: Any) -> str:
        name = f"{dq.output[0]}__float"
        if name not in inits:
            q = numpy_helper.to_array(inits[dq.input[0]])
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
            zp = (numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2]
                  else np.zeros_like(scale, np.int32))
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            if scale.ndim == 1 and scale.size > 1:  # per channel along ``axis``
                shape[axis % q.ndim] = scale.size
            value = ((q.astype(np.int32) - zp.astype(np.int32).reshape(shape)).astype(np.float32)
                     * scale.reshape(shape))
            inits[name] = numpy_helper.from_array(value.astype(np.float32), name)
            g.initializer.append(inits[name])
        return name

    folded = []
    for n in g.node:
        if n.op_type != "Conv":
            continue
        x = producers.get(n.input[0])
        readers = consumers.get(n.output[0], [])
        if len(readers) == 1 and readers[0].op_type in _FOLDED_INTO_Q:
            # ORT first removes a Relu / Clip whose range the next QuantizeLinear's covers (ClipQuantFusion)
            readers = consumers.get(readers[0].output[0], [])
        if (x is not None and x.op_type == "DequantizeLinear" and readers
                and all(r.op_type == "QuantizeLinear" for r in readers)):
            continue  # ORT fuses it into QLinearConv
        changed = False
        for idx in range(1, len(n.input)):
            dq = constant_dq(n.input[idx])
            if dq is not None:
                n.input[idx] = dequantized(dq)
                changed = True
        if changed:
            folded.append(n.name)
    if folded:
        used = {i for n in g.node for i in n.input}
        outputs = {o.name for o in g.output}
        keep = [n for n in g.node if not (n.op_type == "DequantizeLinear" and n.input[0] in inits
                                          and n.output[0] not in used | outputs)]
        del g.node[:]
        g.node.extend(keep)
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        kept = [i for i in g.initializer if i.name in used]
        del g.initializer[:]
        g.initializer.extend(kept)
    return folded


# --------------------------------------------------------------------------------------------------
# Bypassing activation quantisers of a QDQ graph: the layer fallback of both ONNX quantisers


def activation_quantizers(model: Any) -> list[Any]:
    """QuantizeLinear nodes of a QDQ graph that quantise an activation (not a constant weight)."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in constants]


def without(qmodel: Any, names: list[str] | tuple[str, ...]) -> Any:
    """A copy of QDQ graph ``qmodel`` in which the activation QuantizeLinear nodes ``names`` and their
    DequantizeLinear partners are bypassed: every reader of that tensor computes on its float value
    (its weights stay int8). ``openvino_.quantize.without`` for ONNX: exactly the graph that ships, in milliseconds,
    where a re-quantisation with an ignored scope would also redo the bias correction around it."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    g = m.graph
    wanted = set(names)
    rewire: dict[str, str] = {}
    drop: set[str] = set()
    for q in activation_quantizers(m):
        if q.name not in wanted:
            continue
        drop.add(q.name)
        for dq in g.node:
            if dq.op_type == "DequantizeLinear" and dq.input[0] == q.output[0]:
                rewire[dq.output[0]] = q.input[0]
                drop.add(dq.name)
    keep = [n for n in g.node if n.name not in drop]
    for n in keep:
        for i, inp in enumerate(n.input):
            if inp in rewire:
                n.input[i] = rewire[inp]
    for out in g.output:
        if out.name in rewire:  # a graph output stays named as it was: an Identity carries the float value
            keep.append(onnx.helper.make_node("Identity", [rewire[out.name]], [out.name]))
    del g.node[:]
    g.node.extend(keep)
    # The Convs that now read or make a float tensor run in float: as float Convs, not DequantizeLinear
    # followed by a Conv on a computed weight (the graph that is measured is the one that ships).
    fold_float_weights(m)
    return m


def sensitivity(qmodel: Any, float_model: Any, inputs: np.ndarray, threads: int = 2,
                ) -> tuple[float, list[dict[str, Any]]]:
    """Each activation quantiser of QDQ graph ``qmodel`` bypassed alone: how much of the INT8 logit error
    it removes, most sensitive first (rows: ``name``, ``consumers``, ``sensitivity``, ``error_if_float``)."""
    ref = logits(float_model.SerializeToString(), inputs, threads)
    base = rel_error(logits(qmodel.SerializeToString(), inputs, threads), ref)
    rows = []
    for q in activation_quantizers(qmodel):
        dqs = {n.output[0] for n in qmodel.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]}
        consumers = sorted({n.name for n in qmodel.graph.node if set(n.input) & dqs})
        variant = without(qmodel, [q.name]).SerializeToString()
        err = rel_error(logits(variant, inputs, threads), ref)
        rows.append({"name": q.name, "consumers": consumers, "sensitivity": base - err, "error_if_float": err})
    rows.sort(key=lambda r: (-r["sensitivity"], r["name"]))
    return base, rows
