"""Choosing the source model: ``--weights run:RUN`` (an earlier run's backbone) and ``--baseline scratch``
(does transfer help at all, and on which classes does it hurt)."""

from __future__ import annotations

import json
import math
import pathlib
import re
import shutil
from pathlib import Path

import pytest
import torch

from edge_tl.cli import main
from edge_tl.cli.train import finetune_summary
from edge_tl.errors import ConfigError
from edge_tl.manifest import read_manifest, sha256_file
from edge_tl.models import build_model
from edge_tl.stages.finetune import finetune, weights_preprocessing
from edge_tl.training import TrainConfig
from edge_tl.weights import resolve_weights

HEAD = ("classifier.1.weight", "classifier.1.bias")


def _rewrite_model(stage: Path, state: dict) -> None:
    """Replace a stage's model.pt and keep its manifest's sha256 in step (so only the content is tested)."""
    torch.save(state, stage / "model.pt")
    manifest = json.loads((stage / "manifest.json").read_text())
    manifest["files"]["model.pt"] = sha256_file(stage / "model.pt")
    (stage / "manifest.json").write_text(json.dumps(manifest))


def _edit_manifest(folder: Path, **fields: object) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(fields)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _cfg(epochs: int = 2) -> TrainConfig:
    return TrainConfig(mode="linear", epochs=epochs, seed=0, quiet=True, workers=0, device="cpu")


# -- run:PATH: the backbone, without pickle ------------------------------------------------------------


def test_run_weights_are_the_source_backbone_loaded_without_pickle(
        run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ft = run_copy / "finetune"
    source = torch.load(ft / "model.pt", weights_only=True)
    # Make the source's backbone differ from ImageNet's (a linear run keeps ImageNet's backbone as is).
    source["features.18.0.weight"] += 0.25
    source["features.1.conv.0.1.running_mean"] += 0.5
    _rewrite_model(ft, source)
    imagenet, _ = resolve_weights("mobilenet_v2", "imagenet")

    calls: list[dict] = []
    real_load = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    state, src = resolve_weights("mobilenet_v2", f"run:{run_copy}")
    monkeypatch.setattr(torch, "load", real_load)
    assert calls and all(c.get("weights_only") is True for c in calls)

    assert not set(HEAD) & set(state)  # the source's 3-class head is dropped
    model = build_model("mobilenet_v2", 5, state)
    tuned = model.state_dict()
    for key, value in source.items():
        if key not in HEAD:
            assert torch.equal(tuned[key], value), key
    assert not torch.equal(tuned["features.18.0.weight"], imagenet["features.18.0.weight"])
    assert model.classifier[1].out_features == 5
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 5)

    manifest = read_manifest(ft)
    assert src["kind"] == "run" and src["stage"] == "finetune" and src["arch"] == "mobilenet_v2"
    assert src["path"] == str(ft.resolve()) and src["sha256"] == sha256_file(ft / "model.pt")
    assert src["classes"] == manifest["classes"] and src["preprocessing"] == manifest["preprocessing"]
    assert src["parent"]["kind"] == "imagenet"
    # The stage folder itself names the same source.
    assert resolve_weights("mobilenet_v2", f"run:{ft}")[1] == src


class _Payload:
    """What an unsafe unpickler would run: it creates a marker file."""

    marker: Path

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (self.marker,))


def test_a_model_pt_holding_pickled_objects_is_refused(run_copy: Path, tmp_path: Path) -> None:
    ft = run_copy / "finetune"
    payload = _Payload()
    payload.marker = tmp_path / "code-ran"
    _rewrite_model(ft, {**torch.load(ft / "model.pt", weights_only=True), "extra": payload})
    with pytest.raises(ConfigError, match="pickled objects") as err:
        resolve_weights("mobilenet_v2", f"run:{run_copy}")
    assert "\n" not in str(err.value)
    assert not payload.marker.exists()


