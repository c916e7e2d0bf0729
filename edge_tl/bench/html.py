"""Self-contained HTML reports: ``reports/<target>.html`` per target and ``reports/index.html`` per run.

The plots are hand-written inline SVG on purpose: benches run on devices with the torch-free runtime,
where no plotting library (matplotlib, plotly) is installed, and a report must open from a USB stick
or a CI artifact with no network. So: stdlib (and numpy, which every runtime has) only, no external
CSS/JS/fonts; the only images are an anomaly report's heat maps, inlined as data URIs; every piece of
text from the report passes through ``html.escape``.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError
from ..manifest import write_bytes
from .hostload import describe, describe_spread, unreliable_label
from .labels import eval_set_key, eval_set_text, load_short, measured_text, precision_text, session_id
from .report import is_anomaly, missing_class_note, source_text

# Okabe–Ito: distinguishable with the common colour-vision deficiencies, readable on white.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#8C6D31", "#000000"]
REF_COLOR = "#8a8a8a"
# Text pages stay 1,400 px wide for reading; the run index (body.index) takes up to 1,860 px so its table
# of 13-15 columns fits a 1,920 px screen whole (narrower screens scroll it, the verdict stays in view).
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1f2328;
 max-width:1400px;margin:20px auto;padding:0 16px;line-height:1.4}
h1{margin:0 0 4px;font-size:26px}h2{margin:28px 0 8px;font-size:19px;border-bottom:1px solid #d0d7de}
.sub{color:#57606a;font-size:13px}table{border-collapse:collapse;font-size:13.5px;margin:6px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e1e4e8;text-align:right;vertical-align:top}
th{background:#f6f8fa}th:first-child,td:first-child{text-align:left}td{white-space:nowrap}
td.st{white-space:normal;text-align:left;max-width:360px}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}.skip{color:#9a6700;font-weight:600}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-size:14px;
 vertical-align:middle}
.b-pass{background:#1a7f37}.b-fail{background:#cf222e}.b-skip{background:#9a6700}
.note{background:#fff8c5;border-left:4px solid #d4a72c;padding:6px 10px;margin:6px 0;font-size:14px}
.warn{background:#ffebe9;border:2px solid #cf222e;padding:8px 12px;margin:8px 0;font-size:14.5px}
.grid{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}figure{margin:8px 0}
figcaption{font-size:12.5px;color:#57606a;max-width:900px}svg{max-width:100%;height:auto}
svg text{font-family:inherit}details{margin:6px 0}summary{cursor:pointer;color:#0969da}
.wide{overflow-x:auto}td.when{min-width:170px}td.fmt{min-width:150px}
td.verdict{text-align:left}td.reason{white-space:normal;text-align:left;color:#57606a}
body.index{max-width:1860px}.mark{white-space:normal}
"""


def _e(v: Any) -> str:
    return escape(str(v), quote=True)


def _f(v: Any, digits: int = 3, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.{digits}f}{unit}"
    return _e(v)


def _pct(v: Any, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f} %"


def _limit(v: float) -> str:
    """A threshold or limit, the same wherever it is printed (a legend and the text beside it): four
    significant digits, so a limit of 0.999531 reads 0.9995, not "1.000" next to a legend's 0.999531."""
    return f"{v:.4g}"


class _Axis:
    """Maps data to pixels, linear or log10, and picks 1-2-5 ticks."""

    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False):
        self.lo, self.hi, self.a, self.b, self.log = lo, hi, a, b, log

    def _t(self, v: float) -> float:
        return math.log10(max(v, 1e-9)) if self.log else v

    def __call__(self, v: float) -> float:
        lo, hi = self._t(self.lo), self._t(self.hi)
        return self.a + (self._t(v) - lo) / ((hi - lo) or 1.0) * (self.b - self.a)

    def ticks(self) -> list[float]:
        if self.log:
            ks = range(math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi)) + 1)
            return [m * 10.0**k for k in ks for m in (1, 2, 5) if self.lo <= m * 10.0**k <= self.hi]
        raw = (self.hi - self.lo) / 5 or 1.0
        self.step = min((m * 10.0 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)),
                        key=lambda s: abs(s - raw))
        first, last = math.ceil(self.lo / self.step), math.floor(self.hi / self.step)
        return [i * self.step for i in range(first, last + 1)]

    def label(self, v: float) -> str:
        """Tick text with as many decimals as the step needs (99.5, not 100)."""
        if self.log:
            return f"{v:g}"
        return f"{v:.{max(0, -math.floor(math.log10(self.step) + 1e-9))}f}"


def _axis(values: list[float], a: float, b: float, zero: bool = True) -> _Axis:
    """Log scale when the values span more than 8×, so a 0.3 ms and a 30 ms target both stay readable."""
    lo, hi = min(values), max(values)
    if lo > 0 and hi / lo > 8:
        return _Axis(lo / 1.15, hi * 1.15, a, b, log=True)
    return _Axis(0.0 if zero else lo, hi * 1.08 or 1.0, a, b)


def _svg(w: int, h: int, title: str, body: list[str]) -> str:
    return (f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{_e(title)}" '
            f'font-size="12"><title>{_e(title)}</title>'
            f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="14" font-weight="600">'
            f'{_e(title)}</text>'
            + "".join(body) + "</svg>")


def _xgrid(ax: _Axis, top: float, bottom: float, label: str) -> list[str]:
    out = [f'<line x1="{ax.a}" y1="{bottom}" x2="{ax.b}" y2="{bottom}" stroke="#444"/>']
    for t in ax.ticks():
        x = ax(t)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#e6e6e6"/>'
                   f'<text x="{x:.1f}" y="{bottom + 15}" text-anchor="middle" fill="#444">'
                   f'{ax.label(t)}</text>')
    scale = " (log scale)" if ax.log else ""
    out.append(f'<text x="{(ax.a + ax.b) / 2}" y="{bottom + 34}" text-anchor="middle">'
               f'{_e(label + scale)}</text>')
    return out


