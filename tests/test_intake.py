"""Robust intake: bit depths, suffixes, decoder failures, disk and path errors, classes too small to
validate, rates claimed from too few images, and ``--quiet`` for third-party output."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin, features

from edge_tl.bench.report import markdown
from edge_tl.cli import main
from edge_tl.cli.deploy import policy_line
from edge_tl.data import Sample, list_images, scan_image_folder, stratified_split
from edge_tl.manifest import check_writable, staged_folder
from edge_tl.preprocess import IMAGE_SUFFIXES, ImageRejected, Preprocess, bit_depth, load_image
from edge_tl.runtime import InputError, make_policy, to_image, tune_for_escape, tune_ok_threshold
from edge_tl.runtime.policy import rate_upper_bound
from edge_tl.stages.bundle import pick_golden

from .conftest import make_image, write_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def edge_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog on the "edge_tl" logger itself (the CLI stops it propagating to the root logger)."""
    logger = logging.getLogger("edge_tl")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.INFO)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


# -- 1. bit depth -------------------------------------------------------------------------------------


def _png16(path: Path, values: np.ndarray, colour_type: int) -> None:
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit colour), rows Sub-filtered."""
    h, w = values.shape[:2]
    data = values.astype(">u2").reshape(h, -1).view(np.uint8)
    bpp = data.shape[1] // w
    rows = []
    for row in data.astype(np.int16):
        filtered = row.copy()
        filtered[bpp:] = (row[bpp:] - row[:-bpp]) % 256
        rows.append(b"\x01" + filtered.astype(np.uint8).tobytes())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


def _expected_8bit(values: np.ndarray, depth: int) -> np.ndarray:
    return np.floor(values.astype(np.float64) * 255 / (2**depth - 1) + 0.5).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["png", "tif", "pgm", "tif-int32", "tif-float32"])
@pytest.mark.parametrize("depth", [10, 12, 14, 16])
def test_deep_grey_is_read_at_its_bit_depth(tmp_path: Path, depth: int, fmt: str) -> None:
    """A 2**depth ramp in a 16-bit (or 32-bit integer or float) container keeps its 256 grey levels:
    12-bit data divided by 65535 came out at 17 levels of near-black."""
    ramp = np.round(np.arange(256).reshape(16, 16) * (2**depth - 1) / 255).astype(np.uint32)
    path = tmp_path / f"ramp.{fmt.split('-')[0]}"
    dtype = {"tif-int32": np.int32, "tif-float32": np.float32}.get(fmt, np.uint16)
    Image.fromarray(ramp.astype(dtype)).save(path)
    img = load_image(path)
    got = np.asarray(img)[..., 0]
    assert np.array_equal(got, np.arange(256).reshape(16, 16))  # every grey level, as the sensor gave it
    if dtype != np.float32:
        assert img.info["bit_depth"] == depth
    # The runtime reads the file identically (training, calibration and the device share the decoder).
    assert np.array_equal(np.asarray(to_image(path)), np.asarray(img))


@pytest.mark.parametrize("colour_type", [2, 6, 4], ids=["rgb", "rgba", "grey+alpha"])
def test_deep_colour_keeps_its_low_byte(tmp_path: Path, colour_type: int) -> None:
    """Pillow decodes 16-bit colour to its high byte only (12-bit data: 16 levels); the low byte is
    read too, and the bit-depth rule applies to the colour channels (never to alpha)."""
    rng = np.random.default_rng(0)
    channels = {2: 3, 6: 4, 4: 2}[colour_type]
    values = rng.integers(0, 4096, (12, 20, channels)).astype(np.uint16)
    values[0, 0, 0] = 4095
    if channels in (2, 4):
        values[..., -1] = 65535  # opaque alpha must not decide the depth
    path = tmp_path / "deep.png"
    _png16(path, values, colour_type)
    got = np.asarray(load_image(path))
    colour = values[..., :1].repeat(3, axis=2) if channels == 2 else values[..., :3]
    assert np.array_equal(got, _expected_8bit(colour, 12))


def test_the_bit_depth_rule() -> None:
    assert [bit_depth(v) for v in (0, 255, 1023, 1024, 4095, 4096, 16383, 16384, 65535, 70000)] == \
        [10, 10, 10, 12, 12, 14, 14, 16, 16, 17]


# -- 2. suffixes --------------------------------------------------------------------------------------


def _writable_suffixes() -> list[str]:
    out = [".gif", ".tga", ".pcx", ".qoi", ".dib", ".jfif", ".jpe", ".JPG", ".sgi", ".pnm", ".bw"]
    out += [".jp2"] if features.check("jpg_2000") else []
    out += [".avif"] if features.check("avif") else []
    return out


@pytest.mark.parametrize("suffix", _writable_suffixes())
def test_every_format_pillow_reads_is_scanned(tmp_path: Path, suffix: str) -> None:
    """A class folder of .gif (or .tga, .jp2, …) images trains on all of them: Pillow reads them."""
    root = tmp_path / "data"
    write_folder(root, classes=("a", "b"), per_class=3)
    for p in (root / "b").iterdir():
        with Image.open(p) as im:
            im.convert("RGB").save(p.with_suffix(suffix), format=Image.registered_extensions()[suffix.lower()])
        p.unlink()
    folder = scan_image_folder(root)
    assert len(folder.samples) == 6 and folder.skipped == []
    assert suffix.lower() in IMAGE_SUFFIXES
    assert len(list_images(root / "b")) == 3  # calibration folders use the same list


def test_other_files_are_counted_and_named(tmp_path: Path, edge_log: pytest.LogCaptureFixture) -> None:
    root = write_folder(tmp_path / "data", classes=("a", "b"), per_class=3)
    (root / "a" / "notes.txt").write_text("shift 2")
    (root / "b" / "Thumbs.db").write_bytes(b"\0" * 10)
    (root / "labels.csv").write_text("x")
    (root / "a" / ".hidden.png").write_bytes(b"")  # hidden files are the sync tools': skipped, by design
    folder = scan_image_folder(root)
    assert len(folder.samples) == 6
    skipped = {s["path"]: s["reason"] for s in folder.skipped}
    assert set(skipped) == {"a/notes.txt", "b/Thumbs.db", "labels.csv"}
    assert "not an image" in skipped["a/notes.txt"] and "class folder" in skipped["labels.csv"]
    assert "3 file(s)" in edge_log.text and "a/notes.txt" in edge_log.text
    edge_log.clear()
    assert len(list_images(root / "a")) == 3
    assert "notes.txt" in edge_log.text  # calibration's folder scan names what it leaves out too


# -- 3. decoder errors and bounded memory -------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files that decoders fail on in different ways."""
    root = tmp_path_factory.mktemp("bad")
    out = {"bomb": root / "bomb.png", "big": root / "big.png", "wide": root / "wide.png",
           "tall": root / "tall.png", "truncated": root / "truncated.jpg", "garbage": root / "garbage.png",
           "empty": root / "empty.jpg"}
    Image.new("1", (14000, 13000)).save(out["bomb"])  # 182 Mpx: Pillow's DecompressionBombError
    Image.new("1", (9000, 8000)).save(out["big"])  # 72 Mpx: over our own bound, under Pillow's
    Image.new("L", (8000, 1)).save(out["wide"])  # 86 bytes; 1.5 GB after a short-side resize to 256
    Image.new("L", (1, 8000)).save(out["tall"])
    make_image(0, 1).save(root / "ok.jpg")
    out["truncated"].write_bytes((root / "ok.jpg").read_bytes()[:400])
    out["garbage"].write_bytes(b"not an image" * 20)
    out["empty"].write_bytes(b"")
    return out


