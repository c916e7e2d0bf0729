"""``edge_tl.runtime``: no torch, input kinds, colour order, batches, threads, tampering, ``predict``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_tl.cli import main
from edge_tl.errors import ArtifactError
from edge_tl.runtime import InputError, Runtime
from edge_tl.runtime.bundlefile import write_sums

from .conftest import make_image

TARGETS = ("cpu-onnxruntime-fp32", "cpu-openvino-fp32")


@pytest.fixture(scope="module")
def bundles(finetuned_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ONNX Runtime and OpenVINO bundles of a private copy of the tiny run."""
    from edge_tl.stages.bundle import bundle
    from edge_tl.stages.export import export

    root = tmp_path_factory.mktemp("runtime")
    run = root / "run"
    shutil.copytree(finetuned_run, run)
    out = {}
    for t in TARGETS:
        export(run, t)
        out[t] = root / f"bundle-{t}"
        bundle(run, t, out[t], allow_failed=True)  # not benched here
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Images the model has not seen: the synthetic kinds at other seeds and sizes, plus colour ones."""
    root = tmp_path_factory.mktemp("imgs")
    paths = []
    for i in range(12):
        p = root / f"img_{i:02d}.png"
        make_image(i % 3, 5000 + i, size=48 + 8 * i).save(p)
        paths.append(p)
    rng = np.random.default_rng(1)
    for i in range(4):  # strongly coloured, so that swapping red and blue changes the answer
        arr = np.zeros((90, 120, 3), np.uint8)
        arr[..., 0] = rng.integers(150, 255)
        arr[:, ::7, 2] = 255
        arr[..., 1] = rng.integers(0, 255, (90, 120))
        p = root / f"colour_{i}.jpg"
        Image.fromarray(arr).save(p, quality=95)
        paths.append(p)
    return paths


def test_runtime_and_predict_work_with_torch_blocked(bundles: dict[str, Path], images: list[Path]) -> None:
    """The runtime and the `predict` command run in a process where torch cannot be imported."""
    code = f"""
import json, sys
for name in ("torch", "torchvision", "openvino", "onnx", "edge_tl.training", "edge_tl.models",
             "edge_tl.checkpoint", "edge_tl.evalset"):
    sys.modules[name] = None  # any import of these raises ImportError
from edge_tl.runtime import open_bundle
with open_bundle({str(bundles[TARGETS[0]])!r}) as rt:
    p = rt.predict({str(images[0])!r})