def _ygrid(ay: _Axis, left: float, right: float, label: str) -> list[str]:
    """The y axis of a plot whose ``ay`` maps values to pixels from ``ay.a`` (bottom) to ``ay.b`` (top):
    the axis line, a light grid line and a label per tick, the rotated axis title."""
    top, bottom = ay.b, ay.a
    out = [f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#444"/>']
    for t in ay.ticks():
        y = ay(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#e6e6e6"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#444">{ay.label(t)}</text>')
    out.append(f'<text transform="translate(18,{(top + bottom) / 2}) rotate(-90)" text-anchor="middle">'
               f'{_e(label)}</text>')
    return out


def _box_stats(lat: dict[str, Any]) -> dict[str, float] | None:
    samples = [float(s) for s in lat.get("samples") or []]
    st = {k: float(lat[k]) for k in ("p50", "p95", "p99", "min") if lat.get(k) is not None}
    if len(samples) >= 2:
        q = statistics.quantiles(samples, n=100, method="inclusive")  # same as numpy's default percentile
        st = {"p50": q[49], "p95": q[94], "p99": q[98], "min": min(samples)} | st
        st |= {"p25": q[24], "p75": q[74], "max": max(samples)}
    return st if "p50" in st else None


def latency_svg(rows: list[dict[str, Any]], title: str = "Latency per call, batch 1") -> str:
    """Box + strip plot, one row per series: ``{label, latency (report's latency_ms), color, ref, limit}``."""
    rows = [r | {"st": _box_stats(r["latency"] or {})} for r in rows]
    rows = [r for r in rows if r["st"]]
    if not rows:
        return '<p class="sub">No latency was measured.</p>'
    left = min(300, 24 + 7 * max(len(r["label"]) for r in rows))
    w, rh, top = 920, 26, 34
    bottom = top + rh * len(rows) + 6
    vals = [v for r in rows for v in r["st"].values()] + [r["limit"] for r in rows if r.get("limit")]
    ax = _axis(vals, left, w - 20)
    body = _xgrid(ax, top, bottom, "latency per call [ms]")
    rng = random.Random(0)  # fixed jitter: the same report renders to the same bytes
    for i, r in enumerate(rows):
        st, y, col = r["st"], top + rh * i + rh / 2, r["color"]
        weight = ' fill="#666" font-style="italic"' if r.get("ref") else ""
        body.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end"{weight}>{_e(r["label"])}</text>')
        samples = r["latency"].get("samples") or []
        for s in samples[:: max(1, len(samples) // 300)]:
            body.append(f'<circle cx="{ax(s):.1f}" cy="{y + rng.uniform(-8, 8):.1f}" r="1.6" fill="{col}" '
                        'fill-opacity="0.35"/>')
        body.append(f'<line x1="{ax(st["min"]):.1f}" y1="{y}" x2="{ax(st["p99"]):.1f}" y2="{y}" '
                    f'stroke="{col}" stroke-width="1.5"/>')
        if "p25" in st:
            x0, x1 = ax(st["p25"]), ax(st["p75"])
            body.append(f'<rect x="{x0:.1f}" y="{y - 7}" width="{max(x1 - x0, 1):.1f}" height="14" '
                        f'fill="{col}" fill-opacity="0.25" stroke="{col}"/>')
        xm, x95 = ax(st["p50"]), ax(st["p95"])
        body.append(f'<line x1="{xm:.1f}" y1="{y - 9}" x2="{xm:.1f}" y2="{y + 9}" stroke="{col}" '
                    f'stroke-width="3"><title>{_e(r["label"])}: p50 {st["p50"]:.3f} ms, '
                    f'p95 {st["p95"]:.3f} ms</title></line><path d="M{x95:.1f},{y - 5}l4,5l-4,5l-4,-5z" '
                    f'fill="#fff" stroke="{col}" stroke-width="1.5"/>')
        if r.get("limit"):
            xl = ax(r["limit"])
            body.append(f'<line x1="{xl:.1f}" y1="{y - 12}" x2="{xl:.1f}" y2="{y + 12}" stroke="#cf222e" '
                        'stroke-width="2" stroke-dasharray="3,2"/>')
    return _svg(w, int(bottom + 44), title, body)


Box = tuple[float, float, float, float]


def _place_labels(pts: list[tuple[float, float, str]], bounds: Box, obstacles: list[Box]) -> list[tuple[float, float]]:
    """Greedy label placement so names of targets with equal accuracy don't print over each other."""
    # every marker is an obstacle too, and boxes keep a 4 px gap so neighbours don't read as one name
    placed = obstacles + [(x - 6, y - 6, x + 6, y + 6) for x, y, _ in pts]
    out = []
    for x, y, text in pts:
        tw = 6.6 * len(text) + 4
        tries = [(x + dx, y + dy - 10, x + dx + tw, y + dy + 2)
                 for dy in (-7, 13, -19, 25, -31, 37, -43, 49) for dx in (7, -7 - tw)]
        fits = [b for b in tries if bounds[0] <= b[0] and bounds[1] <= b[1] and b[2] <= bounds[2]
                and b[3] <= bounds[3]]
        box = next((b for b in fits if not any(b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3]
                                               for o in placed)), (fits or tries)[0])
        placed.append(box)
        out.append((box[0], box[3] - 2))
    return out


def scatter_svg(points: list[dict[str, Any]], ref_top1: float | None,
                title: str = "Accuracy vs latency", metric: str = "top-1") -> str:
    """Top-1 (%) against p50 latency (ms), a bar to p95; points: ``{label, p50, p95, y, color, ref}``.

    ``metric="AUROC"`` (anomaly reports): ``y`` and ``ref_top1`` are AUROCs, drawn on a 0–1 axis."""
    pts = [p for p in points if p.get("p50") is not None and p.get("y") is not None]
    if not pts:
        return '<p class="sub">No point has both an accuracy and a latency.</p>'
    # top-1 reads as a percentage; an AUROC is conventionally quoted as a 0-1 figure
    scale, axis_label = (100.0, "top-1 accuracy [%]") if metric == "top-1" else (1.0, metric)

    def tip_value(v: float) -> str:
        return f"{100 * v:.2f} %" if metric == "top-1" else f"{v:.4f}"

    w, h, left, top, right, bottom = 920, 390, 70, 40, 200, 346
    ax = _axis([p["p50"] for p in pts] + [p.get("p95") or p["p50"] for p in pts], left, w - right)
    ys = [scale * p["y"] for p in pts] + ([scale * ref_top1] if ref_top1 is not None else [])
    pad = max((max(ys) - min(ys)) * 0.15, scale / 100)
    # Headroom above the top point so a 100 % marker isn't cut by the frame; no tick above 100 %.
    ay = _Axis(max(0.0, min(ys) - pad), max(ys) + pad / 4, bottom, top)
    body = _xgrid(ax, top, bottom, "p50 latency per call [ms] (bar to p95)")
    body.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#444"/>')
    for t in (t for t in ay.ticks() if t <= scale):
        y = ay(t)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#eee"/>'
                    f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#444">'
                    f'{ay.label(t)}</text>')
    body.append(f'<text transform="translate(18,{(top + bottom) / 2}) rotate(-90)" text-anchor="middle">'
                f'{_e(axis_label)}</text>')
    obstacles: list[Box] = []
    if ref_top1 is not None:
        y = ay(scale * ref_top1)
        obstacles.append((w - right + 4, y - 8, w - right + 100, y + 6))
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="{REF_COLOR}" '
                    f'stroke-dasharray="6,4"/><text x="{w - right + 6}" y="{y + 4:.1f}" fill="#666">'
                    f'reference {_e(metric)}</text>')
    pts.sort(key=lambda p: (p["p50"], -p["y"]))
    xy = [(ax(p["p50"]), ay(scale * p["y"]), p["label"]) for p in pts]
    for p, (x, y, _), (lx, ly) in zip(pts, xy, _place_labels(xy, (2, top - 8, w - 2, h - 4), obstacles), strict=True):
        tip = f'{p["label"]}: {metric} {tip_value(p["y"])}, p50 {p["p50"]:.3f} ms'
        if p.get("p95"):
            body.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{ax(p["p95"]):.1f}" y2="{y:.1f}" '
                        f'stroke="{p["color"]}" stroke-width="2" stroke-opacity="0.6"/>')
        shape = (f'<path d="M{x:.1f},{y - 7:.1f}l7,7l-7,7l-7,-7z"' if p.get("ref")
                 else f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5.5"')
        body.append(f'{shape} fill="{p["color"]}" stroke="#fff"><title>{_e(tip)}</title>'
                    f'{"</path>" if p.get("ref") else "</circle>"}'
                    f'<text x="{lx:.1f}" y="{ly:.1f}" fill="{p["color"]}">{_e(p["label"])}</text>')
    return _svg(w, h, title, body)


def _mix(color: str, f: float) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(255 + (c - 255) * f):02x}" for c in (r, g, b))


def confusion_svg(matrix: list[list[int]], classes: list[str], title: str = "Confusion matrix") -> str:
    """Heatmap with counts: rows are true classes, columns predicted; shade = share of the row."""
    n = len(matrix)
    if n == 0:
        return '<p class="sub">No confusion matrix.</p>'
    full = [str(c) for c in classes] if len(classes) == n else [str(i) for i in range(n)]
    names = [c if len(c) <= 18 else c[:17] + "…" for c in full]  # full names stay in the tooltips
    cell = max(14, min(46, 360 // n))
    lab = 12 + 6.8 * max(len(c) for c in names)
    left, top = lab + 26, 40 + 0.87 * lab  # column labels are rotated 60°
    w, h = int(left + cell * n + 0.5 * lab), int(top + cell * n + 20)
    body = [f'<text x="{left + cell * n / 2}" y="36" text-anchor="middle" fill="#444">predicted class</text>',
            f'<text transform="translate(14,{top + cell * n / 2}) rotate(-90)" text-anchor="middle" '
            'fill="#444">true class</text>']
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        y = top + i * cell
        body.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end">{_e(names[i])}'
                    f'<title>{_e(full[i])}</title></text>')
        for j, count in enumerate(row):
            f = count / total
            # any non-zero cell gets a visible tint: one confused image is worth seeing
            fill = _mix("#0b6e4f" if i == j else "#c0392b", 0.15 + 0.85 * f if count else 0.0)
            x = left + j * cell
            body.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#fff">'
                        f'<title>true {_e(full[i])} → predicted {_e(full[j])}: {count} ({100 * f:.1f} %)'
                        '</title></rect>')
            if n <= 30:
                body.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" '
                            f'font-size="{min(12, cell // 3)}" fill="{"#fff" if f > 0.5 else "#222"}">'
                            f'{count}</text>')
    for j, name in enumerate(names):
        x = left + j * cell + cell / 2 + 4
        body.append(f'<text transform="translate({x},{top - 6}) rotate(-60)">{_e(name)}'
                    f'<title>{_e(full[j])}</title></text>')
    return _svg(w, h, title, body)


