"""The report's charts and formatting: hand-written inline SVG (latency boxes, top-1 against latency,
confusion matrix, anomaly score histogram, ROC, heat-map grid, detections over images, label-efficiency
curve) and the escaping and number formats every page uses.

Hand-written on purpose: benches run on devices with the torch-free runtime, where no plotting library
(matplotlib, plotly) is installed, and a report must open from a USB stick or a CI artifact with no
network. So: stdlib (and numpy, which every runtime has) only; every piece of text passes through
``html.escape`` (``esc``).
"""

from __future__ import annotations

import math
import random
import statistics
from html import escape
from typing import Any

import numpy as np

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
figure.detection{width:300px}figure.detection figcaption{overflow-wrap:anywhere}
"""


def esc(v: Any) -> str:
    return escape(str(v), quote=True)


def num(v: Any, digits: int = 3, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.{digits}f}{unit}"
    return esc(v)


def pct(v: Any, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f} %"


def limit_text(v: float) -> str:
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
    return (f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{esc(title)}" '
            f'font-size="12"><title>{esc(title)}</title>'
            f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="14" font-weight="600">'
            f'{esc(title)}</text>'
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
               f'{esc(label + scale)}</text>')
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
               f'{esc(label)}</text>')
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
        body.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end"{weight}>{esc(r["label"])}</text>')
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
                    f'stroke-width="3"><title>{esc(r["label"])}: p50 {st["p50"]:.3f} ms, '
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
                f'{esc(axis_label)}</text>')
    obstacles: list[Box] = []
    if ref_top1 is not None:
        y = ay(scale * ref_top1)
        obstacles.append((w - right + 4, y - 8, w - right + 100, y + 6))
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="{REF_COLOR}" '
                    f'stroke-dasharray="6,4"/><text x="{w - right + 6}" y="{y + 4:.1f}" fill="#666">'
                    f'reference {esc(metric)}</text>')
    pts.sort(key=lambda p: (p["p50"], -p["y"]))
    xy = [(ax(p["p50"]), ay(scale * p["y"]), p["label"]) for p in pts]
    for p, (x, y, _), (lx, ly) in zip(pts, xy, _place_labels(xy, (2, top - 8, w - 2, h - 4), obstacles), strict=True):
        tip = f'{p["label"]}: {metric} {tip_value(p["y"])}, p50 {p["p50"]:.3f} ms'
        if p.get("p95"):
            body.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{ax(p["p95"]):.1f}" y2="{y:.1f}" '
                        f'stroke="{p["color"]}" stroke-width="2" stroke-opacity="0.6"/>')
        shape = (f'<path d="M{x:.1f},{y - 7:.1f}l7,7l-7,7l-7,-7z"' if p.get("ref")
                 else f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5.5"')
        body.append(f'{shape} fill="{p["color"]}" stroke="#fff"><title>{esc(tip)}</title>'
                    f'{"</path>" if p.get("ref") else "</circle>"}'
                    f'<text x="{lx:.1f}" y="{ly:.1f}" fill="{p["color"]}">{esc(p["label"])}</text>')
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
        body.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end">{esc(names[i])}'
                    f'<title>{esc(full[i])}</title></text>')
        for j, count in enumerate(row):
            f = count / total
            # any non-zero cell gets a visible tint: one confused image is worth seeing
            fill = _mix("#0b6e4f" if i == j else "#c0392b", 0.15 + 0.85 * f if count else 0.0)
            x = left + j * cell
            body.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#fff">'
                        f'<title>true {esc(full[i])} → predicted {esc(full[j])}: {count} ({100 * f:.1f} %)'
                        '</title></rect>')
            if n <= 30:
                body.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" '
                            f'font-size="{min(12, cell // 3)}" fill="{"#fff" if f > 0.5 else "#222"}">'
                            f'{count}</text>')
    for j, name in enumerate(names):
        x = left + j * cell + cell / 2 + 4
        body.append(f'<text transform="translate({x},{top - 6}) rotate(-60)">{esc(name)}'
                    f'<title>{esc(full[j])}</title></text>')
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
        out.append(f'<text x="{x + 24}" y="{yy + 4}">{esc(text)}</text>')
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
                        f'<title>{esc(name)}: {c} image(s) scoring {edges[k]:.3f} to {edges[k + 1]:.3f}</title></rect>')
    xt = ax(threshold)
    body.append(f'<line class="threshold" x1="{xt:.1f}" y1="{top - 4}" x2="{xt:.1f}" y2="{bottom}" '
                f'stroke="#cf222e" stroke-width="2" stroke-dasharray="5,3"/>'
                f'<text x="{xt + 4:.1f}" y="{top + 8}" fill="#cf222e">threshold</text>')
    sets = [(GOOD_COLOR, f"{names[0]} ({len(g)})", None)]
    if names[1] is not None:
        sets.append((DEFECT_COLOR, f"{names[1]} ({len(d)})", None))
    body += _legend(w - right + 16, top + 12, [*sets, ("#cf222e", f"threshold ({limit_text(threshold)})", "5,3")])
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
        figs.append(f'<figure class="heatmap"><img src="{esc(png)}" width="160" height="160" '
                    f'alt="{esc(f"heat map of {name}")}" title="{esc(m.get("path") or "")}">'
                    f"<figcaption>{esc(m.get('label', '?'))} · score {num(score, 3)}{verdict}<br>{esc(name)}"
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


# The three kinds of box on a detection picture: colour, stroke width (screen px), dash pattern ("" solid).
BOX_STYLES = {"truth": ("#009E73", 3.0, ""), "reference": ("#0072B2", 1.5, ""), "candidate": ("#D55E00", 2.0, "5,3")}
BOX_NAMES = {"truth": "ground truth", "reference": "reference (torch)", "candidate": "candidate (target)"}
DETECTION_PX = 300  # longest side of one picture on the page


def _box_label(kind: str, box: list[float], h: float, fs: float, pad: float) -> tuple[float, float, str]:
    """Where a box's label goes (x, y, anchor): ground truth inside its top-left corner, the reference above
    its top-left, the candidate below its bottom-right (inside where the image ends), so the labels of
    boxes that coincide do not overlap."""
    x1, y1, x2, y2 = box[:4]
    if kind == "truth":
        return x1 + pad, y1 + fs, "start"
    if kind == "reference":
        return x1, (y1 - pad if y1 - pad - fs >= 0 else y1 + fs + pad), "start"
    return x2, (y2 + fs if y2 + fs + pad <= h else y2 - pad), "end"


def _repeats(row: list[float], others: list[list[float]]) -> bool:
    """True when a candidate box's label would repeat a reference box's: same class and score (2 decimals),
    IoU >= 0.5."""
    x1, y1, x2, y2 = (float(v) for v in row[:4])
    for o in others:
        if int(o[4]) != int(row[4]) or f"{float(o[5]):.2f}" != f"{float(row[5]):.2f}":
            continue
        iw = min(x2, float(o[2])) - max(x1, float(o[0]))
        ih = min(y2, float(o[3])) - max(y1, float(o[1]))
        inter = max(iw, 0.0) * max(ih, 0.0)
        union = (x2 - x1) * (y2 - y1) + (float(o[2]) - float(o[0])) * (float(o[3]) - float(o[1])) - inter
        if union > 0 and inter / union >= 0.5:
            return True
    return False


def detections_svg(image: dict[str, Any], classes: list[str], px: int = DETECTION_PX) -> str:
    """One evaluation image (``detect_plot.images[i]``: JPEG data URI, size, boxes in its pixels) with its
    ground-truth boxes, the reference's and the candidate's detections drawn over it in the three
    ``BOX_STYLES``; class names (and scores) beside the boxes, every box's text in its tooltip. A candidate
    label that would only repeat its reference box's (:func:`_repeats`) is left out: an agreeing export
    would otherwise print every label twice. Only ``data:image/`` URIs are drawn (the page fetches nothing)."""
    w, h = float(image.get("width") or 1), float(image.get("height") or 1)
    scale = max(w, h) / px  # image pixels per screen pixel: text and padding are given in screen pixels
    fs, pad = 11 * scale, 2 * scale
    jpeg = str(image.get("jpeg") or "")
    body = ([f'<image href="{esc(jpeg)}" x="0" y="0" width="{w:g}" height="{h:g}" preserveAspectRatio="none"/>']
            if jpeg.startswith("data:image/") else [f'<rect width="{w:g}" height="{h:g}" fill="#ddd"/>'])
    labels = []
    for kind in ("truth", "reference", "candidate"):
        color, width, dash = BOX_STYLES[kind]
        pattern = f' stroke-dasharray="{dash}"' if dash else ""
        for row in image.get(kind) or []:
            x1, y1, x2, y2, c = (float(v) for v in row[:5])
            name = classes[int(c)] if 0 <= int(c) < len(classes) else f"class {int(c)}"
            text = name if kind == "truth" else f"{name} {float(row[5]):.2f}"
            body.append(f'<rect x="{x1:g}" y="{y1:g}" width="{max(x2 - x1, 0):g}" height="{max(y2 - y1, 0):g}" '
                        f'fill="none" stroke="{color}" stroke-width="{width}" vector-effect="non-scaling-stroke"'
                        f'{pattern}><title>{esc(BOX_NAMES[kind])}: {esc(text)}</title></rect>')
            if kind == "candidate" and _repeats(row, image.get("reference") or []):
                continue
            x, y, anchor = _box_label(kind, [x1, y1, x2, y2], h, fs, pad)
            labels.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{color}" stroke="#fff" '
                          f'stroke-width="{2.5 * scale:.2f}" paint-order="stroke" font-weight="600">{esc(text)}</text>')
    name = _file_name(image.get("path") or "")
    return (f'<svg viewBox="0 0 {w:g} {h:g}" width="{w / scale:.0f}" height="{h / scale:.0f}" role="img" '
            f'aria-label="{esc(f"detections on {name}")}" font-size="{fs:.2f}" class="detections">'
            f'<title>{esc(image.get("path") or name)}</title>' + "".join(body + labels) + "</svg>")


def detections_legend() -> str:
    """The three box styles in words (HTML: a line swatch per kind)."""
    items = []
    for kind in ("truth", "reference", "candidate"):
        color, width, dash = BOX_STYLES[kind]
        pattern = f' stroke-dasharray="{dash}"' if dash else ""
        items.append(f'<svg width="26" height="12" aria-hidden="true"><line x1="1" y1="6" x2="25" y2="6" '
                     f'stroke="{color}" stroke-width="{width}"{pattern}/></svg> {esc(BOX_NAMES[kind])}')
    return '<p class="sub legend">' + " &nbsp; ".join(items) + "</p>"


def detections_grid_html(plot: dict[str, Any] | None, classes: list[str]) -> str:
    """The detection part of a target page: the legend and a grid of :func:`detections_svg` pictures, each
    captioned with its file name, box counts and how many boxes the two models disagree on."""
    images = (plot or {}).get("images") or []
    if not images:
        return '<p class="sub">This report has no pictures of detections (written by an older bench).</p>'
    figs = []
    for im in images:
        k = im.get("disagreement")
        differ = f'<b class="fail">{esc(k)} box(es) differ</b>' if k else "reference and candidate agree"
        figs.append(f'<figure class="detection">{detections_svg(im, classes)}'
                    f'<figcaption>{esc(_file_name(im.get("path")))}'
                    f'<br>ground truth {len(im.get("truth") or [])}, reference {len(im.get("reference") or [])}, '
                    f'candidate {len(im.get("candidate") or [])} box(es); {differ}</figcaption></figure>')
    most = (plot or {}).get("max_boxes")
    return (detections_legend() + f'<p class="sub">Detections scoring at least {num((plot or {}).get("min_score"), 2)}'
            + (f", at most {esc(most)} per model and image" if most else "")
            + " (mAP counts the others too); a candidate box that repeats a reference box (same class and score, "
            f'IoU ≥ 0.5) is drawn without its label. Order: {esc((plot or {}).get("order") or "")}.</p>'
            f'<div class="grid">{"".join(figs)}</div>')


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
                    f'fill="{PALETTE[0]}"><title>{esc(tip)}</title></circle>'
                    f'<text x="{x + 7:.1f}" y="{y - 7:.1f}" fill="#333">{esc(r["label"])}</text>')
    return _svg(w, h, title, body)


def agreement_margin_svg(curve: list[dict[str, Any]], noise: float | None, limit: float | None = None,
                         unit: str = "logits") -> str:
    """Agreement with the reference of the answers whose reference margin is at least m, against m
    (``metrics.agreement_curve``: rows ``{margin, n, agreement}``), the target's answer noise as a
    vertical line (answers right of it are the confident ones the agreement gate judges), and the gate's
    limit as a dashed horizontal line."""
    pts = [c for c in curve if c.get("agreement") is not None]
    if not pts:
        return '<p class="sub">No agreement-versus-margin curve: no answers.</p>'
    w, h, left, top, right, bottom = 720, 320, 70, 40, 170, 276
    top_m = max(max(float(c["margin"]) for c in pts), float(noise or 0.0)) or 1.0
    ax = _Axis(0.0, top_m * 1.05, left, w - right)
    lows = [100 * float(c["agreement"]) for c in pts] + ([100 * limit] if limit is not None else [])
    ay = _Axis(max(0.0, min(lows) - 2), 100.0, bottom, top)
    body = _xgrid(ax, top, bottom, f"reference margin at least m [{unit}]")
    body += _ygrid(ay, left, w - right, "agreement [%]")
    line = " ".join(f"{ax(float(c['margin'])):.1f},{ay(100 * float(c['agreement'])):.1f}" for c in pts)
    body.append(f'<polyline class="agreement-curve" points="{line}" fill="none" stroke="{PALETTE[0]}" '
                'stroke-width="2"/>')
    for c in pts:
        tip = f"margin ≥ {float(c['margin']):.3g}: {c['n']} answers, agreement {100 * float(c['agreement']):.2f} %"
        body.append(f'<circle cx="{ax(float(c["margin"])):.1f}" cy="{ay(100 * float(c["agreement"])):.1f}" r="3" '
                    f'fill="{PALETTE[0]}"><title>{esc(tip)}</title></circle>')
    items: list[tuple[str, str, str | None]] = [(PALETTE[0], "agreement", "")]
    if noise is not None:
        x = ax(float(noise))
        body.append(f'<line class="noise" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#cf222e" '
                    f'stroke-width="1.5"><title>answer noise {float(noise):.3g} {esc(unit)}</title></line>')
        items.append(("#cf222e", f"noise {float(noise):.3g}", ""))
    if limit is not None:
        y = ay(100 * limit)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="{REF_COLOR}" '
                    'stroke-dasharray="6,4"/>')
        items.append((REF_COLOR, f"gate {100 * limit:g} %", "6,4"))
    body += _legend(w - right + 16, top + 12, items)
    return _svg(w, h, "Agreement against the reference's margin", body)
