"""The torch backend: the fine-tuned PyTorch model itself, the reference every target is judged against.

``runner``: eager fp32 (CPU) or as asked (CUDA). No converter (export keeps ``model.pt``), no quantiser.
"""

from __future__ import annotations

from ..descriptor import BackendFacts

FACTS = BackendFacts("torch", f"{__name__}.runner", "model.pt", "torch", "torch", "train")
