"""Short texts every report view shares: which evaluation set, when, at what host load.

A figure is only comparable with another measured on the same images, in the same session, on an
equally quiet host; the Markdown page, the console table, the HTML pages and the run index all say
these three things with the same words.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..manifest import host_text as _host_text
from .precision import precision_text

__all__ = ["Headline", "eval_set_key", "eval_set_name", "eval_set_text", "headline_figure", "host_text",
           "load_short", "measured_text", "precision_text", "report_task", "session_id"]


class Headline(NamedTuple):
    """The figure a task's report is read by first: its field in ``reference`` / ``candidate``, its name,
    the candidate's drop field, and how it is printed."""

    key: str  # "top1" | "auroc" | "map50"
    label: str  # "top-1" | "AUROC" | "mAP@0.5"
    drop_key: str  # "top1_drop" (points) | "auroc_drop" (AUROC units) | "map50_drop" (points)
    percent: bool  # printed as a percentage (top-1) or as a 0-1 figure (AUROC, mAP)
    digits: int

    def text(self, v: Any) -> str:
        """``v`` as the pages print this figure: "93.21 %", "0.9876", "0.812", or "–" when missing."""
        if v is None:
            return "–"
        return f"{100 * v:.{self.digits}f} %" if self.percent else f"{v:.{self.digits}f}"


_HEADLINES = {"classification": Headline("top1", "top-1", "top1_drop", True, 2),
              "anomaly": Headline("auroc", "AUROC", "auroc_drop", False, 4),
              "detect": Headline("map50", "mAP@0.5", "map50_drop", False, 3)}


def report_task(report: dict[str, Any]) -> str:
    """``classification``, ``anomaly`` or ``detect``; reports written before the ``task`` key are classifiers."""
    task = report.get("task")
    return task if task in _HEADLINES else "classification"


def headline_figure(report_or_task: dict[str, Any] | str | None) -> Headline:
    """The one figure every view (target page, run index, index.json, Markdown table, console lines) shows
    first for a report (or a task name): top-1 for a classifier, AUROC for an anomaly model, mAP@0.5 for a
    detector."""
    task = report_or_task if isinstance(report_or_task, str) or report_or_task is None \
        else report_task(report_or_task)
    return _HEADLINES.get(task or "classification", _HEADLINES["classification"])


def _ident(report_or_ident: dict[str, Any] | str | None) -> dict[str, Any]:
    ident = report_or_ident.get("eval_set") if isinstance(report_or_ident, dict) and "target" in report_or_ident \
        else report_or_ident
    if isinstance(ident, dict):
        return ident
    # reports written before the identity existed: the path only
    return {"name": str(ident) if ident else "unknown", "path": ident, "sha256": None, "kind": "eval set"}


def eval_set_key(report: dict[str, Any]) -> str:
    """What groups reports: the image-list hash, else the set's path (older reports)."""
    ident = _ident(report)
    return str(ident.get("sha256") or ident.get("path") or ident.get("name") or "unknown")


def eval_set_name(report: dict[str, Any]) -> str:
    ident = _ident(report)
    return str(ident.get("name") or ident.get("path") or "unknown")


def eval_set_text(report_or_ident: dict[str, Any] | str | None, n: int | None = None) -> str:
    """"validation split (folder /data/elpv), 525 images, sha256 1a2b3c4d5e6f" in one line."""
    ident = _ident(report_or_ident)
    count = ident.get("n", n)
    if count is None and isinstance(report_or_ident, dict):
        count = report_or_ident.get("n")
    parts = [str(ident.get("name") or "unknown")]
    where = ident.get("folder") or ident.get("path")
    kind = ident.get("kind")
    if where and str(where) != parts[0]:
        parts[0] += f" of {where}" if kind in (None, parts[0]) else f" ({kind}: {where})"
    if count is not None:
        parts.append(f"{count} images")
    parts.append(f"sha256 {str(ident['sha256'])[:12]}" if ident.get("sha256") else "no content hash")
    return ", ".join(parts)


def session_id(report: dict[str, Any]) -> str:
    return str((report.get("session") or {}).get("id") or "unknown session")


def measured_text(report: dict[str, Any]) -> str:
    """"2026-11-30 05:41 UTC" or "date unknown"."""
    at = report.get("measured_at")
    if not at:
        return "date unknown"
    return str(at).replace("T", " ").replace("Z", "")[:16] + " UTC"


def host_text(report: dict[str, Any]) -> str:
    """The report's host with its CPU flags, as :func:`edge_tl.manifest.host_text` words it."""
    return _host_text(report.get("host"))


def load_short(host_load: dict[str, Any] | None) -> str:
    """"quiet (others 3 % of CPUs)", "BUSY (others 91 % of CPUs)", or "not measured"."""
    if not host_load or not host_load.get("measured"):
        return "not measured"
    d, b = host_load.get("during") or {}, host_load.get("before") or {}
    if d.get("measured"):
        what = f"others {100 * d['other_cpu_share']:.0f} % of CPUs"
    elif b.get("load_avg_1m") is not None:
        what = f"load avg {b['load_avg_1m']:.2f}"
    else:
        what = "no figure"
    return f"{'BUSY' if host_load.get('busy') else 'quiet'} ({what})"