GOOD_COLOR, DEFECT_COLOR = PALETTE[2], PALETTE[4]  # bluish green / vermillion: apart for every colour vision


def _finite(values: Any) -> np.ndarray:
    """Scores as a float array without NaN/inf: one broken score must not hide the rest of a figure."""
    a = np.asarray(values if values is not None else [], dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def _legend(x: float, y: float, items: list[tuple[str, str, str | None]]) -> list[str]:
    """Swatch + text per ``(color, text, dash)`` row from (x, y) down: a filled box for ``dash`` None,
    else a line ("" solid, or an SVG dash pattern)."""
    out = []
    for i, (color, text, dash) in enumerate(items):
        yy = y + 18 * i
        pattern = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<rect x="{x}" y="{yy - 6}" width="18" height="12" fill="{color}" fill-opacity="0.45" '
                   f'stroke="{color}"/>' if dash is None else
                   f'<line x1="{x}" y1="{yy}" x2="{x + 18}" y2="{yy}" stroke="{color}" stroke-width="2"{pattern}/>')
        out.append(f'<text x="{x + 24}" y="{yy + 4}">{_e(text)}</text>')
    return out


def score_histogram_svg(good: Any, defect: Any, threshold: float = 1.0,
                        title: str = "Anomaly scores: good vs defect images",
                        names: tuple[str, str | None] = ("good", "defect"),
                        xlabel: str = "anomaly score / threshold (above 1: rejected as defect)") -> str:
    """Overlaid histograms (same bins) of the normalised scores of good and defect images (or any two
    sets, ``names``), with the shipped threshold as a vertical line: how far apart the sets are, and
    which side each lands on. ``defect`` None (and ``names[1]`` None): one set only."""
    g, d = _finite(good), _finite(defect)
    if not len(g) and not len(d):
        return '<p class="sub">No scores in this report.</p>'
    allv = np.concatenate([g, d, [threshold]])
    lo, hi = float(allv.min()), float(allv.max())
    span = (hi - lo) or 1.0
    nbins = int(min(40, max(10, round(1.5 * math.sqrt(len(g) + len(d))))))
    width = span * 1.04 / nbins
    # The threshold falls on a bin edge, so no bar straddles it: a bar is all-pass or all-reject.
    start = threshold - math.ceil((threshold - (lo - span * 0.02)) / width - 1e-9) * width
    edges = start + width * np.arange(math.ceil((hi - start) / width + 1e-9) + 1)
    if edges[-1] <= hi:  # the last edge is inclusive in np.histogram; the max score must fall inside
        edges = np.append(edges, edges[-1] + width)
    hg, _ = np.histogram(g, edges)
    hd, _ = np.histogram(d, edges)
    w, h, left, top, right, bottom = 920, 330, 60, 40, 170, 276
    ax = _Axis(float(edges[0]), float(edges[-1]), left, w - right)
    peak = int(max(hg.max(initial=0), hd.max(initial=0), 1))
    ay = _Axis(0.0, peak * 1.1, bottom, top)
    body = _xgrid(ax, top, bottom, xlabel)
    body.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#444"/>')
    for t in ay.ticks():
        if abs(t - round(t)) > 1e-9:  # image counts: whole numbers only
            continue
        y = ay(t)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#eee"/>'
                    f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#444">{round(t)}</text>')
    body.append(f'<text transform="translate(18,{(top + bottom) / 2}) rotate(-90)" text-anchor="middle">'
                'images</text>')
    for counts, color, name, css in ((hg, GOOD_COLOR, names[0], "good"), (hd, DEFECT_COLOR, names[1], "defect")):
        if name is None:
            continue
        for k, c in enumerate(counts):
            if not c:
                continue
            x0, x1, y = ax(edges[k]), ax(edges[k + 1]), ay(c)
            body.append(f'<rect class="bar-{css}" x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0, 1):.1f}" '
                        f'height="{bottom - y:.1f}" fill="{color}" fill-opacity="0.45" stroke="{color}">'
                        f'<title>{_e(name)}: {c} image(s) scoring {edges[k]:.3f} to {edges[k + 1]:.3f}</title></rect>')
    xt = ax(threshold)
    body.append(f'<line class="threshold" x1="{xt:.1f}" y1="{top - 4}" x2="{xt:.1f}" y2="{bottom}" '
                f'stroke="#cf222e" stroke-width="2" stroke-dasharray="5,3"/>'
                f'<text x="{xt + 4:.1f}" y="{top + 8}" fill="#cf222e">threshold</text>')
    sets = [(GOOD_COLOR, f"{names[0]} ({len(g)})", None)]
    if names[1] is not None:
        sets.append((DEFECT_COLOR, f"{names[1]} ({len(d)})", None))
    body += _legend(w - right + 16, top + 12, [*sets, ("#cf222e", f"threshold ({_limit(threshold)})", "5,3")])
    return _svg(w, h, title, body)


def roc_curve(good: Any, defect: Any) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(false-positive rates, true-positive rates, AUROC) with defect as the positive class; None when a
    class has no scores. Tied scores form one step (a diagonal segment), so ties count half, as in
    the Mann-Whitney AUROC of :func:`edge_tl.metrics.auroc`."""
    g, d = _finite(good), _finite(defect)
    if not len(g) or not len(d):
        return None
    s = np.concatenate([d, g])
    y = np.concatenate([np.ones(len(d)), np.zeros(len(g))])
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each run of equal scores
    tpr = np.r_[0.0, np.cumsum(y)[last] / len(d)]
    fpr = np.r_[0.0, np.cumsum(1 - y)[last] / len(g)]
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def roc_svg(good: Any, defect: Any, threshold: float = 1.0) -> str:
    """ROC curve of the normalised scores (defect positive), the chance diagonal, and the shipped
    threshold's operating point (its FPR is the false-reject rate, 1 - its TPR the escape rate)."""
    roc = roc_curve(good, defect)
    if roc is None:
        missing = "defect" if not len(_finite(defect)) else "good"
        return (f'<p class="sub roc-skipped">No ROC curve: the evaluation set has no {missing} image, and a ROC '
                "curve needs both good and defect images.</p>")
    fpr, tpr, auc = roc
    side, left, top = 300, 64, 40
    w, bottom = left + side + 190, top + side
    ax, ay = _Axis(0.0, 1.0, left, left + side), _Axis(0.0, 1.0, bottom, top)
    body = _xgrid(ax, top, bottom, "false-positive rate (good rejected)")
    body += _ygrid(ay, left, left + side, "true-positive rate (defects caught)")
    body.append(f'<line x1="{ax(0)}" y1="{ay(0)}" x2="{ax(1)}" y2="{ay(1)}" stroke="{REF_COLOR}" '
                'stroke-dasharray="6,4"/>')
    xy = " ".join(f"{ax(float(a)):.1f},{ay(float(b)):.1f}" for a, b in zip(fpr, tpr, strict=True))
    body.append(f'<polygon points="{ax(1)},{ay(0)} {ax(0)},{ay(0)} {xy}" fill="{PALETTE[0]}" fill-opacity="0.08"/>'
                f'<polyline class="roc" points="{xy}" fill="none" stroke="{PALETTE[0]}" stroke-width="2">'
                f"<title>ROC curve, AUROC {auc:.4f}</title></polyline>")
    g, d = _finite(good), _finite(defect)
    op_fpr, op_tpr = float((g > threshold).mean()), float((d > threshold).mean())
    body.append(f'<circle cx="{ax(op_fpr):.1f}" cy="{ay(op_tpr):.1f}" r="5" fill="#cf222e" stroke="#fff">'
                f"<title>threshold {threshold:g}: false-reject rate {100 * op_fpr:.1f} %, defects caught "
                f"{100 * op_tpr:.1f} %</title></circle>")
    body += _legend(left + side + 20, top + 12, [(PALETTE[0], "ROC curve", ""), (REF_COLOR, "chance", "6,4")])
    body.append(f'<circle cx="{left + side + 29}" cy="{top + 48}" r="5" fill="#cf222e" stroke="#fff"/>'
                f'<text x="{left + side + 44}" y="{top + 52}">threshold {threshold:g}</text>')
    return _svg(w, bottom + 44, f"ROC curve (AUROC {auc:.4f})", body)


