"""Issue 25: one table of backend facts. Code outside ``edge_tl/backends/`` reads the table instead of
comparing a backend's name, so adding a backend is its folder (runner, converter, quantiser, descriptor),
one line in ``backends/table.py`` and a pip extra; nothing falls through to ONNX Runtime unsaid."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from edge_tl.backends.int8 import quantizer_for
from edge_tl.backends.table import BACKENDS, facts
from edge_tl.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[1] / "edge_tl"
NAMES = set(BACKENDS)


def _names_in(node: ast.AST) -> set[str]:
    """Backend names a literal holds: "tensorrt", ("onnxruntime", "tensorrt"), {...}."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_names_in(e) for e in node.elts)) if node.elts else set()
    return set()


def _about_backend(node: ast.AST) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return name.endswith("backend")


def branches_on_backend_names(source: str) -> list[tuple[int, str]]:
    """(line, what) for each place ``source`` decides by a backend's name: ``x.backend == "openvino"``,
    ``backend in ("onnxruntime", "tensorrt")``, a dict keyed by backend names, ``availability("tensorrt", …)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_about_backend(s) for s in sides) and any(_names_in(s) for s in sides):
                found.append((node.lineno, "compares a backend with a name"))
        elif isinstance(node, ast.Dict):
            if len({k.value for k in node.keys if isinstance(k, ast.Constant)} & NAMES) >= 2:
                found.append((node.lineno, "a dict keyed by backend names"))
        elif isinstance(node, ast.Call) and node.args and getattr(node.func, "id", getattr(node.func, "attr", "")) \
                == "availability" and _names_in(node.args[0]) - {"torch"}:  # torch: the reference, not a target
            found.append((node.lineno, "asks for a backend by name"))
    return found


def test_the_checker_finds_each_kind_of_branch() -> None:
    source = ('if target.backend == "tensorrt": pass\nok = backend in ("onnxruntime", "tensorrt")\n'
              'FILES = {"onnxruntime": 1, "openvino": 2}\navailability("tensorrt", "cuda:0")\n'
              'fine = facts(target.backend).engine_on_device\nref = availability("torch", "cpu")\n'
              'engine = "onnxruntime" if x else "torch"\n')
    assert [line for line, _ in branches_on_backend_names(source)] == [1, 2, 3, 4]


def test_no_code_outside_the_backend_folder_branches_on_a_backend_name() -> None:
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}: {what}"
                 for path in sorted(PACKAGE.rglob("*.py")) if "backends" not in path.relative_to(PACKAGE).parts
                 for line, what in branches_on_backend_names(path.read_text())]
    assert offenders == []


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_entry_is_complete(name: str) -> None:
    b = facts(name)
    runner = importlib.import_module(b.runner)  # runner modules import their library only when opening
    assert callable(runner.open) and callable(runner.availability)
    quantiser = quantizer_for(name)  # quantiser modules, too, import their library only when quantising
    assert (quantiser is None) == (b.quantiser is None)
    assert quantiser is None or (callable(quantiser.quantize) and callable(quantiser.settings))
    assert b.converter is None or callable(importlib.import_module(b.converter).convert)
    assert b.stand_in is None or b.stand_in[0] in BACKENDS
    assert b.model_file.endswith({"torch": ".pt", "onnx": ".onnx", "openvino-ir": ".xml"}[b.graph])


def test_an_unknown_backend_is_a_config_error_naming_the_table(tmp_path: Path) -> None:
    from edge_tl.targets import load_target_file

    with pytest.raises(ConfigError, match="unknown backend 'tflite'; choose torch, onnxruntime"):
        facts("tflite")
    profile = tmp_path / "edge.toml"
    profile.write_text('name = "edge"\nbackend = "tflite"\nprecision = "int8"\n')
    with pytest.raises(ConfigError, match=r"backend.*unknown backend 'tflite'"):
        load_target_file(profile)
