"""Shared fixtures: no network, small synthetic image folders, one small fine-tuned run."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "2")

_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address):
    """Tests may talk to this machine (torchrun's gloo rendezvous) and nothing else."""
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise OSError(f"network access blocked in tests: {address}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]


@pytest.fixture(autouse=True, scope="session")
def _short_timings() -> None:
    """Built-in profiles time 200 batch-1 calls after 20 warm-up calls. No test asserts a timing of a
    built-in profile, so on the 2-core CI machine the in-process benches time 20 after 2 (a test that
    needs a real timing writes its own profile with explicit numbers, which this does not touch)."""
    from edge_tl.targets import Target

    Target.model_fields["iterations"].default = 20
    Target.model_fields["warmup"].default = 2
    Target.model_rebuild(force=True)


def make_image(kind: int, seed: int, size: int = 64) -> Image.Image:
    """A small synthetic image whose class (kind) is visible: stripes one way or the other, or blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    period = rng.uniform(6, 10)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == 0:
        base = np.sin(xx / period * 2 * np.pi + phase)
    elif kind == 1:
        base = np.sin(yy / period * 2 * np.pi + phase)
    else:
        base = np.sin(xx / period * 2 * np.pi + phase) * np.sin(yy / period * 2 * np.pi)
    arr = (base * 90 + 128 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr, "L").convert("RGB")


def write_folder(root: Path, classes: tuple[str, ...] = ("horizontal", "vertical", "blobs"),
                 per_class: int = 12, seed: int = 0) -> Path:
    """An ImageFolder of synthetic PNG/JPEG images under ``root``."""
    for k, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = make_image(k, seed * 1000 + k * 100 + i)
            img.save(d / f"{name}_{i:03d}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for a module: two threads on two cores shared with other work made each
    small training step ~8x slower (the detection tests)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def detect_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny detection run (20 synthetic YOLO images of 96 px with exact boxes, letterboxed to 64, one
    linear epoch: 4 validation images), trained once per session on one torch thread. Read-only: copy it
    before exporting into it."""
    import torch

    from edge_tl.detect.train import fit_detector

    from .detect_data import write_set

    root = write_set(tmp_path_factory.mktemp("detect-yolo"), "yolo", n=20, size=96)
    out = tmp_path_factory.mktemp("detect-run")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_thread
    try:
        fit_detector(root, out, mode="linear", input_size=64, epochs=1, batch_size=8, resize="letterbox")
    finally:
        torch.set_num_threads(before)
    return out


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three visibly different classes, 12 images each."""
    return write_folder(tmp_path_factory.mktemp("data") / "folder")


@pytest.fixture(scope="session")
def finetuned_run(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> Path:
    """mobilenet_v2 from the real ImageNet weights, linear mode, on the synthetic folder (read-only: copy it
    before changing anything)."""
    from edge_tl.stages.finetune import finetune
    from edge_tl.training import TrainConfig

    out = tmp_path_factory.mktemp("runs") / "tiny"
    finetune(image_folder, out, arch="mobilenet_v2", weights="imagenet",
             train_cfg=TrainConfig(mode="linear", epochs=15, seed=0, quiet=True, workers=0))
    return out


@pytest.fixture
def run_copy(finetuned_run: Path, tmp_path: Path) -> Path:
    """A private copy of the fine-tuned run that a test may change."""
    import shutil

    dest = tmp_path / "run"
    shutil.copytree(finetuned_run, dest)
    return dest


@pytest.fixture(scope="session")
def fp32_bundle(finetuned_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX Runtime fp32 bundle of ``finetuned_run`` with 3 golden images, shipped without a bench
    (``allow_failed``: these tests judge the runtime, not the model). Read-only: copy it to change it."""
    import shutil

    from edge_tl.stages.bundle import bundle as make_bundle
    from edge_tl.stages.export import export

    root = tmp_path_factory.mktemp("fp32-bundle")
    run = root / "run"
    shutil.copytree(finetuned_run, run)
    export(run, "cpu-onnxruntime-fp32")
    make_bundle(run, "cpu-onnxruntime-fp32", root / "bundle", n_golden=3, allow_failed=True)
    return root / "bundle"


@pytest.fixture(scope="module")
def rt(fp32_bundle: Path) -> Iterator[Any]:
    """The session's fp32 bundle opened in the torch-free runtime (one per test module)."""
    from edge_tl.runtime import Runtime

    with Runtime(fp32_bundle) as runtime:
        yield runtime
