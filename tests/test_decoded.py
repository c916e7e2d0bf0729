"""Issue 25, decode once: end-to-end training decodes its images a single time and augments them as tensor
ops on the training device. Validation inputs are exactly the loader's; the augmentation follows
torchvision's RandomResizedCrop rule; a seed gives the same batches; the per-epoch loader is still there
for what does not fit (``cache_mb``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edge_tl.data import Sample, scan_image_folder
from edge_tl.decoded import augmented_batch, crop_boxes, decode, estimated_mb, normalise
from edge_tl.preprocess import Preprocess, load_image

from .conftest import write_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> object:
    return scan_image_folder(write_folder(tmp_path_factory.mktemp("decoded") / "data", per_class=6))


@pytest.mark.parametrize("mode", ["shorter", "full", "letterbox"])
def test_validation_frames_are_exactly_the_loaders_inputs(folder: object, mode: str) -> None:
    pre = Preprocess(resize=72, crop=64, resize_mode=mode)
    held = decode(folder.root, folder.samples, pre, train=False, workers=2)
    assert held.kept == list(range(len(folder.samples))) and held.bad == []
    expect = np.stack([pre(load_image(folder.root / s.path)) for s in folder.samples])
    assert torch.equal(normalise(held.images, pre), torch.from_numpy(expect))


def test_mixed_sizes_are_padded_with_their_edges_and_a_bad_file_is_named(tmp_path: Path) -> None:
    for i, size in enumerate([(90, 60), (60, 120)]):
        Image.new("RGB", size, (10 * i + 5, 100, 200)).save(tmp_path / f"im{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    samples = [Sample("im0.png", 0), Sample("broken.png", 1), Sample("im1.png", 1)]
    pre = Preprocess(resize=48, crop=40)
    data = decode(tmp_path, samples, pre, train=True)
    assert data.kept == [0, 2] and data.bad[0].startswith("broken.png: ") and data.labels.tolist() == [0, 1]
    assert data.sizes.tolist() == [[48.0, 72.0], [96.0, 48.0]]  # short side at pre.resize, aspect kept
    assert tuple(data.images.shape) == (2, 3, 96, 72) and data.images.dtype == torch.uint8
    assert bool((data.images[0, 0] == 5).all())  # the padding repeats the frame's edge pixels
    assert estimated_mb(tmp_path, samples, pre, train=False) == pytest.approx(3 * 40 * 40 * 3 / 2**20)


def test_crop_boxes_follow_the_random_resized_crop_rule() -> None:
    sizes = torch.tensor([[100.0, 100.0], [60.0, 300.0], [224.0, 160.0]]).repeat(400, 1)
    boxes = crop_boxes(sizes, (0.6, 1.0), torch.Generator().manual_seed(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert bool((boxes[:, :2] >= 0).all()) and bool((boxes[:, 2] <= sizes[:, 1]).all())
    assert bool((boxes[:, 3] <= sizes[:, 0]).all()) and bool((w > 0).all() and (h > 0).all())
    square = torch.arange(len(sizes)) % 3 == 0
    share = (w * h / (sizes[:, 0] * sizes[:, 1]))[square]
    assert float(share.min()) >= 0.58 and float(share.max()) <= 1.02  # area share within the scale range
    assert float(share.std()) > 0.05  # drawn, not fixed
    ratio = (w / h)[square]
    assert float(ratio.min()) >= 0.7 and float(ratio.max()) <= 1.4
    # A 60 x 300 strip rarely fits a draw: the fallback is its centre, cut to the aspect range (4/3).
    strip = boxes[1::3]
    assert bool(((strip[:, 2] - strip[:, 0]) <= 81).all())


def test_augmented_batches_are_the_seeds_not_the_devices(folder: object) -> None:
    pre = Preprocess(resize=72, crop=64)
    data = decode(folder.root, folder.samples, pre, train=True)
    index = torch.arange(len(data.kept))
    a = augmented_batch(data, index, pre, (0.6, 1.0), torch.Generator().manual_seed(3), "cpu")
    b = augmented_batch(data, index, pre, (0.6, 1.0), torch.Generator().manual_seed(3), "cpu")
    c = augmented_batch(data, index, pre, (0.6, 1.0), torch.Generator().manual_seed(4), "cpu")
    assert a.shape == (len(index), 3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Normalised as the loader's inputs are: the same range as an evaluation frame's.
    plain = normalise(decode(folder.root, folder.samples, pre, train=False).images, pre)
    assert float(a.min()) >= float(plain.min()) - 0.05 and float(a.max()) <= float(plain.max()) + 0.05


def test_full_training_uses_the_decoded_set_and_cache_mb_0_the_loader(
        folder: object, caplog: pytest.LogCaptureFixture) -> None:
    from edge_tl.models import build_model
    from edge_tl.training import Dist, TrainConfig, _fit_end_to_end

    pre = Preprocess(resize=72, crop=64)
    train, val = folder.samples[::2], folder.samples[1::2]
    runs = {}
    for cache_mb in (2048, 0):
        cfg = TrainConfig(mode="full", epochs=2, batch_size=4, workers=0, seed=0, quiet=True, cache_mb=cache_mb)
        torch.manual_seed(0)
        with caplog.at_level(logging.DEBUG, logger="edge_tl"):
            caplog.clear()
            history, stop, skipped = _fit_end_to_end(build_model("mobilenet_v2", 3), "mobilenet_v2", folder.root,
                                                     train, val, pre, cfg, "cpu", Dist())
        runs[cache_mb] = (history, "decoded" in caplog.text)
        assert len(history) == 2 and skipped == [] and len(stop.val_labels) == len(val)
        assert all(h["train_images_per_s"] > 0 for h in history)
    assert runs[2048][1] and not runs[0][1]  # decoded once only where asked