def test_every_decoder_failure_is_the_files_error(bad_images: dict[str, Path]) -> None:
    assert bad_images["bomb"].stat().st_size < 100_000
    for name, path in bad_images.items():
        with pytest.raises(InputError, match=path.name):
            to_image(path)
        if name in ("bomb", "big", "wide", "tall"):
            with pytest.raises(ImageRejected):  # refused from the header: no pixel is decoded
                load_image(path)


@pytest.mark.parametrize("exc", [RuntimeError("plugin bug"), MemoryError(), KeyError("tag"), struct.error("x"),
                                 ZeroDivisionError("division by zero")])
def test_any_exception_a_decoder_raises_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         exc: BaseException) -> None:
    path = tmp_path / "x.png"
    make_image(0, 1).save(path)

    def broken(self: Image.Image) -> None:
        raise exc

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", broken)
    with pytest.raises(InputError, match=type(exc).__name__):
        to_image(path)


def test_a_scan_skips_and_names_every_bad_file(tmp_path: Path, bad_images: dict[str, Path]) -> None:
    root = write_folder(tmp_path / "data", classes=("a", "b"), per_class=3)
    for path in bad_images.values():
        (root / "a" / path.name).symlink_to(path)
    folder = scan_image_folder(root)
    assert len(folder.samples) == 6
    assert sorted(Path(s["path"]).name for s in folder.skipped) == sorted(p.name for p in bad_images.values())


