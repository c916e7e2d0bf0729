"""``bundle``, ``predict`` and ``watch``: from an exported target to answers on a device.

``predict`` and ``watch`` run on the device with only ``edge-tl[runtime]`` installed, so this module
imports nothing heavy at import time (the CLI imports every command module on start).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..settings import BundleSettings
from ._app import app, state
from .options import settings_command

if TYPE_CHECKING:
    from ..runtime import Prediction, Runtime

log = logging.getLogger("edge_tl")


@app.command()
@settings_command(BundleSettings)
def bundle(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory."),
    settings: BundleSettings = ...,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Package an exported target for a device: model, preprocessing, policy, hashes, golden images.

    The target must have passed `edge-tl bench` (RUN/reports/TARGET.json, of this export) unless
    --allow-failed is given.
    """
    from ..progress import console

    m = settings.run(run, quiet=quiet or state.quiet)
    out = settings.out
    g = m["golden"]
    if m.get("task") == "detect":
        n_boxes = sum(len(it["boxes"]) for it in g["images"])
        console().print(f"[green]bundled[/] {m['target']['name']} (detection) -> {out}: {len(g['images'])} golden "
                        f"images ({n_boxes} boxes); {box_policy_line(m['policy'])}", soft_wrap=True)
    else:
        console().print(
            f"[green]bundled[/] {m['target']['name']} -> {out}: {len(g['images'])} golden images (max |Δlogit| "
            f"vs torch {g['reference_max_abs_logit_diff']:.2e}); {policy_line(m['policy'])}", soft_wrap=True)
    if (m.get("bench") or {}).get("allowed_failed"):
        from rich.markup import escape

        console().print(f"[red]shipped with --allow-failed:[/] {escape(m['bench']['why'])}", soft_wrap=True)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def policy_line(p: dict) -> str:
    """The shipped QC policy and what it did on the validation images, in one line."""
    # With no ok class nothing can pass: say what the policy will do, not just "none".
    oks = ", ".join(p["ok_classes"]) or "none (no ok class: every part will be defect or review)"
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

    recall = None if v["escape_rate"] is None else 1.0 - v["escape_rate"]
    return (f"ok classes: {oks}; {how}; on {v['n']} validation images ({v['n_defect']} defects): defect recall "
            f"(not passed) {_pct(recall)}, escape {_pct(v['escape_rate'])}, "
            f"false-reject {_pct(v['false_reject_rate'])}, review {_pct(v['review_rate'])}"
            + (f" (out of distribution {_pct(v['out_of_distribution_rate'])}, ood limit {p['ood_limit']:g})"
               if "out_of_distribution_rate" in v else "")
            + (f"; {p['noise_guard']['summary']}" if (p.get("noise_guard") or {}).get("summary") else ""))


def box_policy_line(p: dict) -> str:
    """A detection bundle's QC policy and what it did on the validation images, in one line."""
    v, tuned = p["validation"], p.get("tuning") or {}
    defects = ", ".join(p["defect_classes"])
    oks = f"; ok box classes: {', '.join(p['ok_classes'])}" if p["ok_classes"] else ""
    limit = p.get("threshold")
    shown = f"{limit:.4g}" if limit is not None else "per class"
    if tuned:
        what = "escape" if "target_escape" in tuned else "false-reject"
        target = tuned.get(f"target_{what.replace('-', '_')}")
        bound = tuned.get(f"{what.replace('-', '_')}_upper_bound")
        conf = tuned.get("confidence") or 0.95
        bound_text = "" if bound is None else f" ({conf:.0%} upper bound {bound:.1%})"
        if tuned.get("target_met"):
            how = f"box threshold {shown} tuned to {what} ≤ {target:g}{bound_text}"
        else:
            missed = "shown" if tuned.get("threshold_source") == "default" else "met"
            how = f"box threshold {shown} ({what} ≤ {target:g} NOT {missed}{bound_text})"
    else:
        how = f"box threshold {shown}"
    no_good = " (no image without a defect box)" if not v["n_ok"] else ""
    return (f"defect box classes: {defects}{oks}; {how}; on {v['n']} validation images ({v['n_defect']} with a "
            f"defect box): escape {_pct(v['escape_rate'])}, false-reject {_pct(v['false_reject_rate'])}{no_good}, "
            f"box recall {_pct(v['box_recall'])}, box precision {_pct(v['box_precision'])}")


