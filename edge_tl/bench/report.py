"""Report files: ``reports/<target>.json`` (the contract in design.md), ``.md`` and ``.html``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..manifest import write_bytes, write_json
from .hostload import describe, describe_spread, unreliable_label


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(report: dict[str, Any]) -> str:
    """A Markdown table of one report (reference vs candidate) plus its gates."""
    ref, cand = report["reference"], report.get("candidate") or {}
    if report.get("skipped"):
        return f"# {report['target']}\n\nSkipped: {report['skipped']}\n"
    rl, cl = ref.get("latency_ms") or {}, cand.get("latency_ms") or {}
    rows = [
        ("format / precision", f"{ref['format']} / {ref['precision']}", f"{cand['format']} / {cand['precision']}"),
        ("top-1", _fmt(ref.get("top1")), _fmt(cand.get("top1"))),
        ("balanced accuracy", _fmt(ref.get("balanced_accuracy")), _fmt(cand.get("balanced_accuracy"))),
        ("top-1 drop (points)", "", _fmt(cand.get("top1_drop"), 2)),
        ("agreement", "", _fmt(cand.get("agreement"), 4)),
        ("p50 ms", _fmt(rl.get("p50"), 2), _fmt(cl.get("p50"), 2)),
        ("p95 ms", _fmt(rl.get("p95"), 2), _fmt(cl.get("p95"), 2)),
        ("p99 ms", _fmt(rl.get("p99"), 2), _fmt(cl.get("p99"), 2)),
        ("throughput img/s", _fmt(ref.get("throughput_ips"), 1), _fmt(cand.get("throughput_ips"), 1)),
        ("size MB", _fmt(ref.get("size_mb"), 2), _fmt(cand.get("size_mb"), 2)),
    ]
    # Per-class recall, with a class that has no evaluation image shown as such: its recall is not 0
    # and not fine, it is unknown, and the gates above say nothing about it.
    ref_recall, cand_recall = ref.get("per_class_recall") or {}, cand.get("per_class_recall") or {}
    classes = list(report.get("classes") or cand_recall or ref_recall)
    unevaluated = [c for c in classes if c in cand_recall and cand_recall[c] is None]

    def recall(table: dict[str, Any], c: str) -> str:
        if c not in table:
            return ""
        return "not evaluated" if table[c] is None else _fmt(table[c])

    rows += [(f"recall: {c}", recall(ref_recall, c), recall(cand_recall, c)) for c in classes]
    lines = [f"# {report['target']}", "", "| | reference | candidate |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if unevaluated:
        lines += ["", f"**Not evaluated:** {', '.join(unevaluated)} (no evaluation image: too few images to hold "
                  "one out); every figure and gate here covers the other classes only."]
    label = unreliable_label(report)
    mark = f" (unreliable: {label})" if label else ""
    lines += ["", f"**speedup** (reference p50 / candidate p50): {_fmt(report.get('speedup'), 2)}×{mark}", ""]
    if label:
        # The console prints this page: say it next to the speedup, not only in the notes below.
        why = "; ".join(report.get("unreliable_reasons") or (report.get("host_load") or {}).get("reasons") or [])
        lines += [f"**UNRELIABLE: {label}** ({why})", ""]
    if describe_spread(report.get("speedup_spread")):
        lines += [f"Speedup per timing block ({describe_spread(report['speedup_spread'])}).", ""]
    if report.get("timing"):
        lines += [f"Timing: {report['timing']}.", ""]
    if "host_load" in report:
        lines += [describe(report["host_load"]), ""]
    lines += ["| gate | limit | value | passed |", "|---|---|---|---|"]
    lines += [f"| {g['name']} | {_fmt(g['limit'])} | {_fmt(g['value'])} | {'yes' if g['passed'] else '**NO**'} |"
              for g in report["gates"]]
    for note in report.get("notes", []):
        lines.append(f"\n> {note}")
    verdict = "PASSED" if report["passed"] else "FAILED"
    if unevaluated:
        verdict += f" (not evaluated: {', '.join(unevaluated)})"
    lines.append(f"\n**{verdict}**\n")
    return "\n".join(lines)


def summary_table(reports: list[dict[str, Any]]) -> str:
    """One Markdown row per target, for ``bench --all-targets`` and the benchmark script."""
    head = "| target | top-1 | bal. acc. | drop | agreement | p50 ms | p95 ms | speedup | size MB | passed |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        c = r.get("candidate") or {}
        lat = c.get("latency_ms") or {}
        status = f"skipped: {r['skipped']}" if r.get("skipped") else ("yes" if r["passed"] else "NO")
        label = unreliable_label(r)
        speedup = _fmt(r.get("speedup"), 2) + (f" (UNRELIABLE: {label})" if label else "")
        lines.append(f"| {r['target']} | {_fmt(c.get('top1'))} | {_fmt(c.get('balanced_accuracy'))} | "
                     f"{_fmt(c.get('top1_drop'), 2)} | {_fmt(c.get('agreement'), 4)} | {_fmt(lat.get('p50'), 2)} | "
                     f"{_fmt(lat.get('p95'), 2)} | {speedup} | {_fmt(c.get('size_mb'), 2)} | {status} |")
    return "\n".join(lines)


def write_reports(report: dict[str, Any], reports_dir: Path, json_path: Path | None = None) -> Path:
    """Write the JSON, Markdown and HTML reports atomically; returns the JSON path."""
    name = report["target"]
    dest = reports_dir / f"{name}.json"
    write_json(dest, report)
    if json_path is not None:
        write_json(json_path, report)
    write_bytes(reports_dir / f"{name}.md", markdown(report).encode())
    from .html import render_html, write_index

    write_bytes(reports_dir / f"{name}.html", render_html(report).encode())
    write_index(reports_dir)  # the run's page, rebuilt from every reports/*.json
    return dest
