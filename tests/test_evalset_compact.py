"""eval.npz stores uint8 crops plus the preprocessing contract, rebuilt bit-identically on load (issue 12,
item 12); ``bench --data`` sets are cached per content hash (item 8)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_tl.data import scan_image_folder
from edge_tl.evalset import (
    EVALSETS_DIR,
    compact_eval_npz,
    ensure_eval_set,
    eval_set_from_folder,
    inputs_from_crops,
    load_eval_set,
)
from edge_tl.preprocess import Preprocess, load_image
from edge_tl.rundir import RunDir

from .conftest import make_image, write_folder


@pytest.mark.parametrize("pre", [
    Preprocess(),
    Preprocess(resize=80, crop=64, interpolation="bicubic", resize_mode="letterbox",
               mean=(0.5, 0.25, 0.125), std=(0.3, 0.7, 0.11)),
    Preprocess(resize=48, crop=40, resize_mode="full", scale=1 / 255.0),
])
def test_inputs_rebuilt_from_crops_are_bit_identical_to_preprocess(tmp_path: Path, pre: Preprocess) -> None:
    images = [make_image(k % 3, k, size=50 + 7 * k) for k in range(6)]
    for i, img in enumerate(images):
        img.save(tmp_path / f"{i}.png")
    decoded = [load_image(tmp_path / f"{i}.png") for i in range(6)]
    crops = np.stack([np.asarray(pre.resize_and_crop(im), np.uint8) for im in decoded])
    rebuilt = inputs_from_crops(crops, pre)
    expected = np.stack([pre(im) for im in decoded])
    assert rebuilt.dtype == np.float32 and rebuilt.shape == expected.shape
    assert np.array_equal(rebuilt, expected)  # exact, bit for bit
    assert rebuilt.tobytes() == expected.tobytes()


def test_eval_npz_is_compact_and_identical_to_preprocess(run_copy: Path) -> None:
    run = RunDir(run_copy)
    path = ensure_eval_set(run)
    es = load_eval_set(path)
    with np.load(path) as z:
        assert "inputs" not in z.files and z["crops"].dtype == np.uint8
        assert z["crops"].shape == (len(es.labels), 224, 224, 3)
        contract = json.loads(str(z["preprocessing"]))
    manifest = json.loads((run_copy / "finetune" / "manifest.json").read_text())
    assert contract == Preprocess.from_dict(manifest["preprocessing"]).to_dict()
    # the float inputs equal what Preprocess.__call__ returns on the original files
    pre = Preprocess.from_dict(manifest["preprocessing"])
    split = json.loads((run_copy / "finetune" / "split.json").read_text())
    root = Path(split["root"])
    direct = np.stack([pre(load_image(root / p)) for p in es.paths])
    assert np.array_equal(es.inputs, direct)
    # about 4x smaller than the float32 inputs (before compression)
    assert path.stat().st_size < es.inputs.nbytes / 3.5
    assert es.identity["kind"] == "validation split" and len(es.identity["sha256"]) == 64
    assert es.describe()["n"] == len(es.labels)


def test_old_float_eval_npz_still_loads_and_converts_exactly(run_copy: Path, tmp_path: Path) -> None:
    run = RunDir(run_copy)
    new = load_eval_set(ensure_eval_set(run))
    old = tmp_path / "old.npz"
    with open(old, "wb") as f:  # format 1, as written before: float32 inputs
        np.savez(f, inputs=new.inputs, labels=new.labels, logits=new.logits, classes=np.asarray(new.classes),
                 paths=np.asarray(new.paths))
    legacy = load_eval_set(old)
    assert np.array_equal(legacy.inputs, new.inputs) and legacy.classes == new.classes
    assert legacy.identity["kind"].startswith("eval.npz (format 1)") and legacy.identity["sha256"]
    shutil.copytree(run_copy / "finetune", tmp_path / "finetune")  # the contract comes from the manifest
    sizes = compact_eval_npz(old, tmp_path / "compact.npz")
    assert sizes["bit_identical"] and sizes["after_bytes"] < sizes["before_bytes"] / 3.5
    assert np.array_equal(load_eval_set(tmp_path / "compact.npz").inputs, new.inputs)
    # inputs that no 8-bit crop rebuilds are refused, not approximated
    with open(old, "wb") as f:
        np.savez(f, inputs=new.inputs + np.float32(1e-3), labels=new.labels, logits=new.logits,
                 classes=np.asarray(new.classes), paths=np.asarray(new.paths))
    from edge_tl.errors import ArtifactError

    with pytest.raises(ArtifactError, match="rebuild exactly"):
        compact_eval_npz(old, tmp_path / "bad.npz")


def test_bench_data_sets_are_cached_per_content(run_copy: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_tl.evalset as evalset_module

    run = RunDir(run_copy)
    other = write_folder(tmp_path / "next_week", per_class=2, seed=7)
    calls = []
    real = evalset_module.reference_logits
    monkeypatch.setattr(evalset_module, "reference_logits", lambda r, x: calls.append(len(x)) or real(r, x))
    first = eval_set_from_folder(run, other)
    assert calls == [6]
    cached = list((run_copy / EVALSETS_DIR).glob("*.npz"))
    assert len(cached) == 1

    def no_scan(*_a: object, **_k: object) -> None:
        raise AssertionError("a cached folder must not be decoded again")

    monkeypatch.setattr(evalset_module, "scan_image_folder", no_scan)
    second = eval_set_from_folder(run, other)
    assert calls == [6]  # no second torch pass
    assert np.array_equal(second.inputs, first.inputs) and np.array_equal(second.logits, first.logits)
    assert second.identity["sha256"] == first.identity["sha256"] and second.source == str(other)
    # a changed image is a new evaluation set: new key, new figures
    monkeypatch.setattr(evalset_module, "scan_image_folder", scan_image_folder)
    make_image(1, 99).save(other / "horizontal" / "horizontal_000.jpg")
    third = eval_set_from_folder(run, other)
    assert calls == [6, 6] and third.identity["sha256"] != first.identity["sha256"]
    assert len(list((run_copy / EVALSETS_DIR).glob("*.npz"))) == 2
