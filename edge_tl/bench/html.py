"""Self-contained HTML reports: ``reports/<target>.html`` per target (``render_html``) and
``reports/index.html`` per run (``render_index``), drawn with the charts of ``bench/charts.py``.

No external CSS/JS/fonts: a report opens from a USB stick or a CI artifact with no network; the only
images are an anomaly report's heat maps, inlined as data URIs; every piece of text from the report
passes through ``charts.esc`` (``html.escape``).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..manifest import write_bytes
from .charts import (
    CSS,
    PALETTE,
    REF_COLOR,
    agreement_margin_svg,
    anomaly_figures,
    confusion_svg,
    detections_grid_html,
    esc,
    latency_svg,
    limit_text,
    num,
    pct,
    scatter_svg,
    score_histogram_svg,
)
from .hostload import describe, describe_spread, unreliable_label
from .labels import (
    eval_set_key,
    eval_set_text,
    headline_figure,
    load_short,
    measured_text,
    precision_text,
    report_task,
    session_id,
)
from .report import detect_rows, is_anomaly, missing_class_note, source_text
from .schema import parse_report


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
        return num(v, 4)
    return (num(v, 2, " points") if name.endswith("drop") else num(v, 2, " ms") if name.endswith("_ms")
            else num(v, 4))


def gates_table(reports: list[dict[str, Any]], with_target: bool = True) -> str:
    """One row per gate of every report: (target,) gate, limit, value, verdict."""
    rows = []
    for r in reports:
        for g in r.get("gates") or []:
            ok = g.get("passed")
            verdict = ('<span class="sub">not measured</span>' if ok is None and "passed" in g  # --no-latency
                       else f'<span class="{"pass" if ok else "fail"}">{"pass" if ok else "FAIL"}</span>')
            rows.append("<tr>" + (f'<td>{esc(r["target"])}</td>' if with_target else "")
                        + f'<td>{esc(g["name"])}</td><td>{_gate_value(g["name"], g.get("limit"))}</td>'
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


def _chance_rows(cand: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The top-1 drop this graph's answer noise gives at random (``metrics.drop_from_noise``)."""
    chance = cand.get("top1_drop_from_noise")
    if not chance:
        return []
    lo, hi = chance["interval"]
    return [("top-1 drop from noise alone (its margin changes redealt among images of like margin)", "",
             f"{num(chance['mean'], 2, ' points')} (95 %: {num(lo, 2)} to {num(hi, 2)}); "
             f"p = {num(chance['p_value'], 2)}")]


def _split_rows(cand: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The agreement split by the reference's margin (bench's ``agreement_confident`` and near-tie fields)."""
    if "agreement_confident" not in cand:
        return []  # a report written before the split
    ci = cand.get("confident_interval")
    interval = f" (95 % {pct(ci[0], 2)}–{pct(ci[1], 2)})" if ci else ""
    return [("agreement, confident answers (gated)", "",
             f'{pct(cand.get("agreement_confident"), 2)}{interval}, {esc(cand.get("confident_n"))} answers'),
            ("near-ties (reference margin ≤ noise): share / agreement", "",
             f'{pct(cand.get("near_tie_share"), 1)} / {pct(cand.get("near_tie_agreement"), 1)}'),
            ("answer noise", "", num(cand.get("answer_noise"), 3))]


def _page(title: str, body: str, css_class: str = "") -> str:
    cls = f' class="{css_class}"' if css_class else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
            f'<body{cls}>{body}</body></html>\n')


def _kv(d: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td style='text-align:left'>"
                   f"{esc(json.dumps(v) if isinstance(v, (dict, list)) else v)}</td></tr>"
                   for k, v in d.items())
    return f"<table>{rows}</table>"


def _host(host: dict[str, Any]) -> str:
    if not host.get("cpu"):
        return ""
    name = f' {esc(host["hostname"])}' if host.get("hostname") else ""
    cores = f', {esc(host["cpu_count"])} cores' if host.get("cpu_count") else ""
    flags = host.get("cpu_flags")
    flag_text = f", flags {esc(' '.join(flags) or 'none of AVX2/VNNI/AMX/NEON')}" if flags is not None else ""
    return f"host{name}: {esc(host['cpu'])}{cores}{flag_text}"


# Notes of bench/run.py that a page already shows in a section of its own: the unreliable-timing box
# and the out-of-distribution section. Printed again as notes, the same verdict stood twice on the page.
_UNRELIABLE_NOTE, _OOD_NOTE = "UNRELIABLE TIMING", "out of distribution:"


def _notes(r: dict[str, Any]) -> str:
    """The target page's notes, less those the page already shows in a section of its own."""
    shown = (_UNRELIABLE_NOTE,) * bool(unreliable_label(r)) + (_OOD_NOTE,) * bool(r.get("ood"))
    return "".join(f'<div class="note">{esc(n)}</div>' for n in r.get("notes") or []
                   if not (shown and str(n).startswith(shown)))


