"""Bench reports of a good-only anomaly run (issue 13): AUROC and decision rates where a classifier
shows top-1, a score histogram with the threshold, a ROC curve and heat-map overlays; classifier
reports render as before."""

from __future__ import annotations

import base64
import copy
import html
import io
import json
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_tl.bench.charts import roc_curve
from edge_tl.bench.html import index_json, render_html, render_index
from edge_tl.bench.report import markdown, summary_table
from edge_tl.metrics import auroc, decision_metrics

from .test_html import _latency, parse, skipped_report, synthetic_report

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def red_png() -> str:
    """A 2x2 red PNG as a data URI, like the overlays ``bench.anomaly_plot.plot_data`` inlines."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (255, 0, 0)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def scores(seed: int, n_good: int = 40, n_defect: int = 25) -> tuple[list[float], list[float]]:
    """Normalised scores that overlap around the threshold, with a tie across the classes (the AUROC
    must count it half) and a defect that escapes."""
    rng = random.Random(seed)
    good = [round(rng.gauss(0.6, 0.2), 5) for _ in range(n_good)]
    defect = [round(rng.gauss(1.7, 0.6), 5) for _ in range(n_defect)]
    if good and defect:
        good[0] = defect[0] = 0.95
    return good, defect


def anomaly_report(target: str = "cpu-openvino-int8", seed: int = 0, n_good: int = 40, n_defect: int = 25,
                   heatmaps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A report shaped like ``bench_target``'s for an anomaly run: a classifier report's fields plus
    ``task``, the anomaly figures (computed from the plotted scores) and ``anomaly_plot``."""
    rng = random.Random(seed)
    r = synthetic_report(target, classes=["good", "defect"], seed=seed)
    good, defect = scores(seed, n_good, n_defect)
    labels = np.array([0] * len(good) + [1] * len(defect))
    s = np.array(good + defect)
    cand = decision_metrics(s, labels)
    # the reference scores a little differently: a slightly better ranking, same decisions but one
    ref = decision_metrics(s + np.where(labels == 1, 0.01, -0.01), labels)
    drop = ref["auroc"] - cand["auroc"] if cand["auroc"] is not None and ref["auroc"] is not None else None
    fr = cand["false_reject_rate"] or 0.0
    esc = cand["escape_rate"] or 0.0
    r["task"] = "anomaly"
    r["reference"] |= {k: ref[k] for k in ("auroc", "f1", "false_reject_rate", "escape_rate")}
    r["candidate"] |= cand | {
        "decision_agreement": 0.9846, "max_score_drift": 0.0312, "auroc_drop": drop,
        "confusion": [[round(len(good) * (1 - fr)), round(len(good) * fr)],
                      [round(len(defect) * esc), round(len(defect) * (1 - esc))]],
        "per_class_recall": {"good": 1 - fr, "defect": 1 - esc}, "latency_ms": _latency(3.0, rng)}
    r["gates"] = [{"name": "max_auroc_drop", "limit": 0.01, "value": drop, "passed": True},
                  {"name": "min_decision_agreement", "limit": 0.98, "value": 0.9846, "passed": True},
                  {"name": "max_p95_ms", "limit": 9.0, "value": 3.5, "passed": True}]
    png = red_png()
    r["anomaly_plot"] = {"threshold": 1.0, "good": good, "defect": defect, "heatmaps": heatmaps if heatmaps is not None
                         else [{"path": "/data/val/defect/scratch_<07>.png", "label": "defect", "score": 2.71828,
                                "png": png},
                               {"path": "C:\\data\\val\\good\\ok_001.png", "label": "good", "score": 0.91234,
                                "png": png}]}
    return r


def _svg_of(page: str, title_start: str) -> str:
    """The one inline SVG whose <title> starts with ``title_start``."""
    found = [s for s in re.findall(r"<svg .*?</svg>", page, flags=re.S)
             if re.search(r"<title>" + re.escape(title_start), s)]
    assert len(found) == 1, f"{len(found)} SVG(s) titled {title_start!r}"
    return found[0]