def _expand(paths: list[Path], require: bool = True) -> list[Path]:
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
    if not out and require:
        raise EdgeTLError(f"no images found in {', '.join(map(str, paths))}")
    return out


def _line(p: Prediction, name: str) -> str:
    """One text line of ``predict``: label, score, decision, this image's share of its batch call (a detection
    bundle's: the deciding box's class and score, and how many boxes)."""
    batch = f" (batch of {p.batch_size})" if p.batch_size > 1 else ""
    if p.boxes is not None:
        n = len(p.boxes)
        boxes = f"{n} box{'es' if n != 1 else ''}"
        return f"{p.label:<18} {p.score:.4f}  {boxes:<9}  {p.decision:<7} {p.ms:7.1f} ms/image{batch}  {name}"
    anomaly = f"anomaly {p.anomaly_score:.3f}  " if p.anomaly_score is not None else ""
    # The name stays last (the rest of the line): a flagged image says so in its ood field.
    flagged = " > limit" if p.reason == "out_of_distribution" else ""
    ood = f"ood {p.ood_score:.2f}{flagged}  " if p.ood_score is not None else ""
    return f"{p.label:<18} {p.score:.4f}  {anomaly}{ood}{p.decision:<7} {p.ms:7.1f} ms/image{batch}  {name}"


