"""Issue 24, items 15 and 16 (non-bench): what a first day's run says about itself.

A held-out AUROC below chance is warned about; epochs are 1-based wherever a person reads them and the
manifest says how many were planned and run; every built-in target is in the README; 16-bit PNGs with
10- or 12-bit data are read at the depth their sBIT chunk (or their range) gives, and the run says so;
PaDiM's summary speaks of Gaussians, not of a bank; the OpenVINO profile says what its INT8 graph holds.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_tl.cli import main

from .anomaly_data import write_anomaly_set

ROOT = Path(__file__).resolve().parents[1]


# -- 15a / 16: an anomaly model worse than chance; PaDiM's wording ---------------------------------------


def test_swapped_labels_warn_worse_than_chance_and_padim_has_no_bank(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect images filed as good and good ones as defect: the held-out AUROC falls below 0.5, and the
    manifest and the summary say so (and what it likely means)."""
    data = write_anomaly_set(tmp_path / "set", n_train=12, n_good_val=6, n_defect=6, size=64)
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (data / "test" / "defect").rename(swapped / "good")
    (data / "test" / "good").rename(swapped / "defect")
    out = tmp_path / "run"
    assert main(["finetune", str(data / "train" / "good"), "--task", "anomaly", "--method", "padim",
                 "--val", str(swapped), "--clusters", "1", "--input-size", "64", "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "finetune" / "manifest.json").read_text())
    assert manifest["metrics"]["val_auroc"] < 0.5
    assert len(manifest["warnings"]) == 1 and "worse than chance" in manifest["warnings"][0]
    assert "swapped" in manifest["warnings"][0]
    err = " ".join(capsys.readouterr().err.split())  # the summary, unwrapped
    assert "worse than chance" in err and "--ok-class" in err
    # PaDiM fits a Gaussian per patch position; "bank" is PatchCore's word.
    assert "Gaussian per patch position" in err and "bank" not in err
    assert "best_epoch" not in manifest["metrics"]  # no epochs in an anomaly fit


# -- 15b / 16: epochs, 1-based, planned and run ------------------------------------------------------------


def test_partial_on_a_cpu_records_planned_and_run_epochs_1_based(
        image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A CPU partial run without --epochs plans CACHED_PARTIAL_EPOCHS (20), which --help now says; the
    manifest records planned, run and the best epoch, all counted from 1 as the progress bar counts."""
    from edge_tl.training import CACHED_PARTIAL_EPOCHS

    out = tmp_path / "run"
    assert main(["finetune", str(image_folder), "--out", str(out), "--mode", "partial", "--unfreeze", "1",
                 "--device", "cpu", "--workers", "0", "--input-size", "64", "--patience", "2", "--quiet"]) == 0
    m = json.loads((out / "finetune" / "manifest.json").read_text())
    assert m["train_config"]["epochs"] is None  # the option as given: the mode's default
    e = m["metrics"]["epochs"]
    assert e["planned"] == CACHED_PARTIAL_EPOCHS
    assert e["run"] == len(m["metrics"]["history"]) and 1 <= e["run"] <= e["planned"]
    assert [h["epoch"] for h in m["metrics"]["history"]] == list(range(1, e["run"] + 1))
    assert 1 <= e["best"] <= e["run"]
    best = max(m["metrics"]["history"], key=lambda h: (h["val_score"], -h["val_loss"]))
    assert best["epoch"] == e["best"]
    err = " ".join(capsys.readouterr().err.split())
    assert f"best epoch {e['best']}/{CACHED_PARTIAL_EPOCHS}" in err
    # issue 25: the training rate per epoch (validation not counted), its median in the timings and summary
    rates = [h["train_images_per_s"] for h in m["metrics"]["history"]]
    assert all(r > 0 for r in rates)
    assert m["timings"]["train_images_per_s"] == pytest.approx(statistics.median(rates))
    assert f"{m['timings']['train_images_per_s']:,.0f} img/s training" in err


def test_help_states_the_epochs_each_mode_trains(capsys: pytest.CaptureFixture[str]) -> None:
    from edge_tl.training import CACHED_PARTIAL_EPOCHS, DEFAULT_EPOCHS

    assert main(["finetune", "--help"]) == 0
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().out).split())
    assert f"{DEFAULT_EPOCHS['linear']} linear" in text
    assert f"partial: {CACHED_PARTIAL_EPOCHS}," in text and "on a GPU" not in text  # one path on every device
    assert f"{DEFAULT_EPOCHS['partial']} with --progressive" in text and f"{DEFAULT_EPOCHS['full']} full" in text


# -- 15c: every target is in the README ------------------------------------------------------------------


def test_every_builtin_target_is_named_in_the_readme() -> None:
    from edge_tl.targets import builtin_targets

    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Targets", 1)[1].split("\n### ", 1)[0]
    named = set(re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)+", table))
    missing = sorted(set(builtin_targets()) - named)
    assert not missing, f"targets missing from README's Targets table: {missing}"


# -- 16: the OpenVINO quantiser text -------------------------------------------------------------------------


def test_openvino_profile_says_what_its_int8_graph_holds() -> None:
    """NNCF's performance preset makes zero-point-0 activations (u8 where non-negative): the profile no
    longer claims unsigned asymmetric activations for it, nor the manifest 'symmetric int8 activations'."""
    from edge_tl.targets import OPENVINO_PRESET, get_target

    text = get_target("cpu-openvino-int8").to_toml()
    assert OPENVINO_PRESET in text and "zero point 0" in OPENVINO_PRESET and "unsigned u8" in OPENVINO_PRESET
    for key in ("activations", "symmetric_activations"):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{key} ="))
        assert "--qat only" in line
    # ONNX Runtime targets use those keys for their post-training graph: no such note there.
    assert "--qat only" not in get_target("cpu-onnxruntime-int8").to_toml()


# -- 15d: 16-bit PNGs holding 10- or 12-bit data -------------------------------------------------------------


def _with_sbit(path: Path, bits: int) -> None:
    """Insert an sBIT chunk (grey: one byte) after IHDR, as a camera SDK writes it."""
    raw = path.read_bytes()
    at = raw.index(b"IHDR") + 4 + 13 + 4
    body = bytes([bits])
    chunk = struct.pack(">I", 1) + b"sBIT" + body + struct.pack(">I", zlib.crc32(b"sBIT" + body))
    path.write_bytes(raw[:at] + chunk + raw[at:])


def _frame(path: Path, top: int, size: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, top + 1, (size, size)).astype(np.uint16)
    arr[0, 0] = top
    Image.fromarray(arr).save(path)
    return arr


def test_sbit_gives_the_depth_of_a_dark_12_bit_frame(tmp_path: Path) -> None:
    """A 12-bit frame whose brightest pixel is 900: by its range it would be 10-bit (read 4x too bright);
    its sBIT chunk says 12, and training and the runtime both read it as 12-bit."""
    from edge_tl.preprocess import load_image
    from edge_tl.runtime import to_image

    path = tmp_path / "dark.png"
    arr = _frame(path, 900)
    assert load_image(path).info["bit_depth"] == 10  # no chunk: the range rule
    _with_sbit(path, 12)
    img = load_image(path)
    assert (img.info["bit_depth"], img.info["bit_depth_basis"]) == (12, "sBIT chunk")
    expected = np.floor(arr.astype(np.float64) * 255 / 4095 + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(img)[..., 0], expected)
    assert np.array_equal(np.asarray(to_image(path)), np.asarray(img))  # the torch-free runtime agrees


def test_sbit_with_data_scaled_to_16_bits_is_read_at_16(tmp_path: Path) -> None:
    """The PNG specification scales sBIT data up to the sample depth: values past the sBIT range mean
    the writer did, and dividing by 4095 would saturate them."""
    from edge_tl.preprocess import load_image

    path = tmp_path / "scaled.png"
    _frame(path, 4095 * 16)
    _with_sbit(path, 12)
    img = load_image(path)
    assert (img.info["bit_depth"], img.info["bit_depth_basis"]) == (16, "sBIT chunk, data scaled to 16 bits")
    assert np.asarray(img).max() == 255 and np.asarray(img).min() < 255


def test_finetune_records_and_says_the_bit_depth_it_assumed(tmp_path: Path) -> None:
    """One line per data set and the manifest's preprocessing say what the 16-bit images were read as;
    images of one camera read at different depths are warned about."""
    from edge_tl.preprocess import Preprocess, record_bit_depths
    from edge_tl.stages.finetune import finetune
    from edge_tl.training import TrainConfig

    data = tmp_path / "data"
    for c, name in enumerate(("a", "b")):
        (data / name).mkdir(parents=True)
        for i in range(4):
            _frame(data / name / f"{i}.png", 4000 if c else 3000, size=40, seed=10 * c + i)
            _with_sbit(data / name / f"{i}.png", 12)
    lines: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = lines.append  # type: ignore[method-assign]
    logger = logging.getLogger("edge_tl")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        m = finetune(data, tmp_path / "run", weights="none", input_size=32,
                     train_cfg=TrainConfig(mode="linear", epochs=1, workers=0, quiet=False))
        said = [r.getMessage() for r in lines if "deeper than 8 bits" in r.getMessage()]
        assert said == ["8 of 8 images are deeper than 8 bits; read as 12-bit 8 (of 8 decoded; decided by "
                        "sBIT chunk 8)"]
        depth = m["preprocessing"]["extra"]["bit_depth"]
        assert depth["depths"] == {"12": 8} and depth["basis"] == {"sBIT chunk": 8} and not depth["mixed"]

        # Without the chunk a dark frame is read at 10 bits beside 12-bit ones: a warning, once.
        mixed = tmp_path / "mixed"
        mixed.mkdir()
        _frame(mixed / "bright.png", 4000)
        _frame(mixed / "dark.png", 1000)
        lines.clear()
        pre = record_bit_depths(Preprocess(), sorted(mixed.iterdir()), quiet=True)
        assert pre.extra["bit_depth"]["mixed"] and pre.extra["bit_depth"]["depths"] == {"10": 1, "12": 1}
        warned = [r for r in lines if r.levelno == logging.WARNING]
        assert len(warned) == 1 and "darker frames read brighter" in warned[0].getMessage()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