def _bars(svg: str, cls: str) -> list[tuple[int, float, float]]:
    """(count, low edge, high edge) of each histogram bar of class ``cls``, from the bars' tooltips."""
    return [(int(n), float(a), float(b)) for n, a, b in
            re.findall(r'<rect class="' + cls + r'"[^>]*><title>\w+: (\d+) image\(s\) scoring ([-\d.]+) to ([-\d.]+)'
                       r"</title>", svg)]


def test_anomaly_page_has_histogram_threshold_roc_and_heatmaps() -> None:
    r = anomaly_report()
    page = render_html(r)
    c = parse(page)
    text = " ".join(c.text)
    # histogram, ROC, latency, AUROC vs latency, 2x2 confusion
    assert c.tags.count("svg") == 5
    good, defect = r["anomaly_plot"]["good"], r["anomaly_plot"]["defect"]

    hist = _svg_of(page, "Anomaly scores: good vs defect")
    good_bars, defect_bars = _bars(hist, "bar-good"), _bars(hist, "bar-defect")
    assert sum(n for n, _, _ in good_bars) == len(good)  # every image in some bar, once
    assert sum(n for n, _, _ in defect_bars) == len(defect)
    assert {(a, b) for _, a, b in good_bars} & {(a, b) for _, a, b in defect_bars}  # same bins, overlaid
    # the threshold is a bin edge: the bars left of it hold exactly the escapes / the passed good images
    assert sum(n for n, _, b in defect_bars if b <= 1.0) == sum(s <= 1.0 for s in defect)
    assert sum(n for n, a, _ in good_bars if a >= 1.0) == sum(s > 1.0 for s in good)
    assert re.search(r'<line class="threshold"[^>]*/><text[^>]*>threshold</text>', hist)
    assert "#009E73" in hist and "#D55E00" in hist  # good and defect in their own palette colours
    assert f"good ({len(good)})" in hist and f"defect ({len(defect)})" in hist  # legend

    labels = np.array([0] * len(good) + [1] * len(defect))
    expected = auroc(labels, np.array(good + defect))
    roc = _svg_of(page, "ROC curve")
    assert f"ROC curve (AUROC {expected:.4f})" in roc
    assert re.search(r'<polyline class="roc" points="[^"]+"', roc) and 'stroke-dasharray="6,4"' in roc  # diagonal

    imgs = re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', page)
    assert len(imgs) == 2
    assert "defect · score 2.718 (rejected)" in text and "scratch_&lt;07&gt;.png" in page
    assert "good · score 0.912 (passed)" in text and "ok_001.png" in text

    for word in ("AUROC", "F1", "false-reject rate", "escape rate", "decision agreement with reference",
                 "max score drift", "max_auroc_drop", "min_decision_agreement", "AUROC vs latency"):
        assert word in text, word
    assert f"{r['candidate']['auroc']:.4f}" in text and "0.0312 × threshold" in text
    assert "top-1" not in text  # the headline is AUROC and decisions, not a 2-class top-1
    assert "points" not in text  # an AUROC drop is not in top-1 percentage points


@pytest.mark.parametrize(("good", "defect", "expected"), [
    ([0.2, 0.5, 0.9], [0.5, 1.5], 0.75),  # the 0.5 tie counts half: (1 + 0.5 + 0 + 3) / 6
    ([0.1, 0.2], [1.1, 1.2], 1.0),
    ([1.1, 1.2], [0.1, 0.2], 0.0),
    ([1.0, 1.0], [1.0], 0.5),
])
def test_roc_auroc_matches_hand_values(good: list[float], defect: list[float], expected: float) -> None:
    roc = roc_curve(good, defect)
    assert roc is not None
    fpr, tpr, auc = roc
    assert auc == pytest.approx(expected)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_roc_auroc_matches_metrics_auroc(seed: int) -> None:
    rng = np.random.default_rng(seed)
    good = np.round(rng.normal(0.7, 0.3, 200), 2)  # rounded: many ties within and across classes
    defect = np.round(rng.normal(1.3, 0.5, 70), 2)
    roc = roc_curve(good.tolist(), defect.tolist())
    assert roc is not None
    expected = auroc(np.r_[np.zeros(200), np.ones(70)].astype(int), np.r_[good, defect])
    assert roc[2] == pytest.approx(expected, abs=1e-12)


