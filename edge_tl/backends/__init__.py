"""One Runner interface for every backend, chosen by a single table.

A runner takes an NCHW float32 batch and returns host-memory float32 logits after all device work
has finished. It does no timing of its own: the bench harness times every runner the same way.
"""

from __future__ import annotations

from .base import (
                   Runner,
                   RunnerSpec,
                   StreamRunner,
                   ThreadedStreams,
                   availability,
                   open_runner,
                   open_streams,
                   profile_layers,
)

__all__ = ["Runner", "RunnerSpec", "StreamRunner", "ThreadedStreams", "availability", "open_runner",
           "open_streams", "profile_layers"]