@app.command()
def predict(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="Bundle folder (from `edge-tl bundle`)."),
    paths: list[str] = typer.Argument(..., metavar="IMAGE|DIR|VIDEO|URL|DEVICE", help="Image files, folders "
                                      "(searched recursively), video files, stream URLs (rtsp://...) or V4L2 "
                                      "devices (/dev/video0 or 0); streams need the stream extra "
                                      "(pip install 'edge-tl[stream]')."),
    json_lines: bool = typer.Option(False, "--json", help="JSON lines: path, label, score, decision, ms_per_image "
                                    "(this image's share of its inference call: batch_ms / batch_size), "
                                    "batch_size, batch_ms; frames also carry frame and stream_time_s."),
    color: str = typer.Option(None, "--color", metavar="RGB|BGR", help="Channel order of raw .npy frames "
                              "(image files and video frames carry their own)."),
    batch: int = typer.Option(None, "--batch", min=1, metavar="N", help="Images per inference call (default: "
                              "the bundle's; 1 for a live stream). --batch 1 times each image alone."),
    fps: float = typer.Option(None, "--fps", metavar="X", help="Streams: classify at most X frames per second "
                              "(of the video's own clock for a file, of the wall clock for a live source)."),
    max_frames: int = typer.Option(None, "--max-frames", min=1, metavar="N", help="Streams: stop after N "
                                   "classified frames (default: until the stream ends)."),
    device: str = typer.Option(None, "--device", metavar="NAME", help="Override the bundle's device."),
    threads: int = typer.Option(None, "--threads", metavar="N", help="Override the bundle's thread count."),
    heatmap: Path = typer.Option(None, "--heatmap", metavar="DIR", help="Anomaly bundles: write a PNG overlay "
                                 "of each image's anomaly map to DIR (image files only)."),
    draw: Path = typer.Option(None, "--draw", metavar="DIR", help="Write each image with its answer drawn to "
                              "DIR/<name>.drawn.png: a detection bundle's deciding boxes with class and score, "
                              "every bundle's decision and label (image files only)."),
) -> None:
    """Classify images, video files or camera streams with a bundle (no torch needed).

    A detection bundle answers with boxes in the image's pixels (with --json a ``boxes`` list of
    {class, score, x1, y1, x2, y2}), its decision and label from the box that decides.

    One line per image or frame. A time is this image's share of its inference call (the call's time
    divided by the images in it). An image that is missing or cannot be read gets an error line in its
    place (with --json a JSON line with path and error) and every other image still gets its answer;
    then the command exits 2. It exits 2 at once when the bundle was changed (one line naming the file),
    a stream cannot be opened, or none of the images given exists.
    """
    import time

    import numpy as np

    from ..errors import EdgeTLError
    from ..runtime import InputError, Runtime

    streams_given = [p for p in paths if _is_stream(p)]
    if (fps is not None or max_frames is not None) and not streams_given:
        raise EdgeTLError("--fps and --max-frames apply to video files and streams; none was given")
    if draw is not None and streams_given:
        raise EdgeTLError("--draw applies to image files; streams are not drawn")
    groups: list[tuple[str, list[Path] | str]] = []  # in the order given: ("files", [...]) or ("stream", src)
    missing: list[Path] = []  # named but not there: an error line in its place, the others still answered
    for p in paths:
        if _is_stream(p):
            groups.append(("stream", p))
        else:
            path = Path(p)
            if path.is_dir() or path.is_file():
                files = _expand([path], require=False)
            else:
                files = [path]
                missing.append(path)
            if groups and groups[-1][0] == "files":
                groups[-1][1].extend(files)  # type: ignore[union-attr]
            else:
                groups.append(("files", files))
    if not streams_given and all(f in missing for _, what in groups for f in what):
        if missing:  # nothing to classify: no need to load the bundle to say so
            raise EdgeTLError(f"no such file or folder: {', '.join(map(str, missing))}")
        raise EdgeTLError(f"no images found in {', '.join(paths)}")
    failed: list[str] = []
    total = 0
    with Runtime(bundle, device=device, threads=threads) as rt:
        if heatmap is not None and rt.task != "anomaly":
            raise EdgeTLError(f"--heatmap needs an anomaly bundle; {bundle} is a classifier")
        for kind, what in groups:
            if kind == "stream":
                total += _predict_stream(rt, str(what), json_lines, batch, fps, max_frames)
                continue
            files = what
            assert isinstance(files, list)
            total += len(files)
            size = batch or rt.batch_size
            for i in range(0, len(files), size):
                chunk = files[i:i + size]
                start = time.perf_counter()
                inputs, sizes, good, errors = [], [], [], {}
                for f in chunk:  # decoded one by one: a bad file is its own error, never the chunk's
                    if f in missing:
                        errors[f] = f"{f}: no such file or folder"
                        continue
                    try:
                        x, wh = rt.prepare_sized(str(f), color=color)
                        inputs.append(x)
                        sizes.append(wh)
                        good.append(f)
                    except InputError as exc:
                        errors[f] = str(exc)
                preds = dict(zip(good, rt.predict_inputs(np.stack(inputs), [str(f) for f in good], started=start,
                                                         sizes=sizes), strict=True)) if good else {}
                if heatmap is not None and good:
                    _write_heatmaps(rt, good, np.stack(inputs), heatmap, color)
                if draw is not None:
                    _write_drawn(rt, [(f, preds[f]) for f in good], draw, color)
                for f in chunk:
                    if f in errors:
                        failed.append(errors[f])
                        line = (json.dumps({"path": str(f), "error": errors[f]}) if json_lines
                                else f"error   {errors[f]}")
                    elif json_lines:
                        line = json.dumps(preds[f].to_dict())
                    else:
                        line = _line(preds[f], str(f))
                    print(line, flush=True)
    if failed:
        raise EdgeTLError(f"{len(failed)} of {total} image(s) could not be classified; "
                          f"first: {failed[0]}")


