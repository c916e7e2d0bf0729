"""HTML reports: self-contained, well-formed, every plot present, all text escaped."""

from __future__ import annotations

import random
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from edge_tl.bench.html import load_reports, render_html, render_index, write_index
from edge_tl.manifest import write_json

VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "wbr", "source"}


class _Checker(HTMLParser):
    """Collects tags, text and attributes; checks that every non-void tag is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.attrs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [v for _, v in attrs if v]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [v for _, v in attrs if v]

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Checker:
    c = _Checker()
    c.feed(page)
    c.close()
    assert not c.errors, c.errors[:5]
    assert not c.stack, f"unclosed: {c.stack}"
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page  # self-contained: nothing to fetch
    assert "<script" not in page.lower() and "<link" not in page.lower()
    return c


def _latency(center: float, rng: random.Random, n: int = 120) -> dict[str, Any]:
    s = sorted(center * rng.lognormvariate(0, 0.15) for _ in range(n))
    q = lambda p: s[min(n - 1, int(p * n))]  # noqa: E731
    return {"p50": q(0.5), "p90": q(0.9), "p95": q(0.95), "p99": q(0.99), "mean": sum(s) / n, "min": s[0],
            "n": n, "samples": s}


def synthetic_report(target: str = "cpu-openvino-int8", classes: list[str] | None = None, seed: int = 0,
                     p50: float = 2.0, top1: float = 0.95, ref_latency: bool = True,
                     gates_pass: bool = True) -> dict[str, Any]:
    """A report shaped like ``bench_target``'s, with errors in its confusion matrix."""
    rng = random.Random(seed)
    classes = classes or ["crazing", "inclusion", "<script>alert(1)</script>", "pitted_surface"]
    k = len(classes)
    confusion = [[20 if i == j else (2 if (i + seed) % k == j else 0) for j in range(k)] for i in range(k)]
    ref_top1 = 0.975
    gates = [{"name": "max_top1_drop", "limit": 1.0, "value": (ref_top1 - top1) * 100, "passed": gates_pass},
             {"name": "min_agreement", "limit": 0.98, "value": 0.99, "passed": True},
             {"name": "max_p95_ms", "limit": 3.0 * p50, "value": p50 * 1.2, "passed": True}]
    return {
        "target": target, "n": 88, "eval_set": "/runs/x/eval.npz", "classes": classes, "notes": [],
        "profile": {"name": target, "description": "a <b>bold</b> profile",
                    "gates": {"max_p95_ms": 3.0 * p50}},
        "host": {"cpu": "Test CPU", "cpu_count": 2}, "versions": {"python": "3.11"},
        "reference": {"format": "torch", "precision": "fp32", "top1": ref_top1,
                      "latency_ms": _latency(15.0, rng) if ref_latency else None,
                      "throughput_ips": 70.0 if ref_latency else None,
                      "size_mb": 9.2 if ref_latency else None},
        "candidate": {"format": "openvino", "precision": "int8", "top1": top1,
                      "top1_drop": (ref_top1 - top1) * 100, "agreement": 0.99,
                      "per_class_recall": {c: 0.9 for c in classes}, "confusion": confusion,
                      "latency_ms": _latency(p50, rng), "throughput_ips": 600.0, "size_mb": 2.4,
                      "peak_rss_mb": 300.0, "int8_speedup_over_float": 2.1, "float_layers": ["head"]},
        "speedup": 7.5 if ref_latency else None, "gates": gates, "passed": gates_pass, "skipped": None,
    }


def skipped_report(target: str = "gpu-tensorrt-int8") -> dict[str, Any]:
    return {"target": target, "classes": ["a", "b"], "notes": [], "host": {}, "versions": {}, "profile": {},
            "reference": {"format": "torch", "precision": "fp32", "top1": 0.9, "latency_ms": None},
            "candidate": None, "speedup": None, "gates": [], "passed": True,
            "skipped": "tensorrt is not installed (pip install edge-tl[tensorrt])"}


def test_target_page_has_every_plot_gates_and_escaped_classes() -> None:
    page = render_html(synthetic_report())
    c = parse(page)
    assert c.tags.count("svg") == 3  # latency, accuracy vs latency, confusion
    text = " ".join(c.text)
    for word in ("max_top1_drop", "min_agreement", "max_p95_ms", "crazing", "pitted_surface", "p50", "[ms]",
                 "top-1 accuracy [%]", "predicted class", "true class"):
        assert word in text, word
    assert "<script>alert(1)</script>" in text  # shown as text...
    assert "&lt;script&gt;" in page and "<script>" not in page  # ...because it was escaped
    assert "<b>bold</b>" in text and "<b>bold" not in page


def test_target_page_without_reference_latency_or_optional_fields() -> None:
    r = synthetic_report(ref_latency=False)
    for key in ("int8_speedup_over_float", "float_layers", "peak_rss_mb", "per_class_recall"):
        del r["candidate"][key]
    del r["profile"], r["versions"]
    r["notes"] = ["no torch on this host: reference accuracy comes from eval.npz, "
                  "its latency was not measured"]
    page = render_html(r)
    c = parse(page)
    assert c.tags.count("svg") == 3
    assert "not measured on this host" in page and "no torch on this host" in page


