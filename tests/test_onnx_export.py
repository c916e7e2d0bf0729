"""``edge_tl.onnx_export.export_onnx``: the one function every ONNX graph of the product goes through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edge_tl.onnx_export import export_onnx, export_onnx_bytes  # noqa: E402


class Tiny(torch.nn.Module):
    """conv -> BN -> ReLU -> pool -> linear, plus a second output (the mean logit)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        logits = self.fc(h)
        return logits, logits.mean(dim=1)


class Broken(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        h = self.conv(x)
        raise RuntimeError("boom in the middle of the trace")
        return h  # pragma: no cover


def _session(path_or_bytes) -> ort.InferenceSession:
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


def _tiny() -> Tiny:
    m = Tiny().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is exercised
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


def test_tiny_model_matches_torch(tmp_path: Path) -> None:
    model = _tiny()
    dest = tmp_path / "sub" / "tiny.onnx"
    out = export_onnx(model, torch.zeros(1, 3, 16, 16), dest, input_names=["input"],
                      output_names=["logits", "score"], dynamic_batch=False)
    assert out == dest and dest.is_file()
    graph = onnx.load(str(dest))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["input"]
    assert [o.name for o in graph.graph.output] == ["logits", "score"]
    assert graph.opset_import[0].version == 17  # the default opset
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    with torch.inference_mode():
        want = [t.numpy() for t in model(torch.from_numpy(x))]
    got = _session(dest).run(None, {"input": x})
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)
    assert list(tmp_path.joinpath("sub").iterdir()) == [dest]  # no temporaries left beside it


def test_dynamic_batch_only_when_asked(tmp_path: Path) -> None:
    model = _tiny()
    x = np.random.default_rng(1).normal(size=(5, 3, 16, 16)).astype(np.float32)
    with torch.inference_mode():
        want = model(torch.from_numpy(x))[0].numpy()

    dyn = export_onnx(model, torch.zeros(1, 3, 16, 16), tmp_path / "dyn.onnx", input_names=["input"],
                      output_names=["logits", "score"], dynamic_batch=True, opset=13)
    graph = onnx.load(str(dyn))
    assert graph.opset_import[0].version == 13
    for value in [*graph.graph.input, *graph.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    logits, score = _session(dyn).run(None, {"input": x})
    assert logits.shape == (5, 4) and score.shape == (5,)
    np.testing.assert_allclose(logits, want, atol=1e-5, rtol=0)

    fixed = export_onnx(model, torch.zeros(1, 3, 16, 16), tmp_path / "fixed.onnx", input_names=["input"],
                        output_names=["logits", "score"], dynamic_batch=False)
    assert onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        _session(fixed).run(None, {"input": x})


def test_bytes_form_is_the_same_graph(tmp_path: Path) -> None:
    model = _tiny()
    kwargs = dict(input_names=["input"], output_names=["logits", "score"], dynamic_batch=True)
    data = export_onnx_bytes(model, torch.zeros(1, 3, 16, 16), **kwargs)
    path = export_onnx(model, torch.zeros(1, 3, 16, 16), tmp_path / "m.onnx", **kwargs)
    x = np.random.default_rng(2).normal(size=(3, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(_session(data).run(None, {"input": x})[0],
                                  _session(path).run(None, {"input": x})[0])


def test_failure_in_the_model_leaves_no_file(tmp_path: Path) -> None:
    dest = tmp_path / "broken.onnx"
    with pytest.raises(RuntimeError, match="boom"):
        export_onnx(Broken().eval(), torch.zeros(1, 3, 8, 8), dest, input_names=["input"],
                    output_names=["logits"], dynamic_batch=True)
    assert list(tmp_path.iterdir()) == []


def test_failure_after_partial_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter dies after writing part of the file: nothing appears at the path, an older graph
    there stays as it was, and no temporary is left beside it."""
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"the previous graph")

    def half_written(model, args, f, *a, **kw):
        Path(f).write_bytes(b"\x08\x07partial")
        raise RuntimeError("exporter died mid-write")

    monkeypatch.setattr(torch.onnx, "export", half_written)
    with pytest.raises(RuntimeError, match="mid-write"):
        export_onnx(_tiny(), torch.zeros(1, 3, 16, 16), dest, input_names=["input"],
                    output_names=["logits", "score"], dynamic_batch=True)
    assert dest.read_bytes() == b"the previous graph"
    assert list(tmp_path.iterdir()) == [dest]
    fresh = tmp_path / "fresh.onnx"
    with pytest.raises(RuntimeError, match="mid-write"):
        export_onnx(_tiny(), torch.zeros(1, 3, 16, 16), fresh, input_names=["input"],
                    output_names=["logits", "score"], dynamic_batch=True)
    assert not fresh.exists() and list(tmp_path.iterdir()) == [dest]


def test_graph_the_checker_rejects_is_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "model.onnx"

    def reject(path):
        raise onnx.checker.ValidationError("bad graph")

    monkeypatch.setattr(onnx.checker, "check_model", reject)
    with pytest.raises(onnx.checker.ValidationError):
        export_onnx(_tiny(), torch.zeros(1, 3, 16, 16), dest, input_names=["input"],
                    output_names=["logits", "score"], dynamic_batch=False)
    assert list(tmp_path.iterdir()) == []