def _write_heatmaps(rt: Runtime, files: list[Path], inputs: Any, folder: Path, color: str | None) -> None:
    """One ``<name>.heatmap.png`` per image in ``folder``: the model's input crop with its anomaly map."""
    from ..runtime.core import to_image
    from ..runtime.heatmap import save_overlay

    maps = rt.anomaly_maps(inputs)
    for f, amap in zip(files, maps, strict=True):
        crop = rt.preprocess.resize_and_crop(to_image(str(f), color))
        save_overlay(crop, amap, folder / f"{f.stem}.heatmap.png")


def _write_drawn(rt: Runtime, answered: list[tuple[Path, Prediction]], folder: Path, color: str | None) -> None:
    """One ``<name>.drawn.png`` per image in ``folder``: the image with its answer (``runtime.draw``)."""
    from ..runtime.boxes import BoxPolicy
    from ..runtime.core import to_image
    from ..runtime.draw import save_drawn

    policy = rt.policy if isinstance(rt.policy, BoxPolicy) else None
    for f, p in answered:
        save_drawn(to_image(str(f), color), p, folder / f"{f.stem}.drawn.png", rt.classes, policy)


def _is_stream(source: str) -> bool:
    from ..runtime.streams import is_stream

    return is_stream(source)


def _predict_stream(rt: Runtime, source: str, json_lines: bool, batch: int | None, fps: float | None,
                    max_frames: int | None) -> int:
    """Classify a stream's frames, one line each as it is answered; returns the frames classified."""
    from ..runtime.streams import Stream, classify_frames

    n = 0
    with Stream(source, fps=fps, max_frames=max_frames) as stream:
        size = batch or (1 if stream.live else rt.batch_size)
        for frame, p in classify_frames(rt, stream, batch=size):
            if json_lines:
                line = json.dumps(p.to_dict() | {"path": frame.source, "frame": frame.index,
                                                 "stream_time_s": round(frame.time_s, 3)})
            else:
                line = _line(p, frame.name)
            print(line, flush=True)
            n += 1
    if not state.quiet:
        rate = f" at most {fps:g}/s" if fps else ""
        print(f"predict: {n} frame(s) of {stream.shown} classified{rate} ({stream.read} read)", file=sys.stderr)
    return n


