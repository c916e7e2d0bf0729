"""Reports that can be trusted side by side (issue 12, items 1-4): every report names its evaluation
set, date, session and host load; a ``--data`` bench never overwrites the run's own reports; the run
index keeps evaluation sets and sessions apart; memory means the candidate's own; an INT8 target that
stayed float says so wherever its precision appears."""

from __future__ import annotations

import copy
import html
import json
import re
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_tl.bench.html import index_json, render_html, render_index
from edge_tl.bench.labels import eval_set_text
from edge_tl.bench.precision import count_onnx, count_openvino, precision_state
from edge_tl.bench.report import markdown, summary_table
from edge_tl.cli import main
from edge_tl.manifest import cpu_flags, host_info
from edge_tl.targets import get_target

from .conftest import write_folder
from .test_html import parse, synthetic_report
from .tiny_graphs import tiny_ir, tiny_onnx

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
PROBE = ("<script>const p=document.createElement('pre');p.id='probe';p.textContent=JSON.stringify("
         "[...document.querySelectorAll('section.evalset')].map(s=>s.innerText));document.body.appendChild(p);"
         "</script>")


def rendered_sections(page: str, tmp_path: Path) -> list[str]:
    """The visible text of each evaluation-set section, as headless Chromium renders the page (without
    Chromium on the machine: the text html.parser finds in each section)."""
    if CHROMIUM is None:
        parts = re.findall(r'<section class="evalset".*?</section>', page, flags=re.S)
        return [" ".join(parse("<!DOCTYPE html>" + p).text) for p in parts]
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', out, flags=re.S)
    assert found, out[-2000:]
    return json.loads(html.unescape(found.group(1)))


def _ident(name: str, sha: str, n: int) -> dict[str, Any]:
    return {"kind": "folder", "name": name, "folder": f"/data/{name}", "n": n, "sha256": sha * 16}


def _report(target: str, ident: dict[str, Any], ref_top1: float, top1: float, session: str, when: str,
            busy: bool = False) -> dict[str, Any]:
    r = synthetic_report(target, seed=len(target), top1=top1)
    r["reference"]["top1"] = ref_top1
    r["candidate"]["top1_drop"] = (ref_top1 - top1) * 100
    other = 0.91 if busy else 0.03
    return r | {"eval_set": ident, "n": ident["n"], "session": {"id": session}, "measured_at": when,
                "host_load": {"measured": True, "busy": busy, "reasons": ["x"] if busy else [],
                              "before": {"load_avg_1m": 0.1}, "during": {"measured": True, "other_cpu_share": other,
                                                                         "own_cpu_share": 0.5, "steal_share": 0.0}}}


def test_index_separates_evaluation_sets_and_sessions(tmp_path: Path) -> None:
    own, week = _ident("validation split", "a", 525), _ident("next_week", "b", 24)
    reports = [
        _report("cpu-onnxruntime-int8", own, 0.83, 0.82, "s1", "2026-11-30T05:00:00Z"),
        _report("cpu-openvino-int8", own, 0.83, 0.83, "s2", "2026-11-30T06:10:00Z", busy=True),
        _report("cpu-openvino-fp32", week, 0.84, 1.0, "s3", "2026-11-30T06:30:00Z"),
    ]
    reports[2]["_file"] = "data-next_week-bbbbbbbb/cpu-openvino-fp32.json"
    page = render_index(reports, "run")
    parse(page)
    sections = rendered_sections(page, tmp_path)
    assert len(sections) == 2  # never one comparison across two evaluation sets
    first, second = sections
    assert "525 images" in first and "24 images" in second
    assert "top-1 83.00 %" in first and "top-1 84.00 %" in second  # the header's reference, per set
    assert "84.00" not in first and "cpu-openvino-fp32" not in first
    assert "cpu-onnxruntime-int8" in first and "cpu-openvino-int8" in first
    # per row: when, which session, what load
    assert "2026-11-30 05:00 UTC" in first and "2026-11-30 06:10 UTC" in first
    assert "BUSY (others 91 % of CPUs)" in first and "quiet (others 3 % of CPUs)" in first
    assert "2 different bench sessions" in first and "different bench sessions" not in second
    assert 'href="data-next_week-bbbbbbbb/cpu-openvino-fp32.html"' in page
    data = index_json(reports, "run")
    sets = data["evaluation_sets"]
    assert [s["eval_set"]["n"] for s in sets] == [525, 24]
    assert [s["reference_top1"] for s in sets] == [0.83, 0.84]
    assert sets[0]["mixed_sessions"] is True and sets[1]["mixed_sessions"] is False
    row = sets[0]["rows"][1]
    assert row["measured_at"] == "2026-11-30T06:10:00Z" and row["session"] == "s2"
    assert row["host_load"]["busy"] is True and row["host_load"]["other_cpu_share"] == 0.91
    # one set, one session: no warning
    assert "different bench sessions" not in render_index(reports[:1], "run")


