"""Load measurements of the bundle runtime: 8-thread equality and resident memory over a long run.

    python scripts/soak.py BUNDLE IMAGES_DIR [--predictions 10000] [--threads 8] [--json out.json]

1. Thread equality: every image is classified once on one thread, then again by N threads sharing
   ONE ``Runtime`` (each thread walks all images, from a different starting point). Every answer is
   compared with the single-thread one: label, decision and logits (bitwise and max |Δ|).
2. Soak: after a warm-up, ``--predictions`` single-image predictions in a row from image files
   (decode + preprocess + inference + decision), sampling resident memory (VmRSS) as it goes.
   Reported: RSS after warm-up, at the end, growth in percent, and the slope of a line fitted to
   the samples (KiB per 1,000 predictions) so a slow leak shows even when the end point is noisy.

Torch-free (numpy, Pillow, the bundle's backend): run it with the device's runtime install.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

from edge_tl.preprocess import IMAGE_SUFFIXES
from edge_tl.runtime import Runtime


def rss_kib() -> int:
    """Resident set size of this process in KiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("VmRSS not found in /proc/self/status (Linux only)")


def thread_equality(rt: Runtime, images: list[Path], threads: int) -> dict:
    start = time.perf_counter()
    ref = {str(p): rt.predict(p) for p in images}
    single_s = time.perf_counter() - start
    results: list[list] = [[] for _ in range(threads)]
    errors: list[str] = []

    def work(k: int) -> None:
        shift = k * len(images) // threads
        try:
            for p in images[shift:] + images[:shift]:
                results[k].append(rt.predict(p))
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(exc).__name__}: {exc}")

    start = time.perf_counter()
    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    threaded_s = time.perf_counter() - start
    n = bitwise = same_label = same_decision = 0
    max_diff = 0.0
    for rows in results:
        for p in rows:
            r = ref[p.path]
            n += 1
            bitwise += bool(np.array_equal(p.logits, r.logits))
            same_label += p.label == r.label
            same_decision += p.decision == r.decision
            max_diff = max(max_diff, float(np.abs(p.logits - r.logits).max()))
    return {"threads": threads, "images": len(images), "predictions_compared": n,
            "expected": threads * len(images), "errors": errors, "logits_bitwise_equal": bitwise,
            "labels_equal": same_label, "decisions_equal": same_decision, "max_abs_logit_diff": max_diff,
            "single_thread_s": round(single_s, 2), "threaded_s": round(threaded_s, 2)}


def soak(rt: Runtime, images: list[Path], predictions: int, warmup: int, every: int) -> dict:
    for i in range(warmup):
        rt.predict(images[i % len(images)])
    gc.collect()
    rss0 = rss_kib()
    samples = [(0, rss0)]
    labels: dict[str, str] = {}
    changed = 0
    start = time.perf_counter()
    for i in range(1, predictions + 1):
        p = images[i % len(images)]
        label = rt.predict(p).label
        changed += labels.setdefault(str(p), label) != label
        if i % every == 0:
            samples.append((i, rss_kib()))
    seconds = time.perf_counter() - start
    gc.collect()
    rss1 = rss_kib()
    x = np.array([s[0] for s in samples], float)
    y = np.array([s[1] for s in samples], float)
    slope = float(np.polyfit(x, y, 1)[0] * 1000) if len(samples) > 2 else None
    return {"predictions": predictions, "warmup": warmup, "rss_after_warmup_mib": round(rss0 / 1024, 1),
            "rss_end_mib": round(rss1 / 1024, 1), "rss_growth_percent": round((rss1 - rss0) / rss0 * 100, 2),
            "rss_max_sample_mib": round(max(y) / 1024, 1), "rss_slope_kib_per_1000": slope,
            "samples_mib": [(int(a), round(b / 1024, 1)) for a, b in samples],
            "answers_that_changed_between_repeats": changed, "seconds": round(seconds, 1),
            "mean_ms_per_prediction": round(seconds * 1000 / predictions, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("images", help="Folder of images (searched recursively).")
    ap.add_argument("--predictions", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--thread-images", type=int, default=120, help="Images each thread classifies.")
    ap.add_argument("--soak-images", type=int, default=64, help="Distinct images cycled through in the soak.")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--sample-every", type=int, default=500)
    ap.add_argument("--json", dest="json_path", help="Also write the figures here.")
    args = ap.parse_args(argv)
    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        print(f"no images under {args.images}", file=sys.stderr)
        return 2
    stride = max(1, len(files) // args.thread_images)  # spread over the classes of a class-sorted folder
    with Runtime(args.bundle) as rt:
        report = {
            "bundle": str(rt.path), "backend": rt.backend, "precision": rt.precision,
            "host": {"machine": platform.machine(), "python": platform.python_version()},
            "torch_loaded": "torch" in sys.modules,
            "thread_equality": thread_equality(rt, files[::stride][: args.thread_images], args.threads),
            "soak": soak(rt, files[:: max(1, len(files) // args.soak_images)][: args.soak_images],
                         args.predictions, args.warmup, args.sample_every),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
    te, sk = report["thread_equality"], report["soak"]
    ok = (not te["errors"] and te["predictions_compared"] == te["expected"]
          and te["logits_bitwise_equal"] == te["expected"] and sk["rss_growth_percent"] < 5.0)
    print(f"threads: {te['logits_bitwise_equal']}/{te['expected']} bitwise equal to one thread; "
          f"soak: RSS {sk['rss_after_warmup_mib']} -> {sk['rss_end_mib']} MiB "
          f"({sk['rss_growth_percent']:+.2f}%) over {sk['predictions']} predictions -> "
          f"{'PASS' if ok else 'FAIL'}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
