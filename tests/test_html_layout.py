"""The run index and a target page as a real browser lays them out, at 1,280 and 1,920 px (issue 24,
item 14): the status column stays in view, skip reasons are not squeezed one word per line, the timing
warning is said once, and the OOD histogram draws one series when both are the same images, with its
limit printed alike in the legend and the text.

Layout facts come from headless Chromium (``--dump-dom`` after a probe script measured the page); each
page is also screenshot at both widths. Without Chromium the browser test is skipped (Debian: ``apt-get
install chromium``; .ci/run installs it); the HTML facts below it run everywhere."""

from __future__ import annotations

import copy
import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from edge_tl.bench.html import render_html, render_index

from .test_html import parse, skipped_report, synthetic_report

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
WIDTHS = (1280, 1920)
LIMIT = 0.999531  # an ood limit just under 1: printed "1.000" in the text beside a legend's 0.999531
TENSORRT = ("TensorRT is not installed (on a Jetson use JetPack's TensorRT; on a desktop pip install "
            "'edge-tl[tensorrt]')")

# Measures what a reader sees: every status cell and skip reason, the table's scroll box, the page width.
PROBE = """<script>
const box = e => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right, width: r.width,
  height: r.height}; };
const wide = document.querySelector('.wide');
const facts = {inner: innerWidth, page_width: document.documentElement.scrollWidth,
  wide: wide && Object.assign(box(wide), {client: wide.clientWidth, scroll: wide.scrollWidth}),
  verdicts: [], reasons: [],
  unreliable: [...document.querySelectorAll('.warn, .note')].filter(e => /UNRELIABLE/.test(e.textContent)).length};
// Found by meaning, not by class: the cell under the "status" heading, and each cell holding a skip reason.
for (const table of document.querySelectorAll('.wide table')) {
  const heads = [...table.rows[0].cells].map(c => c.textContent.trim());
  for (const row of [...table.rows].slice(1)) {
    let col = 0;
    for (const cell of row.cells) {
      if (heads[col] === 'status') facts.verdicts.push(box(cell));
      if (/not installed|not exported/.test(cell.textContent)) facts.reasons.push(Object.assign(box(cell),
        {line: parseFloat(getComputedStyle(cell).lineHeight) || 1.4 * parseFloat(getComputedStyle(cell).fontSize)}));
      col += cell.colSpan;
    }
  }
}
const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(facts);
document.body.appendChild(pre);
</script>"""


def busy_report() -> dict[str, Any]:
    """A measured target as a bench on a busy host writes it, on the run's own validation images."""
    r = synthetic_report("cpu-openvino-int8", seed=1)
    r["candidate"]["precision_state"] = {"label": "int8 (53 of 55 layers INT8; 2 float by design (OOD score))",
                                         "int8_layers": 53, "layers": 55}
    reasons = ["other processes used 83 % of the CPUs during timing, limit 25 %",
               "the speedup varied 2.83× between timing blocks: p10 24.36×, p90 69.04×, limit p90/p10 1.5×"]
    scores = [0.62, 0.71, 0.75, 0.81, 0.88, 0.93, 0.95, 0.97, 0.99, 1.02]
    r |= {"timing_reliable": False, "unreliable_reasons": reasons,
          "host_load": {"measured": True, "busy": True, "reasons": reasons[:1], "before": {"load_avg_1m": 10.7},
                        "during": {"measured": True, "other_cpu_share": 0.83, "own_cpu_share": 0.17,
                                   "steal_share": 0.0}},
          "ood": {"limit": LIMIT, "limit_source": "this target's ood_score at the same quantile of the 10 "
                  "validation images", "n": 10, "share_flagged": 0.1, "data": "validation split",
                  "scores": scores, "validation_scores": list(reversed(scores)), "fitted_on": "the training split"},
          "notes": [f"out of distribution: 10.0% of the 10 images score above the limit {LIMIT:.3g} (review in "
                    "the runtime)",
                    "UNRELIABLE TIMING (host busy): speedup 7.50× and latencies are not to be trusted: "
                    + "; ".join(reasons) + ". Re-run on a quiet host (or with --wait-quiet SECONDS)."]}
    return r


