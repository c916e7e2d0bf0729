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
    max_escape: float = typer.Option(None, "--max-escape", help="Tune the ok threshold instead to the lowest that "
                                     "passes at most this share of the validation defects as ok (low-confidence "
                                     "ok answers go to review)."),
    defect_threshold: float = typer.Option(0.5, "--defect-threshold", help="Confidence a defect answer "
                                           "needs; below it the decision is 'review'."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Package an exported target for a device: model, preprocessing, policy, hashes, golden images."""
    from rich.console import Console

    from ..stages.bundle import bundle as run_bundle

    m = run_bundle(run, target, out, golden, ok_classes=list(ok_class or []) or None,
                   defect_classes=list(defect_class or []) or None, max_false_reject=max_false_reject,
                   ok_threshold=ok_threshold, defect_threshold=defect_threshold, max_escape=max_escape,
                   quiet=quiet or state.quiet)
    g = m["golden"]
    Console(stderr=True).print(
        f"[green]bundled[/] {m['target']['name']} -> {out}: {len(g['images'])} golden images (max |Δlogit| "
        f"vs torch {g['reference_max_abs_logit_diff']:.2e}); {policy_line(m['policy'])}", soft_wrap=True)


def policy_line(p: dict) -> str:
    """The shipped QC policy and what it did on the validation images, in one line."""
    oks = ", ".join(p["ok_classes"]) or "none"
    v, tuned = p["validation"], p.get("tuning") or {}
    if "target_escape" in tuned or "target_false_reject" in tuned:
        what, target = (("escape", tuned["target_escape"]) if "target_escape" in tuned
                        else ("false-reject", tuned["target_false_reject"]))
        bound = tuned.get("escape_upper_bound", tuned.get("false_reject_upper_bound"))
        conf = tuned.get("confidence") or 0.95
        shown = "" if bound is None else f" ({conf:.0%} upper bound {bound:.1%})"
        if tuned.get("target_met", True):
            how = f"ok threshold {p['ok_threshold']:.4g} tuned to {what} ≤ {target:g}{shown}"
        elif tuned.get("threshold_source") == "default":
            # Too few validation images to show the rate: say so, not "tuned".
            how = f"ok threshold {p['ok_threshold']:.4g} (default: {what} ≤ {target:g} NOT shown{shown})"
        else:
            how = f"ok threshold {p['ok_threshold']:.4g} ({what} ≤ {target:g} NOT met{shown})"
    else:
        how = f"ok threshold {p['ok_threshold']:.4g}"

    def pct(x: float | None) -> str:
        return "–" if x is None else f"{x:.1%}"

    recall = None if v["escape_rate"] is None else 1.0 - v["escape_rate"]
    return (f"ok classes: {oks}; {how}; on {v['n']} validation images ({v['n_defect']} defects): defect recall "
            f"(not passed) {pct(recall)}, escape {pct(v['escape_rate'])}, false-reject {pct(v['false_reject_rate'])}, "
            f"review {pct(v['review_rate'])}")


def _expand(paths: list[Path]) -> list[Path]:
    """Files as given, folders searched recursively for images (sorted, hidden files skipped).

    In a folder, an image is a file with the suffix of a format Pillow reads (or a raw ``.npy``
    frame); the other files are counted and named in a warning, never dropped without a word. A file
    named directly is always tried.
    """
    from ..data import find_files, name_left_out
    from ..errors import EdgeTLError

    out: list[Path] = []
    left_out: list[str] = []
    for p in paths:
        if p.is_dir():
            images, others = find_files(p)
            npy = [f for f in others if f.suffix.lower() == ".npy"]
            out += sorted([*images, *npy])
            left_out += [str(f) for f in others if f.suffix.lower() != ".npy"]
        elif p.is_file():
            out.append(p)
        else:
            raise EdgeTLError(f"no such file or folder: {p}")
    if left_out:
        log.warning("left out %s", name_left_out(left_out))
    if not out:
        raise EdgeTLError(f"no images found in {', '.join(map(str, paths))}")
    return out


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

    Exit 2 when the bundle was changed (one line naming the file) or an image cannot be read (every
    other image still gets its answer; the bad one an error line).
    """
    import time

    import numpy as np

    from ..errors import EdgeTLError
    from ..runtime import InputError, Runtime

    files = _expand(paths)
    failed: list[str] = []
    with Runtime(bundle, device=device, threads=threads) as rt:
        size = batch or rt.batch_size
        for i in range(0, len(files), size):
            chunk = files[i:i + size]
            start = time.perf_counter()
            inputs, good, errors = [], [], {}
            for f in chunk:  # decoded one by one: a bad file is its own error, never the chunk's
                try:
                    inputs.append(rt.prepare(str(f), color=color))
                    good.append(f)
                except InputError as exc:
                    errors[f] = str(exc)
            preds = dict(zip(good, rt.predict_inputs(np.stack(inputs), [str(f) for f in good], started=start),
                             strict=True)) if good else {}
            for f in chunk:
                if f in errors:
                    failed.append(errors[f])
                    line = (json.dumps({"path": str(f), "error": errors[f]}) if json_lines
                            else f"error   {errors[f]}")
                elif json_lines:
                    line = json.dumps(preds[f].to_dict())
                else:
                    p = preds[f]
                    line = f"{p.label:<18} {p.score:.4f}  {p.decision:<7} {p.ms:7.1f} ms  {f}"
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
    settle: float = typer.Option(0.5, "--settle", help="Seconds a file's size and mtime must stay the same "
                                 "(timed by this host's clock, whatever the camera's) before it is read."),
    error_after: float = typer.Option(None, "--error-after", help="Seconds an unreadable file must stay "
                                      "unchanged before it is logged as an error, not a paused upload "
                                      "(default 10 x --settle)."),
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
                Watcher(rt, folder, log_path, move_to=move_to, settle=settle, color=color,
                        error_after=error_after) as w:
            if not (once or state.quiet):
                print(f"watching {folder} with {bundle} ({rt.backend}); results -> {w.log.path}",
                      file=sys.stderr)
            total = w.run(poll, once=once, stop=stop)
            counts = ", ".join(f"{k} {v}" for k, v in sorted(w.counts.items())) or "nothing new"
            extra = "".join(f"; {len(names)} {what}: {', '.join(sorted(names)[:10])}"
                            for what, names in (("non-image file(s) ignored", w.ignored),
                                                ("file(s) still changing, left for the next run", w.pending))
                            if names)
            print(f"watch: {total} image(s) logged to {w.log.path} ({counts}){extra}", file=sys.stderr)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
