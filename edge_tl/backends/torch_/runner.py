"""The reference runner: the fine-tuned PyTorch model, eager, fp32 (CPU) or as asked (CUDA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..base import RunnerSpec


def availability(device: str) -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install 'edge-tl[train]')"
    if device.startswith("cuda") and not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    return None


class TorchRunner:
    backend = "torch"

    def __init__(self, spec: RunnerSpec) -> None:
        import torch

        from ...checkpoint import load_model

        # model_path is the stage folder (finetune/ or prune/) holding model.pt + manifest.json.
        folder = Path(spec.model_path)
        self.model, _ = load_model(folder if folder.is_dir() else folder.parent)
        self.device = "cuda:0" if spec.device == "cuda" else spec.device
        torch.set_num_threads(spec.threads)
        self.dtype = torch.float16 if spec.precision == "fp16" else torch.float32
        self.model.to(self.device, self.dtype).eval()
        self.precision = spec.precision
        self._torch = torch

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device, self.dtype)
            out = self.model(x).float().cpu()  # .cpu() synchronises with the GPU
        return out.numpy()

    def close(self) -> None:
        self.model = None


def open(spec: RunnerSpec) -> TorchRunner:  # noqa: A001 - the backend table's entry point
    return TorchRunner(spec)