def run_reports() -> list[dict[str, Any]]:
    """A run's reports after ``bench --all-targets`` on an x86 box: three measured, ten skipped."""
    skipped = [skipped_report(t) | {"skipped": TENSORRT} for t in (
        "gpu-tensorrt-fp16", "gpu-tensorrt-int8", "jetson-agx-orin-fp16", "jetson-agx-orin-int8",
        "jetson-orin-nano-fp16", "jetson-orin-nano-int8", "jetson-orin-nx-fp16", "jetson-orin-nx-int8")]
    skipped += [skipped_report(t) | {"skipped": f"not exported (run `edge-tl export runs/parts --target {t}`)"}
                for t in ("arm64-onnxruntime-int8", "cpu-onnxruntime-fp32")]
    return [busy_report(), synthetic_report("cpu-onnxruntime-int8", seed=2, p50=2.4),
            synthetic_report("cpu-openvino-fp32", seed=3, p50=6.0), *skipped]


def browse(page: str, tmp_path: Path, name: str, width: int) -> dict[str, Any]:
    """Layout facts of ``page`` in headless Chromium at ``width`` px, and its screenshot at that width."""
    path = tmp_path / f"{name}.html"
    path.write_text(page)
    shot = tmp_path / f"{name}-{width}.png"
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--window-size={width},900"]
    subprocess.run([*common, f"--screenshot={shot}", path.as_uri()], capture_output=True, timeout=120, check=False)
    with Image.open(shot) as im:
        assert im.width == width  # the page was drawn at the width asked for
    probe = tmp_path / f"{name}-probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    out = subprocess.run([*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', out, flags=re.S)
    assert found, out[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("width", WIDTHS)
def test_index_and_target_page_in_a_browser(tmp_path: Path, width: int) -> None:
    reports = run_reports()
    index = browse(render_index(reports, "edge-tl bench: parts"), tmp_path, "index", width)
    wide = index["wide"]
    assert len(index["verdicts"]) == len(reports)
    for cell in index["verdicts"]:  # every verdict in view without scrolling the table or the page
        assert wide["left"] - 1 <= cell["left"] and cell["right"] <= min(wide["right"], width) + 1, (cell, wide)
    assert len(index["reasons"]) == 10
    for cell in index["reasons"]:  # a sentence on a line or two, not a column of single words
        assert cell["height"] <= 2.5 * cell["line"] + 10 and cell["width"] >= 400, cell
    if width >= 1920:
        assert wide["scroll"] <= wide["client"] + 1, wide  # the whole table fits a 1,920 px screen
    assert index["page_width"] <= width  # only the table scrolls, never the page

    page = browse(render_html(reports[0]), tmp_path, "target", width)
    assert page["unreliable"] == 1  # the red box, not the box and a note saying it again
    assert page["page_width"] <= width


def test_ood_histogram_of_the_validation_images_draws_one_series() -> None:
    r = busy_report()
    page = render_html(r)
    section = page[page.index("Out-of-distribution score"):]
    section = section[:section.index("</figure>")]
    assert "bar-good" in section and "bar-defect" not in section  # the same 10 scores, drawn once
    assert "validation images (10)" in section and "one distribution" in section
    # the limit reads the same in the text and the legend, and is not rounded up to the threshold 1
    assert "the limit 0.9995" in section and "threshold (0.9995)" in section and "limit 1.000" not in section

    other = copy.deepcopy(r)
    other["ood"] |= {"data": "line-b", "scores": [1.3, 1.4, 1.6]}  # another data set: two series
    section = render_html(other)
    assert "bar-defect" in section and "line-b (3)" in section and "validation (10)" in section


def test_a_note_the_page_already_shows_is_not_repeated() -> None:
    r = busy_report()
    text = " ".join(parse(render_html(r)).text)
    assert text.count("UNRELIABLE") == 1 and "UNRELIABLE timings: host busy" in text
    assert "out of distribution: 10.0%" not in text  # the OOD section says it, with the same limit
    quiet = copy.deepcopy(r)
    quiet["timing_reliable"] = True
    del quiet["ood"]
    text = " ".join(parse(render_html(quiet)).text)  # nothing else shows them: the notes stay
    assert "UNRELIABLE TIMING (host busy)" in text and "out of distribution: 10.0%" in text
    # the index keeps the row's note (its only place for the reasons), without a second "busy host" note
    index = render_index(run_reports(), "run")
    assert index.count("UNRELIABLE TIMING (host busy)") == 1 and "Timed on a busy host" not in index
