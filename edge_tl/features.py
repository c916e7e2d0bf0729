"""Frozen layers run once: the engine that computes their activations for training.

``linear`` mode trains the head on the pooled features of the frozen backbone; cached ``partial``
mode trains the last blocks on the activations that enter them. Either way the frozen part runs
once per image (and per augmented view), so it should run on the fastest engine the machine has:
on a CPU that is the exported fp32 graph in ONNX Runtime (mobilenet_v2, batch 64, 2 threads, measured
on the dev machine: 2.1 s per batch vs 12.5 s in torch eager with other work on the cores, features
equal to 5e-6 of a max of 3.9). On CUDA, torch itself. The engine never changes the numbers beyond
float rounding; ``tests/test_features.py`` holds it to that.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from .errors import ConfigError

log = logging.getLogger("edge_tl")

ENGINES = ("auto", "onnxruntime", "torch")


class PrefixEngine:
    """Runs a frozen torch module on NCHW float32 batches and returns its output as a CPU tensor.

    ``engine``: ``onnxruntime`` (the module exported to ONNX, opset 17, dynamic batch, run with
    ``threads`` intra-op threads, all cores by default), ``torch`` (eager, inference mode), or
    ``auto``: ONNX Runtime on a CPU when it is installed, torch on CUDA or without it. ``name`` says
    which one runs. Raises ConfigError for an unknown engine or a missing onnxruntime when asked for.
    """

    def __init__(self, module: Any, input_shape: tuple[int, int, int], device: str = "cpu",
                 engine: str = "auto", threads: int | None = None) -> None:
        if engine not in ENGINES:
            raise ConfigError(f"unknown feature engine {engine!r}; choose {', '.join(ENGINES)}")
        self.module, self.device = module.eval(), device
        if engine == "auto":
            engine = "torch" if device.startswith("cuda") or not _has_onnxruntime() else "onnxruntime"
        if engine == "onnxruntime" and device.startswith("cuda"):
            raise ConfigError("the onnxruntime feature engine runs on the CPU; use torch with --device cuda")
        self.name = engine
        self.session: Any = None
        if engine == "onnxruntime":
            if not _has_onnxruntime():
                raise ConfigError("the onnxruntime feature engine needs onnxruntime: pip install 'edge-tl[train]'")
            self.session = _ort_session(module, input_shape, threads or os.cpu_count() or 1)

    def __call__(self, x: Any) -> Any:
        import torch

        if self.session is not None:
            out = self.session.run(None, {"input": np.ascontiguousarray(x.numpy(), dtype=np.float32)})[0]
            return torch.from_numpy(out)
        with torch.inference_mode():
            xd = x.to(self.device, non_blocking=True)
            if self.device.startswith("cuda"):
                xd = xd.contiguous(memory_format=torch.channels_last)
            return self.module(xd).float().cpu()


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _ort_session(module: Any, input_shape: tuple[int, int, int], threads: int) -> Any:
    import onnxruntime as ort
    import torch

    from .onnx_export import export_onnx_bytes

    graph = export_onnx_bytes(module.eval().cpu(), torch.zeros(1, *input_shape), input_names=["input"],
                              output_names=["output"], dynamic_batch=True, opset=17)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