def _file_name(path: Any) -> str:
    return str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def heatmaps_html(heatmaps: list[dict[str, Any]], threshold: float = 1.0) -> str:
    """The heat-map overlays in a row, each with its label, score and file name. Only ``data:image/``
    URIs are shown: the page must stay one self-contained file, and a report read from disk must not
    make it fetch anything."""
    figs = []
    for m in heatmaps or []:
        png = str(m.get("png") or "")
        if not png.startswith("data:image/"):
            continue
        score = m.get("score")
        verdict = "" if not isinstance(score, (int, float)) else (" (rejected)" if score > threshold else " (passed)")
        name = _file_name(m.get("path") or "")
        figs.append(f'<figure class="heatmap"><img src="{_e(png)}" width="160" height="160" '
                    f'alt="{_e(f"heat map of {name}")}" title="{_e(m.get("path") or "")}">'
                    f"<figcaption>{_e(m.get('label', '?'))} · score {_f(score, 3)}{verdict}<br>{_e(name)}"
                    "</figcaption></figure>")
    if not figs:
        return '<p class="sub">No heat-map overlays in this report (the runtime gave no anomaly map).</p>'
    return f'<div class="grid">{"".join(figs)}</div>'


def anomaly_figures(plot: dict[str, Any] | None) -> str:
    """The anomaly part of a target page: score histogram, ROC curve and heat-map overlays."""
    if not plot:
        return '<p class="sub">This report has no anomaly scores to draw (written by an older bench).</p>'
    thr = float(plot.get("threshold") or 1.0)
    good, defect = plot.get("good") or [], plot.get("defect") or []
    maps = heatmaps_html(plot.get("heatmaps") or [], thr)
    return (f'<div class="grid"><figure>{score_histogram_svg(good, defect, thr)}<figcaption>Scores are '
            "normalised: 1.0 is the shipped threshold; above it an image is rejected as defect. Good images "
            "right of the line are false rejects, defect images left of it escapes.</figcaption></figure>"
            f"<figure>{roc_svg(good, defect, thr)}<figcaption>Defect is the positive class; the red dot is the "
            "shipped threshold's operating point.</figcaption></figure></div>"
            "<h3>Heat maps</h3><p class=\"sub\">The highest-scoring defect images and the highest-scoring good "
            f"image, with the candidate's anomaly map laid over them.</p>{maps}")


def _status(r: dict[str, Any]) -> str:
    """The index row's verdict (a skipped row's reason has a cell of its own)."""
    if r.get("skipped"):
        return '<span class="skip">skipped</span>'
    return '<span class="pass">passed</span>' if r.get("passed") else '<span class="fail">FAILED</span>'


def _badge(r: dict[str, Any]) -> str:
    kind, text = (("skip", "SKIPPED") if r.get("skipped") else ("pass", "PASSED") if r.get("passed")
                  else ("fail", "FAILED"))
    return f'<span class="badge b-{kind}">{text}</span>'


def _gate_value(name: str, v: Any) -> str:
    if v is None:
        return "–"
    if name == "max_auroc_drop":  # an AUROC difference (0-1 scale), not top-1 percentage points
        return _f(v, 4)
    return (_f(v, 2, " points") if name.endswith("drop") else _f(v, 2, " ms") if name.endswith("_ms")
            else _f(v, 4))


def gates_table(reports: list[dict[str, Any]], with_target: bool = True) -> str:
    """One row per gate of every report: (target,) gate, limit, value, verdict."""
    rows = []
    for r in reports:
        for g in r.get("gates") or []:
            ok = g.get("passed")
            verdict = ('<span class="sub">not measured</span>' if ok is None and "passed" in g  # --no-latency
                       else f'<span class="{"pass" if ok else "fail"}">{"pass" if ok else "FAIL"}</span>')
            rows.append("<tr>" + (f'<td>{_e(r["target"])}</td>' if with_target else "")
                        + f'<td>{_e(g["name"])}</td><td>{_gate_value(g["name"], g.get("limit"))}</td>'
                        f'<td>{_gate_value(g["name"], g.get("value"))}</td><td>{verdict}</td></tr>')
    if not rows:
        return '<p class="sub">No gates were evaluated.</p>'
    return ("<table><tr>" + ("<th>target</th>" if with_target else "")
            + "<th>gate</th><th>limit</th><th>value</th><th>result</th></tr>" + "".join(rows) + "</table>")


def _lat_rows(r: dict[str, Any], color: str, label: str | None = None) -> list[dict[str, Any]]:
    cand, ref = r.get("candidate") or {}, r.get("reference") or {}
    limit = next((g.get("limit") for g in r.get("gates") or [] if g.get("name") == "max_p95_ms"), None)
    if limit is None:
        limit = ((r.get("profile") or {}).get("gates") or {}).get("max_p95_ms")
    rows = [{"label": label or r["target"], "latency": cand.get("latency_ms"), "color": color,
             "limit": limit}]
    if ref.get("latency_ms"):
        rows.append({"label": "reference (torch fp32)" if label is None else f"{label} reference",
                     "latency": ref["latency_ms"], "color": REF_COLOR, "ref": True})
    return rows


def _points(reports: list[dict[str, Any]], key: str = "top1") -> tuple[list[dict[str, Any]], float | None]:
    """Scatter points of ``reports`` with ``key`` (``top1``, or ``auroc`` for anomaly reports) as y."""
    pts, ref_p50, ref_p95, ref_top1 = [], [], [], None
    for i, r in enumerate(reports):
        ref = r.get("reference") or {}
        ref_top1 = ref.get(key) if ref.get(key) is not None else ref_top1
        if ref.get("latency_ms"):
            ref_p50.append(ref["latency_ms"]["p50"])
            ref_p95.append(ref["latency_ms"].get("p95"))
        lat = (r.get("candidate") or {}).get("latency_ms") or {}
        pts.append({"label": r["target"], "p50": lat.get("p50"), "p95": lat.get("p95"),
                    "y": (r.get("candidate") or {}).get(key), "color": PALETTE[i % len(PALETTE)]})
    if ref_p50:  # each bench times the reference again; plot it once, at the median of those timings
        pts.append({"label": "reference (torch fp32)", "p50": statistics.median(ref_p50), "ref": True,
                    "p95": statistics.median([v for v in ref_p95 if v is not None] or ref_p50),
                    "y": ref_top1, "color": REF_COLOR})
    return pts, ref_top1


def _page(title: str, body: str, css_class: str = "") -> str:
    cls = f' class="{css_class}"' if css_class else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
            f'<body{cls}>{body}</body></html>\n')


def _kv(d: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td style='text-align:left'>"
                   f"{_e(json.dumps(v) if isinstance(v, (dict, list)) else v)}</td></tr>"
                   for k, v in d.items())
    return f"<table>{rows}</table>"


