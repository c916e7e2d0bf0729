"""``python -m edge_tl.runtime prepare|bench|info BUNDLE``: the device-side helpers (no torch, no typer).

* ``prepare`` verifies the bundle, opens its model (a TensorRT bundle builds its engine here on the
  first start and caches it) and checks the golden images; the container entrypoint runs it before
  serving ``predict``/``watch``.
* ``bench`` times the runtime end to end on the bundle's golden images (decode excluded:
  preprocessing + inference + decision), batch 1 latency and batched throughput.
* ``info`` prints what the bundle is.

Each prints one JSON object on stdout; errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from ..errors import EdgeTLError
from ..preprocess import load_image
from .core import Runtime


def _prepare(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    with Runtime(args.bundle, device=args.device, threads=args.threads) as rt:
        return rt.info() | {"prepared_seconds": round(time.perf_counter() - start, 3)}


def _bench(args: argparse.Namespace) -> dict:
    with Runtime(args.bundle, device=args.device, threads=args.threads) as rt:
        images = [load_image(rt.path / it["file"]) for it in rt.manifest["golden"]["images"]]
        if not images:
            raise EdgeTLError(f"{args.bundle} has no golden images to time")
        for i in range(args.warmup):
            rt.predict(images[i % len(images)])
        times = []
        for i in range(args.iterations):
            t0 = time.perf_counter()
            rt.predict(images[i % len(images)])
            times.append((time.perf_counter() - t0) * 1000.0)
        batch = [images[i % len(images)] for i in range(rt.batch_size)]
        rounds = max(1, args.iterations // (4 * rt.batch_size))
        t0 = time.perf_counter()
        for _ in range(rounds):
            rt.predict_batch(batch)
        ips = rounds * len(batch) / (time.perf_counter() - t0)
        ms = np.asarray(times)
        latency = {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 95, 99)}
        return {"bundle": str(rt.path), "backend": rt.backend, "device": rt.device, "precision": rt.precision,
                "latency_ms": latency | {"mean": float(ms.mean())},
                "throughput_ips": ips, "batch_size": rt.batch_size, "iterations": args.iterations,
                "measures": "preprocess + inference + decision, images already decoded"}


def _info(args: argparse.Namespace) -> dict:
    from .bundlefile import read_bundle

    m = read_bundle(args.bundle)
    return {k: m[k] for k in ("name", "created", "classes", "model", "policy", "preprocessing", "versions")}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m edge_tl.runtime``."""
    parser = argparse.ArgumentParser(prog="python -m edge_tl.runtime", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (("prepare", _prepare), ("bench", _bench), ("info", _info)):
        p = sub.add_parser(name)
        p.add_argument("bundle")
        p.set_defaults(fn=fn)
        if name != "info":
            p.add_argument("--device", default=None)
            p.add_argument("--threads", type=int, default=None)
        if name == "bench":
            p.add_argument("--iterations", type=int, default=200)
            p.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        print(json.dumps(args.fn(args), default=str))
    except EdgeTLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unreadable bundle folder, a full disk for the engine cache: one line too
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