def test_skipped_report_renders_its_reason() -> None:
    page = render_html(skipped_report())
    c = parse(page)
    assert "tensorrt is not installed" in " ".join(c.text)
    assert "SKIPPED" in page and "<svg" not in page


def test_index_table_plots_gates_and_confusions(tmp_path: Path) -> None:
    reports = [synthetic_report("cpu-onnxruntime-int8", seed=1, p50=2.4, top1=0.96),
               synthetic_report("cpu-openvino-fp32", seed=2, p50=6.0, top1=0.975),
               synthetic_report("jetson-orin-nano-fp16", seed=3, p50=0.4, top1=0.94, gates_pass=False),
               skipped_report()]
    page = render_index(reports, "edge-tl bench: <demo>")
    c = parse(page)
    text = " ".join(c.text)
    # one latency plot, one scatter, one confusion matrix per measured target
    assert c.tags.count("svg") == 2 + 3
    assert "(log scale)" in text  # 0.4 ms .. 15 ms reference: too wide for a linear axis
    for t in ("cpu-onnxruntime-int8", "cpu-openvino-fp32", "jetson-orin-nano-fp16", "gpu-tensorrt-int8"):
        assert t in text
        assert f"{t}.html" in c.attrs  # each row links the target's own page
    assert "tensorrt is not installed" in text and "FAILED" in text
    assert "reference (torch fp32)" in text and "max_p95_ms" in text
    assert "edge-tl bench: &lt;demo&gt;" in page

    for r in reports:
        write_json(tmp_path / f"{r['target']}.json", r)
    write_json(tmp_path / "summary.json", {"not": "a report"})
    loaded = load_reports(tmp_path)
    assert [r["target"] for r in loaded] == sorted(r["target"] for r in reports)
    index = write_index(tmp_path, "run")
    assert index == tmp_path / "index.html"
    parse(index.read_text())


def test_index_of_nothing_and_many_classes() -> None:
    parse(render_index([], "empty"))
    many = [f"class_{i}" for i in range(40)]  # too many to print counts; still a heatmap
    page = render_html(synthetic_report(classes=many))
    assert parse(page).tags.count("svg") == 3


def test_real_bench_writes_html(run_copy: Path, tmp_path: Path) -> None:
    """bench -> write_reports picks up render_html; write_index builds the run's page from the JSON."""
    from edge_tl.bench.run import bench
    from edge_tl.stages.export import export
    from edge_tl.targets import get_target

    # the built-in profile with fewer timed calls, to keep the test short on a shared 2-core machine
    profile = tmp_path / "cpu-onnxruntime-fp32.toml"
    builtin = Path(get_target("cpu-onnxruntime-fp32").source)
    profile.write_text("warmup = 3\niterations = 40\n" + builtin.read_text())
    export(run_copy, str(profile))
    (report,) = bench(run_copy, [str(profile)])
    page_path = run_copy / "reports" / "cpu-onnxruntime-fp32.html"
    assert page_path.is_file()
    c = parse(page_path.read_text())
    text = " ".join(c.text)
    # latency, accuracy vs latency, confusion, ood scores, agreement against margin
    assert c.tags.count("svg") == 5
    assert "Out-of-distribution score" in text and report["ood"]["n"] == report["n"]
    for name in report["classes"]:
        assert name in text
    assert report["gates"]
    for gate in report["gates"]:
        assert gate["name"] in text
    index = parse(write_index(run_copy / "reports").read_text())
    assert index.tags.count("svg") == 3 and "cpu-onnxruntime-fp32" in " ".join(index.text)


def test_target_page_draws_agreement_against_margin_with_the_noise() -> None:
    """Issue 26: the split by the reference's margin and its curve, noise marked, on the target's page."""
    import numpy as np

    from edge_tl.metrics import agreement_curve, margin_agreement, margin_fields

    rng = np.random.default_rng(0)
    ref = rng.normal(0, 2, (200, 4))
    cand = ref + rng.normal(0, 0.2, ref.shape)
    r = synthetic_report()
    r["profile"]["gates"]["min_agreement"] = 0.98
    r["candidate"] |= margin_fields(margin_agreement(cand, ref, 0.35)) | {
        "answer_noise_source": "300 selection images", "agreement_curve": agreement_curve(cand, ref)}
    page = render_html(r)
    c = parse(page)
    assert c.tags.count("svg") == 4
    text = " ".join(c.text)
    for words in ("Agreement against the reference's margin", "noise 0.35", "gate 98 %", "near-ties",
                  "agreement, confident answers (gated)", "300 selection images"):
        assert words in text, words
    assert 'class="noise"' in page and 'class="agreement-curve"' in page
    from edge_tl.bench.report import markdown

    assert "agreement, confident answers (gated)" in markdown(r) and "near-ties" in markdown(r)
    # A report written before the split still renders, without the curve.
    assert parse(render_html(synthetic_report())).tags.count("svg") == 3
