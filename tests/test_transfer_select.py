"""Before training: LogME, probes, the learning curve and ``select`` (ranking, latency, negative transfer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_tl.cli import main
from edge_tl.transfer.curve import draw_shots, learning_curve, parse_shots
from edge_tl.transfer.logme import logme
from edge_tl.transfer.select import Candidate, flag_negative_transfer, pareto, recommend, select


def _log_marginal(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y | 0, I/beta + F F^T/alpha), by dense linear algebra: LogME's objective by another route."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet + y @ np.linalg.solve(cov, y)))


@pytest.mark.parametrize("d", [3, 12])  # fewer and more feature dimensions than samples
def test_logme_is_the_maximised_evidence(d: int) -> None:
    from scipy.optimize import minimize

    rng = np.random.default_rng(d)
    f = rng.normal(size=(8, d))
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    best = []
    for k in range(3):
        yk = (labels == k).astype(float)
        # maximise the dense objective over (log alpha, log beta): a coarse grid (beta up to e^20: with
        # more dimensions than samples the noise can vanish), then a general-purpose optimiser
        grid = [(la, lb) for la in np.linspace(-6, 6, 25) for lb in np.linspace(-6, 20, 53)]
        x0 = max(grid, key=lambda p, yk=yk: _log_marginal(f, yk, np.exp(p[0]), np.exp(p[1])))
        fits = [minimize(lambda p, yk=yk: -_log_marginal(f, yk, np.exp(p[0]), np.exp(p[1])), x0=list(start),
                         method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
                for start in (x0, (0.0, 0.0))]
        best.append(max(-fit.fun for fit in fits) / len(yk))
    assert logme(f, labels) == pytest.approx(np.mean(best), abs=1e-6)


def test_logme_prefers_features_that_carry_the_labels() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    informative = np.eye(3)[labels] * 3 + rng.normal(size=(60, 3)) * 0.5
    noise = rng.normal(size=(60, 3))
    assert logme(np.hstack([informative, noise]), labels) > logme(np.hstack([noise, rng.normal(size=(60, 3))]), labels)
    with pytest.raises(ValueError):
        logme(np.zeros((1, 4)), np.zeros(1))


def test_shots_parse_and_draw() -> None:
    assert parse_shots("10,1,all,5,5") == [1, 5, 10, None]
    for bad in ("0", "x", ""):
        with pytest.raises(Exception, match="--shots"):
            parse_shots(bad)
    labels = np.array([0] * 10 + [1] * 3)
    idx = draw_shots(labels, 5, seed=1)
    assert np.bincount(labels[idx]).tolist() == [5, 3]  # a small class gives what it has
    assert np.array_equal(idx, draw_shots(labels, 5, seed=1))
    assert len(draw_shots(labels, None, seed=1)) == 13


def test_curve_is_reproducible_from_its_seeds() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 2

    def data(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(3), n)
        return centres[y] + rng.normal(size=(len(y), 16)) * 1.5, y

    xt, yt = data(30)
    xv, yv = data(20)
    a = learning_curve(xt, yt, xv, yv, [1, 5, None], repeats=2, seed=4)
    b = learning_curve(xt, yt, xv, yv, [1, 5, None], repeats=2, seed=4)
    c = learning_curve(xt, yt, xv, yv, [1, 5, None], repeats=2, seed=5)
    assert a == b
    assert [r["seeds"] for r in a] == [[4000, 4001]] * 2 + [[4000]]
    assert a[0]["top1"] != c[0]["top1"]  # other seeds, other draws
    assert a[-1]["top1_mean"] >= a[0]["top1_mean"]  # every image beats one per class here
    assert a[-1]["images"] == 90


def _row(name: str, top1: float, p50: float | None, arch: str = "a", kind: str = "imagenet", size: int = 224) -> dict:
    return {"name": name, "status": "scored", "arch": arch, "input_size": size, "linear_top1": top1, "logme": 0.0,
            "images": 600,
            "scratch": kind == "none", "source": {"kind": kind}, "weights": kind,
            "latency": {"fp32": {"p50_ms": p50}} if p50 is not None else {}}


def test_negative_transfer_pareto_and_budget() -> None:
    rows = [_row("imnet", 0.90, 5.0), _row("lineA", 0.80, 5.0, kind="run"), _row("scratch", 0.805, 5.0, kind="none"),
            _row("small", 0.895, 2.0, size=160), _row("big", 0.93, 9.0, size=288)]
    flag_negative_transfer(rows)
    flags = {r["name"]: r["flags"] for r in rows}
    assert flags["lineA"] == ["no_better_than_scratch", "worse_than_imagenet"]
    assert flags["imnet"] == [] and flags["scratch"] == []
    pareto(rows, "fp32")
    assert {r["name"] for r in rows if r["pareto"]} == {"imnet", "small", "big"}  # lineA, scratch: imnet beats both
    assert recommend(rows, "fp32", None)["name"] == "big"
    assert recommend(rows, "fp32", 6.0)["name"] == "small"  # within a standard error of imnet's probe, faster
    assert recommend(rows, "fp32", 1.0) is None


@pytest.fixture(scope="module")
def selected(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("select")
    cands = [Candidate("mobilenet_v2", "imagenet", 64), Candidate("mobilenet_v2", "imagenet", 96),
             Candidate("mobilenet_v2", "none", 96), Candidate("resnet18", "imagenet", 64),
             Candidate("resnet18", "none", 64, if_pretrained=True)]
    with pytest.MonkeyPatch.context() as mp:
        # torchvision's download is the last place resnet18's weights are looked for: make it fail here
        # without even a DNS lookup (tests touch no network; a lookup left the process unstable)
        import torchvision.models._api as tv_api

        def offline(*_a: object, **_k: object) -> None:
            raise OSError("no network in tests")

        mp.setattr(tv_api, "load_state_dict_from_url", offline)
        # workers=0: forked loader workers leave torch's SIGCHLD handler in this process, and a later test
        # that SIGKILLs a child of its own (test_watch) then crashed the whole pytest process
        result = select(image_folder, "cpu-onnxruntime-fp32", out, candidates=cands, per_class=8, verify_k=2,
                        workers=0)
    return {"out": out, "result": result}


def test_select_ranks_scores_and_measures(selected: dict) -> None:
    result, out = selected["result"], selected["out"]
    rows = {r["name"]: r for r in result["candidates"]}
    assert set(rows) == {"mobilenet_v2/imagenet@64", "mobilenet_v2/imagenet@96", "mobilenet_v2/scratch@96",
                         "resnet18/imagenet@64", "resnet18/scratch@64"}
    # a default scratch candidate is skipped when no pretrained one of its architecture scored
    skipped = rows["resnet18/scratch@64"]
    assert skipped["status"] == "unavailable" and "no pretrained" in skipped["reason"]
    # resnet18's ImageNet weights are not installed here: listed with the reason, not an error
    assert rows["resnet18/imagenet@64"]["status"] == "unavailable"
    assert "resnet18" in rows["resnet18/imagenet@64"]["reason"]
    scored = [r for r in result["candidates"] if r["status"] == "scored"]
    assert [r["rank"] for r in scored] == [1, 2, 3]
    assert scored[-1]["scratch"]  # a random-initialised backbone ranks last
    assert result["scored_on"]["images"] == 8 * 3 <= 36  # at most per_class per class, training split only
    for r in scored:
        assert r["latency"]["status"] == "measured" and r["latency"]["fp32"]["p50_ms"] > 0
    assert result["recommendation"]["name"] != "mobilenet_v2/scratch@96"
    assert "--arch mobilenet_v2 --weights imagenet --input-size" in result["recommendation"]["command"]
    assert "probe top-1" in result["recommendation"]["why"]
    v = result["verify"]
    assert v["k"] == 2 and len(v["val_top1"]) == 2 and all(0 <= t <= 1 for t in v["val_top1"])
    assert v["kendall_tau_linear_top1"] in (-1.0, 1.0, None)  # two candidates: the order held or flipped
    assert json.loads((out / "select.json").read_text())["target"] == "cpu-onnxruntime-fp32"
    page = (out / "select.html").read_text()
    assert "<svg" in page and "unavailable" in page and "Kendall" in page
    assert list((out / "cache").glob("*.npz"))  # features cached per candidate


def test_select_reuses_cached_features(selected: dict, image_folder: Path, tmp_path: Path) -> None:
    import time

    out = selected["out"]
    t0 = time.perf_counter()
    again = select(image_folder, "cpu-onnxruntime-fp32", out, candidates=[Candidate("mobilenet_v2", "imagenet", 64)],
                   per_class=8)
    first = next(r for r in selected["result"]["candidates"] if r["name"] == "mobilenet_v2/imagenet@64")
    assert again["candidates"][0]["logme"] == first["logme"]
    assert again["candidates"][0]["feature_seconds"] < 1.0 < time.perf_counter() - t0 + 1.0


def test_select_cli(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "cands.toml"
    toml.write_text('[[candidate]]\narch = "mobilenet_v2"\nweights = "imagenet"\ninput_size = 64\n'
                    '[[candidate]]\narch = "mobilenet_v2"\nweights = "none"\ninput_size = 64\n')
    code = main(["select", str(image_folder), "--target", "cpu-onnxruntime-fp32", "--candidates", str(toml),
                 "--per-class", "6", "--budget-ms", "10000", "--out", str(tmp_path / "s"), "-q"])
    out = capsys.readouterr().err  # summaries go to stderr, like every command's
    assert code == 0, out
    assert " 1 mobilenet_v2/imagenet@64: probe top-1" in out and "recommended:" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[candidate]]\nweights = "imagenet"\n')
    typo = tmp_path / "typo.toml"
    typo.write_text('[[candidate]]\narch = "mobilenet_v9"\n')
    for args in (["--candidates", str(bad)], ["--candidates", str(typo)], ["--sizes", "12"], ["--budget-ms", "-1"]):
        assert main(["select", str(image_folder), "-t", "cpu-onnxruntime-fp32", "--out", str(tmp_path / "x"),
                     *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err, err


def test_curve_cli(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["curve", str(image_folder), "--shots", "1,3,all", "--repeats", "2", "--input-size", "64", "-q"]
    assert main([*args, "--out", str(tmp_path / "c1")]) == 0
    a = json.loads((tmp_path / "c1" / "curve.json").read_text())
    assert main([*args, "--out", str(tmp_path / "c1")]) == 0  # the features come from the cache this time
    b = json.loads((tmp_path / "c1" / "curve.json").read_text())
    assert [r["top1"] for r in a["rows"]] == [r["top1"] for r in b["rows"]]  # same seeds, same figures
    assert [r["shots"] for r in a["rows"]] == [1, 3, "all"]
    assert sum(a["val_per_class"]) > 0 and "<svg" in (tmp_path / "c1" / "curve.html").read_text()
    assert main(["curve", str(image_folder), "--shots", "0", "--out", str(tmp_path / "c3")]) == 2


def test_bench_report_says_where_the_backbone_came_from(finetuned_run: Path, tmp_path: Path) -> None:
    import shutil

    from edge_tl.bench.html import transfer_html
    from edge_tl.bench.run import transfer_facts
    from edge_tl.rundir import RunDir

    run = tmp_path / "run"
    shutil.copytree(finetuned_run, run)
    path = run / "finetune" / "manifest.json"
    m = json.loads(path.read_text())
    m["weights"] = {"kind": "run", "path": "/runs/lineA/finetune", "sha256": "ab" * 32, "parent": m["weights"]}
    m["metrics"]["baseline"] = {"kind": "scratch", "val_top1": 0.5, "transfer_gain_top1": -0.1,
                                "transfer_gain_balanced_accuracy": -0.12, "transfer_helped": False,
                                "per_class_gain": {"blobs": -0.3, "vertical": 0.0, "horizontal": None}}
    path.write_text(json.dumps(m))
    facts = transfer_facts(RunDir(run))
    assert [s["kind"] for s in facts["sources"]] == ["run", "imagenet"]
    page = transfer_html(facts)
    assert "edge-tl run" in page and "ImageNet" in page and "/runs/lineA/finetune" in page
    assert "did NOT help" in page and "-30.00" in page
    assert transfer_html(None) == ""
