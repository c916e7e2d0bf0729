"""``edge-tl bundle``: contents, hashes, golden parity on ONNX Runtime and OpenVINO, policy and tuning."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_tl.cli import main
from edge_tl.errors import ConfigError, EdgeTLError
from edge_tl.runtime import Runtime, make_policy, policy_stats, tune_ok_threshold
from edge_tl.runtime.bundlefile import TOLERANCE

TARGETS = ("cpu-onnxruntime-fp32", "cpu-openvino-fp32")


@pytest.fixture(scope="module")
def run(finetuned_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny run with both CPU fp32 targets exported."""
    from edge_tl.stages.export import export

    dest = tmp_path_factory.mktemp("bundle") / "run"
    shutil.copytree(finetuned_run, dest)
    for t in TARGETS:
        export(dest, t)
    return dest


@pytest.fixture(scope="module")
def bundles(run: Path) -> dict[str, Path]:
    from edge_tl.stages.bundle import bundle

    out = {}
    for t in TARGETS:
        out[t] = run.parent / f"bundle-{t}"
        bundle(run, t, out[t], allow_failed=True)  # not benched here
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("target", TARGETS)
def test_bundle_holds_model_manifest_hashes_and_original_golden_images(run: Path, bundles: dict[str, Path],
                                                                       target: str) -> None:
    b = bundles[target]
    m = json.loads((b / "bundle.json").read_text())
    ft = json.loads((run / "finetune" / "manifest.json").read_text())
    assert m["format"] == "edge-tl-bundle" and m["format_version"] == 1
    assert m["classes"] == ft["classes"]
    assert m["preprocessing"] == ft["preprocessing"]  # the exact training contract travels
    assert m["model"]["files"] == (["model.xml", "model.bin"] if "openvino" in target else ["model.onnx"])
    assert m["target"]["name"] == target and m["versions"]["edge-tl"]
    assert set(m["policy"]) >= {"rule", "ok_classes", "defect_classes", "ok_threshold", "defect_threshold"}
    # SHA256SUMS covers every file in the folder, bundle.json included, and matches the bytes.
    sums = dict(reversed(line.split("  ", 1)) for line in (b / "SHA256SUMS").read_text().splitlines())
    on_disk = {str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert set(sums) == on_disk and "bundle.json" in sums
    assert all(_sha(b / name) == digest for name, digest in sums.items())
    assert m["files"] == {k: v for k, v in sums.items() if k != "bundle.json"}
    # Golden images: at least one per class, byte-identical copies of validation images.
    golden = m["golden"]["images"]
    assert {g["class"] for g in golden} == set(m["classes"])
    root = Path(json.loads((run / "finetune" / "split.json").read_text())["root"])
    for g in golden:
        assert (b / g["file"]).read_bytes() == (root / g["source"]).read_bytes()
        assert g["top1"] == m["classes"][int(np.argmax(g["logits"]))]
    assert m["golden"]["tolerance"] == TOLERANCE["fp32"]


@pytest.mark.parametrize("target", TARGETS)
def test_golden_parity_through_the_runtime(bundles: dict[str, Path], target: str) -> None:
    """The runtime's own preprocessing + backend reproduce the expected logits and the torch reference."""
    b = bundles[target]
    with Runtime(b) as rt:
        assert rt.golden_report["passed"] and rt.golden_report["n"] >= 3
        golden = rt.manifest["golden"]["images"]
        got = rt.logits([b / g["file"] for g in golden])
    tol = TOLERANCE["fp32"]
    for ref_key in ("logits", "reference_logits"):  # this backend's expectation, then torch fp32
        exp = np.array([g[ref_key] for g in golden])
        assert (np.abs(got - exp) <= tol["atol"] + tol["rtol"] * np.abs(exp)).all(), ref_key
        assert (got.argmax(1) == exp.argmax(1)).all()


def test_backends_agree_on_each_others_golden_images(bundles: dict[str, Path]) -> None:
    """ONNX Runtime logits on the OpenVINO bundle's golden images match OpenVINO's, and vice versa."""
    tol = TOLERANCE["fp32"]
    with Runtime(bundles[TARGETS[0]]) as ort, Runtime(bundles[TARGETS[1]]) as ov:
        for mine, other in ((ort, ov), (ov, ort)):
            golden = other.manifest["golden"]["images"]
            got = mine.logits([other.path / g["file"] for g in golden])
            exp = np.array([g["logits"] for g in golden])
            assert (np.abs(got - exp) <= tol["atol"] + tol["rtol"] * np.abs(exp)).all()


def test_tensorrt_bundle_ships_the_onnx_graph_and_refuses_cleanly_without_tensorrt(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_tl.backends import availability
    from edge_tl.stages.bundle import bundle
    from edge_tl.stages.export import export

    export(run, "jetson-orin-nano-fp16")
    m = bundle(run, "jetson-orin-nano-fp16", run.parent / "bundle-trt", allow_failed=True)
    b = run.parent / "bundle-trt"
    assert sorted(p.name for p in b.iterdir() if p.is_file()) == ["SHA256SUMS", "bundle.json", "model.onnx"]
    assert m["model"]["backend"] == "tensorrt" and m["model"]["precision"] == "fp16"
    assert m["golden"]["expected_from"]["backend"] == "onnxruntime"  # computed from the same graph here
    assert m["golden"]["tolerance"] == TOLERANCE["fp16"]
    if availability("tensorrt", "cuda:0") is None:
        pytest.skip("TensorRT is available here: the refusal below is for hosts without it")
    capsys.readouterr()
    assert main(["predict", str(b), str(b / m["golden"]["images"][0]["file"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT" in err[0]


def test_bundle_replaces_an_old_bundle_but_not_a_foreign_folder(run: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert main(["bundle", str(run), "--target", TARGETS[0], "--out", str(foreign)]) == 2
    assert "not an edge-tl bundle" in capsys.readouterr().err
    assert (foreign / "keep.txt").read_text() == "mine"
    out = tmp_path / "b"
    for _ in range(2):  # the second run swaps the folder atomically
        assert main(["bundle", str(run), "--target", TARGETS[0], "--out", str(out), "--golden", "3",
                     "-q", "--allow-failed"]) == 0
    assert len(json.loads((out / "bundle.json").read_text())["golden"]["images"]) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_cli_policy_with_an_ok_class_is_tuned_to_the_false_reject_target(run: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b"
    assert main(["bundle", str(run), "--target", TARGETS[0], "--out", str(out), "--ok-class", "blobs",
                 "--max-false-reject", "0.0", "--defect-threshold", "0.6", "--allow-failed"]) == 0
    p = json.loads((out / "bundle.json").read_text())["policy"]
    assert p["ok_classes"] == ["blobs"] and p["defect_classes"] == ["horizontal", "vertical"]
    assert p["defect_threshold"] == 0.6
    # A false-reject rate of 0 cannot be shown on a few validation images (nor on any finite number):
    # the target is not claimed and the stated default threshold stays.
    assert p["tuning"]["target_false_reject"] == 0.0 and not p["tuning"]["target_met"]
    assert p["tuning"]["threshold_source"] == "default" and p["ok_threshold"] == 0.5
    assert main(["bundle", str(run), "--target", TARGETS[0], "--out", str(tmp_path / "c"),
                 "--ok-class", "nosuch"]) == 2
    assert "unknown class" in capsys.readouterr().err


def test_default_class_split() -> None:
    neu = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    p = make_policy(neu)
    assert p.ok_classes == () and p.defect_classes == tuple(neu)  # NEU: every class is a defect type
    p = make_policy(["defect", "ok"])  # elpv-style
    assert p.ok_classes == ("ok",) and p.defect_classes == ("defect",)
    assert make_policy(["a", "b", "c"], defect_classes=["b"]).ok_classes == ("a", "c")
    with pytest.raises(ConfigError):
        make_policy(["ok", "good"])  # nothing left to be a defect
    with pytest.raises(EdgeTLError):
        make_policy(["a", "b"], ok_classes=["a"], defect_classes=["a", "b"])


def test_decisions_follow_the_rule() -> None:
    p = make_policy(["defect", "ok"], ok_threshold=0.9, defect_threshold=0.6)
    assert p.decide("ok", 0.95) == "ok"
    assert p.decide("ok", 0.85) == "review"  # an unsure pass goes to a person
    assert p.decide("defect", 0.7) == "defect"
    assert p.decide("defect", 0.55) == "review"  # an unsure reject goes to a person, not the scrap bin
    [(k, score, decision)] = p.decide_logits(np.array([[0.0, 3.0]]))
    assert k == 1 and score == pytest.approx(1 / (1 + np.exp(-3.0))) and decision == "ok"


def test_tuning_picks_the_strictest_ok_threshold_within_the_false_reject_target() -> None:
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 2, n)  # class 1 = ok
    margin = np.where(labels == 1, 1, -1) * rng.gamma(2.0, 1.5, n)
    logits = np.stack([np.zeros(n), margin], axis=1)
    base = make_policy(["defect", "ok"])
    for target in (0.0, 0.01, 0.05, 0.2):
        # confidence=None: the observed rate, to test which threshold is picked (the 95 % upper bound
        # that the default claims by is tested in tests/test_intake.py).
        tuned, rec = tune_ok_threshold(base, logits, labels, target, confidence=None)
        fr = policy_stats(tuned, logits, labels)["false_reject_rate"]
        assert rec["target_met"] and fr <= target + 1e-12
        # Any stricter threshold (the next good score up) breaks the target: it is the highest one.
        good = np.sort(1 / (1 + np.exp(-margin[(labels == 1) & (margin > 0)])))
        nxt = good[good > tuned.ok_threshold]
        if len(nxt):
            stricter = make_policy(["defect", "ok"], ok_threshold=float(nxt[0]))
            assert policy_stats(stricter, logits, labels)["false_reject_rate"] > target
    # A model that calls 5% of good parts defects cannot reach a 1% false-reject target.
    flip = np.flatnonzero(labels == 1)[: int(0.05 * (labels == 1).sum())]
    bad = logits.copy()
    bad[flip, 1] = -5.0
    tuned, rec = tune_ok_threshold(base, bad, labels, 0.01, confidence=None)
    assert not rec["target_met"] and rec["ok_images_labelled_defect"] == len(flip)
    with pytest.raises(ConfigError):
        tune_ok_threshold(make_policy(["a", "b"]), logits, labels, 0.01)  # no ok class