def test_bad_sources_are_one_line_config_errors(run_copy: Path, tmp_path: Path) -> None:
    ft = run_copy / "finetune"

    def refused(weights: str, match: str, arch: str = "mobilenet_v2") -> None:
        with pytest.raises(ConfigError, match=match) as err:
            resolve_weights(arch, weights)
        assert "\n" not in str(err.value)

    refused(f"run:{tmp_path / 'nosuch'}", "no such run directory")
    (tmp_path / "empty").mkdir()
    refused(f"run:{tmp_path / 'empty'}", "no finished run")
    refused("run:", "needs a run directory")
    refused(f"run:{run_copy}", r"holds a mobilenet_v2 backbone but --arch is resnet18; pass --arch mobilenet_v2",
            arch="resnet18")

    original = (ft / "model.pt").read_bytes()
    (ft / "model.pt").write_bytes(original[:1000])  # truncated: the manifest's sha256 no longer matches
    refused(f"run:{run_copy}", "sha256 mismatch")
    (ft / "model.pt").write_bytes(b"not a torch file")  # listed with its own sha256: torch.load itself fails
    _edit_manifest(ft, files={"model.pt": sha256_file(ft / "model.pt"), "split.json": sha256_file(ft / "split.json")})
    refused(f"run:{run_copy}", "cannot load weights")
    (ft / "model.pt").write_bytes(original)
    _edit_manifest(ft, files={"model.pt": sha256_file(ft / "model.pt"), "split.json": sha256_file(ft / "split.json")})
    assert resolve_weights("mobilenet_v2", f"run:{run_copy}")[1]["kind"] == "run"

    # A pruned model (its widths differ) is refused and the unpruned one named.
    pruned = run_copy / "prune"
    shutil.copytree(ft, pruned)
    _edit_manifest(pruned, stage="prune", structure={"features.0.0": {"type": "Conv2d", "in": 3, "out": 16,
                                                                       "groups": 1}})
    refused(f"run:{pruned}", rf"is pruned .*start from --weights run:{re.escape(str(ft))}$")
    # A run directory means its finetune/ stage, even when a prune/ stage exists.
    assert resolve_weights("mobilenet_v2", f"run:{run_copy}")[1]["stage"] == "finetune"

    _edit_manifest(ft, task="anomaly")
    refused(f"run:{run_copy}", "anomaly run")


def test_build_model_takes_a_backbone_without_head_and_nothing_else_missing() -> None:
    imagenet, _ = resolve_weights("mobilenet_v2", "imagenet")
    headless = {k: v for k, v in imagenet.items() if k not in HEAD}
    model = build_model("mobilenet_v2", 4, headless)
    assert torch.equal(model.state_dict()["features.0.0.weight"], imagenet["features.0.0.weight"])
    missing = dict(headless)
    del missing["features.3.conv.2.weight"]
    with pytest.raises(ConfigError, match=r"1 missing key\(s\), e.g. features.3.conv.2.weight"):
        build_model("mobilenet_v2", 4, missing)
    with pytest.raises(ConfigError, match=r"unexpected key\(s\), e.g. extra.weight"):
        build_model("mobilenet_v2", 4, {**headless, "extra.weight": torch.zeros(1)})
    wrong = {**headless, "features.0.0.weight": torch.zeros(1, 1, 1, 1)}
    with pytest.raises(ConfigError, match="do not fit mobilenet_v2"):
        build_model("mobilenet_v2", 4, wrong)


# -- the preprocessing contract ------------------------------------------------------------------------


