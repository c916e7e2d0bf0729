"""Report text: the Markdown report, console lines and the summary table (the files are written by
``bench.writer``)."""

from __future__ import annotations

from typing import Any

from .hostload import describe, describe_spread, unreliable_label
from .labels import eval_set_text, headline_figure, host_text, load_short, measured_text, precision_text, session_id


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def is_anomaly(report: dict[str, Any]) -> bool:
    """True for a good-only anomaly report; reports written before the ``task`` key are classifiers."""
    return report.get("task") == "anomaly"


def anomaly_rows(ref: dict[str, Any], cand: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, reference, candidate) rows of an anomaly report: what its gates and users judge it by."""
    return [
        ("AUROC", _fmt(ref.get("auroc"), 4), _fmt(cand.get("auroc"), 4)),
        ("AUROC drop", "", _fmt(cand.get("auroc_drop"), 4)),
        ("F1 (defect positive)", _fmt(ref.get("f1")), _fmt(cand.get("f1"))),
        ("false-reject rate (good rejected)", _fmt(ref.get("false_reject_rate"), 4),
         _fmt(cand.get("false_reject_rate"), 4)),
        ("escape rate (defects passed)", _fmt(ref.get("escape_rate"), 4), _fmt(cand.get("escape_rate"), 4)),
        ("decision agreement", "", _fmt(cand.get("decision_agreement"), 4)),
        ("max score drift (× threshold)", "", _fmt(cand.get("max_score_drift"), 4)),
        ("images: good / defect", "", f"{_fmt(cand.get('n_good'))} / {_fmt(cand.get('n_defect'))}"),
    ]


def detect_rows(ref: dict[str, Any], cand: dict[str, Any], per_class: bool = True) -> list[tuple[str, str, str]]:
    """(figure, reference, candidate) rows of a detection report: mAP, the drop, box agreement and (with
    ``per_class``) AP@0.5 per class."""
    ref_ap, cand_ap = (ref.get("per_class_ap50") or {}, cand.get("per_class_ap50") or {}) if per_class else ({}, {})

    def ap(table: dict[str, Any], c: str) -> str:
        return "" if c not in table else "no box" if table[c] is None else _fmt(table[c])

    rows = [("mAP@0.5", _fmt(ref.get("map50")), _fmt(cand.get("map50"))),
            ("mAP@0.5:0.95", _fmt(ref.get("map50_95")), _fmt(cand.get("map50_95"))),
            ("mAP@0.5 drop (points)", "", _fmt(cand.get("map50_drop"), 2)),
            ("box agreement (IoU >= 0.5, same class)", "", _fmt(cand.get("box_agreement"), 4)),
            ("box agreement, reference boxes scoring >= 0.3", "", _fmt(cand.get("box_agreement_confident"), 4))]
    held = cand.get("held_out")
    if held:  # an INT8 target: the images its float layers were not chosen on, which the gate judges
        rows += [(f"held out ({held['n']} images not chosen on): mAP@0.5", _fmt(held.get("reference_map50")),
                  _fmt(held.get("map50"))),
                 ("held out: mAP@0.5 drop (points, gated)", "", _fmt(held.get("map50_drop"), 2)),
                 ("held out: box agreement", "", _fmt(held.get("box_agreement"), 4)),
                 ("held out: box agreement, boxes scoring >= 0.3 (gated)", "",
                  _fmt(held.get("box_agreement_confident"), 4))]
    if cand.get("float_same_backend_p50_ms") is not None:
        rows.append(("p50 ms: fp32 graph / INT8, same backend (alternating blocks)", "",
                     f"{_fmt(cand['float_same_backend_p50_ms'], 2)} / {_fmt(cand.get('int8_same_backend_p50_ms'), 2)}"
                     f" (INT8 {_fmt(cand.get('int8_speedup_over_float'), 2)}× fp32 speed)"))
    return rows + [(f"AP@0.5: {c}", ap(ref_ap, c), ap(cand_ap, c)) for c in dict.fromkeys([*ref_ap, *cand_ap])]


def missing_class_note(cand: dict[str, Any]) -> str | None:
    """Why some anomaly figures are "–": an evaluation set without defect (or good) images."""
    if cand.get("n_defect") == 0:
        return "no defect image in the evaluation set: AUROC, F1 and the escape rate cannot be computed"
    if cand.get("n_good") == 0:
        return "no good image in the evaluation set: AUROC and the false-reject rate cannot be computed"
    return None


def source_text(source: dict[str, Any] | None, short: bool = False) -> str | None:
    """"candidate from prune (30 % of channels removed); the pruned float model alone: top-1 drop 1.20
    points vs the reference (from ...)", or None for a candidate of the full fine-tuned model. Every
    comparison is with the full model, so a pruned candidate's drop is pruning and INT8 together.
    ``short``: "from prune (pruned float model: top-1 drop 1.20 points)" for a table cell."""
    if not source or source.get("stage") in (None, "finetune"):
        return None
    drop = source.get("float_top1_drop")
    if short:
        return f"from {source['stage']}" + ("" if source["stage"] != "prune" else
                                           " (pruned float model: top-1 drop not known)" if drop is None else
                                           f" (pruned float model: top-1 drop {drop:.2f} points)")
    text = f"candidate from {source['stage']}"
    if source["stage"] != "prune":
        return text
    if source.get("ratio") is not None:
        text += f" ({100 * source['ratio']:.0f} % of channels removed)"
    return text + ("; the pruned float model alone: top-1 drop not known" if drop is None else
                   f"; the pruned float model alone: top-1 drop {drop:.2f} points vs the reference "
                   f"(from {source.get('float_from')})")


def not_measured(report: dict[str, Any]) -> list[str]:
    """The gates a bench did not measure (a latency gate under ``--no-latency``)."""
    return [g["name"] for g in report.get("gates") or [] if g.get("passed") is None]


def verdict_text(report: dict[str, Any], upper: bool = False) -> str:
    """"passed", "FAILED", or "passed (max_p95_ms not measured)": a gate not measured is neither.
    ``upper``: "PASSED" for the Markdown page's closing line."""
    verdict = ("PASSED" if upper else "passed") if report.get("passed") else "FAILED"
    missing = not_measured(report)
    return verdict + (f" ({', '.join(missing)} not measured)" if missing else "")


