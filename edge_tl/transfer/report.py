"""The HTML pages of ``select`` and ``curve``: self-contained, inline SVG, like the bench reports."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from ..bench.charts import CSS, PALETTE, curve_svg, scatter_svg
from ..manifest import write_bytes


def _page(title: str, body: str) -> bytes:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>").encode()


def _f(v: Any, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def write_curve_html(dest: Path, result: dict[str, Any]) -> None:
    """``curve.html``: the table and plot of ``curve.run_curve``'s result."""
    rows = result["rows"]
    table = "".join(
        f"<tr><td>{escape(str(r['shots']))}</td><td>{r['images']:.0f}</td><td>{_f(r['top1_mean'])}</td>"
        f"<td>{_f(r['top1_std'])}</td><td>{_f(r['top1_min'])}</td><td>{_f(r['top1_max'])}</td>"
        f"<td>{len(r['top1'])}</td></tr>" for r in rows)
    per_class = max(result["train_per_class"])
    pts = [{"x": per_class if r["shots"] == "all" else r["shots"], "label": str(r["shots"]), "mean": r["top1_mean"],
            "min": r["top1_min"], "max": r["top1_max"]} for r in rows]
    body = (f"<h1>How many labelled images: {escape(result['arch'])}</h1>"
            f'<p class="sub">{escape(result["data"])} · {len(result["classes"])} classes · weights '
            f'{escape(str(result["weights"].get("kind")))} · input {result["preprocessing"]["crop"]} px · seed '
            f'{result["seed"]} · top-1 on the validation split ({sum(result["val_per_class"])} images, never trained '
            f'on); probe: {escape(result["probe"])}</p>'
            "<table><tr><th>images per class</th><th>training images</th><th>top-1 mean</th><th>std</th>"
            f"<th>min</th><th>max</th><th>repeats</th></tr>{table}</table>"
            f"<figure>{curve_svg(pts)}<figcaption>Bars span the worst and best repeat; 'all' is every training "
            "image.</figcaption></figure>")
    write_bytes(dest, _page("edge-tl curve", body))


def write_select_html(dest: Path, result: dict[str, Any]) -> None:
    """``select.html``: the ranking table, the accuracy-vs-latency plot and the recommendation."""
    prec = result["precision"]
    trs, pts = [], []
    for i, r in enumerate(result["candidates"]):
        if r["status"] != "scored":
            span = 8 if prec != "fp32" else 7
            trs.append(f"<tr><td>{escape(r['name'])}</td><td colspan=\"{span}\" class=\"st\">unavailable: "
                       f"{escape(r['reason'])}</td></tr>")
            continue
        lat = r.get("latency") or {}
        p50 = (lat.get(prec) or {}).get("p50_ms")
        fp = (lat.get("fp32") or {}).get("p50_ms")
        flags = ", ".join([f.replace("_", " ") for f in r.get("flags", [])] + (["Pareto"] if r.get("pareto") else []))
        lat_cell = _f(p50, 2) if lat.get("status") == "measured" else escape(lat.get("reason", "–"))
        fp_cell = f"<td>{_f(fp, 2)}</td>" if prec != "fp32" else ""
        trs.append(f"<tr><td>{r['rank']}. {escape(r['name'])}</td><td>{_f(r['linear_top1'])}</td>"
                   f"<td>{_f(r['knn_top1'])}</td><td>{_f(r['logme'], 3)}</td><td>{lat_cell}</td>{fp_cell}"
                   f"<td>{_f(r.get('verified_val_top1'))}</td><td class=\"st\">{escape(flags)}</td></tr>")
        if p50 is not None:
            pts.append({"label": r["name"], "p50": p50, "p95": (lat.get(prec) or {}).get("p95_ms"),
                        "y": r["linear_top1"], "color": PALETTE[i % len(PALETTE)], "ref": r.get("pareto", False)})
    rec = result.get("recommendation")
    budget = f"within {result['budget_ms']} ms" if result["budget_ms"] else "no latency budget"
    rec_html = (f'<p class="note">Recommended ({escape(budget)}): '
                f"<b>{escape(rec['name'])}</b> (probe top-1 {rec['linear_top1']:.4f}, {prec} p50 "
                f"{_f(rec['p50_ms'], 2)} ms): {escape(rec.get('why', ''))}. <code>{escape(rec['command'])}</code></p>"
                if rec else f'<p class="warn">{escape(result.get("recommendation_reason", "no recommendation"))}</p>')
    ver = result.get("verify")
    ver_html = ""
    if ver:
        taus = ", ".join(f"{k.removeprefix('kendall_tau_')} {_f(v, 2)}" for k, v in ver.items()
                         if k.startswith("kendall_tau_"))
        step = 2 / max(1, ver["k"] * (ver["k"] - 1) / 2)  # one swapped pair moves tau by this
        ver_html = (f"<h2>Did the ranking hold?</h2><p>The top {ver['k']} were fine-tuned (linear mode, same split "
                    f"and seed) and scored on the validation split. Kendall's tau between score and real top-1: "
                    f"{escape(taus)}. With {ver['k']} candidates tau moves in steps of {step:.2f}; 1 means the "
                    "order held exactly.</p>")
    body = (f"<h1>Which source model: {escape(result['target'])}</h1>"
            f'<p class="sub">{escape(result["data"])} · {len(result["classes"])} classes · scored on '
            f'{result["scored_on"]["images"]} training images (at most {result["per_class"]} per class; validation '
            f'untouched) · {result["seconds"]:.0f} s</p>{rec_html}'
            "<table><tr><th>candidate</th><th>probe top-1 (5-fold)</th><th>kNN top-1</th><th>LogME</th>"
            f"<th>{prec} p50 [ms]</th>{'<th>fp32 p50 [ms]</th>' if prec != 'fp32' else ''}"
            "<th>verified val top-1</th><th>flags</th></tr>"
            f"{''.join(trs)}</table>"
            f"<figure>{scatter_svg(pts, None, title='Probe top-1 vs measured latency', metric='top-1')}"
            "<figcaption>Probe top-1 is a 5-fold cross-validated linear probe of frozen features on the training "
            "split: a ranking aid, not the fine-tuned accuracy. Diamonds are Pareto-optimal. Latency: batch 1, "
            f"the target's backend and threads, in this process.</figcaption></figure>{ver_html}")
    write_bytes(dest, _page("edge-tl select", body))