from edge_tl.cli import main
rc = main(["predict", {str(bundles[TARGETS[0]])!r}, {str(images[1])!r}, "--json"])
print(json.dumps({{"rc": rc, "label": p.label, "torch": sys.modules["torch"] is not None}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    predicted, summary = json.loads(lines[0]), json.loads(lines[-1])
    assert summary == {"rc": 0, "label": summary["label"], "torch": False}
    # reason: only for a review decision (low_confidence or out_of_distribution)
    assert set(predicted) - {"reason"} == {"path", "label", "score", "decision", "ms_per_image", "batch_size",
                                           "batch_ms", "ood_score"}
    assert ("reason" in predicted) == (predicted["decision"] == "review")


@pytest.mark.parametrize("target", TARGETS)
def test_path_pil_and_arrays_agree_when_colour_order_is_stated(bundles: dict[str, Path], images: list[Path],
                                                               target: str) -> None:
    with Runtime(bundles[target]) as rt:
        for path in (images[0], images[-1]):
            rgb = np.asarray(Image.open(path).convert("RGB"))
            bgr = np.ascontiguousarray(rgb[:, :, ::-1])
            ref = rt.predict(path)
            for item, color in ((Image.open(path), None), (rgb, "RGB"), (bgr, "BGR")):
                got = rt.predict(item, color=color)
                np.testing.assert_array_equal(got.logits, ref.logits)
                assert (got.label, got.decision) == (ref.label, ref.decision)
        # The colour order matters on a colour image: stating it wrongly gives different logits.
        rgb = np.asarray(Image.open(images[-1]).convert("RGB"))
        assert not np.allclose(rt.predict(rgb, color="BGR").logits, rt.predict(rgb, color="RGB").logits)


def test_array_inputs_are_checked(bundles: dict[str, Path]) -> None:
    with Runtime(bundles[TARGETS[0]]) as rt:
        frame = np.zeros((64, 64, 3), np.uint8)
        with pytest.raises(InputError, match="channel order"):
            rt.predict(frame)  # a colour frame without its order is refused, not guessed
        with pytest.raises(InputError, match="uint8"):
            rt.predict(frame.astype(np.float32), color="RGB")
        with pytest.raises(InputError, match="color must be"):
            rt.predict(frame, color="YUV")
        grey = rt.predict(np.full((64, 64), 128, np.uint8))  # grey needs no order
        assert grey.label in rt.classes
        with pytest.raises(InputError, match="no such file"):
            rt.predict("/nonexistent/x.png")


@pytest.mark.parametrize("target", TARGETS)
def test_batch_equals_singles(bundles: dict[str, Path], images: list[Path], target: str) -> None:
    with Runtime(bundles[target]) as rt:
        batch = rt.predict_batch(images)
        singles = [rt.predict(p) for p in images]
    assert [p.label for p in batch] == [p.label for p in singles]
    assert [p.decision for p in batch] == [p.decision for p in singles]
    np.testing.assert_allclose(np.stack([p.logits for p in batch]), np.stack([p.logits for p in singles]),
                               atol=1e-4, rtol=1e-4)
    assert all(p.path == str(i) for p, i in zip(batch, images, strict=True))
    assert all(p.decision == rt.policy.decide(p.label, p.score, p.ood_score) for p in batch)


@pytest.mark.parametrize("target", TARGETS)
def test_eight_threads_give_the_same_answers_as_one(bundles: dict[str, Path], images: list[Path],
                                                    target: str) -> None:
    with Runtime(bundles[target]) as rt:
        expected = {str(p): rt.predict(p).logits for p in images}
        results: dict[int, list] = {}
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                order = images[k % len(images):] + images[:k % len(images)]  # each thread its own order
                results[k] = [(str(p), rt.predict(p).logits) for _ in range(2) for p in order]
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert sum(len(v) for v in results.values()) == 8 * 2 * len(images)
    for rows in results.values():
        for path, logits in rows:
            np.testing.assert_array_equal(logits, expected[path])


def _tampered_copy(bundle: Path, tmp_path: Path, rel: str) -> Path:
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    data = bytearray((b / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / rel).write_bytes(bytes(data))
    return b


@pytest.mark.parametrize("rel", ["model.onnx", "golden", "bundle.json"])
def test_a_flipped_byte_is_refused_with_exit_2_and_one_line(bundles: dict[str, Path], images: list[Path],
                                                            tmp_path: Path, rel: str) -> None:
    src = bundles[TARGETS[0]]
    if rel == "golden":
        rel = str(next((src / "golden").iterdir()).relative_to(src))
    b = _tampered_copy(src, tmp_path, rel)
    proc = subprocess.run([sys.executable, "-m", "edge_tl", "predict", str(b), str(images[0]), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr
    assert str(b / rel) in err[0] and "sha256" in err[0]


def test_the_golden_check_catches_a_preprocessing_mismatch(bundles: dict[str, Path], tmp_path: Path) -> None:
    """A bundle whose stated preprocessing differs from what produced its golden outputs is refused,
    even with consistent hashes: the golden images are what proves runtime == training."""
    b = tmp_path / "b"
    shutil.copytree(bundles[TARGETS[0]], b)
    m = json.loads((b / "bundle.json").read_text())
    m["preprocessing"]["interpolation"] = "nearest"
    (b / "bundle.json").write_text(json.dumps(m))
    write_sums(b, [line.split("  ", 1)[1] for line in (b / "SHA256SUMS").read_text().splitlines()])
    with pytest.raises(ArtifactError, match="golden image"):
        Runtime(b)
    with Runtime(b, check_golden=False) as rt:  # possible, for diagnosis, but never the default
        assert rt.golden_report is None


def test_a_newer_bundle_format_is_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(bundles[TARGETS[0]], b)
    m = json.loads((b / "bundle.json").read_text())
    m["format_version"] = 99
    (b / "bundle.json").write_text(json.dumps(m))
    write_sums(b, [line.split("  ", 1)[1] for line in (b / "SHA256SUMS").read_text().splitlines()])
    with pytest.raises(ArtifactError, match="format 99"):
        Runtime(b)


def test_predict_command_on_a_folder(bundles: dict[str, Path], images: list[Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    shutil.copytree(images[0].parent, folder)
    assert main(["predict", str(bundles[TARGETS[1]]), str(folder), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(images)
    assert all(set(r) - {"reason"} == {"path", "label", "score", "decision", "ms_per_image", "batch_size", "batch_ms",
                                       "ood_score"} for r in rows)
    assert all(r["decision"] in ("ok", "defect", "review") and 0 < r["score"] <= 1 for r in rows)
    # One unreadable file: every other image still gets its answer, the bad one an error line, exit 2.
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    assert main(["predict", str(bundles[TARGETS[0]]), str(folder), "--json"]) == 2
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == len(images) + 1
    assert next(r for r in rows if "error" in r)["path"].endswith("broken.png")
    assert "1 of" in err and "broken.png" in err
    assert main(["predict", str(bundles[TARGETS[0]]), str(tmp_path / "missing.png")]) == 2


def test_raw_npy_frames_need_their_colour_order(bundles: dict[str, Path], images: list[Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rgb = np.asarray(Image.open(images[-1]).convert("RGB"))
    npy = tmp_path / "frame.npy"
    np.save(npy, np.ascontiguousarray(rgb[:, :, ::-1]))  # as an OpenCV camera hands it over
    b = str(bundles[TARGETS[0]])
    assert main(["predict", b, str(npy), "--json"]) == 2
    assert "channel order" in capsys.readouterr().err
    assert main(["predict", b, str(npy), "--json", "--color", "BGR"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert main(["predict", b, str(images[-1]), "--json"]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert (got["label"], got["score"], got["decision"]) == (ref["label"], ref["score"], ref["decision"])


def test_draw_writes_a_classifier_answer_on_its_image(bundles: dict[str, Path], images: list[Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A classifier has no boxes: --draw writes the image with a banner (decision, label, score) in its top-left
    corner and leaves the rest of it as it was; streams are not drawn (one line, exit 2)."""
    image = images[8]  # 112 x 112
    assert main(["predict", str(bundles[TARGETS[0]]), str(image), "--draw", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    before = np.asarray(Image.open(image).convert("RGB"), np.int16)
    after = np.asarray(Image.open(tmp_path / "d" / f"{image.stem}.drawn.png").convert("RGB"), np.int16)
    assert after.shape == before.shape
    rows = np.flatnonzero((np.abs(after - before).sum(axis=2) > 0).any(axis=1))
    assert len(rows) and rows.min() == 0 and rows.max() < 24  # the banner only
    assert main(["predict", str(bundles[TARGETS[0]]), "rtsp://127.0.0.1/cam", "--draw", str(tmp_path / "s")]) == 2
    assert "--draw applies to image files" in capsys.readouterr().err