def _unreliable_box(r: dict[str, Any]) -> str:
    """A red box at the top of the page when the timings were taken on a busy host (or scattered)."""
    label = unreliable_label(r)
    if not label:
        return ""
    why = "; ".join(r.get("unreliable_reasons") or (r.get("host_load") or {}).get("reasons") or [])
    return (f'<div class="warn"><b>UNRELIABLE timings: {esc(label)}.</b> {esc(why)}. The speed-up and latencies '
            "below were measured like this; re-run on a quiet host.</div>")


def render_html(report: dict[str, Any]) -> str:
    """One target's page: reference vs candidate, latency, accuracy vs latency, confusion, gates; for an
    anomaly report, AUROC and decision rates instead of top-1, plus score histogram, ROC and heat maps."""
    r, name = report, str(report.get("target", "?"))
    ref, cand = r.get("reference") or {}, r.get("candidate") or {}
    host, prof = r.get("host") or {}, r.get("profile") or {}
    facts = [esc(prof["description"]) if prof.get("description") else "",
             f'evaluation set: {esc(eval_set_text(r))}' if r.get("eval_set") else "",
             f'measured {esc(measured_text(r))}, session {esc(session_id(r))}',
             _host(host), esc(describe(r["host_load"])) if "host_load" in r and not r.get("skipped") else ""]
    out = ['<p class="sub"><a href="index.html">all targets of this run</a></p>',
           f'<h1>{esc(name)} {_badge(r)}</h1>'
           # beside the verdict: a pruned candidate's drop is pruning and INT8 together (bench item 7)
           + (f'<p><b>{esc(source_text(cand.get("source")))}</b></p>' if source_text(cand.get("source")) else "")
           + f'<p class="sub">{"<br>".join(f for f in facts if f)}</p>',
           _unreliable_box(r), _notes(r)]
    anomaly, detect, h = is_anomaly(r), r.get("task") == "detect", headline_figure(r)
    if r.get("skipped"):
        out.append(f'<p><b>Skipped:</b> {esc(r["skipped"])}</p>')
        if not anomaly or ref.get(h.key) is not None:
            out.append(f'<p>Reference {esc(h.label)}: {h.text(ref.get(h.key))}</p>')
        if detect:
            out.append(f"<h2>AP@0.5 per class</h2>{per_class_ap_table(r)}")
    else:
        rl, cl = ref.get("latency_ms") or {}, cand.get("latency_ms") or {}
        tm = cand.get("throughput_mode") or {}
        # An anomaly model is judged by how it ranks (AUROC) and decides (rates at the shipped
        # threshold); its top-1 as a 2-class "classifier" says less, so it is left out of its page.
        figures = [
            ("AUROC", num(ref.get("auroc"), 4), num(cand.get("auroc"), 4)),
            ("AUROC drop", "", num(cand.get("auroc_drop"), 4)),
            ("F1 (defect positive)", num(ref.get("f1"), 3), num(cand.get("f1"), 3)),
            ("false-reject rate (good images rejected)", pct(ref.get("false_reject_rate"), 2),
             pct(cand.get("false_reject_rate"), 2)),
            ("escape rate (defect images passed)", pct(ref.get("escape_rate"), 2), pct(cand.get("escape_rate"), 2)),
            ("decision agreement with reference", "", pct(cand.get("decision_agreement"), 2)),
            *_split_rows(cand),
            ("max score drift vs reference", "", num(cand.get("max_score_drift"), 4, " × threshold")),
            ("images: good / defect", "", f'{esc(cand.get("n_good", "–"))} / {esc(cand.get("n_defect", "–"))}'),
        ] if anomaly else [tuple(esc(v) for v in row)
                           for row in detect_rows(ref, cand, per_class=False)] if detect else [
            ("top-1", pct(ref.get("top1"), 2), pct(cand.get("top1"), 2)),
            ("balanced accuracy", pct(ref.get("balanced_accuracy"), 2), pct(cand.get("balanced_accuracy"), 2)),
            ("top-1 drop", "", num(cand.get("top1_drop"), 2, " points")),
            ("balanced accuracy drop", "", num(cand.get("balanced_accuracy_drop"), 2, " points")),
            *_chance_rows(cand),
            ("agreement with reference", "", pct(cand.get("agreement"), 2)),
            *_split_rows(cand)]
        rows = [("format / precision", f'{esc(ref.get("format"))} / {esc(ref.get("precision"))}',
                 f'{esc(cand.get("format"))} / {esc(precision_text(cand))}'),
                *figures,
                *((f"{k} latency", num(rl.get(k), 2, " ms"), num(cl.get(k), 2, " ms"))
                  for k in ("p50", "p95", "p99")),
                ("throughput, one batch at a time", num(ref.get("throughput_ips"), 1, " img/s"),
                 num(cand.get("throughput_ips"), 1, " img/s")),
                ("throughput at batch 1 (1000 / p50)", "", num(cand.get("batch1_ips"), 1, " img/s")),
                ("model size", num(ref.get("size_mb"), 2, " MB"), num(cand.get("size_mb"), 2, " MB"))]
        if tm:
            rows += [(f"throughput mode ({esc(tm.get('streams'))} streams, batch {esc(tm.get('batch'))})", "",
                      num(tm.get("images_per_s"), 1, " img/s")),
                     ("request latency under load, p50 / p95", "",
                      f"{num(tm['request_latency_ms']['p50'], 2, ' ms')} / "
                      f"{num(tm['request_latency_ms']['p95'], 2, ' ms')}")]
        if cand.get("model_rss_mb") is not None:
            rows += [("model memory (RSS growth over load + inference, fresh process)", "",
                      num(cand["model_rss_mb"], 0, " MB")),
                     ("peak RSS of a process running only this model", "", num(cand.get("peak_rss_mb"), 0, " MB"))]
        elif cand.get("peak_rss_mb") is not None:
            rows.append(("peak RSS (whole bench process)", "", num(cand.get("peak_rss_mb"), 0, " MB")))
        if cand.get("int8_speedup_over_float") is not None:
            rows.append(("INT8 speed-up over float, same backend", "",
                         num(cand["int8_speedup_over_float"], 2, "×")))
        if cand.get("precision_state"):
            ps = cand["precision_state"]
            rows.append(("layers in INT8", "", f"{esc(ps['int8_layers'])} of {esc(ps['layers'])}"))
        elif cand.get("float_layers"):
            fl = cand["float_layers"]
            rows.append(("layers kept in float", "", esc(len(fl) if isinstance(fl, (list, dict)) else fl)))
        body = "".join(f"<tr><td>{a}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in rows)
        out.append(f"<table><tr><th></th><th>reference</th><th>candidate</th></tr>{body}</table>")
        missing = missing_class_note(cand) if anomaly else None
        if missing:
            out.append(f'<div class="note">Not evaluated: {esc(missing)}.</div>')
        label = unreliable_label(r)
        mark = f' <span class="fail">(unreliable: {esc(label)})</span>' if label else ""
        spread = describe_spread(r.get("speedup_spread"))
        out.append(f'<p><b>Speed-up</b> (reference p50 / candidate p50): {num(r.get("speedup"), 2, "×")}{mark}'
                   + (f'<br><span class="sub">per timing block: {esc(spread)}</span>' if spread else "") + "</p>")
        out.append(f"<h2>Gates</h2>{gates_table([r], with_target=False)}")
        if detect:
            out.append(f"<h2>AP@0.5 per class</h2>{per_class_ap_table(r)}"
                       f"<h2>Detections on evaluation images</h2>"
                       f"{detections_grid_html(r.get('detect_plot'), list(r.get('classes') or []))}")
        if cand.get("agreement_curve"):
            gate = "min_decision_agreement" if anomaly else "min_agreement"
            unit = "× threshold" if anomaly else "logits"
            limit = ((r.get("profile") or {}).get("gates") or {}).get(gate)
            svg = agreement_margin_svg(cand["agreement_curve"], cand.get("answer_noise"), limit, unit)
            out.append(f'<figure>{svg}'
                       f'<figcaption>Agreement of the answers whose reference margin is at least m. Right of the '
                       f'noise line ({esc(cand.get("answer_noise_source") or "")}) are the confident answers '
                       "the agreement gate judges; left of it, near-ties (reported, not gated).</figcaption></figure>")
        out.append(transfer_html(r.get("transfer")))
        out.append(adaptation_html(r.get("adaptation")))
        out.append(ood_html(r.get("ood")))
        if anomaly:
            out.append(f"<h2>Anomaly scores</h2>{anomaly_figures(r.get('anomaly_plot'))}")
        pts, ref_top1 = _points([r], h.key)
        no_ref = ("" if rl else " Nothing was timed (--no-latency: accuracy only)."
                  if r.get("latency_measured") is False else " The reference latency was not measured on this host "
                  "(no torch).")
        scatter = _scatter(pts, ref_top1, report_task(r))
        out.append(f"<h2>Latency</h2><figure>{latency_svg(_lat_rows(r, PALETTE[0]))}"
                   f"<figcaption>{_LAT_CAPTION}{no_ref}</figcaption></figure>"
                   f"<figure>{scatter}<figcaption>Dot: p50; bar: p50 to p95."
                   "</figcaption></figure>")
        if tm:
            out.append(f'<p class="sub">Throughput mode: {esc(tm.get("mode"))}; {esc(tm.get("requests"))} requests '
                       f'of {esc(tm.get("batch"))} images in {num(tm.get("seconds"), 1, " s")}.</p>')
        if r.get("layers"):
            out.append(f"<h2>Where the time goes</h2>{layers_table(r['layers'])}")
        if cand.get("confusion"):
            # an anomaly report's 2x2 matrix is its decisions at the threshold (good/defect)
            recall = cand.get("per_class_recall") or {}
            out.append(f'<h2>Candidate confusion matrix</h2><div class="grid"><figure>'
                       f'{confusion_svg(cand["confusion"], r.get("classes") or [], name)}</figure>'
                       "<table><tr><th>class</th><th>recall</th></tr>"
                       + "".join(f"<tr><td>{esc(c)}</td><td>{pct(v, 1)}</td></tr>" for c, v in recall.items())
                       + "</table></div>")
    sections = (("host", host), ("versions", r.get("versions")), ("target profile", prof))
    details = [f"<details><summary>{label}</summary>{_kv(d)}</details>" for label, d in sections if d]
    if details:
        out.append("<h2>Details</h2>" + "".join(details))
    return _page(f"edge-tl bench: {name}", "".join(out))


def _scatter(pts: list[dict[str, Any]], ref_value: float | None, task: str) -> str:
    """The headline figure (:func:`.labels.headline_figure`) against latency."""
    h = headline_figure(task)
    if h.key == "top1":
        return scatter_svg(pts, ref_value)
    return scatter_svg(pts, ref_value, f"{h.label} vs latency", metric=h.label)


def per_class_ap_table(r: dict[str, Any]) -> str:
    """A detection report's AP@0.5 per class: ground-truth boxes in the evaluation set, the reference's and
    the candidate's AP and the change (points); "no box" where the set holds no box of the class."""
    ref_ap = (r.get("reference") or {}).get("per_class_ap50") or {}
    cand_ap = (r.get("candidate") or {}).get("per_class_ap50") or {}
    boxes = (r.get("detect_plot") or {}).get("boxes_per_class") or {}
    classes = list(dict.fromkeys([*(r.get("classes") or []), *ref_ap, *cand_ap]))
    if not classes:
        return '<p class="sub">No per-class figures in this report.</p>'

    def ap(table: dict[str, Any], c: str) -> str:
        return "–" if c not in table else "no box" if table[c] is None else num(table[c], 3)

    rows = []
    for c in classes:
        a, b = ref_ap.get(c), cand_ap.get(c)
        change = num(100 * (b - a), 2) if a is not None and b is not None else "–"
        rows.append(f"<tr><td>{esc(c)}</td><td>{esc(boxes.get(c, '–'))}</td><td>{ap(ref_ap, c)}</td>"
                    f"<td>{ap(cand_ap, c)}</td><td>{change}</td></tr>")
    return ("<table class='per-class-ap'><tr><th>class</th><th>ground-truth boxes</th><th>reference AP@0.5</th>"
            "<th>candidate AP@0.5</th><th>change [points]</th></tr>" + "".join(rows) + "</table>")


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
    return (f'<h2>Out-of-distribution score</h2><p><b>{pct(ood.get("share_flagged"))}</b> of the {ood["n"]} '
            f'images of {esc(ood.get("data"))} score above the limit {limit_text(ood["limit"])} (<span class="sub">'
            f'{esc(ood.get("limit_source"))}</span>): the runtime sends them to review as out_of_distribution. '
            f'The score is fitted on {esc(ood.get("fitted_on"))}.</p><figure>{fig}{note}</figure>')


def adaptation_html(adaptation: dict[str, Any] | None) -> str:
    """For a model adapted to a new line: method, unlabelled set, and source-only vs adapted accuracy on
    the labelled target images given with ``--target-val`` (report only)."""
    if not adaptation:
        return ""
    u = adaptation.get("unlabeled") or {}
    out = (f'<h2>Adaptation</h2><p>Adapted with <b>{esc(adaptation.get("method"))}</b> on '
           f'{esc(u.get("n_images"))} unlabelled images of {esc(u.get("root"))}.</p>')
    rep = adaptation.get("report")
    if not rep:
        return out + ('<p class="sub">No labelled target images were given (--target-val): no accuracy on the '
                      'new line.</p>')
    rows = "".join(f'<tr><td>{name}</td><td>{pct(rep[k].get("top1"), 2)}</td>'
                   f'<td>{pct(rep[k].get("balanced_accuracy"), 2)}</td></tr>'
                   for k, name in (("source", "source only"), ("adapted", "adapted")) if rep.get(k))
    return out + (f'<table><tr><th>on {esc(rep.get("n_images"))} labelled images of {esc(rep.get("root"))}</th>'
                  f'<th>top-1</th><th>balanced accuracy</th></tr>{rows}</table>'
                  f'<p class="sub">{esc(rep.get("note"))}</p>')


def transfer_html(transfer: dict[str, Any] | None) -> str:
    """Where the backbone came from and, with ``finetune --baseline scratch``, whether transfer helped:
    top-1 and balanced accuracy against the same architecture trained from random weights, per class."""
    if not transfer:
        return ""
    names = {"imagenet": "ImageNet", "none": "random initialisation", "file": "state_dict file", "run": "edge-tl run"}
    chain = " ← ".join(f'{esc(names.get(s.get("kind"), s.get("kind")))}'
                       + (f' <span class="sub">{esc(s["path"])}</span>' if s.get("kind") in ("run", "file") else "")
                       for s in transfer.get("sources") or [])
    out = f"<h2>Transfer</h2><p>Backbone: this model ← {chain}</p>"
    b = transfer.get("baseline")
    if b:
        verdict = "helped" if b.get("transfer_helped") else "did NOT help (negative transfer)"
        out += (f'<p>Against the same architecture trained from random weights (same split, mode, epochs, seed): '
                f'top-1 {pct(b.get("val_top1"), 2)} from scratch, gain {num(100 * b["transfer_gain_top1"], 2)} '
                f'points; balanced accuracy gain {num(100 * b["transfer_gain_balanced_accuracy"], 2)} points: '
                f'<b class="{"pass" if b.get("transfer_helped") else "fail"}">transfer {verdict}</b>.</p>')
        gains = b.get("per_class_gain") or {}
        if gains:
            rows = "".join(f"<tr><td>{esc(c)}</td><td>{num(None if g is None else 100 * g, 2)}</td></tr>"
                           for c, g in gains.items())
            out += f"<table><tr><th>class</th><th>recall gain over scratch [points]</th></tr>{rows}</table>"
    return out


def layers_table(layers: dict[str, Any]) -> str:
    """The top layers of a ``bench --layers`` profile: time per call, share, kernel and precision."""
    if layers.get("error"):
        return f'<p class="sub">{esc(layers["error"])}</p>'
    shares = ", ".join(f"{esc(k)} {100 * v:.0f} %" for k, v in (layers.get("by_precision") or {}).items())
    rows = "".join(f"<tr><td>{esc(r['name'])}</td><td>{esc(r['type'])}</td><td>{esc(r['kernel'])}</td>"
                   f"<td>{esc(r['precision'])}</td><td>{num(r['ms'], 3, ' ms')}</td><td>{pct(r['share'])}</td></tr>"
                   for r in layers.get("top") or [])
    return (f'<p class="sub">{esc(layers["tool"])}; {esc(layers["n_layers"])} layers, '
            f'{num(layers["total_ms"], 3, " ms")} '
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
    key = headline_figure(_group_task(group)).key
    if key != "top1":  # anomaly and detect sets get their figure's keys: classifier data stays as it was
        values = [(r.get("reference") or {}).get(key) for r in group]
        values = [a for a in values if a is not None]
        facts |= {f"reference_{key}": values[0] if values else None,
                  f"reference_{key}_consistent": len({round(a, 6) for a in values}) <= 1}
    return facts


def _group_task(group: list[dict[str, Any]]) -> str:
    """The task of one evaluation set's reports (one run is one task): a skipped row of an anomaly run may
    lack ``task``, so any anomaly (or detect) row decides."""
    tasks = {report_task(r) for r in group}
    return next((t for t in ("anomaly", "detect") if t in tasks), "classification")


def _link(r: dict[str, Any]) -> str:
    return str(r.get("_file") or f"{r['target']}.json")[:-5] + ".html"


def _index_group(group: list[dict[str, Any]], k: int, n_groups: int) -> list[str]:
    ran = [r for r in group if not r.get("skipped") and r.get("candidate")]
    facts = _group_facts(group)
    task = _group_task(group)
    anomaly, detect, h = task == "anomaly", task == "detect", headline_figure(task)
    # The first figure is the task's headline (labels.headline_figure), the others what its gates read.
    metric_heads = f"<th>{esc(h.label)}</th>" + (
        "<th>AUROC drop</th><th>F1</th><th>false reject</th><th>escape</th><th>decision agreement</th>" if anomaly
        else "<th>mAP@0.5:0.95</th><th>drop</th><th>box agreement</th>" if detect
        else "<th>bal. acc.</th><th>drop</th><th>agreement</th>")
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
        link = f'<a href="{esc(_link(r))}">{esc(r["target"])}</a>'
        if r.get("skipped"):
            rows.append(f"<tr><td>{link}</td><td class=verdict>{_status(r)}</td>"
                        f"<td class=reason colspan={n_figures}>{esc(r['skipped'])}</td></tr>")
            continue
        fmt = f'{esc(c["format"])} / {esc(precision_text(c))}' if c.get("format") else "–"
        label = unreliable_label(r)
        warn = (f'<br><span class="fail mark" title="{esc("; ".join(r.get("unreliable_reasons") or []))}">'
                f"⚠ unreliable: {esc(label)}</span>") if label else ""
        tm = (c.get("throughput_mode") or {}).get("images_per_s")
        when = (f'{esc(measured_text(r))}<br><span class="sub">{esc(session_id(r))}</span><br>'
                f'{esc(load_short(r.get("host_load")))}')
        metrics = f"<td>{h.text(c.get(h.key))}</td>" + (
            f"<td>{num(c.get('auroc_drop'), 4)}</td>"
            f"<td>{num(c.get('f1'), 3)}</td><td>{pct(c.get('false_reject_rate'), 2)}</td>"
            f"<td>{pct(c.get('escape_rate'), 2)}</td><td>{pct(c.get('decision_agreement'), 2)}</td>"
            if anomaly else
            f"<td>{num(c.get('map50_95'), 3)}</td><td>{num(c.get('map50_drop'), 2, ' pts')}</td>"
            f"<td>{pct(c.get('box_agreement'), 2)}</td>"
            if detect else
            f"<td>{pct(c.get('balanced_accuracy'), 2)}</td>"
            f"<td>{num(c.get('top1_drop'), 2, ' pts')}</td><td>{pct(c.get('agreement'), 2)}</td>")
        rows.append(f"<tr><td>{link}</td><td class=verdict>{_status(r)}</td><td class='st fmt'>{fmt}</td>{metrics}"
                    f"<td>{num(lat.get('p50'), 2, ' ms')}</td><td>{num(lat.get('p95'), 2, ' ms')}</td>"
                    f"<td>{num(r.get('speedup'), 2, '×')}{warn}</td><td>{num(tm, 0, ' img/s')}</td>"
                    f"<td>{num(c.get('size_mb'), 2, ' MB')}</td><td class='st when'>{when}</td></tr>")
    title = eval_set_text(group[0])
    ref_line = (f"reference: full model, torch fp32, {h.label} {h.text(facts[f'reference_{h.key}'])} on this "
                "evaluation set" + ("" if facts[f"reference_{h.key}_consistent"] else
                                    " (the rows' reports disagree on it: the reference model changed between benches)"))
    out = [f'<section class="evalset" data-eval-set="{esc(eval_set_key(group[0]))}">'
           f"<h2>Evaluation set {k} of {n_groups}: {esc(title)}</h2>"
           f"<p class='sub reference-top1'>{esc(ref_line)} · {len(group)} target(s), {len(ran)} measured</p>"]
    if facts["mixed_sessions"]:
        out.append(f'<div class="note sessions">These rows come from {len(facts["sessions"])} different bench '
                   f'sessions ({esc(", ".join(facts["sessions"]))}): their timings were taken at different times '
                   "and host loads (see each row); compare latencies across sessions with care.</div>")
    # A busy row's own UNRELIABLE TIMING note (below the table) already says so, with the reasons.
    said = {r["target"] for r in group if any(str(n).startswith(_UNRELIABLE_NOTE) for n in r.get("notes") or [])}
    busy = [t for t in facts["busy_rows"] if t not in said]
    if busy:
        out.append(f'<div class="note">Timed on a busy host: {esc(", ".join(busy))}.</div>')
    out.append(f"<div class=wide><table>{head}{''.join(rows)}</table></div>")
    out.append("".join(f'<div class="note"><b>{esc(r["target"])}</b>: {esc(n)}</div>'
                       for r in group for n in r.get("notes") or []))
    if ran:
        lat_rows = [row for i, r in enumerate(ran)
                    for row in _lat_rows(r, PALETTE[i % len(PALETTE)], r["target"])]
        pts, ref_value = _points(ran, h.key)
        what = "Top-1" if h.key == "top1" else h.label
        scatter = _scatter(pts, ref_value, task)
        out.append(f"<h3>Latency distribution</h3><figure>{latency_svg(lat_rows)}<figcaption>{_LAT_CAPTION} "
                   "Each target's grey row is the reference timed in the same bench run."
                   "</figcaption></figure>"
                   f"<h3>{'Accuracy' if h.key == 'top1' else esc(h.label)} vs latency</h3><figure>{scatter}"
                   f"<figcaption>{esc(what)} on "
                   "this evaluation set only; the reference ◆ sits at the median of its timings across the benches."
                   "</figcaption></figure>")
    out.append("</section>")
    return out


def render_index(reports: list[dict[str, Any]], title: str) -> str:
    """The per-run page: one section per evaluation set (its own table, the reference's headline figure:
    top-1, AUROC or mAP@0.5, and plots; each row with its date, bench session and host load), then gates
    and confusion matrices."""
    ran = [r for r in reports if not r.get("skipped") and r.get("candidate")]
    groups = group_reports(reports)
    first = reports[0] if reports else {}
    facts = [f"{len(reports)} report(s), {len(ran)} measured, on {len(groups)} evaluation set(s)",
             _host(first.get("host") or {})]
    out = [f"<h1>{esc(title)}</h1><p class='sub'>{' · '.join(f for f in facts if f)}</p>"]
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
    """The run index as data: one entry per evaluation set, its ``headline`` figure (top-1, AUROC or mAP@0.5:
    ``labels.headline_figure``), reference top-1 (and AUROC or mAP@0.5 for an anomaly or detection run),
    sessions and rows (each with its ``headline`` value; anomaly rows with their AUROC and decision figures,
    detection rows with their mAP and box agreement)."""
    sets = []
    for group in group_reports(reports):
        facts = _group_facts(group)
        h = headline_figure(_group_task(group))
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
            rows[-1]["headline"] = c.get(h.key)  # the set's ``headline`` figure of this row
            if is_anomaly(r):  # what an anomaly row is judged by; classifier rows keep their old keys only
                rows[-1] |= {"task": "anomaly"} | {k: c.get(k) for k in (
                    "auroc", "auroc_drop", "f1", "false_reject_rate", "escape_rate", "decision_agreement",
                    "max_score_drift", "n_good", "n_defect")}
            elif r.get("task") == "detect":
                rows[-1] |= {"task": "detect"} | {k: c.get(k) for k in (
                    "map50", "map50_95", "map50_drop", "box_agreement", "box_agreement_confident",
                    "per_class_ap50")}
        ident = group[0].get("eval_set")
        sets.append({"eval_set": ident if isinstance(ident, dict) else {"path": ident},
                     "eval_set_text": eval_set_text(group[0]), "headline": {"figure": h.label, "key": h.key},
                     **facts, "rows": rows})
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
            parse_report(data, path)  # a report that does not fit the model is named here, not half-drawn
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
