"""``bundle``, ``predict`` and ``watch``: from an exported target to answers on a device.

``predict`` and ``watch`` run on the device with only ``edge-tl[runtime]`` installed, so this module
imports nothing heavy at import time (the CLI imports every command module on start).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

from ._app import app, state

log = logging.getLogger("edge_tl")


@app.command()
def bundle(
    run: Path = typer.Argument(..., help="Run directory."),
    target: str = typer.Option(..., "--target", "-t", help="An exported target of the run."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write (an old bundle there is replaced "
                             "atomically)."),
    golden: int = typer.Option(8, "--golden", help="Golden images to include (at least one per class)."),
    ok_class: list[str] = typer.Option(None, "--ok-class", help="A class that passes QC (repeatable). "
                                       "Default: a class named ok/good/pass/normal/no_defect, if any."),
    defect_class: list[str] = typer.Option(None, "--defect-class", help="A defect class (repeatable); "
                                           "the others are ok classes."),
    max_false_reject: float = typer.Option(None, "--max-false-reject", help="Tune the ok threshold on the "
                                           "validation set to this false-reject rate (default 0.01)."),
    ok_threshold: float = typer.Option(None, "--ok-threshold", help="Fixed ok threshold instead of tuning."),
    defect_threshold: float = typer.Option(0.5, "--defect-threshold", help="Confidence a defect answer "
                                           "needs; below it the decision is 'review'."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Package an exported target for a device: model, preprocessing, policy, hashes, golden images."""
    from rich.console import Console

    from ..stages.bundle import bundle as run_bundle

    m = run_bundle(run, target, out, golden, ok_classes=list(ok_class or []) or None,
                   defect_classes=list(defect_class or []) or None, max_false_reject=max_false_reject,
                   ok_threshold=ok_threshold, defect_threshold=defect_threshold, quiet=quiet or state.quiet)
    p = m["policy"]
    oks = ", ".join(p["ok_classes"]) or "none"
    tuned = p.get("tuning")
    tuning = (f", ok threshold {p['ok_threshold']:.4g} tuned to false-reject "
              f"{tuned['target_false_reject']:g} (validation: {tuned['false_reject_rate']:.3g} on "
              f"{tuned['n_ok']} good images)") if tuned else ""
    g = m["golden"]
    Console(stderr=True).print(
        f"[green]bundled[/] {m['target']['name']} -> {out}: {len(g['images'])} golden images (max |Δlogit| "
        f"vs torch {g['reference_max_abs_logit_diff']:.2e}); ok classes: {oks}{tuning}")


def _expand(paths: list[Path]) -> list[Path]:
    """Files as given, folders searched recursively for images (sorted, hidden files skipped)."""
    from ..errors import EdgeTLError
    from ..runtime.watch import WATCHED_SUFFIXES

    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in WATCHED_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise EdgeTLError(f"no such file or folder: {p}")
    if not out:
        raise EdgeTLError(f"no images found in {', '.join(map(str, paths))}")
    return out


def _predict_one(rt, path: Path, color: str | None):  # rt: a Runtime (imported lazily)
    from ..runtime import InputError

    try:
        return path, rt.predict(str(path), color=color), None
    except InputError as exc:
        return path, None, str(exc)


@app.command()
def predict(
    bundle: Path = typer.Argument(..., help="Bundle folder (from `edge-tl bundle`)."),
    paths: list[Path] = typer.Argument(..., help="Image files and/or folders."),
    json_lines: bool = typer.Option(False, "--json", help="JSON lines: path, label, score, decision, ms."),
    color: str = typer.Option(None, "--color", help="Channel order of raw .npy frames: RGB or BGR "
                              "(image files carry their own)."),
    batch: int = typer.Option(None, "--batch", help="Images per inference call (default: the bundle's)."),
    device: str = typer.Option(None, "--device", help="Override the bundle's device."),
    threads: int = typer.Option(None, "--threads", help="Override the bundle's thread count."),
) -> None:
    """Classify images with a bundle (no torch needed).

    Exit 2 when the bundle was changed (one line naming the file) or an image cannot be read.
    """
    from ..errors import EdgeTLError
    from ..runtime import InputError, Runtime

    files = _expand(paths)
    failed: list[str] = []
    with Runtime(bundle, device=device, threads=threads) as rt:
        size = batch or rt.batch_size
        for i in range(0, len(files), size):
            chunk = files[i:i + size]
            try:
                preds = rt.predict_batch([str(f) for f in chunk], color=color)
                results = [(f, p, None) for f, p in zip(chunk, preds, strict=True)]
            except InputError:  # a bad file in the chunk: classify it one by one to name the culprit
                results = [_predict_one(rt, f, color) for f in chunk]
            for f, pred, err in results:
                if err is not None:
                    failed.append(err)
                    line = (json.dumps({"path": str(f), "error": err}) if json_lines else f"error   {err}")
                elif json_lines:
                    line = json.dumps(pred.to_dict())
                else:
                    line = f"{pred.label:<18} {pred.score:.4f}  {pred.decision:<7} {pred.ms:7.1f} ms  {f}"
                print(line, flush=True)
    if failed:
        raise EdgeTLError(f"{len(failed)} of {len(files)} image(s) could not be classified; "
                          f"first: {failed[0]}")


@app.command()
def watch(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    folder: Path = typer.Argument(..., help="The camera's drop folder."),
    log_path: Path = typer.Option(None, "--log", help="Result log, .jsonl or .csv "
                                  "(default: FOLDER/edge-tl-results.jsonl)."),
    poll: float = typer.Option(1.0, "--poll", help="Seconds between scans of the folder."),
    once: bool = typer.Option(False, "--once", help="Process what is there now and exit."),
    move_to: Path = typer.Option(None, "--move-to", help="Move each image here once its result is logged "
                                 "(keeps the drop folder small on a long-running line)."),
    settle: float = typer.Option(0.5, "--settle", help="Seconds a file must be unchanged before it is read "
                                 "(the camera may still be writing it)."),
    color: str = typer.Option(None, "--color", help="Channel order of raw .npy frames: RGB or BGR."),
    device: str = typer.Option(None, "--device", help="Override the bundle's device."),
    threads: int = typer.Option(None, "--threads", help="Override the bundle's thread count."),
) -> None:
    """Classify each new image in FOLDER exactly once, appending results to a log (restart-safe)."""
    import signal
    import threading

    from ..runtime import Runtime
    from ..runtime.watch import Watcher

    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        with Runtime(bundle, device=device, threads=threads) as rt, \
                Watcher(rt, folder, log_path, move_to=move_to, settle=settle, color=color) as w:
            if not (once or state.quiet):
                print(f"watching {folder} with {bundle} ({rt.backend}); results -> {w.log.path}",
                      file=sys.stderr)
            total = w.run(poll, once=once, stop=stop)
            counts = ", ".join(f"{k} {v}" for k, v in sorted(w.counts.items())) or "nothing new"
            print(f"watch: {total} image(s) logged to {w.log.path} ({counts})", file=sys.stderr)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
