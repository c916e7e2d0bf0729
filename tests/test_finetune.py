"""Fine-tuning modes, artifacts, weights resolution and the distributed path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edge_tl.checkpoint import load_model
from edge_tl.errors import ConfigError
from edge_tl.manifest import read_manifest, staged_folder
from edge_tl.models import build_model, freeze_for_mode
from edge_tl.stages.finetune import finetune
from edge_tl.training import TrainConfig
from edge_tl.weights import resolve_weights


def test_linear_run_artifacts(finetuned_run: Path) -> None:
    ft = finetuned_run / "finetune"
    manifest = read_manifest(ft)  # verifies every file's sha256
    assert manifest["arch"] == "mobilenet_v2" and manifest["mode"] == "linear"
    assert manifest["weights"]["kind"] == "imagenet" and len(manifest["weights"]["sha256"]) == 64
    assert manifest["preprocessing"]["crop"] == 224 and manifest["preprocessing"]["mean"][0] == 0.485
    assert manifest["metrics"]["val_top1"] >= 0.85  # three visibly different classes
    assert set(manifest["versions"]) >= {"torch", "torchvision", "python"}
    # A plain state_dict: loads with weights_only and no code.
    state = torch.load(ft / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model, _ = load_model(ft)
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 3)


def test_linear_mode_keeps_backbone_and_batchnorm_statistics(finetuned_run: Path) -> None:
    state, _ = resolve_weights("mobilenet_v2", "imagenet")
    tuned = torch.load(finetuned_run / "finetune" / "model.pt", weights_only=True)
    for key, value in state.items():
        if key.startswith("classifier.1"):
            continue
        assert torch.equal(tuned[key], value), key  # includes running_mean / running_var
    assert "features.1.conv.0.1.running_mean" in tuned


def test_freeze_modes_choose_trainable_parameters() -> None:
    model = build_model("resnet18", 4)
    frozen = freeze_for_mode(model, "resnet18", "partial", unfreeze=1)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "fc"}
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen)
    with pytest.raises(ConfigError):
        freeze_for_mode(model, "resnet18", "partial", unfreeze=99)
    assert freeze_for_mode(model, "resnet18", "full") == []
    assert all(p.requires_grad for p in model.parameters())


def test_partial_mode_trains_last_blocks_only(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    m = finetune(image_folder, out, arch="mobilenet_v3_small", weights="none",
                 train_cfg=TrainConfig(mode="partial", unfreeze=2, epochs=2, batch_size=8, quiet=True, workers=0,
                                       progressive=True))
    assert len(m["metrics"]["history"]) == 2
    fresh = build_model("mobilenet_v3_small", 3)
    torch.manual_seed(0)
    tuned = torch.load(out / "finetune" / "model.pt", weights_only=True)
    # The first block was frozen: its BN statistics are the initial ones (mean 0, var 1).
    assert torch.equal(tuned["features.0.1.running_mean"], fresh.state_dict()["features.0.1.running_mean"])
    assert not torch.equal(tuned["features.12.1.running_mean"], fresh.state_dict()["features.12.1.running_mean"])


def test_weights_dir_hash_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge_tl.weights.OFFLINE_PACKAGES", ())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("EDGE_TL_WEIGHTS_DIR", str(tmp_path / "w"))
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "mobilenet_v2-b0353104.pth").write_bytes(b"corrupt")
    with pytest.raises(ConfigError, match="corrupt"):
        resolve_weights("mobilenet_v2", "imagenet")


def test_missing_weights_name_the_expected_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge_tl.weights.OFFLINE_PACKAGES", ())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("EDGE_TL_WEIGHTS_DIR", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"resnet18-f37072fd\.pth.*EDGE_TL_WEIGHTS_DIR"):
        resolve_weights("resnet18", "imagenet")


def test_weights_dir_file_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, src = resolve_weights("mobilenet_v2", "imagenet")
    wdir = tmp_path / "w"
    wdir.mkdir()
    shutil.copyfile(src["path"], wdir / Path(src["path"]).name)
    monkeypatch.setenv("EDGE_TL_WEIGHTS_DIR", str(wdir))
    _, src2 = resolve_weights("mobilenet_v2", "imagenet")
    assert Path(src2["path"]).parent == wdir and src2["sha256"] == src["sha256"]


def test_interrupted_stage_leaves_previous_artifact(run_copy: Path) -> None:
    ft = run_copy / "finetune"
    before = (ft / "model.pt").read_bytes()
    with pytest.raises(KeyboardInterrupt), staged_folder(ft) as tmp:
        (tmp / "model.pt").write_bytes(b"half")
        raise KeyboardInterrupt
    assert (ft / "model.pt").read_bytes() == before
    assert not [p for p in run_copy.iterdir() if p.name.startswith(".")]


@pytest.mark.distributed
@pytest.mark.parametrize(("mode", "port"), [("partial", 29517), ("linear", 29518)])
def test_torchrun_two_processes_gloo(image_folder: Path, tmp_path: Path, mode: str, port: int) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "edge_tl", "finetune", str(image_folder), "--out", str(out), "--arch", "mobilenet_v3_small",
           "--weights", "none", "--mode", mode, "--unfreeze", "1", "--epochs", "1", "--batch-size", "8",
           "--workers", "0", "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "finetune" / "manifest.json").read_text())
    assert manifest["timings"]["world_size"] == 2
    n_val = len(json.loads((out / "finetune" / "split.json").read_text())["val"])
    # Every validation image was evaluated exactly once across the two ranks.
    assert sum(map(sum, manifest["metrics"]["confusion"])) == n_val == 6