def test_index_does_not_call_a_skipped_target_passed() -> None:
    own = _ident("validation split", "a", 525)
    measured = _report("cpu-openvino-int8", own, 0.83, 0.83, "s1", "2026-11-30T05:00:00Z")
    skipped = _report("jetson-orin-trt-int8", own, 0.83, 0.83, "s1", "2026-11-30T05:01:00Z") | {
        "candidate": None, "passed": True, "skipped": "tensorrt is not installed"}
    rows = {r["target"]: r for r in index_json([measured, skipped], "run")["evaluation_sets"][0]["rows"]}
    assert rows["cpu-openvino-int8"]["passed"] is True
    assert rows["jetson-orin-trt-int8"]["passed"] is None
    assert rows["jetson-orin-trt-int8"]["skipped"] == "tensorrt is not installed"


def test_console_table_and_pages_name_set_date_and_load() -> None:
    own = _ident("validation split", "a", 525)
    r = _report("cpu-openvino-int8", own, 0.83, 0.83, "s9", "2026-11-30T06:10:00Z")
    md = markdown(r)
    assert "Evaluation set: validation split" in md and "525 images" in md and "sha256 aaaaaaaaaaaa" in md
    assert "Measured: 2026-11-30 06:10 UTC, session s9; host load quiet (others 3 % of CPUs)" in md
    table = summary_table([r, _report("x", _ident("other", "c", 9), 0.9, 0.9, "s9", "2026-11-30T06:11:00Z")])
    assert "| evaluation set |" in table and "9 images" in table and "525 images" in table
    assert "2026-11-30 06:10 UTC" in table and "quiet (others 3 % of CPUs)" in table
    page = render_html(r)
    assert f"evaluation set: {eval_set_text(r)}" in html.unescape(page)
    assert eval_set_text(r) == "validation split (folder: /data/validation split), 525 images, sha256 aaaaaaaaaaaa"
    assert "measured 2026-11-30 06:10 UTC, session s9" in page


def test_every_latency_figure_names_the_cpu_and_its_flags() -> None:
    """INT8 speed differs 2-4x between AVX2-only, VNNI and AMX boxes: every place that shows a latency
    says which CPU and which of those flags it had."""
    x86 = "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_tile amx_int8 other\n"
    arm = "Features\t: fp asimd evtstrm asimddp i8mm\n"
    assert cpu_flags(x86) == ["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"]
    assert cpu_flags(arm) == ["asimd", "asimddp", "i8mm"] and cpu_flags("processor: 0\n") == []
    r = _report("cpu-openvino-int8", _ident("validation split", "a", 525), 0.83, 0.83, "s9", "2026-11-30T06:10:00Z")
    r["host"] = {"cpu": "Test CPU 9000", "cpu_count": 2, "machine": "x86_64", "cpu_flags": ["avx2", "amx_int8"]}
    text = "Test CPU 9000, 2 CPUs, x86_64, flags avx2 amx_int8"
    assert text in markdown(r) and f"Host: {text}." in summary_table([r])
    assert "Test CPU 9000, 2 cores, flags avx2 amx_int8" in html.unescape(render_html(r))
    del r["host"]["cpu_flags"]  # a report written before the field
    assert "flags not recorded" in markdown(r)
    assert host_info()["cpu_flags"] == cpu_flags()