@app.command()
def watch(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="Bundle folder."),
    folder: str = typer.Argument(..., metavar="FOLDER|VIDEO|URL|DEVICE", help="The camera's drop folder, or a "
                                 "camera stream: a video file, a stream URL (rtsp://...) or a V4L2 device "
                                 "(/dev/video0 or 0; needs pip install 'edge-tl[stream]')."),
    log_path: Path = typer.Option(None, "--log", metavar="PATH", help="Result log, .jsonl or .csv (default: "
                                  "FOLDER/edge-tl-results.jsonl; for a stream ./edge-tl-results.jsonl)."),
    poll: float = typer.Option(1.0, "--poll", metavar="SECONDS", help="Seconds between scans of the folder."),
    once: bool = typer.Option(False, "--once", help="Process what is there now and exit (a video file: "
                              "all its frames)."),
    move_to: Path = typer.Option(None, "--move-to", metavar="DIR", help="Move each image here once its result "
                                 "is logged (keeps the drop folder small on a long-running line)."),
    settle: float = typer.Option(0.5, "--settle", metavar="SECONDS", help="Seconds a file's size and mtime must "
                                 "stay the same (timed by this host's clock, whatever the camera's) before it "
                                 "is read."),
    error_after: float = typer.Option(None, "--error-after", metavar="SECONDS", help="Seconds an unreadable "
                                      "file must stay unchanged before it is logged as an error, not a paused "
                                      "upload (default 10 x --settle)."),
    fps: float = typer.Option(None, "--fps", metavar="X", help="Streams: classify at most X frames per second "
                              "(frames in between are dropped)."),
    max_frames: int = typer.Option(None, "--max-frames", min=1, metavar="N", help="Streams: stop after N "
                                   "classified frames (default: until the stream ends or SIGTERM)."),
    color: str = typer.Option(None, "--color", metavar="RGB|BGR", help="Channel order of raw .npy frames."),
    device: str = typer.Option(None, "--device", metavar="NAME", help="Override the bundle's device."),
    threads: int = typer.Option(None, "--threads", metavar="N", help="Override the bundle's thread count."),
    drift_window: int = typer.Option(200, "--drift-window", metavar="N", help="Images in the rolling share of "
                                     "out-of-distribution answers."),
    drift_limit: float = typer.Option(0.1, "--drift-limit", metavar="SHARE", help="Log a drift warning when "
                                      "more than this share of the last --drift-window images is out of "
                                      "distribution."),
) -> None:
    """Classify each new image in FOLDER exactly once, appending results to a log (restart-safe); or
    each frame of a camera stream, one log line per frame (frame index and time in the line).

    Runs until SIGTERM/Ctrl-C (or --once; a video file ends by itself). A folder deleted and re-created
    (or a log deleted) is followed: the lock is taken again and results go on in a new log at the same
    path, with a warning; if another watch took the new folder first, this one stops (exit 2). The
    summary counts only results in the log on disk.
    """
    import signal

    from ..errors import ConfigError
    from ..runtime import Runtime
    from ..runtime.streams import is_stream
    from ..runtime.watch import DriftMonitor, Watcher

    drift = DriftMonitor(drift_window, drift_limit)
    stream = is_stream(folder)
    if stream and move_to is not None:
        raise ConfigError("--move-to applies to a drop folder, not a stream")
    if not stream and (fps is not None or max_frames is not None):
        raise ConfigError("--fps and --max-frames apply to streams (a video file, a URL or a device), "
                          f"and {folder} is a folder")
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        if stream:
            _watch_stream(bundle, folder, log_path, fps, max_frames, once, stop, device, threads, drift)
            return
        with Runtime(bundle, device=device, threads=threads) as rt, \
                Watcher(rt, folder, log_path, move_to=move_to, settle=settle, color=color,
                        error_after=error_after, drift=drift) as w:
            if not (once or state.quiet):
                print(f"watching {folder} with {bundle} ({rt.backend}); results -> {w.log.path}",
                      file=sys.stderr)
            w.run(poll, once=once, stop=stop)
            # Only the lines in the log on disk now: a log deleted with its folder holds nothing to open.
            counts = ", ".join(f"{k} {v}" for k, v in sorted(w.counts.items())) or "nothing new"
            extra = "".join(f"; {len(names)} {what}: {', '.join(sorted(names)[:10])}"
                            for what, names in (("non-image file(s) ignored", w.ignored),
                                                ("file(s) still changing, left for the next run", w.pending))
                            if names)
            if w.log.dropped:
                extra += (f"; {w.log.dropped} result(s) logged earlier went to a log since deleted or replaced "
                          "(its folder cleaned)")
            print(f"watch: {sum(w.counts.values())} image(s) logged to {w.log.path} ({counts}){extra}",
                  file=sys.stderr)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch_stream(bundle: Path, source: str, log_path: Path | None, fps: float | None, max_frames: int | None,
                  once: bool, stop: threading.Event, device: str | None, threads: int | None,
                  drift: Any = None) -> None:
    from ..errors import ConfigError
    from ..runtime import Runtime
    from ..runtime.streams import Stream, is_live, watch_stream

    if once and is_live(source) and max_frames is None:
        raise ConfigError("--once on a live stream never ends by itself: give --max-frames N")
    log_file = log_path or Path("edge-tl-results.jsonl")
    stream = Stream(source, fps=fps, max_frames=max_frames)  # an unreadable source fails before anything else
    with stream, Runtime(bundle, device=device, threads=threads) as rt:
        if not state.quiet:
            rate = f", at most {fps:g} frame(s)/s" if fps else ""
            print(f"watching stream {stream.shown} with {bundle} ({rt.backend}){rate}; results -> {log_file}",
                  file=sys.stderr)
        counts = watch_stream(rt, stream, log_file, stop=stop, drift=drift)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no frame"
    print(f"watch: {sum(counts.values())} frame(s) logged to {log_file} ({summary})", file=sys.stderr)
