"""Cached partial fine-tuning, the feature engine, seeding, resize modes and class balance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edge_tl.data import scan_image_folder
from edge_tl.errors import ConfigError
from edge_tl.features import PrefixEngine
from edge_tl.manifest import read_manifest
from edge_tl.models import architectures, build_model, count_blocks, split_at
from edge_tl.preprocess import Preprocess, crop_loss
from edge_tl.stages.finetune import choose_resize, finetune
from edge_tl.training import TrainConfig, _criterion, _epoch_order, _val_score, predict_logits


@pytest.mark.parametrize("arch", architectures())
def test_prefix_and_tail_compose_to_the_model(arch: str) -> None:
    model = build_model(arch, 3, seed=1).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for trainable in (1, count_blocks(model, arch) - 1):
        prefix, tail = split_at(model, arch, trainable)
        with torch.no_grad():
            assert torch.equal(tail(prefix(x)), model(x))
        # The tail holds the model's own modules: training it trains the model.
        assert {id(p) for p in tail.parameters()} <= {id(p) for p in model.parameters()}
    with pytest.raises(ConfigError, match="--unfreeze"):
        split_at(model, arch, count_blocks(model, arch))


def test_same_seed_same_head_whatever_ran_before() -> None:
    a = build_model("mobilenet_v2", 4, seed=0)
    torch.rand(1000)  # the global generator moves; the head must not
    b = build_model("mobilenet_v2", 4, seed=0)
    c = build_model("mobilenet_v2", 4, seed=1)
    assert torch.equal(a.classifier[1].weight, b.classifier[1].weight)
    assert torch.equal(a.classifier[1].bias, b.classifier[1].bias)
    assert not torch.equal(a.classifier[1].weight, c.classifier[1].weight)
    bound = 1 / np.sqrt(a.classifier[1].in_features)
    assert float(a.classifier[1].weight.detach().abs().max()) <= bound


def test_finetune_twice_with_one_seed_gives_one_model(image_folder: Path, tmp_path: Path) -> None:
    cfg = {"mode": "linear", "epochs": 3, "seed": 0, "quiet": True, "workers": 0}
    finetune(image_folder, tmp_path / "a", train_cfg=TrainConfig(**cfg))
    torch.manual_seed(123)
    finetune(image_folder, tmp_path / "b", train_cfg=TrainConfig(**cfg))
    sa = torch.load(tmp_path / "a" / "finetune" / "model.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "finetune" / "model.pt", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("trainable", [None, 3])
def test_onnxruntime_engine_gives_torch_features(trainable: int | None) -> None:
    model = build_model("mobilenet_v2", 3, seed=0).eval()
    if trainable is None:  # linear mode: everything but the final linear layer
        model.classifier[1] = torch.nn.Identity()
        module = model
    else:
        module, _ = split_at(model, "mobilenet_v2", trainable)
    x = torch.randn(5, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    ort_engine = PrefixEngine(module, (3, 96, 96), "cpu", "onnxruntime")
    torch_engine = PrefixEngine(module, (3, 96, 96), "cpu", "torch")
    assert ort_engine.name == "onnxruntime" and PrefixEngine(module, (3, 96, 96)).name == "onnxruntime"
    a, b = ort_engine(x), torch_engine(x)
    assert a.shape == b.shape
    # Float rounding only: far below any difference a head could learn from.
    assert float((a - b).abs().max()) <= 1e-4 * max(1.0, float(b.abs().max()))
    with pytest.raises(ConfigError):
        PrefixEngine(module, (3, 96, 96), "cpu", "tensorflow")


def test_cached_partial_trains_the_tail_on_frozen_activations(image_folder: Path, tmp_path: Path) -> None:
    from edge_tl.checkpoint import load_model
    from edge_tl.data import split_from_json
    from edge_tl.manifest import read_json
    from edge_tl.weights import resolve_weights

    out = tmp_path / "run"
    m = finetune(image_folder, out, train_cfg=TrainConfig(mode="partial", unfreeze=2, views=2, epochs=4,
                                                          batch_size=8, quiet=True, workers=0))
    assert m["metrics"]["val_top1"] >= 0.85
    assert all("seconds" in h for h in m["metrics"]["history"])
    state, _ = resolve_weights("mobilenet_v2", "imagenet")
    tuned = torch.load(out / "finetune" / "model.pt", weights_only=True)
    # 19 feature blocks: 0..16 frozen (BN statistics too), 17 and 18 trained.
    assert torch.equal(tuned["features.16.conv.0.1.running_mean"], state["features.16.conv.0.1.running_mean"])
    assert torch.equal(tuned["features.3.conv.1.0.weight"], state["features.3.conv.1.0.weight"])
    assert not torch.equal(tuned["features.18.0.weight"], state["features.18.0.weight"])
    assert not torch.equal(tuned["features.17.conv.2.weight"], state["features.17.conv.2.weight"])
    # The recorded validation figures are the saved model's own.
    model, manifest = load_model(out / "finetune")
    root, _train, val = split_from_json(read_json(out / "finetune" / "split.json"))
    logits, labels, _ = predict_logits(model, root, val, Preprocess.from_dict(manifest["preprocessing"]), "cpu")
    assert float((logits.argmax(1) == labels).mean()) == pytest.approx(m["metrics"]["val_top1"])


def test_letterbox_and_full_keep_the_whole_frame() -> None:
    img = Image.new("RGB", (300, 100), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 30, 100))  # a dark band at the left end, cut by the centre crop
    shorter = Preprocess(resize=256, crop=224)
    assert np.asarray(shorter.resize_and_crop(img)).min() == 255  # the band is gone
    letter = Preprocess(resize=256, crop=224, resize_mode="letterbox")
    arr = np.asarray(letter.resize_and_crop(img))
    assert arr.shape == (224, 224, 3) and arr[112, 5].max() < 10  # the band is there
    assert tuple(arr[2, 112]) == letter.pad_color  # padded above and below
    # The pad normalises to ~0 (the mean pixel on the 8-bit grid).
    assert np.abs(letter(img)[:, 2, 112]).max() < 0.01
    full = Preprocess(resize=256, crop=224, resize_mode="full")
    arr = np.asarray(full.resize_and_crop(img))
    assert arr.shape == (224, 224, 3) and arr[112, 5].max() < 10 and arr[2, 112].min() == 255
    # The mode travels in the contract; old manifests without it read as "shorter".
    assert Preprocess.from_dict(letter.to_dict()).resize_mode == "letterbox"
    old = shorter.to_dict()
    del old["resize_mode"]
    assert Preprocess.from_dict(old).resize_mode == "shorter"
    with pytest.raises(ValueError, match="resize mode"):
        Preprocess(resize_mode="stretch")


def test_auto_resize_letterboxes_elongated_parts(tmp_path: Path) -> None:
    assert crop_loss(300, 300, 256, 224) == pytest.approx(1 - (224 / 256) ** 2)
    for name, size in (("square", (120, 120)), ("tiles", (360, 90))):
        for k in ("a", "b"):
            (tmp_path / name / k).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", size, (40 * i, 90, 200)).save(tmp_path / name / k / f"{i}.png")
    pre = Preprocess()
    for name, expected in (("square", "shorter"), ("tiles", "letterbox")):
        folder = scan_image_folder(tmp_path / name)
        mode, info = choose_resize(folder, folder.samples, pre, "auto")
        assert mode == expected, info
    folder = scan_image_folder(tmp_path / "tiles")
    assert choose_resize(folder, folder.samples, pre, "full")[0] == "full"
    with pytest.raises(ConfigError):
        choose_resize(folder, folder.samples, pre, "stretch")


def test_class_balance_weights_and_sampler() -> None:
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    crit = _criterion(TrainConfig(balance="weights"), labels, 3, "cpu")
    assert torch.allclose(crit.weight, torch.tensor([100 / 210, 100 / 60, 100 / 30]))
    assert _criterion(TrainConfig(), labels, 3, "cpu").weight is None
    gen = torch.Generator().manual_seed(0)
    t = torch.from_numpy(labels)
    draws = torch.cat([t[_epoch_order(t, gen, TrainConfig(balance="sampler"))] for _ in range(50)])
    share = torch.bincount(draws, minlength=3).float() / len(draws)
    assert torch.all((share - 1 / 3).abs() < 0.03), share
    assert sorted(_epoch_order(t, gen, TrainConfig()).tolist()) == list(range(100))
    # Early stopping follows balanced accuracy when balancing: all-majority scores 1/3, not 0.7.
    logits = torch.zeros(100, 3)
    logits[:, 0] = 1
    assert _val_score(logits, t, TrainConfig()) == pytest.approx(0.7)
    assert _val_score(logits, t, TrainConfig(balance="weights")) == pytest.approx(1 / 3)


def test_balanced_accuracy_is_reported(finetuned_run: Path) -> None:
    m = read_manifest(finetuned_run / "finetune")["metrics"]
    recalls = [r for r in m["per_class_recall"].values() if r is not None]
    assert m["val_balanced_accuracy"] == pytest.approx(np.mean(recalls))


def test_demo_pipeline_file_is_valid() -> None:
    from edge_tl.pipeline import load_pipeline

    p = load_pipeline(Path(__file__).parents[1] / "examples" / "elpv-demo.toml")
    assert p.finetune.mode == "partial" and p.finetune.resize == "full"
    assert p.bundle is not None and p.bundle.max_escape is not None


def test_a_small_file_size_limit_loads_in_the_main_process(image_folder: Path, tmp_path: Path) -> None:
    """Under ulimit -f, loader workers cannot hand batches over through shared memory and the loader
    would wait for them for ever: the images load in the main process instead."""
    import subprocess
    import sys

    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20)); "
            "from edge_tl.stages.finetune import finetune; from edge_tl.training import TrainConfig; "
            f"finetune({str(image_folder)!r}, {str(tmp_path / 'run')!r}, "
            "train_cfg=TrainConfig(mode='linear', epochs=2, quiet=True, workers=2))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loading images in the main process" in done.stderr
    assert (tmp_path / "run" / "finetune" / "manifest.json").is_file()


def test_input_size_changes_the_contract_and_the_exported_graph(image_folder: Path, tmp_path: Path) -> None:
    from edge_tl.stages.export import export

    with pytest.raises(ConfigError, match="--input-size"):
        finetune(image_folder, tmp_path / "bad", input_size=8, train_cfg=TrainConfig(mode="linear", epochs=1))
    m = finetune(image_folder, tmp_path / "run", input_size=160,
                 train_cfg=TrainConfig(mode="linear", epochs=3, quiet=True, workers=0))
    pre = m["preprocessing"]
    assert pre["crop"] == 160 and pre["resize"] == round(160 * 256 / 224)
    t = export(tmp_path / "run", "cpu-onnxruntime-fp32")
    import onnx

    graph = onnx.load(str(tmp_path / "run" / "targets" / "cpu-onnxruntime-fp32" / t["model_file"]))
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 160, 160] and t["validation"]["agreement"] == 1.0