@pytest.mark.parametrize(("qdq", "expect"), [
    ((False, False), "float (2 of 2 layers kept float)"),
    ((True, False), "int8 (1 of 2 layers INT8)"),
    ((True, True), "int8 (2 of 2 layers INT8)"),
])
def test_precision_is_counted_from_the_graph(tmp_path: Path, qdq: tuple[bool, bool], expect: str) -> None:
    onnx_path = tiny_onnx(tmp_path / "model.onnx", qdq)
    xml = tiny_ir(onnx_path, tmp_path / "model.xml")
    assert count_onnx(onnx_path) == count_openvino(xml) == (sum(qdq), 2)
    for name, backend in (("model.onnx", "onnxruntime"), ("model.xml", "openvino")):
        state = precision_state(tmp_path, name, backend, {})
        assert state["label"] == expect and state["counted_from"] == "graph"


def test_precision_counts_a_clipped_qdq_pair_as_int8(tmp_path: Path) -> None:
    """torch's QAT graph clips its 7-bit activations between QuantizeLinear and DequantizeLinear; OpenVINO
    then reads them as Convert -> Clamp -> Convert -> Subtract -> Multiply, not a FakeQuantize, and the
    layers still run in u8: the elpv demo's --qat graph was reported "float (55 of 55 layers kept float)"."""
    onnx_path = tiny_onnx(tmp_path / "model.onnx", (True, False), clip=127)
    xml = tiny_ir(onnx_path, tmp_path / "model.xml")
    import openvino as ov

    kinds = {op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ordered_ops()}
    assert "Clamp" in kinds and "Subtract" in kinds  # the form the counter used to miss
    assert count_onnx(onnx_path) == count_openvino(xml) == (1, 2)


def test_mostly_float_int8_shows_float_everywhere() -> None:
    r = synthetic_report("cpu-onnxruntime-int8")
    r["candidate"]["precision"] = "float"
    r["candidate"]["precision_state"] = {"precision": "float", "int8_layers": 0, "layers": 65, "float_layers": 65,
                                         "label": "float (65 of 65 layers kept float)", "counted_from": "graph"}
    label = "float (65 of 65 layers kept float)"
    assert label in markdown(r) and label in summary_table([r])
    for page in (render_html(r), render_index([r], "run")):
        parse(page)
        assert label in page and "/ int8" not in page
    assert index_json([r], "run")["evaluation_sets"][0]["rows"][0]["precision_label"] == label


def _fast_profile(tmp_path: Path, name: str, precision: str | None = None) -> Path:
    """A built-in profile with fewer timed calls (a shared 2-core machine), optionally renamed."""
    base = Path(get_target(name).source).read_text()
    profile = tmp_path / f"{name}.toml"
    profile.write_text("warmup = 1\niterations = 10\nbatch_size = 4\n"
                       + re.sub(r"(?m)^batch_size = \d+\n", "", base))
    return profile


def _fake_int8_target(run: Path, tmp_path: Path) -> Path:
    """An INT8 profile whose exported graph is the float ONNX file: what an accuracy fallback that kept
    every layer in float ships (the demo's 65 of 65)."""
    from edge_tl.manifest import write_manifest

    profile = tmp_path / "line3-int8.toml"
    profile.write_text('backend = "onnxruntime"\nprecision = "int8"\nwarmup = 1\niterations = 10\nbatch_size = 4\n'
                       '[quantizer]\nmethod = "onnx_qdq"\n')
    dest = run / "targets" / "line3-int8"
    dest.mkdir(parents=True)
    shutil.copyfile(run / "targets" / "cpu-onnxruntime-fp32" / "model.onnx", dest / "model.onnx")
    write_manifest(dest, "export", files=["model.onnx"], float_layers=[], fallback={"status": "passed"})
    return profile


