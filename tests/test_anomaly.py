"""Good-only anomaly detection: fit, export parity per backend, bench figures, bundle -> runtime, heat maps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_tl.cli import main

from .anomaly_data import write_anomaly_set, write_two_mode_set

FP32 = ("cpu-onnxruntime-fp32", "cpu-openvino-fp32")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 20 good and 20 defect test images: a threshold half of 20, the fewest the INT8 fallback chooses on.
    return write_anomaly_set(tmp_path_factory.mktemp("anomaly") / "set", n_good_val=20, n_defect=20)


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PatchCore on the synthetic good images (whole frame, the anomaly default), exported for both CPU fp32
    targets and OpenVINO INT8."""
    from edge_tl.anomaly.fit import fit_anomaly
    from edge_tl.stages.export import export

    out = tmp_path_factory.mktemp("anomaly-run") / "run"
    fit_anomaly(data / "train" / "good", out, method="patchcore", val_dir=data / "test", coreset=0.1)
    for t in (*FP32, "cpu-openvino-int8"):
        export(out, t)
    return out


def test_fit_on_good_images_finds_pasted_defects_held_out(run: Path) -> None:
    m = json.loads((run / "finetune" / "manifest.json").read_text())
    assert m["task"] == "anomaly" and m["classes"] == ["good", "defect"]
    split = json.loads((run / "finetune" / "split.json").read_text())
    # Bank images, threshold images and reported images are three disjoint sets.
    sets = [{p for p, _ in split[k]} for k in ("train", "threshold", "val")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert all(y == 0 for _, y in split["train"])
    assert m["metrics"]["val_auroc"] >= 0.95 and m["metrics"]["val_escape_rate"] <= 0.2
    bank = m["bank"]
    assert bank["entries"] == m["method"]["entries"] and 0 < bank["mb"] < 5 and len(bank["sha256"]) == 64


def test_fp32_exports_give_the_torch_scores(run: Path) -> None:
    from edge_tl.backends import RunnerSpec, open_runner
    from edge_tl.evalset import load_eval_set
    from edge_tl.metrics import scores_from_logits

    ev = load_eval_set(run / "eval.npz")
    ref = scores_from_logits(ev.logits)
    for t in FP32:
        folder = run / "targets" / t
        file = json.loads((folder / "manifest.json").read_text())["model_file"]
        runner = open_runner(RunnerSpec(folder / file, t.split("-")[1], "cpu" if "onnx" in t else "CPU"))
        try:
            logits, amap = runner.run_outputs(ev.inputs)
        finally:
            runner.close()
        s = scores_from_logits(logits)
        assert np.abs(s - ref).max() < 1e-3, t
        assert ((s > 1) == (ref > 1)).all(), t
        # The image score is the map's maximum: the map is on the same (threshold) scale.
        assert np.allclose(amap.reshape(len(amap), -1).max(1), s, atol=1e-4)


def test_int8_quantises_the_backbone_and_keeps_the_distances_float(run: Path) -> None:
    m = json.loads((run / "targets" / "cpu-openvino-int8" / "manifest.json").read_text())
    assert m["validation"]["agreement"] == 1.0
    import openvino as ov

    model = ov.Core().read_model(str(run / "targets" / "cpu-openvino-int8" / "model.xml"))
    fq = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    names = [op.get_friendly_name() for op in fq]
    assert len(fq) > 20, "the backbone is quantised"
    matmul = [op for op in model.get_ops() if op.get_type_name() == "MatMul"]
    assert matmul and all(inp.get_source_output().get_node().get_type_name() != "FakeQuantize"
                          for op in matmul for inp in op.inputs()), names[:5]


def test_int8_float_layers_are_chosen_on_the_threshold_images(run: Path) -> None:
    """Not on the good images the head was fitted on (they score far below the threshold, so INT8 flips
    few of them), and never on the reported half that judges the export."""
    from edge_tl.calibration import SELECTION_THRESHOLD

    split = json.loads((run / "finetune" / "split.json").read_text())
    cal = json.loads((run / "targets" / "cpu-openvino-int8" / "calibration.json").read_text())
    sel = cal["selection"]
    assert sel["source"] == SELECTION_THRESHOLD and sel["disjoint_from_calibration"]
    threshold = {p for p, _ in split["threshold"]}
    chosen = {im["path"] for im in sel["images"]}
    assert chosen == threshold, "every threshold image, and only those"
    assert {c for c, n in sel["per_class"].items() if n} == {"good", "defect"}
    assert not {im["sha256"] for im in sel["images"]} & {im["sha256"] for im in cal["images"]}
    # Issue 26: one gate definition per task: the fallback judges AUROC drop and decision agreement (on the
    # confident decisions), never top-1; the noise is the score's, in units of the threshold.
    m = json.loads((run / "targets" / "cpu-openvino-int8" / "manifest.json").read_text())
    for part in ("before", "held_out"):
        judged = m["fallback"][part]
        assert "auroc_drop" in judged and "decision_agreement" in judged and "top1_drop" not in judged, part
        assert not any("top-1" in f for f in judged["failed"])
    assert "threshold" in m["answer_noise"]["unit"] and m["answer_noise"]["n"] == len(threshold)


def test_bench_reports_anomaly_figures_and_gates(run: Path) -> None:
    from edge_tl.bench.run import bench

    (report,) = bench(run, ["cpu-onnxruntime-fp32"], quiet=True)
    c = report["candidate"]
    assert report["task"] == "anomaly"
    for field in ("auroc", "f1", "false_reject_rate", "escape_rate", "decision_agreement", "max_score_drift"):
        assert field in c
    assert c["decision_agreement"] == 1.0 and c["max_score_drift"] < 1e-3 and abs(c["auroc_drop"]) < 1e-6
    assert {g["name"] for g in report["gates"]} == {"max_auroc_drop", "min_decision_agreement"}
    assert report["passed"]
    from edge_tl.bench.schema import load_report

    typed = load_report(run / "reports" / "cpu-onnxruntime-fp32.json")  # an anomaly report fits the model
    assert typed.task == "anomaly" and typed.candidate is not None
    assert typed.candidate.auroc_drop == c["auroc_drop"] and typed.reference.auroc == report["reference"]["auroc"]


def test_bundle_carries_threshold_and_policy_to_the_runtime(run: Path, data: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from edge_tl.runtime import Runtime
    from edge_tl.stages.bundle import GOLDEN_ANOMALY_MARGIN, bundle

    out = tmp_path / "bundle"
    manifest = bundle(run, "cpu-onnxruntime-fp32", out, max_escape=0.0, allow_failed=True)
    ft = json.loads((run / "finetune" / "manifest.json").read_text())
    assert manifest["task"] == "anomaly"
    # Golden images sit a quarter of the threshold or more from it (the margin is |s - 1|, not logits).
    golden = manifest["golden"]["images"]
    assert {g["class"] for g in golden} == {"good", "defect"}
    assert all(abs(g["logits"][1]) >= GOLDEN_ANOMALY_MARGIN for g in golden)
    assert manifest["anomaly"]["threshold"]["raw"] == ft["threshold"]["raw"]
    assert manifest["anomaly"]["bank"]["sha256"] == ft["bank"]["sha256"]
    images = sorted((data / "test").rglob("*.png"))
    with Runtime(out) as rt:
        assert rt.task == "anomaly"
        preds = rt.predict_batch([str(p) for p in images])
    for pred in preds:
        assert pred.anomaly_score is not None
        # The decision follows the tuned policy: never "ok" above the shipped threshold.
        if pred.anomaly_score > 1:
            assert pred.decision != "ok"
    defects = [pred for p, pred in zip(images, preds, strict=True) if p.parent.name == "defect"]
    assert sum(pred.decision == "ok" for pred in defects) <= 1
    # The CLI gives the same scores (JSON lines carry anomaly_score) and writes heat maps.
    heat = tmp_path / "heat"
    assert main(["predict", str(out), *map(str, images[:3]), "--json", "--heatmap", str(heat)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [round(x["anomaly_score"], 4) for x in lines] == [round(p.anomaly_score, 4) for p in preds[:3]]
    assert sorted(f.name for f in heat.iterdir()) == sorted(f"{p.stem}.heatmap.png" for p in images[:3])
    # One flipped byte in the model file (where the bank lives) refuses to open.
    model = out / "model.onnx"
    raw = bytearray(model.read_bytes())
    raw[-100] ^= 0x01
    model.write_bytes(bytes(raw))
    assert main(["predict", str(out), str(images[0])]) == 2
    assert "model.onnx" in capsys.readouterr().err


def test_heat_map_peaks_on_the_pasted_defect(run: Path, data: Path, tmp_path: Path) -> None:
    from edge_tl.runtime import Runtime
    from edge_tl.stages.bundle import bundle

    out = tmp_path / "bundle"
    bundle(run, "cpu-openvino-fp32", out, allow_failed=True)
    boxes = json.loads((data / "boxes.json").read_text())
    hits = 0
    with Runtime(out) as rt:
        for name, (x0, y0, x1, y1) in boxes.items():
            path = data / "test" / "defect" / name
            amap = rt.anomaly_maps(rt.prepare(str(path))[None])[0]
            # The model's input is the whole image (96 px) resized to 224 (the anomaly default, resize full).
            scale, off = 224 / 96, 0.0
            gy, gx = np.unravel_index(int(amap.argmax()), amap.shape)
            cy, cx = (gy + 0.5) * 224 / amap.shape[0], (gx + 0.5) * 224 / amap.shape[1]
            box = [x0 * scale - off, y0 * scale - off, x1 * scale - off, y1 * scale - off]
            margin = 16  # two patches of slack: the 3x3 aggregation spreads a defect
            hits += box[0] - margin <= cx <= box[2] + margin and box[1] - margin <= cy <= box[3] + margin
    assert hits >= len(boxes) - 1


def test_padim_fits_and_exports(data: Path, tmp_path: Path) -> None:
    from edge_tl.anomaly.fit import fit_anomaly
    from edge_tl.stages.export import export

    m = fit_anomaly(data / "train" / "good", tmp_path / "padim", val_dir=data / "test")  # the defaults
    assert m["anomaly"]["method"] == "padim" and m["anomaly"]["dim"] == 64
    assert m["preprocessing"]["resize_mode"] == "full"
    assert m["metrics"]["val_auroc"] >= 0.9
    tm = export(tmp_path / "padim", "cpu-onnxruntime-fp32")
    assert tm["validation"]["agreement"] == 1.0


def test_good_only_threshold_holds_the_false_reject_bound(data: Path, tmp_path: Path) -> None:
    from edge_tl.anomaly.fit import fit_anomaly

    # 6 good threshold images: 0 rejects bound the rate at 0.39 (95 %), within 0.45 but not within 0.3.
    m = fit_anomaly(data / "train" / "good", tmp_path / "r", holdout=0.5, coreset=0.05, max_false_reject=0.45)
    t = m["threshold"]
    assert t["rule"].startswith("false-reject upper bound") and t["false_reject_upper_bound"] <= 0.45
    assert t["note"] is None
    assert m["metrics"]["val_auroc"] is None and m["metrics"]["val_n_defect"] == 0
    m = fit_anomaly(data / "train" / "good", tmp_path / "r2", holdout=0.5, coreset=0.05, max_false_reject=0.3)
    assert m["threshold"]["false_reject_upper_bound"] > 0.3 and "cannot show" in m["threshold"]["note"]


def test_bad_input_is_one_line_and_exit_2(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    both = tmp_path / "both"
    shutil.copytree(data / "test", both)
    (both / "good").rename(both / "fine")
    # Class folders, none named good or ok: the user must say which one is.
    assert main(["finetune", str(both), "--task", "anomaly", "--out", str(tmp_path / "r")]) == 2
    assert "--ok-class" in capsys.readouterr().err
    assert main(["finetune", str(both), "--task", "anomaly", "--ok-class", "nosuch", "--out", str(tmp_path / "r")]) == 2
    assert "no class folder 'nosuch'" in capsys.readouterr().err
    assert main(["finetune", str(data / "train" / "good"), "--task", "anomaly", "--method", "knn",
                 "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r" / "finetune").exists()


def test_auroc_without_scikit_learn_matches_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from sklearn.metrics import roc_auc_score

    from edge_tl.metrics import auroc

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + labels, 1)  # with ties
    expected = roc_auc_score(labels, s)
    monkeypatch.setitem(sys.modules, "sklearn.metrics", None)
    assert auroc(labels, s) == pytest.approx(expected, abs=1e-12)


def test_greedy_coreset_covers_every_cluster() -> None:
    from edge_tl.anomaly.coreset import greedy_coreset

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 20
    x = np.concatenate([c + rng.normal(size=(200, 16)) for c in centres]).astype(np.float32)
    idx = greedy_coreset(x, 5, seed=1, project_dim=64)
    assert sorted(set(idx // 200)) == [0, 1, 2, 3, 4]
    assert len(greedy_coreset(x, 5000)) == len(x)


def test_pipeline_file_fits_and_exports_an_anomaly_model(data: Path, tmp_path: Path) -> None:
    from edge_tl.pipeline import run_pipeline

    path = tmp_path / "p.toml"
    path.write_text(f'[finetune]\ndata = "{data / "train" / "good"}"\nout = "run"\ntask = "anomaly"\n'
                    f'val = "{data / "test"}"\n\n[export]\ntargets = ["cpu-onnxruntime-fp32"]\n')
    manifest, reports, bundled = run_pipeline(path, quiet=True)
    assert manifest["task"] == "anomaly" and manifest["anomaly"]["method"] == "padim"
    assert reports == [] and bundled is None
    split = json.loads((tmp_path / "run" / "finetune" / "split.json").read_text())
    # Paths are relative to the images' common folder, which every stage joins them to.
    assert Path(split["root"]) == data.resolve() and not Path(split["val"][0][0]).is_absolute()
    tm = json.loads((tmp_path / "run" / "targets" / "cpu-onnxruntime-fp32" / "manifest.json").read_text())
    assert tm["validation"]["agreement"] == 1.0


def test_padim_modes_score_each_patch_against_its_nearest_mode() -> None:
    import torch

    from edge_tl.anomaly.padim import head_class

    PaDiMHead = head_class()
    torch.manual_seed(0)
    p, d = 4, 3
    two = PaDiMHead(p, d, clusters=2)
    ones = [PaDiMHead(p, d) for _ in range(2)]
    for k, one in enumerate(ones):
        a = torch.randn(p, d, d)
        one.mean.copy_(torch.randn(p, d) * 3)
        one.inv_cov.copy_(a @ a.transpose(1, 2) + torch.eye(d))
        two.mean[k] = one.mean
        two.inv_cov[k] = one.inv_cov
    f = torch.randn(5, d, 2, 2) * 3
    expected = torch.minimum(ones[0](f), ones[1](f))
    assert torch.allclose(two(f), expected, atol=1e-5)
    assert not torch.allclose(ones[0](f), ones[1](f))


def test_two_kinds_of_part_fit_as_two_modes_and_export(tmp_path: Path) -> None:
    from edge_tl.anomaly.fit import MODE_TOLERANCE, fit_anomaly
    from edge_tl.stages.export import export

    data = write_two_mode_set(tmp_path / "set")
    m = fit_anomaly(data / "train" / "good", tmp_path / "k2", val_dir=data / "test", clusters=2)
    modes = m["method"]["clusters"]
    # k-means splits the two kinds of part exactly.
    assert m["anomaly"]["clusters"] == 2 and modes["images_per_mode"] == [20, 20]
    positions, dim = m["anomaly"]["bank"], m["anomaly"]["dim"]
    assert m["bank"]["mb"] == pytest.approx(2 * positions * (dim + dim * dim) * 4 / 1e6)
    assert m["metrics"]["val_auroc"] >= 0.9
    tm = export(tmp_path / "k2", "cpu-onnxruntime-fp32")
    assert tm["validation"]["agreement"] == 1.0 and tm["validation"]["max_abs_logit_diff"] < 1e-3
    # auto: the candidates are judged on the threshold images only, and the fewest modes within the
    # tolerance of the best win.
    m = fit_anomaly(data / "train" / "good", tmp_path / "auto", val_dir=data / "test")
    modes = m["method"]["clusters"]
    cands = {c["k"]: c["auroc_threshold_images"] for c in modes["candidates"]}
    assert set(cands) == {1, 2}  # 3 modes of 40 images would leave one under the minimum
    assert modes["k"] == min(k for k, a in cands.items() if a >= max(cands.values()) - MODE_TOLERANCE)
    # Good images only: nothing to judge modes by, so one unless asked.
    m = fit_anomaly(data / "train" / "good", tmp_path / "good-only", holdout=0.3)
    assert m["method"]["clusters"]["k"] == 1


def test_auto_clusters_says_why_it_kept_one_mode(tmp_path: Path) -> None:
    """With defect threshold images but too few good images for two modes, ``auto`` keeps one mode and
    the manifest says so, not "no defect threshold images" (the rule's text used to say that whenever
    one candidate was left)."""
    from edge_tl.anomaly.fit import MIN_MODE_IMAGES, fit_anomaly

    data = write_anomaly_set(tmp_path / "set", n_train=12, n_good_val=4, n_defect=4)
    m = fit_anomaly(data / "train" / "good", tmp_path / "r", val_dir=data / "test")
    assert m["data"]["threshold_per_class"][1] > 0 and m["data"]["train_good"] < 2 * MIN_MODE_IMAGES
    modes = m["method"]["clusters"]
    assert modes["k"] == 1 and "candidates" not in modes
    assert "no defect" not in modes["rule"]
    assert modes["rule"] == f"one mode (2 or 3 modes would leave a mode under {MIN_MODE_IMAGES} good images)"
    # Good images only: that is the reason given.
    m = fit_anomaly(data / "train" / "good", tmp_path / "good-only", holdout=0.3)
    assert m["method"]["clusters"]["rule"] == "one mode (no defect threshold images)"


def test_bad_clusters_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_two_mode_set(tmp_path / "set", n_train=10, n_test=2)
    good = str(data / "train" / "good")
    for args, said in ((["--clusters", "3"], "use fewer --clusters"),
                       (["--clusters", "2", "--method", "patchcore"], "--clusters is for --method padim"),
                       (["--clusters", "many"], "count of modes or auto"),
                       (["--clusters", "9"], "between 1 and 8")):
        assert main(["-q", "finetune", good, "--task", "anomaly", "--val", str(data / "test"),
                     "--out", str(tmp_path / "r"), *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1, (args, err)
    assert not (tmp_path / "r" / "finetune").exists()


@pytest.mark.parametrize("arch", ["mobilenet_v2", "efficientnet_lite0"])
def test_feature_taps_are_found_at_input_sizes_that_are_not_a_multiple_of_32(arch: str) -> None:
    """At 260 px (Lite2's own size) padded stages give 33 and 17 positions: 260/17 is 15.3, not 16. The taps
    must be the same stages as at 256 px, where every ratio is exact."""
    if arch.startswith("efficientnet"):
        pytest.importorskip("timm")
    from edge_tl.anomaly.model import backbone_stages
    from edge_tl.models import build_backbone, stride_taps

    stages = backbone_stages(build_backbone(arch), arch)
    taps = stride_taps(stages, 260, (8, 16, 32))  # the anomaly models' and the detector's
    assert taps is not None and taps == stride_taps(stages, 256, (8, 16, 32))


def test_a_reported_half_of_a_few_images_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """2 good and 2 defect images left to report on: the run goes on, but says its rates rest on them."""
    from edge_tl.anomaly.fit import MIN_FIGURE_IMAGES, split_images

    data = write_anomaly_set(tmp_path / "small", n_train=12, n_good_val=4, n_defect=4)
    with caplog.at_level("WARNING", logger="edge_tl"):
        split = split_images(data / "train" / "good", data / "test", None, None, 1, seed=0)
    assert sorted(s.label for s in split.val) == [0, 0, 1, 1]
    said = [r.getMessage() for r in caplog.records if "reported half" in r.getMessage()]
    assert len(said) == 1 and "2 good and 2 defect" in said[0] and f"fewer than {MIN_FIGURE_IMAGES}" in said[0]
    caplog.clear()
    big = write_anomaly_set(tmp_path / "big", n_train=12, n_good_val=2 * MIN_FIGURE_IMAGES,
                            n_defect=2 * MIN_FIGURE_IMAGES)
    with caplog.at_level("WARNING", logger="edge_tl"):
        split_images(big / "train" / "good", big / "test", None, None, 1, seed=0)
    assert not [r for r in caplog.records if "reported half" in r.getMessage()]