# -- 6. disk and paths --------------------------------------------------------------------------------


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """finetune must fail on its --out before it scans (decodes) the data, let alone trains."""
    def scan(*_a: object, **_k: object) -> None:
        raise AssertionError("the data was scanned before --out was checked")

    monkeypatch.setattr("edge_tl.stages.finetune.scan_image_folder", scan)


def _finetune(data: Path, out: Path) -> list[str]:
    return ["finetune", str(data), "--out", str(out), "--weights", "none", "--quiet"]


def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    for candidate in (Path("/sys"), Path("/proc")):  # root ignores permission bits; these refuse root too
        try:
            check_writable(candidate)
        except OSError:
            return candidate
    pytest.skip("no folder here refuses writes from root")


def test_out_below_a_file_or_unwritable_fails_before_any_work(image_folder: Path, tmp_path: Path, no_training: None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out, reason in ((blocker / "run", "Not a directory"),
                        (_unwritable(tmp_path) / "edge-tl-test-run", "")):
        assert main(_finetune(image_folder, out)) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert str(out) in line and reason in line
        assert not out.exists()


def test_a_full_disk_is_found_before_training(image_folder: Path, tmp_path: Path, no_training: None,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    real = os.statvfs

    class Full:
        def __init__(self, st: os.statvfs_result) -> None:
            self.f_frsize, self.f_bavail = st.f_frsize, 0

    monkeypatch.setattr("edge_tl.manifest.os.statvfs", lambda p: Full(real(p)))
    assert main(_finetune(image_folder, tmp_path / "run")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(tmp_path / "run") in line and "No space left" in line


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EFBIG, errno.ENOTDIR, errno.EACCES, errno.EROFS, errno.EDQUOT,
                                 errno.EIO])
def test_any_os_error_on_our_outputs_is_one_line_naming_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str], err: int) -> None:
    """write(2) failures name no file: the staging folder names its destination, the CLI prints one line."""
    dest = tmp_path / "run" / "targets" / "cpu-onnxruntime-fp32"

    def failing_export(*_a: object, **_k: object) -> dict:
        with staged_folder(dest) as tmp:
            (tmp / "model.onnx").write_bytes(b"x")
            raise OSError(err, os.strerror(err))

    monkeypatch.setattr("edge_tl.stages.export.export", failing_export)
    assert main(["export", str(tmp_path / "run"), "--target", "cpu-onnxruntime-fp32"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {dest}: {os.strerror(err)}")
    assert not [p for p in dest.parent.iterdir()]  # nothing half-written left
    assert main(["--verbose", "export", str(tmp_path / "run"), "--target", "cpu-onnxruntime-fp32"]) == 2
    assert "Traceback" in capsys.readouterr().err  # --verbose still shows where


def _limited(limit: int, code: str) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` with a file-size limit (RLIMIT_FSIZE, as `ulimit -f`)."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def test_a_file_size_limit_is_one_line(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = f"import sys; from edge_tl.cli import main; sys.exit(main({_finetune(image_folder, out)!r}))"
    proc = _limited(64 * 1024, code)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert str(out) in line and "ulimit -f" in line


def test_a_write_failing_mid_stage_names_its_path(run_copy: Path) -> None:
    """float.onnx (8.9 MB) hits a 2 MiB file-size limit while the target folder is staged (eval.npz, compact
    uint8 crops, fits): EFBIG from write(2) names no file; the one line names the target, and nothing
    half-written is left."""
    code = f"import sys; from edge_tl.cli import main; sys.exit(main(['export', {str(run_copy)!r}, " \
           "'--target', 'cpu-onnxruntime-fp32', '-q']))"
    proc = _limited(2 * 1024 * 1024, code)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert str(run_copy / "targets" / "cpu-onnxruntime-fp32") in line and "File too large" in line
    assert (run_copy / "eval.npz").stat().st_size < 2 * 1024 * 1024
    for folder in (run_copy, run_copy / "targets"):  # no temporary left behind
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    assert not (run_copy / "targets" / "cpu-onnxruntime-fp32").exists()


def test_a_native_writer_failing_at_the_size_limit_is_named(tmp_path: Path) -> None:
    """torch's and OpenVINO's writers report a failed write as RuntimeError, not OSError."""
    dest = tmp_path / "stage"
    code = f"""
from pathlib import Path
from edge_tl.manifest import staged_folder
try:
    with staged_folder(Path({str(dest)!r})) as tmp:
        (tmp / "model.pt").write_bytes(b"x" * 4096)  # exactly the limit; the next byte would fail
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
except OSError as exc:
    print(exc.errno, exc.filename)
"""
    proc = _limited(4096, code)
    assert proc.stdout.split() == [str(errno.EFBIG), str(dest)], proc.stderr


def test_a_killed_stage_leaves_no_staging_folder_for_ever(tmp_path: Path) -> None:
    dest = tmp_path / "targets" / "cpu-onnxruntime-fp32"
    code = f"""
import os, signal
from pathlib import Path
from edge_tl.manifest import staged_folder
with staged_folder(Path({str(dest)!r})) as tmp:
    (tmp / "model.onnx").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGTERM)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, cwd=ROOT)
    assert proc.returncode == -signal.SIGTERM
    left = [p.name for p in dest.parent.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".{dest.name}.") and left[0].endswith(".tmp")
    (dest.parent / f".{dest.name}.abcd1234.tmp").mkdir()  # an older edge-tl's name (no pid)
    live = dest.parent / f".{dest.name}.{os.getppid()}-abcd1234.tmp"  # a live process's: left alone
    live.mkdir()
    with staged_folder(dest) as tmp:
        (tmp / "model.onnx").write_bytes(b"whole")
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted([dest.name, live.name])
    assert (dest / "model.onnx").read_bytes() == b"whole"


# -- 7. a class too small to validate -----------------------------------------------------------------


def test_a_class_of_one_image_is_said_at_fine_tune_time(edge_log: pytest.LogCaptureFixture) -> None:
    samples = ([Sample(f"big/{i}.png", 0) for i in range(20)] + [Sample("single/0.png", 1)]
               + [Sample(f"five/{i}.png", 2) for i in range(5)])
    _, val = stratified_split(samples, 0.2, seed=0)
    assert not [s for s in val if s.label == 1]
    warnings = [r.getMessage() for r in edge_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "single (1 image)" in warnings[0] and "not evaluated" in warnings[0]
    assert "big" not in warnings[0] and "five" not in warnings[0]


def test_reports_say_not_evaluated() -> None:
    recall = {"big": 0.95, "single": None, "five": 1.0}
    side = {"format": "torch", "precision": "fp32", "top1": 0.96, "per_class_recall": recall}
    report = {"target": "t", "classes": list(recall), "reference": side,
              "candidate": side | {"format": "onnx"}, "gates": [], "passed": True}
    md = markdown(report)
    assert "| recall: single | not evaluated | not evaluated |" in md
    assert "PASSED (not evaluated: single)" in md and "**Not evaluated:** single" in md


def test_the_bundle_gives_the_true_reason_for_a_missing_golden_image(edge_log: pytest.LogCaptureFixture) -> None:
    labels = np.array([0, 0, 2])
    logits = np.eye(3)[labels] * 5.0
    picks = pick_golden(logits, logits, labels, 3, 3, min_margin=1.0)
    assert sorted(labels[picks].tolist()) == [0, 0, 2]
    assert "no validation image" in edge_log.text and "disagree" not in edge_log.text
    edge_log.clear()
    pick_golden(logits, logits, labels, 3, 3, min_margin=1.0, classes=["big", "single", "five"])
    assert "class 'single'" in edge_log.text  # the bundle names the class


# -- 8. rates claimed from too few images -------------------------------------------------------------


def _logits(p_ok: np.ndarray) -> np.ndarray:
    """Two-class logits (defect, ok) whose softmax gives P(ok) = p_ok."""
    return np.stack([np.zeros_like(p_ok), np.log(p_ok / (1 - p_ok))], axis=1)


def test_clopper_pearson_upper_bound() -> None:
    assert rate_upper_bound(0, 1) == pytest.approx(0.95)
    assert rate_upper_bound(0, 299) <= 0.01 < rate_upper_bound(0, 298)  # rule of three: ~3/n
    assert rate_upper_bound(2, 50) == pytest.approx(0.12061, abs=2e-5)  # beta.ppf(0.95, 3, 48)
    assert rate_upper_bound(5, 100) == pytest.approx(0.10225, abs=2e-5)
    assert rate_upper_bound(7, 7) == 1.0 and rate_upper_bound(0, 0) == 1.0


def test_five_images_per_class_claim_no_false_reject_rate() -> None:
    """One good validation image tuned the threshold to "1 %" and said the target was met."""
    labels = np.array([1, 0])  # the validation split of 5 images per class: one good part, one defect
    logits = _logits(np.array([0.97, 0.1]))
    policy = make_policy(("defect", "ok"))
    tuned, rec = tune_ok_threshold(policy, logits, labels, 0.01)
    assert not rec["target_met"] and rec["threshold_source"] == "default"
    assert tuned.ok_threshold == 0.5  # the stated default, not 0.97 from one image
    assert rec["false_reject_upper_bound"] > 0.9 and "299" in rec["reason"]
    line = policy_line(tuned.to_dict() | {"tuning": rec, "validation": rec})
    assert "NOT shown" in line and "tuned" not in line
    tuned, rec = tune_for_escape(policy, logits, labels, 0.01)
    assert not rec["target_met"] and tuned.ok_threshold == 0.5 and rec["escape_upper_bound"] > 0.9


def test_enough_images_claim_the_rate_by_its_upper_bound() -> None:
    rng = np.random.default_rng(0)
    good = rng.uniform(0.6, 0.999, 1500)
    defects = rng.uniform(0.001, 0.45, 400)
    sneaky = rng.uniform(0.5, 0.9, 20)  # defects the model calls ok
    p_ok = np.concatenate([good, defects, sneaky])
    labels = np.array([1] * 1500 + [0] * 420)
    policy = make_policy(("defect", "ok"))
    _, rec = tune_ok_threshold(policy, _logits(p_ok), labels, 0.01)
    assert rec["target_met"] and rec["threshold_source"] == "tuned"
    assert rec["false_reject_upper_bound"] <= 0.01 < rate_upper_bound(round(rec["false_reject_rate"] * 1500) + 1,
                                                                      1500)
    assert rec["false_reject_rate"] < 0.01  # the observed rate sits below the target it is claimed for
    _, rec = tune_for_escape(policy, _logits(p_ok), labels, 0.02)
    assert rec["target_met"] and rec["escape_upper_bound"] <= 0.02


# -- 9. --quiet silences other libraries' output ------------------------------------------------------


def test_quiet_silences_library_progress_bars_and_notices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    """NNCF draws its progress bars on rich's global console and torch logs "No CUDA runtime is found"
    when NNCF loads; `export --quiet` printed both."""
    from rich.progress import track

    def noisy_export(*_a: object, **_k: object) -> dict:
        for _ in track(range(3), description="Statistics collection"):
            pass
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='/x'")
        logging.getLogger("edge_tl").warning("calibration: 30 image(s) available")  # ours: still shown
        return {"validation": None, "target": {"name": "cpu-openvino-int8"}, "source_stage": "finetune"}

    monkeypatch.setattr("edge_tl.stages.export.export", noisy_export)
    for quiet in (["--quiet"], ["-q"]):
        assert main(["export", str(tmp_path), "--target", "cpu-openvino-int8", *quiet]) == 0
        out, err = capfd.readouterr()
        assert "Statistics collection" not in out + err and "CUDA" not in out + err
        assert "calibration: 30" in err and "exported cpu-openvino-int8" in err
    assert main(["export", str(tmp_path), "--target", "cpu-openvino-int8"]) == 0  # not quiet: shown
    out, err = capfd.readouterr()
    assert "Statistics collection" in out + err


def test_json_fields_are_plain(tmp_path: Path) -> None:
    """The tuning record goes into bundle.json as is."""
    _, rec = tune_ok_threshold(make_policy(("defect", "ok")), _logits(np.array([0.9, 0.2])), np.array([1, 0]), 0.05)
    json.dumps(rec)


def test_preprocess_of_a_deep_file_matches_load_image(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)).save(path)
    from edge_tl.evalset import preprocess_samples

    x, _, _ = preprocess_samples(tmp_path, [Sample("deep.png", 0)], Preprocess())
    assert np.array_equal(x[0], Preprocess()(load_image(path)))