def _host(host: dict[str, Any]) -> str:
    if not host.get("cpu"):
        return ""
    name = f' {_e(host["hostname"])}' if host.get("hostname") else ""
    cores = f', {_e(host["cpu_count"])} cores' if host.get("cpu_count") else ""
    flags = host.get("cpu_flags")
    flag_text = f", flags {_e(' '.join(flags) or 'none of AVX2/VNNI/AMX/NEON')}" if flags is not None else ""
    return f"host{name}: {_e(host['cpu'])}{cores}{flag_text}"


# Notes of bench/run.py that a page already shows in a section of its own: the unreliable-timing box
# and the out-of-distribution section. Printed again as notes, the same verdict stood twice on the page.
_UNRELIABLE_NOTE, _OOD_NOTE = "UNRELIABLE TIMING", "out of distribution:"


def _notes(r: dict[str, Any]) -> str:
    """The target page's notes, less those the page already shows in a section of its own."""
    shown = (_UNRELIABLE_NOTE,) * bool(unreliable_label(r)) + (_OOD_NOTE,) * bool(r.get("ood"))
    return "".join(f'<div class="note">{_e(n)}</div>' for n in r.get("notes") or []
                   if not (shown and str(n).startswith(shown)))


def _unreliable_box(r: dict[str, Any]) -> str:
    """A red box at the top of the page when the timings were taken on a busy host (or scattered)."""
    label = unreliable_label(r)
    if not label:
        return ""
    why = "; ".join(r.get("unreliable_reasons") or (r.get("host_load") or {}).get("reasons") or [])
    return (f'<div class="warn"><b>UNRELIABLE timings: {_e(label)}.</b> {_e(why)}. The speed-up and latencies '
            "below were measured like this; re-run on a quiet host.</div>")