def test_one_class_only_skips_the_roc_with_a_sentence() -> None:
    r = anomaly_report(n_defect=0, heatmaps=[])
    assert r["candidate"]["auroc"] is None and r["candidate"]["escape_rate"] is None
    page = render_html(r)
    c = parse(page)
    text = " ".join(c.text)
    assert "No ROC curve" in text and "no defect image" in text
    assert "<title>ROC curve" not in page
    _svg_of(page, "Anomaly scores: good vs defect")  # the histogram is still drawn
    assert "No heat-map overlays" in text and "<img" not in page
    assert "no defect image in the evaluation set" in markdown(r)


def test_heatmap_that_is_not_a_data_uri_is_dropped() -> None:
    r = anomaly_report(heatmaps=[{"path": "x.png", "label": "defect", "score": 3.0,
                                  "png": "https://example.com/x.png"},
                                 {"path": "y.png", "label": "defect", "score": 2.0, "png": red_png()}])
    page = render_html(r)
    parse(page)  # also: nothing to fetch
    assert page.count("<img ") == 1 and "y.png" in page and "x.png" not in page


def test_old_anomaly_report_without_plot_still_renders() -> None:
    r = anomaly_report()
    del r["anomaly_plot"]
    c = parse(render_html(r))
    assert "no anomaly scores to draw" in " ".join(c.text)


def test_markdown_and_summary_show_auroc_not_top1() -> None:
    r = anomaly_report()
    md = markdown(r)
    for word in ("AUROC", "F1", "false-reject rate", "escape rate", "decision agreement", "max score drift",
                 "max_auroc_drop", f"{r['candidate']['auroc']:.4f}"):
        assert word in md, word
    assert "top-1" not in md and "recall:" not in md

    table = summary_table([r, anomaly_report("cpu-onnxruntime-int8", seed=2)])
    head = table.splitlines()[2]
    assert "| AUROC |" in head and "| decision agreement |" in head and "| false reject |" in head
    assert "top-1" not in table and "agreement |" in head
    rows = [line for line in table.splitlines()[4:] if line.startswith("| ")]
    assert len(rows) == 2 and all(line.count("|") == head.count("|") for line in rows)
    assert f"| {r['candidate']['auroc']:.4f} |" in rows[0]

    # a skipped row of an anomaly run written without ``task`` joins the anomaly table
    skipped = skipped_report()
    assert "task" not in skipped
    table = summary_table([r, skipped])
    assert "top-1" not in table and "tensorrt is not installed" in table


def test_mixed_summary_keeps_the_classifier_table_as_it_was() -> None:
    clf = [synthetic_report("cpu-onnxruntime-int8", seed=1), synthetic_report("cpu-openvino-fp32", seed=2)]
    alone = summary_table(clf)
    mixed = summary_table([*clf, anomaly_report()])
    assert mixed.startswith(alone + "\n\n")
    assert "| AUROC |" in mixed[len(alone):]


def test_classifier_report_shows_no_anomaly_figures() -> None:
    r = synthetic_report()
    page = render_html(r)
    assert parse(page).tags.count("svg") == 3
    for out in (page, markdown(r), summary_table([r]), render_index([r], "run"), json.dumps(index_json([r], "run"))):
        assert "AUROC" not in out and "auroc" not in out
        assert "top-1" in out or "top1" in out
    assert "<img" not in page