def test_a_preprocessing_conflict_with_the_source_is_refused(
        finetuned_run: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, src = resolve_weights("mobilenet_v2", f"run:{finetuned_run}")
    for size, resize in ((160, None), (None, "letterbox"), (192, "full")):
        with pytest.raises(ConfigError, match="the source run was trained at 224 px with --resize shorter"):
            weights_preprocessing("mobilenet_v2", src, size, resize)
    # Options that agree with the source, or leave the choice to it, are fine.
    for size, resize in ((None, None), (224, "shorter"), (None, "auto")):
        pre = weights_preprocessing("mobilenet_v2", src, size, resize)
        assert pre.to_dict() == src["preprocessing"]

    out = tmp_path / "b"
    base = ["finetune", str(image_folder), "--out", str(out), "--weights", f"run:{finetuned_run}",
            "--epochs", "1", "--workers", "0", "--quiet"]
    assert main([*base, "--input-size", "160"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --input-size 160 conflicts with --weights run:") and err.count("\n") == 1
    assert "trained at 224 px with --resize shorter" in err
    assert main([*base, "--resize", "letterbox"]) == 2
    assert "--resize letterbox conflicts" in capsys.readouterr().err
    assert main([*base, "--arch", "resnet18"]) == 2
    assert "--arch is resnet18" in capsys.readouterr().err
    assert main([*base, "--task", "anomaly"]) == 2
    assert "--task classify" in capsys.readouterr().err
    assert not (out / "finetune").exists()


def test_a_new_run_records_the_chain_and_keeps_the_sources_contract(
        run_copy: Path, image_folder: Path, tmp_path: Path) -> None:
    ft = run_copy / "finetune"
    # A source trained on another contract than ImageNet's default: the new run must take it, not 224/shorter.
    contract = {**read_manifest(ft)["preprocessing"], "crop": 160, "resize": 183, "resize_mode": "letterbox"}
    _edit_manifest(ft, preprocessing=contract)
    m = finetune(image_folder, tmp_path / "b", weights=f"run:{ft}", train_cfg=_cfg(2))
    assert m["preprocessing"] == contract
    assert m["resize"]["requested"] == "letterbox" and "source run" in m["resize"]["reason"]
    w = m["weights"]
    assert w["kind"] == "run" and w["stage"] == "finetune" and w["path"] == str(ft.resolve())
    assert w["sha256"] == sha256_file(ft / "model.pt") and w["classes"] == ["blobs", "horizontal", "vertical"]
    assert w["parent"]["kind"] == "imagenet" and len(w["parent"]["sha256"]) == 64
    assert read_manifest(tmp_path / "b" / "finetune")["weights"] == w
    # Linear mode: the new run's backbone is the source run's.
    src_state = torch.load(ft / "model.pt", weights_only=True)
    new_state = torch.load(tmp_path / "b" / "finetune" / "model.pt", weights_only=True)
    assert all(torch.equal(new_state[k], v) for k, v in src_state.items() if k not in HEAD)


def test_a_pipeline_file_takes_run_paths_relative_to_itself(image_folder: Path, tmp_path: Path) -> None:
    from edge_tl.pipeline import run_pipeline

    pipe = tmp_path / "cfg" / "p.toml"
    pipe.parent.mkdir()
    pipe.write_text(f'[finetune]\ndata = "{image_folder}"\nout = "{tmp_path / "run"}"\nweights = "run:../nosuch"\n')
    with pytest.raises(ConfigError, match=re.escape(f"run:{tmp_path / 'nosuch'}: no such run directory")):
        run_pipeline(pipe, quiet=True)


# -- --baseline scratch --------------------------------------------------------------------------------


def test_baseline_scratch_records_what_transfer_gained(
        image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["finetune", str(image_folder), "--out", str(out), "--epochs", "3", "--workers", "0",
                 "--device", "cpu", "--baseline", "scratch", "--quiet"]) == 0
    manifest = read_manifest(out / "finetune")
    m, b = manifest["metrics"], manifest["metrics"]["baseline"]
    assert b["kind"] == "scratch"
    assert set(b) >= {"val_top1", "val_balanced_accuracy", "per_class_recall", "transfer_gain_top1",
                      "transfer_gain_balanced_accuracy", "per_class_gain", "transfer_helped",
                      "negative_transfer_classes", "train_seconds"}
    assert math.isfinite(b["transfer_gain_top1"]) and math.isfinite(b["transfer_gain_balanced_accuracy"])
    assert b["transfer_gain_top1"] == pytest.approx(m["val_top1"] - b["val_top1"])
    assert b["transfer_gain_balanced_accuracy"] == pytest.approx(m["val_balanced_accuracy"]
                                                                 - b["val_balanced_accuracy"])
    assert isinstance(b["transfer_helped"], bool)
    assert b["transfer_helped"] == (b["transfer_gain_balanced_accuracy"] > 0)
    classes = manifest["classes"]
    assert list(b["per_class_recall"]) == list(b["per_class_gain"]) == classes
    for c in classes:
        assert b["per_class_gain"][c] == pytest.approx(m["per_class_recall"][c] - b["per_class_recall"][c])
    assert b["negative_transfer_classes"] == [c for c in classes if b["per_class_gain"][c] < 0]
    assert b["train_seconds"] > 0
    assert set(manifest["files"]) == {"model.pt", "split.json"}  # the scratch model is not kept
    assert "transfer vs scratch: top-1" in capsys.readouterr().err

    # The summary line names the classes where transfer hurt.
    hurt = {**manifest, "metrics": {**m, "baseline": {**b, "transfer_helped": False,
                                                      "negative_transfer_classes": [classes[0]]}}}
    line = finetune_summary(hurt, out).splitlines()[-1]
    assert line.startswith("transfer vs scratch:")
    assert f"did not help; lower recall than scratch on {classes[0]} " in line


def test_baseline_is_refused_where_it_means_nothing(image_folder: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", str(image_folder), "--task", "anomaly", "--baseline", "scratch",
                 "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --baseline is for --task classify") and err.count("\n") == 1
    with pytest.raises(ConfigError, match="nothing to compare"):
        finetune(image_folder, tmp_path / "b", weights="none", baseline="scratch", train_cfg=_cfg(1))
    with pytest.raises(ConfigError, match="unknown --baseline"):
        finetune(image_folder, tmp_path / "b", baseline="imagenet", train_cfg=_cfg(1))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