def render_html(report: dict[str, Any]) -> str:
    """One target's page: reference vs candidate, latency, accuracy vs latency, confusion, gates; for an
    anomaly report, AUROC and decision rates instead of top-1, plus score histogram, ROC and heat maps."""
    r, name = report, str(report.get("target", "?"))
    ref, cand = r.get("reference") or {}, r.get("candidate") or {}
    host, prof = r.get("host") or {}, r.get("profile") or {}
    facts = [_e(prof["description"]) if prof.get("description") else "",
             f'evaluation set: {_e(eval_set_text(r))}' if r.get("eval_set") else "",
             f'measured {_e(measured_text(r))}, session {_e(session_id(r))}',
             _host(host), _e(describe(r["host_load"])) if "host_load" in r and not r.get("skipped") else ""]
    out = ['<p class="sub"><a href="index.html">all targets of this run</a></p>',
           f'<h1>{_e(name)} {_badge(r)}</h1>'
           # beside the verdict: a pruned candidate's drop is pruning and INT8 together (bench item 7)
           + (f'<p><b>{_e(source_text(cand.get("source")))}</b></p>' if source_text(cand.get("source")) else "")
           + f'<p class="sub">{"<br>".join(f for f in facts if f)}</p>',
           _unreliable_box(r), _notes(r)]
    anomaly = is_anomaly(r)
    if r.get("skipped"):
        out.append(f'<p><b>Skipped:</b> {_e(r["skipped"])}</p>')
        if not anomaly:
            out.append(f'<p>Reference top-1: {_pct(ref.get("top1"), 2)}</p>')
        elif ref.get("auroc") is not None:
            out.append(f'<p>Reference AUROC: {_f(ref["auroc"], 4)}</p>')
    else:
        rl, cl = ref.get("latency_ms") or {}, cand.get("latency_ms") or {}
        tm = cand.get("throughput_mode") or {}
        # An anomaly model is judged by how it ranks (AUROC) and decides (rates at the shipped
        # threshold); its top-1 as a 2-class "classifier" says less, so it is left out of its page.
        figures = [
            ("AUROC", _f(ref.get("auroc"), 4), _f(cand.get("auroc"), 4)),
            ("AUROC drop", "", _f(cand.get("auroc_drop"), 4)),
            ("F1 (defect positive)", _f(ref.get("f1"), 3), _f(cand.get("f1"), 3)),
            ("false-reject rate (good images rejected)", _pct(ref.get("false_reject_rate"), 2),
             _pct(cand.get("false_reject_rate"), 2)),
            ("escape rate (defect images passed)", _pct(ref.get("escape_rate"), 2), _pct(cand.get("escape_rate"), 2)),
            ("decision agreement with reference", "", _pct(cand.get("decision_agreement"), 2)),
            ("max score drift vs reference", "", _f(cand.get("max_score_drift"), 4, " × threshold")),
            ("images: good / defect", "", f'{_e(cand.get("n_good", "–"))} / {_e(cand.get("n_defect", "–"))}'),
        ] if anomaly else [
            ("top-1", _pct(ref.get("top1"), 2), _pct(cand.get("top1"), 2)),
            ("balanced accuracy", _pct(ref.get("balanced_accuracy"), 2), _pct(cand.get("balanced_accuracy"), 2)),
            ("top-1 drop", "", _f(cand.get("top1_drop"), 2, " points")),
            ("agreement with reference", "", _pct(cand.get("agreement"), 2))]
        rows = [("format / precision", f'{_e(ref.get("format"))} / {_e(ref.get("precision"))}',
                 f'{_e(cand.get("format"))} / {_e(precision_text(cand))}'),
                *figures,
                *((f"{k} latency", _f(rl.get(k), 2, " ms"), _f(cl.get(k), 2, " ms"))
                  for k in ("p50", "p95", "p99")),
                ("throughput, one batch at a time", _f(ref.get("throughput_ips"), 1, " img/s"),
                 _f(cand.get("throughput_ips"), 1, " img/s")),
                ("throughput at batch 1 (1000 / p50)", "", _f(cand.get("batch1_ips"), 1, " img/s")),
                ("model size", _f(ref.get("size_mb"), 2, " MB"), _f(cand.get("size_mb"), 2, " MB"))]
        if tm:
            rows += [(f"throughput mode ({_e(tm.get('streams'))} streams, batch {_e(tm.get('batch'))})", "",
                      _f(tm.get("images_per_s"), 1, " img/s")),
                     ("request latency under load, p50 / p95", "",
                      f"{_f(tm['request_latency_ms']['p50'], 2, ' ms')} / "
                      f"{_f(tm['request_latency_ms']['p95'], 2, ' ms')}")]
        if cand.get("model_rss_mb") is not None:
            rows += [("model memory (RSS growth over load + inference, fresh process)", "",
                      _f(cand["model_rss_mb"], 0, " MB")),
                     ("peak RSS of a process running only this model", "", _f(cand.get("peak_rss_mb"), 0, " MB"))]
        elif cand.get("peak_rss_mb") is not None:
            rows.append(("peak RSS (whole bench process)", "", _f(cand.get("peak_rss_mb"), 0, " MB")))
        if cand.get("int8_speedup_over_float") is not None:
            rows.append(("INT8 speed-up over float, same backend", "",
                         _f(cand["int8_speedup_over_float"], 2, "×")))
        if cand.get("precision_state"):
            ps = cand["precision_state"]
            rows.append(("layers in INT8", "", f"{_e(ps['int8_layers'])} of {_e(ps['layers'])}"))
        elif cand.get("float_layers"):
            fl = cand["float_layers"]
            rows.append(("layers kept in float", "", _e(len(fl) if isinstance(fl, (list, dict)) else fl)))
        body = "".join(f"<tr><td>{a}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in rows)
        out.append(f"<table><tr><th></th><th>reference</th><th>candidate</th></tr>{body}</table>")
        missing = missing_class_note(cand) if anomaly else None
        if missing:
            out.append(f'<div class="note">Not evaluated: {_e(missing)}.</div>')
        label = unreliable_label(r)
        mark = f' <span class="fail">(unreliable: {_e(label)})</span>' if label else ""
        spread = describe_spread(r.get("speedup_spread"))
        out.append(f'<p><b>Speed-up</b> (reference p50 / candidate p50): {_f(r.get("speedup"), 2, "×")}{mark}'
                   + (f'<br><span class="sub">per timing block: {_e(spread)}</span>' if spread else "") + "</p>")
        out.append(f"<h2>Gates</h2>{gates_table([r], with_target=False)}")
        out.append(transfer_html(r.get("transfer")))
        out.append(adaptation_html(r.get("adaptation")))
        out.append(ood_html(r.get("ood")))
        if anomaly:
            out.append(f"<h2>Anomaly scores</h2>{anomaly_figures(r.get('anomaly_plot'))}")
        pts, ref_top1 = _points([r], "auroc" if anomaly else "top1")
        no_ref = ("" if rl else " Nothing was timed (--no-latency: accuracy only)."
                  if r.get("latency_measured") is False else " The reference latency was not measured on this host "
                  "(no torch).")
        scatter = (scatter_svg(pts, ref_top1, "AUROC vs latency", metric="AUROC") if anomaly
                   else scatter_svg(pts, ref_top1))
        out.append(f"<h2>Latency</h2><figure>{latency_svg(_lat_rows(r, PALETTE[0]))}"
                   f"<figcaption>{_LAT_CAPTION}{no_ref}</figcaption></figure>"
                   f"<figure>{scatter}<figcaption>Dot: p50; bar: p50 to p95."
                   "</figcaption></figure>")
        if tm:
            out.append(f'<p class="sub">Throughput mode: {_e(tm.get("mode"))}; {_e(tm.get("requests"))} requests '
                       f'of {_e(tm.get("batch"))} images in {_f(tm.get("seconds"), 1, " s")}.</p>')
        if r.get("layers"):
            out.append(f"<h2>Where the time goes</h2>{layers_table(r['layers'])}")
        if cand.get("confusion"):
            # an anomaly report's 2x2 matrix is its decisions at the threshold (good/defect)
            recall = cand.get("per_class_recall") or {}
            out.append(f'<h2>Candidate confusion matrix</h2><div class="grid"><figure>'
                       f'{confusion_svg(cand["confusion"], r.get("classes") or [], name)}</figure>'
                       "<table><tr><th>class</th><th>recall</th></tr>"
                       + "".join(f"<tr><td>{_e(c)}</td><td>{_pct(v, 1)}</td></tr>" for c, v in recall.items())
                       + "</table></div>")
    sections = (("host", host), ("versions", r.get("versions")), ("target profile", prof))
    details = [f"<details><summary>{label}</summary>{_kv(d)}</details>" for label, d in sections if d]
    if details:
        out.append("<h2>Details</h2>" + "".join(details))
    return _page(f"edge-tl bench: {name}", "".join(out))


_LAT_CAPTION = ("Box: p25–p75; thick line: p50; ◇: p95; whisker: min–p99; dots: every timed call; red dashed "
                "line: the target's max_p95_ms gate.")


def ood_html(ood: dict[str, Any] | None) -> str:
    """The out-of-distribution section: the share of this report's images above the limit, and the score
    distributions of the validation images (in distribution) and of this report's images."""
    if not ood:
        return ""
    val, scores = ood.get("validation_scores") or [], ood.get("scores") or []
    xlabel = "ood score (1.0: the export's threshold; right of the limit: review)"
    # A bench on the run's own validation split scores the very images the export kept: two series
    # would be drawn exactly on top of each other, so it is drawn once and the caption says why.
    same = bool(val) and sorted(val) == sorted(scores)
    if same:
        fig = score_histogram_svg(scores, None, ood["limit"], names=("validation images", None), xlabel=xlabel,
                                  title="Out-of-distribution scores of this report's images")
        note = ("<figcaption>This report's images are the validation images the limit was set on: one "
                "distribution.</figcaption>")
    else:
        fig = score_histogram_svg(val, scores, ood["limit"],
                                  title="Out-of-distribution scores: validation images vs this report's images",
                                  names=("validation", str(ood.get("data") or "this data")), xlabel=xlabel)
        note = ""
    return (f'<h2>Out-of-distribution score</h2><p><b>{_pct(ood.get("share_flagged"))}</b> of the {ood["n"]} '
            f'images of {_e(ood.get("data"))} score above the limit {_limit(ood["limit"])} (<span class="sub">'
            f'{_e(ood.get("limit_source"))}</span>): the runtime sends them to review as out_of_distribution. '
            f'The score is fitted on {_e(ood.get("fitted_on"))}.</p><figure>{fig}{note}</figure>')


def adaptation_html(adaptation: dict[str, Any] | None) -> str:
    """For a model adapted to a new line: method, unlabelled set, and source-only vs adapted accuracy on
    the labelled target images given with ``--target-val`` (report only)."""
    if not adaptation:
        return ""
    u = adaptation.get("unlabeled") or {}
    out = (f'<h2>Adaptation</h2><p>Adapted with <b>{_e(adaptation.get("method"))}</b> on '
           f'{_e(u.get("n_images"))} unlabelled images of {_e(u.get("root"))}.</p>')
    rep = adaptation.get("report")
    if not rep:
        return out + ('<p class="sub">No labelled target images were given (--target-val): no accuracy on the '
                      'new line.</p>')
    rows = "".join(f'<tr><td>{name}</td><td>{_pct(rep[k].get("top1"), 2)}</td>'
                   f'<td>{_pct(rep[k].get("balanced_accuracy"), 2)}</td></tr>'
                   for k, name in (("source", "source only"), ("adapted", "adapted")) if rep.get(k))
    return out + (f'<table><tr><th>on {_e(rep.get("n_images"))} labelled images of {_e(rep.get("root"))}</th>'
                  f'<th>top-1</th><th>balanced accuracy</th></tr>{rows}</table>'
                  f'<p class="sub">{_e(rep.get("note"))}</p>')


def transfer_html(transfer: dict[str, Any] | None) -> str:
    """Where the backbone came from and, with ``finetune --baseline scratch``, whether transfer helped:
    top-1 and balanced accuracy against the same architecture trained from random weights, per class."""
    if not transfer:
        return ""
    names = {"imagenet": "ImageNet", "none": "random initialisation", "file": "state_dict file", "run": "edge-tl run"}
    chain = " ← ".join(f'{_e(names.get(s.get("kind"), s.get("kind")))}'
                       + (f' <span class="sub">{_e(s["path"])}</span>' if s.get("kind") in ("run", "file") else "")
                       for s in transfer.get("sources") or [])
    out = f"<h2>Transfer</h2><p>Backbone: this model ← {chain}</p>"
    b = transfer.get("baseline")
    if b:
        verdict = "helped" if b.get("transfer_helped") else "did NOT help (negative transfer)"
        out += (f'<p>Against the same architecture trained from random weights (same split, mode, epochs, seed): '
                f'top-1 {_pct(b.get("val_top1"), 2)} from scratch, gain {_f(100 * b["transfer_gain_top1"], 2)} '
                f'points; balanced accuracy gain {_f(100 * b["transfer_gain_balanced_accuracy"], 2)} points: '
                f'<b class="{"pass" if b.get("transfer_helped") else "fail"}">transfer {verdict}</b>.</p>')
        gains = b.get("per_class_gain") or {}
        if gains:
            rows = "".join(f"<tr><td>{_e(c)}</td><td>{_f(None if g is None else 100 * g, 2)}</td></tr>"
                           for c, g in gains.items())
            out += f"<table><tr><th>class</th><th>recall gain over scratch [points]</th></tr>{rows}</table>"
    return out


def layers_table(layers: dict[str, Any]) -> str:
    """The top layers of a ``bench --layers`` profile: time per call, share, kernel and precision."""
    if layers.get("error"):
        return f'<p class="sub">{_e(layers["error"])}</p>'
    shares = ", ".join(f"{_e(k)} {100 * v:.0f} %" for k, v in (layers.get("by_precision") or {}).items())
    rows = "".join(f"<tr><td>{_e(r['name'])}</td><td>{_e(r['type'])}</td><td>{_e(r['kernel'])}</td>"
                   f"<td>{_e(r['precision'])}</td><td>{_f(r['ms'], 3, ' ms')}</td><td>{_pct(r['share'])}</td></tr>"
                   for r in layers.get("top") or [])
    return (f'<p class="sub">{_e(layers["tool"])}; {_e(layers["n_layers"])} layers, {_f(layers["total_ms"], 3, " ms")} '
            f"per call in all; time by precision: {shares}</p><table><tr><th>layer</th><th>type</th>"
            f"<th>kernel</th><th>precision</th><th>time</th><th>share</th></tr>{rows}</table>")


def group_reports(reports: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Reports grouped by evaluation set (the run's own set first, then ``--data`` sets by name)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in reports:
        groups.setdefault(eval_set_key(r), []).append(r)

    def order(g: list[dict[str, Any]]) -> tuple[int, str]:
        own = not any(str(r.get("_file", "")).startswith("data-") for r in g)
        return (0 if own else 1, eval_set_text(g[0]))

    return sorted(groups.values(), key=order)


def _group_facts(group: list[dict[str, Any]]) -> dict[str, Any]:
    """Reference top-1 on this set, the sessions the rows come from, and what they mean for comparing."""
    # An adapted target's reference is the adapted model (bench/run.py): the line names the full model's.
    full = [r for r in group if not str((r.get("reference") or {}).get("model", "full")).startswith("adapted")]
    ref_top1 = next(((r.get("reference") or {}).get("top1") for r in full
                     if (r.get("reference") or {}).get("top1") is not None), None)
    tops = {round((r.get("reference") or {}).get("top1"), 6) for r in full
            if (r.get("reference") or {}).get("top1") is not None}
    sessions = sorted({session_id(r) for r in group if not r.get("skipped")})
    facts = {"reference_top1": ref_top1, "reference_top1_consistent": len(tops) <= 1, "sessions": sessions,
             "mixed_sessions": len(sessions) > 1,
             "busy_rows": [r["target"] for r in group if (r.get("host_load") or {}).get("busy")]}
    if any(is_anomaly(r) for r in group):  # only anomaly sets get the key: classifier data stays as it was
        aurocs = [(r.get("reference") or {}).get("auroc") for r in group]
        aurocs = [a for a in aurocs if a is not None]
        facts |= {"reference_auroc": aurocs[0] if aurocs else None,
                  "reference_auroc_consistent": len({round(a, 6) for a in aurocs}) <= 1}
    return facts


def _link(r: dict[str, Any]) -> str:
    return str(r.get("_file") or f"{r['target']}.json")[:-5] + ".html"


def _index_group(group: list[dict[str, Any]], k: int, n_groups: int) -> list[str]:
    ran = [r for r in group if not r.get("skipped") and r.get("candidate")]
    facts = _group_facts(group)
    # One run is one task; a skipped row of an anomaly run may lack ``task``, so any anomaly row decides.
    anomaly = "reference_auroc" in facts
    metric_heads = ("<th>AUROC</th><th>AUROC drop</th><th>F1</th><th>false reject</th><th>escape</th>"
                    "<th>decision agreement</th>" if anomaly else
                    "<th>top-1</th><th>bal. acc.</th><th>drop</th><th>agreement</th>")
    # The verdict comes right after the target: at the far right of 15 columns it was cut off (1,920 px)
    # or scrolled out of view; a skipped row has no figures, so its reason spans their columns instead of
    # being squeezed into a last column one word per line.
    head = ("<tr><th>target</th><th style='text-align:left'>status</th><th>format / precision</th>" + metric_heads
            + "<th>p50</th><th>p95</th><th>speed-up</th><th>throughput mode</th><th>size</th>"
            "<th style='text-align:left'>measured · session · host load</th></tr>")
    n_figures = head.count("<th") - 2
    rows = []
    for r in sorted(group, key=lambda r: r["target"]):
        c = r.get("candidate") or {}
        lat = c.get("latency_ms") or {}
        link = f'<a href="{_e(_link(r))}">{_e(r["target"])}</a>'
        if r.get("skipped"):
            rows.append(f"<tr><td>{link}</td><td class=verdict>{_status(r)}</td>"
                        f"<td class=reason colspan={n_figures}>{_e(r['skipped'])}</td></tr>")
            continue
        fmt = f'{_e(c["format"])} / {_e(precision_text(c))}' if c.get("format") else "–"
        label = unreliable_label(r)
        warn = (f'<br><span class="fail mark" title="{_e("; ".join(r.get("unreliable_reasons") or []))}">'
                f"⚠ unreliable: {_e(label)}</span>") if label else ""
        tm = (c.get("throughput_mode") or {}).get("images_per_s")
        when = (f'{_e(measured_text(r))}<br><span class="sub">{_e(session_id(r))}</span><br>'
                f'{_e(load_short(r.get("host_load")))}')
        metrics = (f"<td>{_f(c.get('auroc'), 4)}</td><td>{_f(c.get('auroc_drop'), 4)}</td>"
                   f"<td>{_f(c.get('f1'), 3)}</td><td>{_pct(c.get('false_reject_rate'), 2)}</td>"
                   f"<td>{_pct(c.get('escape_rate'), 2)}</td><td>{_pct(c.get('decision_agreement'), 2)}</td>"
                   if anomaly else
                   f"<td>{_pct(c.get('top1'), 2)}</td><td>{_pct(c.get('balanced_accuracy'), 2)}</td>"
                   f"<td>{_f(c.get('top1_drop'), 2, ' pts')}</td><td>{_pct(c.get('agreement'), 2)}</td>")
        rows.append(f"<tr><td>{link}</td><td class=verdict>{_status(r)}</td><td class='st fmt'>{fmt}</td>{metrics}"
                    f"<td>{_f(lat.get('p50'), 2, ' ms')}</td><td>{_f(lat.get('p95'), 2, ' ms')}</td>"
                    f"<td>{_f(r.get('speedup'), 2, '×')}{warn}</td><td>{_f(tm, 0, ' img/s')}</td>"
                    f"<td>{_f(c.get('size_mb'), 2, ' MB')}</td><td class='st when'>{when}</td></tr>")
    title = eval_set_text(group[0])
    if anomaly:
        ref_line = (f"reference: full model, torch fp32, AUROC {_f(facts['reference_auroc'], 4)} on this evaluation "
                    "set" + ("" if facts["reference_auroc_consistent"] else
                             " (the rows' reports disagree on it: the reference model changed between benches)"))
    else:
        ref_line = (f"reference: full model, torch fp32, top-1 {_pct(facts['reference_top1'], 2)} on this evaluation "
                    "set" + ("" if facts["reference_top1_consistent"] else
                             " (the rows' reports disagree on it: the reference model changed between benches)"))
    out = [f'<section class="evalset" data-eval-set="{_e(eval_set_key(group[0]))}">'
           f"<h2>Evaluation set {k} of {n_groups}: {_e(title)}</h2>"
           f"<p class='sub reference-top1'>{_e(ref_line)} · {len(group)} target(s), {len(ran)} measured</p>"]
    if facts["mixed_sessions"]:
        out.append(f'<div class="note sessions">These rows come from {len(facts["sessions"])} different bench '
                   f'sessions ({_e(", ".join(facts["sessions"]))}): their timings were taken at different times '
                   "and host loads (see each row); compare latencies across sessions with care.</div>")
    # A busy row's own UNRELIABLE TIMING note (below the table) already says so, with the reasons.
    said = {r["target"] for r in group if any(str(n).startswith(_UNRELIABLE_NOTE) for n in r.get("notes") or [])}
    busy = [t for t in facts["busy_rows"] if t not in said]
    if busy:
        out.append(f'<div class="note">Timed on a busy host: {_e(", ".join(busy))}.</div>')
    out.append(f"<div class=wide><table>{head}{''.join(rows)}</table></div>")
    out.append("".join(f'<div class="note"><b>{_e(r["target"])}</b>: {_e(n)}</div>'
                       for r in group for n in r.get("notes") or []))
    if ran:
        lat_rows = [row for i, r in enumerate(ran)
                    for row in _lat_rows(r, PALETTE[i % len(PALETTE)], r["target"])]
        pts, ref_top1 = _points(ran, "auroc" if anomaly else "top1")
        what, scatter = (("AUROC", scatter_svg(pts, ref_top1, "AUROC vs latency", metric="AUROC")) if anomaly
                         else ("Top-1", scatter_svg(pts, ref_top1)))
        out.append(f"<h3>Latency distribution</h3><figure>{latency_svg(lat_rows)}<figcaption>{_LAT_CAPTION} "
                   "Each target's grey row is the reference timed in the same bench run."
                   "</figcaption></figure>"
                   f"<h3>{'AUROC' if anomaly else 'Accuracy'} vs latency</h3><figure>{scatter}<figcaption>{what} on "
                   "this evaluation set only; the reference ◆ sits at the median of its timings across the benches."
                   "</figcaption></figure>")
    out.append("</section>")
    return out


def render_index(reports: list[dict[str, Any]], title: str) -> str:
    """The per-run page: one section per evaluation set (its own table, reference top-1 and plots; each
    row with its date, bench session and host load), then gates and confusion matrices."""
    ran = [r for r in reports if not r.get("skipped") and r.get("candidate")]
    groups = group_reports(reports)
    first = reports[0] if reports else {}
    facts = [f"{len(reports)} report(s), {len(ran)} measured, on {len(groups)} evaluation set(s)",
             _host(first.get("host") or {})]
    out = [f"<h1>{_e(title)}</h1><p class='sub'>{' · '.join(f for f in facts if f)}</p>"]
    if len(groups) > 1:
        out.append('<div class="note">Figures of different evaluation sets are shown in separate sections: '
                   "an accuracy (and its drop) is comparable only with figures of the same images.</div>")
    for k, group in enumerate(groups, 1):
        out += _index_group(group, k, len(groups))
    out.append(f"<h2>Gates</h2>{gates_table(ran)}")
    cms = [f"<figure>{confusion_svg(r['candidate']['confusion'], r.get('classes') or [], r['target'])}"
           "</figure>" for r in ran if r["candidate"].get("confusion")]
    if cms:
        out.append('<h2>Candidate confusion matrices</h2><p class="sub">Rows: true class; columns: predicted '
                   'class; shade: share of the row (green: correct, red: confused).</p>'
                   f'<div class="grid">{"".join(cms)}</div>')
    return _page(title, "".join(out), "index")


def index_json(reports: list[dict[str, Any]], title: str) -> dict[str, Any]:
    """The run index as data: one entry per evaluation set, its reference top-1 (and AUROC, for an
    anomaly run), sessions and rows (anomaly rows with their AUROC and decision figures)."""
    sets = []
    for group in group_reports(reports):
        facts = _group_facts(group)
        rows = []
        for r in sorted(group, key=lambda r: r["target"]):
            c = r.get("candidate") or {}
            lat = c.get("latency_ms") or {}
            hl = r.get("host_load") or {}
            rows.append({"target": r["target"], "report": r.get("_file"), "measured_at": r.get("measured_at"),
                         "session": (r.get("session") or {}).get("id"),
                         "host_load": {"label": load_short(hl) if hl else None, "busy": hl.get("busy"),
                                       "other_cpu_share": (hl.get("during") or {}).get("other_cpu_share")},
                         "precision": c.get("precision"), "precision_label": precision_text(c) if c else None,
                         "top1": c.get("top1"), "top1_drop": c.get("top1_drop"), "agreement": c.get("agreement"),
                         "p50_ms": lat.get("p50"), "p95_ms": lat.get("p95"), "speedup": r.get("speedup"),
                         "throughput_mode_ips": (c.get("throughput_mode") or {}).get("images_per_s"),
                         "model_rss_mb": c.get("model_rss_mb"), "timing_reliable": r.get("timing_reliable"),
                         # A skipped target was never judged: null, not the report's ``passed: true`` (which
                         # only keeps what this host cannot run out of the run's exit code).
                         "passed": None if r.get("skipped") else r.get("passed"), "skipped": r.get("skipped")})
            if is_anomaly(r):  # what an anomaly row is judged by; classifier rows keep their old keys only
                rows[-1] |= {"task": "anomaly"} | {k: c.get(k) for k in (
                    "auroc", "auroc_drop", "f1", "false_reject_rate", "escape_rate", "decision_agreement",
                    "max_score_drift", "n_good", "n_defect")}
        ident = group[0].get("eval_set")
        sets.append({"eval_set": ident if isinstance(ident, dict) else {"path": ident},
                     "eval_set_text": eval_set_text(group[0]), **facts, "rows": rows})
    return {"title": title, "evaluation_sets": sets}


def load_reports(reports_dir: str | Path, data_sets: bool = True) -> list[dict[str, Any]]:
    """Every bench report (``*.json`` holding a ``target``) in ``reports_dir`` (and, with ``data_sets``,
    its ``data-*/`` subfolders of ``bench --data`` reports), sorted by file name; each carries
    ``_file``, its path relative to ``reports_dir``."""
    reports_dir = Path(reports_dir)
    paths = sorted(reports_dir.glob("*.json"))
    if data_sets:
        paths += sorted(reports_dir.glob("data-*/*.json"))
    out = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read report {path}: {exc}") from exc
        if isinstance(data, dict) and "target" in data and "reference" in data:
            out.append(data | {"_file": path.relative_to(reports_dir).as_posix()})
    return out


def write_index(reports_dir: str | Path, title: str | None = None, data_sets: bool = True) -> Path:
    """(Re)write ``reports_dir/index.html`` and ``index.json`` from every report there (and in its
    ``data-*/`` subfolders, with ``data_sets``); returns the HTML path."""
    reports_dir = Path(reports_dir)
    dest = reports_dir / "index.html"
    run_dir = reports_dir.resolve().parent
    if reports_dir.name.startswith("data-"):
        run_dir = run_dir.parent
    name = title or f"edge-tl bench: {run_dir.name}" + (f" ({reports_dir.name})" if not data_sets else "")
    reports = load_reports(reports_dir, data_sets)
    write_bytes(dest, render_index(reports, name).encode())
    write_bytes(reports_dir / "index.json", (json.dumps(index_json(reports, name), indent=2) + "\n").encode())
    return dest


def curve_svg(rows: list[dict[str, Any]], title: str = "Top-1 against labelled images per class") -> str:
    """Mean top-1 (%) against images per class (log axis), a bar from the worst to the best repeat;
    rows: ``{"x": images per class, "label", "mean", "min", "max"}`` (accuracies 0–1)."""
    pts = [r for r in rows if r.get("x") and r.get("mean") is not None]
    if not pts:
        return '<p class="sub">No point to plot.</p>'
    w, h, left, top, right, bottom = 720, 340, 70, 40, 30, 296
    xs = [float(r["x"]) for r in pts]
    ax = _Axis(min(xs) / 1.3, max(xs) * 1.3, left, w - right, log=True)
    lo = min(100 * r["min"] for r in pts)
    ay = _Axis(max(0.0, lo - 5), 100.0, bottom, top)
    body = _xgrid(ax, top, bottom, "labelled training images per class")
    body += _ygrid(ay, left, w - right, "validation top-1 [%]")
    pts.sort(key=lambda r: r["x"])
    line = " ".join(f"{ax(r['x']):.1f},{ay(100 * r['mean']):.1f}" for r in pts)
    body.append(f'<polyline points="{line}" fill="none" stroke="{PALETTE[0]}" stroke-width="2"/>')
    for r in pts:
        x, y = ax(r["x"]), ay(100 * r["mean"])
        tip = f'{r["label"]} per class: top-1 {100 * r["mean"]:.2f} % (range {100 * r["min"]:.2f}–{100 * r["max"]:.2f})'
        body.append(f'<line x1="{x:.1f}" y1="{ay(100 * r["min"]):.1f}" x2="{x:.1f}" y2="{ay(100 * r["max"]):.1f}" '
                    f'stroke="{PALETTE[0]}" stroke-width="1.5"/><circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" '
                    f'fill="{PALETTE[0]}"><title>{_e(tip)}</title></circle>'
                    f'<text x="{x + 7:.1f}" y="{y - 7:.1f}" fill="#333">{_e(r["label"])}</text>')
    return _svg(w, h, title, body)