def test_index_rows_show_auroc_and_decision_agreement() -> None:
    # the skipped row as ``bench --export`` writes it in an anomaly run: same evaluation set, no ``task``
    reports = [anomaly_report("cpu-onnxruntime-int8", seed=1), anomaly_report("cpu-openvino-fp32", seed=2),
               skipped_report() | {"eval_set": "/runs/x/eval.npz"}]
    reports[1]["reference"]["auroc"] = reports[0]["reference"]["auroc"]
    page = render_index(reports, "anomaly run")
    c = parse(page)
    text = " ".join(c.text)
    assert c.tags.count("svg") == 2 + 2  # latency, AUROC vs latency, one 2x2 confusion per measured row
    for word in ("AUROC", "decision agreement", "false reject", "escape", "AUROC vs latency",
                 f"AUROC {reports[0]['reference']['auroc']:.4f} on this evaluation set"):
        assert word in text, word
    assert "top-1" not in text
    for r in reports[:2]:
        assert f"{r['candidate']['auroc']:.4f}" in text and "98.46 %" in text

    data = index_json(reports, "anomaly run")
    (evset,) = data["evaluation_sets"]
    assert evset["reference_auroc"] == reports[0]["reference"]["auroc"] and evset["reference_auroc_consistent"]
    rows = {row["target"]: row for row in evset["rows"]}
    assert rows["cpu-onnxruntime-int8"]["auroc"] == reports[0]["candidate"]["auroc"]
    assert rows["cpu-openvino-fp32"]["decision_agreement"] == 0.9846
    assert "auroc" not in rows["gpu-tensorrt-int8"]  # the skipped row has no figures to show


def test_bench_cli_prints_auroc_and_rates(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    from edge_tl.bench import run as bench_run
    from edge_tl.cli import main

    reports = [anomaly_report("cpu-onnxruntime-int8", seed=1), anomaly_report("cpu-openvino-fp32", seed=2)]
    monkeypatch.setattr(bench_run, "bench", lambda *a, **k: copy.deepcopy(reports))
    assert main(["bench", str(tmp_path), "--all-targets", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| AUROC |" in out and "top-1" not in out
    for r in reports:
        c = r["candidate"]
        assert (f"{r['target']}: AUROC {c['auroc']:.4f} (reference {r['reference']['auroc']:.4f}), decision "
                f"agreement 98.46 %, false-reject {100 * c['false_reject_rate']:.2f} %, escape "
                f"{100 * c['escape_rate']:.2f} %, passed") in out

    monkeypatch.setattr(bench_run, "bench", lambda *a, **k: [synthetic_report()])
    assert main(["bench", str(tmp_path), "-t", "cpu-openvino-int8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "AUROC" not in out and "top-1" in out


PROBE = ("<script>addEventListener('load',()=>{const p=document.createElement('pre');p.id='probe';"
         "p.textContent=JSON.stringify({imgs:[...document.images].map(i=>i.complete&&i.naturalWidth),"
         "svgs:[...document.querySelectorAll('svg')].map(s=>{const b=s.getBoundingClientRect();"
         "return [s.getAttribute('aria-label'),Math.round(b.width),Math.round(b.height)]}),"
         "roc:(()=>{const l=document.querySelector('polyline.roc');return l?l.getTotalLength():0})(),"
         "bars:document.querySelectorAll('rect.bar-good,rect.bar-defect').length});"
         "document.body.appendChild(p)});</script>")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine")
def test_anomaly_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    """The page as a browser draws it: the overlays decode (2x2 PNGs), every figure has a size."""
    page = render_html(anomaly_report())
    probe = tmp_path / "page.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    out = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', out, flags=re.S)
    assert found, out[-2000:]
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["imgs"] == [2, 2]
    assert len(seen["svgs"]) == 5 and all(w > 100 and h > 100 for _, w, h in seen["svgs"]), seen["svgs"]
    assert any(label.startswith("ROC curve (AUROC") for label, _, _ in seen["svgs"])
    assert seen["roc"] > 300 and seen["bars"] > 4
