"""Latency and throughput, timed the same way for every runner."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "n": int(a.size),
    }


def measure_latency(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, warmup: int,
                    iterations: int, max_seconds: float = 30.0) -> dict[str, float]:
    """Per-call wall time in ms after ``warmup`` calls; stops early after ``max_seconds``.

    ``fn`` must return only when its result is in host memory (runners guarantee this), so GPU work
    is inside the timed region.
    """
    for _ in range(warmup):
        fn(x)
    samples: list[float] = []
    deadline = time.perf_counter() + max_seconds
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        fn(x)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if time.perf_counter() > deadline and len(samples) >= 10:
            break
    return percentiles(samples) | {"samples": samples}


def measure_paired(ref_fn: Callable[[np.ndarray], np.ndarray], cand_fn: Callable[[np.ndarray], np.ndarray],
                   x: np.ndarray, warmup: int, iterations: int, rounds: int = 20,
                   on_block: Callable[[int, int], None] | None = None,
                   ) -> tuple[dict[str, float], dict[str, float]]:
    """Per-call wall time in ms of two runners, timed in alternating blocks (``rounds`` of each,
    ``iterations`` calls each in all) after ``warmup`` calls of each.

    A shared host slows down for seconds at a time (other tenants, thermal limits); timed one after the
    other, a fast candidate and a slow reference can land in different periods and their ratio moves
    by 1.5x. Alternating blocks put both in every period. Each block starts with one untimed call,
    because the other runner has just evicted the caches. Returns (reference, candidate) statistics;
    ``on_block(done, total)`` is called after each pair of blocks (progress for a slow reference).
    Each also holds ``block_p50_ms``, the median of every block in order, so the ratio can be taken
    block by block (:func:`block_ratio_spread`): when the host slows one runner far more than the
    other, those ratios scatter, and the single speedup figure is not to be trusted.
    """
    for _ in range(warmup):
        ref_fn(x)
        cand_fn(x)
    per_block = max(1, -(-iterations // rounds))
    samples: tuple[list[float], list[float]] = ([], [])
    blocks: tuple[list[float], list[float]] = ([], [])
    while len(samples[0]) < iterations:
        for fn, out, meds in ((ref_fn, samples[0], blocks[0]), (cand_fn, samples[1], blocks[1])):
            fn(x)
            block: list[float] = []
            for _ in range(per_block):
                t0 = time.perf_counter_ns()
                fn(x)
                block.append((time.perf_counter_ns() - t0) / 1e6)
            out.extend(block)
            meds.append(float(np.median(block)))
        if on_block is not None:
            on_block(len(samples[0]), iterations)
    return (percentiles(samples[0]) | {"samples": samples[0], "block_p50_ms": blocks[0]},
            percentiles(samples[1]) | {"samples": samples[1], "block_p50_ms": blocks[1]})


def block_ratio_spread(reference: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any] | None:
    """Spread (min, p10, p50, p90, max, relative IQR, p90/p10) of the per-block ratio
    reference block median / candidate block median, from two :func:`measure_paired` results."""
    from .hostload import ratio_spread

    return ratio_spread(reference.get("block_p50_ms") or [], candidate.get("block_p50_ms") or [])


def measure_throughput(fn: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, warmup: int = 3,
                       seconds: float = 2.0, min_calls: int = 5) -> float:
    """Images per second at ``len(batch)``."""
    for _ in range(warmup):
        fn(batch)
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < seconds:
        fn(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - t0)


def measure_streams(streams: Any, batch: np.ndarray, seconds: float = 2.0, min_requests: int = 8) -> dict[str, Any]:
    """Throughput with several requests in flight (:func:`edge_tl.backends.open_streams`): images per
    second over ``seconds`` (after one warm-up round per stream), the latency of each request under
    that load (a request is ``len(batch)`` images: each image waits the whole request) and the time per
    image amortised over the run (1000 / images per second)."""
    streams.run_requests(batch, max(2, 2 * max(1, streams.streams)))  # warm-up; also fixes streams
    per_round = max(min_requests, 4 * max(1, streams.streams))
    lat: list[float] = []
    t0 = time.perf_counter()
    while not lat or time.perf_counter() - t0 < seconds:
        lat += streams.run_requests(batch, per_round)
    wall = time.perf_counter() - t0
    ips = len(lat) * len(batch) / wall
    return {"mode": streams.mode, "streams": streams.streams, "batch": len(batch), "requests": len(lat),
            "seconds": wall, "images_per_s": ips, "ms_per_image": 1000.0 / ips,
            "request_latency_ms": {k: v for k, v in percentiles(lat).items() if k != "n"}}