def headline(report: dict[str, Any]) -> str:
    """One console line of a report: its headline figure (``labels.headline_figure``) against the
    reference's and the figures a decision rests on beside it (anomaly: decision, false-reject and escape
    rates; detection: the mAP@0.5 drop and box agreement)."""
    ref, cand = report.get("reference") or {}, report.get("candidate") or {}
    if report.get("skipped"):
        return f"{report['target']}: skipped: {report['skipped']}"

    def pct(v: Any) -> str:
        return "–" if v is None else f"{100 * v:.2f} %"

    h = headline_figure(report)
    extra = (f"decision agreement {pct(cand.get('decision_agreement'))}, false-reject "
             f"{pct(cand.get('false_reject_rate'))}, escape {pct(cand.get('escape_rate'))}" if is_anomaly(report) else
             f"mAP@0.5 drop {_fmt(cand.get('map50_drop'), 2)} points, box agreement "
             f"{pct(cand.get('box_agreement'))}" if report.get("task") == "detect" else
             f"drop {_fmt(cand.get(h.drop_key), 2)} points, agreement {pct(cand.get('agreement'))}")
    return (f"{report['target']}: {h.label} {h.text(cand.get(h.key))} (reference {h.text(ref.get(h.key))}), "
            f"{extra}, {verdict_text(report)}")


