"""Where an OpenVINO model's batch-1 time goes, layer by layer, against the INT8 compute floor.

    python benchmarks/where_time_goes.py RUN/targets/cpu-openvino-int8/model.xml [--threads 2] [--calls 300]

OpenVINO's performance counters (``PERF_COUNT``) give each executed node's real time, its kernel
("exec type", e.g. ``brgconv_avx512_core_vnni_I8``) and precision. The script prints the total, the
share per kind of layer (1x1 convolutions, depthwise convolutions, the rest) and the top layers, and
the compute floor: the model's MACs at the measured INT8 GEMM peak (design.md: ~1,900 GOPS at 2
threads on the dev machine). Run it on a quiet host: counters slow a call by a few per cent, shares
hold better than absolute times.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

INT8_PEAK_GOPS = 1900.0  # ORT MatMulInteger 1024^3, 2 threads, best call (design.md)


def _macs(model) -> float:
    """Multiply-accumulates of the convolutions and matmuls of ``model`` at its static shape."""
    total = 0.0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        out = op.get_output_partial_shape(0)
        w = op.input_value(1).get_partial_shape()
        if not (out.is_static and w.is_static):
            continue
        out_elems = float(np.prod([d.get_length() for d in out]))
        wdims = [d.get_length() for d in w]
        if kind == "Convolution":
            per_out = float(np.prod(wdims[1:]))  # Cin * kh * kw
        elif kind == "GroupConvolution":
            per_out = float(np.prod(wdims[2:]))  # (Cin/group) * kh * kw
        else:
            per_out = float(wdims[-2])
        total += out_elems * per_out
    return total


def main() -> None:
    import openvino as ov

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()
    core = ov.Core()
    model = core.read_model(a.model)
    model.reshape([1, 3, a.size, a.size])
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": a.threads, "PERFORMANCE_HINT": "LATENCY",
                                                 "NUM_STREAMS": 1, "PERF_COUNT": True,
                                                 "INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 3, a.size, a.size)).astype(np.float32)
    for _ in range(30):
        req.infer({0: x})
    per_node: dict[str, list[float]] = defaultdict(list)
    meta: dict[str, tuple[str, str]] = {}
    walls = []
    import time

    for _ in range(a.calls):
        t0 = time.perf_counter()
        req.infer({0: x})
        walls.append((time.perf_counter() - t0) * 1e3)
        for info in req.profiling_info:
            if info.status != info.Status.EXECUTED:
                continue
            per_node[info.node_name].append(info.real_time.total_seconds() * 1e3)
            meta[info.node_name] = (info.node_type, info.exec_type)
    med = {n: float(np.median(v)) for n, v in per_node.items()}
    total = sum(med.values())
    macs = _macs(model)
    floor_ms = 2 * macs / (INT8_PEAK_GOPS * 1e9) * 1e3
    print(f"wall p50 {np.median(walls):.3f} ms; sum of layer medians {total:.3f} ms; {len(med)} executed nodes")
    print(f"MACs {macs / 1e6:.1f} M; INT8 compute floor at {INT8_PEAK_GOPS:.0f} GOPS: {floor_ms:.3f} ms "
          f"(wall / floor {np.median(walls) / floor_ms:.1f}×)")
    groups: dict[str, float] = defaultdict(float)
    for n, t in med.items():
        kind, exec_type = meta[n]
        groups[f"{kind} [{exec_type}]"] += t
    print("\nby layer kind and kernel:")
    for k, t in sorted(groups.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {t:7.3f} ms  {t / total:6.1%}  {k}")
    print(f"\ntop {a.top} layers:")
    for n, t in sorted(med.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"  {t:7.3f} ms  {t / total:6.1%}  {meta[n][0]:<18} {meta[n][1]:<36} {n}")


if __name__ == "__main__":
    main()