def test_data_bench_is_kept_apart_and_every_report_names_its_set(run_copy: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fp32 = _fast_profile(tmp_path, "cpu-onnxruntime-fp32")
    assert main(["export", str(run_copy), "--target", str(fp32), "--quiet"]) == 0
    int8 = _fake_int8_target(run_copy, tmp_path)
    # 400 MB held by this process: the old "peak RSS" (the process's own peak) would report it
    ballast = np.ones(400 * 2**20 // 8)
    assert main(["bench", str(run_copy), "-t", str(fp32), "-t", str(int8), "--layers", "--quiet"]) == 0
    own_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del ballast
    console = capsys.readouterr().out
    reports = run_copy / "reports"
    fp = json.loads((reports / "cpu-onnxruntime-fp32.json").read_text())
    q = json.loads((reports / "line3-int8.json").read_text())
    # item 1: the set, by name, count and content hash; item 2: date, session, load
    ident = fp["eval_set"]
    assert ident["kind"] == "validation split" and ident["n"] == fp["n"] == 6 and len(ident["sha256"]) == 64
    assert fp["session"]["id"] == q["session"]["id"] and fp["measured_at"].endswith("Z")
    assert fp["host_load"]["measured"] in (True, False)
    assert fp["host"]["cpu_flags"] == cpu_flags() and "CPUs, " in console
    assert "6 images" in console and "measured" in console
    # item 3: the candidate's own memory, not this 400 MB process's
    cand = fp["candidate"]
    assert own_peak_mb > 400
    assert 0 < cand["model_rss_mb"] <= cand["peak_rss_mb"] < own_peak_mb - 150
    assert "fresh process" in cand["memory"]["meaning"]
    # item 4: an INT8 profile whose graph is all float says so in the JSON and the console
    assert q["candidate"]["precision"] == "float"
    label = q["candidate"]["precision_state"]["label"]
    assert re.fullmatch(r"float \((\d+) of \1 layers kept float\)", label)
    assert label in console and any("kept float" in n for n in q["notes"])
    # items 10 and 11 ride along: throughput mode and per-layer timings
    tm = cand["throughput_mode"]
    assert tm["batch"] == 4 and tm["streams"] >= 2 and tm["images_per_s"] > 0 and "parallel" in tm["mode"]
    assert fp["layers"]["top"] and "Where the time goes" in console

    before = (reports / "cpu-onnxruntime-fp32.json").read_bytes()
    other = write_folder(tmp_path / "next_week", per_class=3, seed=7)
    assert main(["bench", str(run_copy), "-t", str(fp32), "--data", str(other), "--quiet"]) == 0
    assert (reports / "cpu-onnxruntime-fp32.json").read_bytes() == before  # not overwritten
    (data_dir,) = reports.glob("data-next_week-*")
    data = json.loads((data_dir / "cpu-onnxruntime-fp32.json").read_text())
    assert data["eval_set"]["n"] == data["n"] == 9 and data["eval_set"]["folder"] == str(other.resolve())
    assert data_dir.name == f"data-next_week-{data['eval_set']['sha256'][:8]}"
    assert data["session"]["id"] != fp["session"]["id"]
    assert (data_dir / "index.html").is_file() and (data_dir / "cpu-onnxruntime-fp32.md").is_file()
    index = json.loads((reports / "index.json").read_text())
    sets = index["evaluation_sets"]
    assert [s["eval_set"]["n"] for s in sets] == [6, 9]
    assert sorted(r["target"] for r in sets[0]["rows"]) == ["cpu-onnxruntime-fp32", "line3-int8"]
    assert [r["target"] for r in sets[1]["rows"]] == ["cpu-onnxruntime-fp32"]
    assert all(r["measured_at"] and r["session"] and r["host_load"]["label"] for s in sets for r in s["rows"])
    page = (reports / "index.html").read_text()
    parse(page)
    sections = rendered_sections(page, tmp_path)
    assert len(sections) == 2 and "6 images" in sections[0] and "9 images" in sections[1]
    assert label in sections[0] and "line3-int8" not in sections[1]
    assert eval_set_text(data) in html.unescape(page)


def test_reports_of_older_benches_still_render() -> None:
    old = copy.deepcopy(synthetic_report())  # a string eval_set, no date, no session
    assert "date unknown" in markdown(old) and "/runs/x/eval.npz" in markdown(old)
    parse(render_index([old], "run"))