def markdown(report: dict[str, Any]) -> str:
    """A Markdown table of one report (reference vs candidate) plus its gates."""
    ref, cand = report["reference"], report.get("candidate") or {}
    if report.get("skipped"):
        return f"# {report['target']}\n\nSkipped: {report['skipped']}\n"
    anomaly = is_anomaly(report)
    rl, cl = ref.get("latency_ms") or {}, cand.get("latency_ms") or {}
    tm = cand.get("throughput_mode") or {}
    # An anomaly model's top-1 is its thresholded decision as a 2-class "classifier": the AUROC and
    # decision rates say the same more usefully, so they take the top-1 rows' place.
    detect = report.get("task") == "detect"
    figures = anomaly_rows(ref, cand) if anomaly else detect_rows(ref, cand) if detect else [
        ("top-1", _fmt(ref.get("top1")), _fmt(cand.get("top1"))),
        ("balanced accuracy", _fmt(ref.get("balanced_accuracy")), _fmt(cand.get("balanced_accuracy"))),
        ("top-1 drop (points)", "", _fmt(cand.get("top1_drop"), 2)),
        ("balanced accuracy drop (points)", "", _fmt(cand.get("balanced_accuracy_drop"), 2)),
        ("agreement", "", _fmt(cand.get("agreement"), 4))]
    if "agreement_confident" in cand:  # issue 26: the split by the reference's margin (absent in older reports)
        figures += [("agreement, confident answers (gated)", "",
                     f"{_fmt(cand.get('agreement_confident'), 4)} of {_fmt(cand.get('confident_n'))}"),
                    ("near-ties: share / agreement", "",
                     f"{_fmt(cand.get('near_tie_share'), 4)} / {_fmt(cand.get('near_tie_agreement'), 4)}"),
                    ("answer noise", "", _fmt(cand.get("answer_noise"), 4))]
    chance = cand.get("top1_drop_from_noise")
    if chance:
        lo, hi = chance["interval"]
        figures.append(("top-1 drop from noise alone (redealt at random)", "",
                        f"{chance['mean']:.2f} ({lo:.2f} to {hi:.2f}); p = {chance['p_value']:.2f}"))
    rows = [
        ("format / precision", f"{ref['format']} / {ref['precision']}", f"{cand['format']} / {precision_text(cand)}"),
        *figures,
        ("p50 ms", _fmt(rl.get("p50"), 2), _fmt(cl.get("p50"), 2)),
        ("p95 ms", _fmt(rl.get("p95"), 2), _fmt(cl.get("p95"), 2)),
        ("p99 ms", _fmt(rl.get("p99"), 2), _fmt(cl.get("p99"), 2)),
        ("throughput img/s (one batch at a time)", _fmt(ref.get("throughput_ips"), 1),
         _fmt(cand.get("throughput_ips"), 1)),
        ("img/s at batch 1 (1000 / p50)", "", _fmt(cand.get("batch1_ips"), 1)),
        ("size MB", _fmt(ref.get("size_mb"), 2), _fmt(cand.get("size_mb"), 2)),
    ]
    if tm:
        rows += [(f"throughput mode img/s ({tm['streams']} streams, batch {tm['batch']})", "",
                  _fmt(tm.get("images_per_s"), 1)),
                 ("throughput mode: request latency p50 / p95 ms", "",
                  f"{_fmt(tm['request_latency_ms']['p50'], 2)} / {_fmt(tm['request_latency_ms']['p95'], 2)}")]
    if cand.get("model_rss_mb") is not None:
        rows += [("model memory MB (RSS growth: load + inference, fresh process)", "", _fmt(cand["model_rss_mb"], 0)),
                 ("peak RSS MB of a process running only this model", "", _fmt(cand.get("peak_rss_mb"), 0))]
    # Per-class recall, with a class that has no evaluation image shown as such: its recall is not 0
    # and not fine, it is unknown, and the gates above say nothing about it.
    ref_recall, cand_recall = ref.get("per_class_recall") or {}, cand.get("per_class_recall") or {}
    # good/defect recall of an anomaly report is 1 - false-reject / 1 - escape rate, shown above
    classes = [] if anomaly or detect else list(report.get("classes") or cand_recall or ref_recall)
    unevaluated = [c for c in classes if c in cand_recall and cand_recall[c] is None]

    def recall(table: dict[str, Any], c: str) -> str:
        if c not in table:
            return ""
        return "not evaluated" if table[c] is None else _fmt(table[c])

    rows += [(f"recall: {c}", recall(ref_recall, c), recall(cand_recall, c)) for c in classes]
    came = source_text(cand.get("source"))
    lines = [f"# {report['target']}", "", f"Evaluation set: {eval_set_text(report)}.",
             *([f"Reference: {ref['model']}."] if ref.get("model") else []),
             *([f"{came[0].upper()}{came[1:]}."] if came else []),
             f"Measured: {measured_text(report)}, session {session_id(report)}; host load "
             f"{load_short(report.get('host_load'))}; host {host_text(report)}.", "",
             "| | reference | candidate |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if unevaluated:
        lines += ["", f"**Not evaluated:** {', '.join(unevaluated)} (no evaluation image: too few images to hold "
                  "one out); every figure and gate here covers the other classes only."]
    missing = missing_class_note(cand) if anomaly else None
    if missing:
        lines += ["", f"**Not evaluated:** {missing}."]
    label = unreliable_label(report)
    mark = f" (unreliable: {label})" if label else ""
    if report.get("latency_measured") is False:
        lines += ["", "**speedup**: not measured (--no-latency: accuracy only, nothing timed)", ""]
    else:
        shared = (ref.get("latency_shared") or {}).get("timed_with")
        mark += f" (reference timed once, with {shared}, and shared)" if shared else ""
        lines += ["", f"**speedup** (reference p50 / candidate p50): {_fmt(report.get('speedup'), 2)}×{mark}", ""]
    if label:
        # The console prints this page: say it next to the speedup, not only in the notes below.
        why = "; ".join(report.get("unreliable_reasons") or (report.get("host_load") or {}).get("reasons") or [])
        lines += [f"**UNRELIABLE: {label}** ({why})", ""]
    if describe_spread(report.get("speedup_spread")):
        lines += [f"Speedup per timing block ({describe_spread(report['speedup_spread'])}).", ""]
    if report.get("timing"):
        lines += [f"Timing: {report['timing']}.", ""]
    if tm:
        lines += [f"Throughput mode: {tm['mode']}.", ""]
    lay = report.get("layers")
    if lay:
        lines += [layers_text(lay), ""]
    if "host_load" in report and report.get("latency_measured") is not False:  # nothing timed, no load
        lines += [describe(report["host_load"]), ""]
    lines += ["| gate | limit | value | passed |", "|---|---|---|---|"]
    # AUROC drops of 0.0025 vs a 0.01 limit need the 4th digit; classifier gates keep 3
    digits = {"max_auroc_drop": 4, "min_decision_agreement": 4}
    lines += [f"| {g['name']} | {_fmt(g['limit'], digits.get(g['name'], 3))} | "
              f"{_fmt(g['value'], digits.get(g['name'], 3))} | "
              f"{'not measured' if g['passed'] is None else 'yes' if g['passed'] else '**NO**'} |"
              for g in report["gates"]]
    for note in report.get("notes", []):
        lines.append(f"\n> {note}")
    verdict = verdict_text(report, upper=True)
    if unevaluated:
        verdict += f" (not evaluated: {', '.join(unevaluated)})"
    # The verdict of a pruned candidate is pruning and INT8 together: say so beside it.
    lines.append(f"\n**{verdict}**" + (f" ({came})" if came else "") + "\n")
    return "\n".join(lines)


def layers_text(layers: dict[str, Any]) -> str:
    """Where one batch-1 call's time goes: the top layers with their share and precision."""
    if layers.get("error"):
        return f"Per-layer timings: {layers['error']}."
    shares = ", ".join(f"{k} {100 * v:.0f} %" for k, v in (layers.get("by_precision") or {}).items())
    lines = [f"Where the time goes ({layers['tool']}; {layers['n_layers']} layers, "
             f"{layers['total_ms']:.3f} ms per call in all; by precision: {shares}):", "",
             "| layer | type | kernel | precision | ms | share |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['type']} | {r['kernel']} | {r['precision']} | {r['ms']:.3f} | "
              f"{100 * r['share']:.1f} % |" for r in layers.get("top") or []]
    return "\n".join(lines)


def summary_table(reports: list[dict[str, Any]]) -> str:
    """One Markdown row per target, for ``bench --all-targets`` and the benchmark script: each row says
    its precision (the INT8 graph's real state), evaluation set, date and host load. Anomaly reports get
    a table of their own, with AUROC and decision rates where classifiers show top-1."""
    if any(r.get("task") == "detect" for r in reports):  # one run's reports: a detector's have no top-1
        return _summary(reports, anomaly=False, detect=True)
    anomaly = [r for r in reports if is_anomaly(r)]
    if not anomaly:
        return _summary(reports, anomaly=False)
    # A skipped report of an anomaly run may lack ``task`` (written before any figure was measured):
    # it belongs with the anomaly rows unless real classifier rows are there too.
    classifier = [r for r in reports if not is_anomaly(r) and not r.get("skipped")]
    if not classifier:
        return _summary(reports, anomaly=True)
    rest = [r for r in reports if not is_anomaly(r)]
    return _summary(rest, anomaly=False) + "\n\n" + _summary(anomaly, anomaly=True)


def _summary(reports: list[dict[str, Any]], anomaly: bool, detect: bool = False) -> str:
    sets = {eval_set_text(r) for r in reports}
    head = ("| target | precision | top-1 | bal. acc. | drop | agreement | p50 ms | p95 ms | speedup | "
            "img/s (throughput mode) | size MB | measured | host load | passed |")
    if anomaly:
        head = head.replace("| top-1 | bal. acc. | drop | agreement |", "| AUROC | AUROC drop | F1 | false reject "
                            "| escape | decision agreement | max score drift |")
    if detect:
        head = head.replace("| top-1 | bal. acc. | drop | agreement |",
                            "| mAP@0.5 | mAP@0.5:0.95 | drop | box agreement |")
    lines = []
    if len(sets) == 1:
        lines += [f"Evaluation set: {sets.pop()}", ""]
    else:
        head = head.replace("| passed |", "| evaluation set | passed |")
    lines += [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in reports:
        c = r.get("candidate") or {}
        lat = c.get("latency_ms") or {}
        status = f"skipped: {r['skipped']}" if r.get("skipped") else ("yes" if r["passed"] else "NO")
        extra = [] if r.get("skipped") else [t for t in (source_text(c.get("source"), short=True),
                                                         *(f"{n} not measured" for n in not_measured(r))) if t]
        status += f" ({'; '.join(extra)})" if extra else ""
        label = unreliable_label(r)
        speedup = _fmt(r.get("speedup"), 2) + (f" (UNRELIABLE: {label})" if label else "")
        tm = (c.get("throughput_mode") or {}).get("images_per_s")
        figures = ([_fmt(c.get("auroc"), 4), _fmt(c.get("auroc_drop"), 4), _fmt(c.get("f1")),
                    _fmt(c.get("false_reject_rate"), 4), _fmt(c.get("escape_rate"), 4),
                    _fmt(c.get("decision_agreement"), 4), _fmt(c.get("max_score_drift"), 4)] if anomaly else
                   [_fmt(c.get("map50")), _fmt(c.get("map50_95")), _fmt(c.get("map50_drop"), 2),
                    _fmt(c.get("box_agreement"), 4)] if detect else
                   [_fmt(c.get("top1")), _fmt(c.get("balanced_accuracy")), _fmt(c.get("top1_drop"), 2),
                    _fmt(c.get("agreement"), 4)])
        cells = [r["target"], precision_text(c) if c else "–", *figures, _fmt(lat.get("p50"), 2),
                 _fmt(lat.get("p95"), 2), speedup, _fmt(tm, 0), _fmt(c.get("size_mb"), 2),
                 "–" if r.get("skipped") else measured_text(r),
                 "–" if r.get("skipped") else load_short(r.get("host_load"))]
        if "evaluation set" in head:
            cells.append(eval_set_text(r))
        lines.append("| " + " | ".join([*cells, status]) + " |")
    hosts = sorted({host_text(r) for r in reports if not r.get("skipped")})
    if hosts:
        lines += ["", "Host: " + "; ".join(hosts) + "."]
    return "\n".join(lines)
