"""ONNX export: DINOv2 identity spans, user metadata, external data, output naming and bad input."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from export_helpers import compress, image_batches, ops_by_scope, tiny_dinov2

from fxapprox.errors import ExportError, ExportMismatchError
from fxapprox.export import read_metadata, to_onnx

BATCHES = (1, 17)


def test_dinov2_identity_span_parity_and_user_metadata(tmp_path):
    example = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    model = tiny_dinov2()
    res = compress(model, image_batches(), [(1, 3)], "identity")
    record = to_onnx(res, example, tmp_path / "dino.onnx", check_batch_sizes=BATCHES,
                     metadata={"dataset": "random", "n": 3})
    assert [c.batch_size for c in record.checks] == [3, 1, 17] and all(c.ok for c in record.checks)
    ops = ops_by_scope(record.path, "encoder.layer")
    assert "2" not in ops and "3" not in ops and "1" in ops
    meta = read_metadata(record.path)
    assert meta["dataset"] == "random" and meta["n"] == "3"
    assert json.loads(meta["fxapprox.plan"])["spans"][0]["transform"] == "identity"


def test_external_data(tmp_path):
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)).eval()
    record = to_onnx(mlp, torch.randn(4, 64), tmp_path / "ext.onnx", external_data=True)
    data = tmp_path / "ext.onnx.data"
    assert record.external_data and data.is_file()
    assert data.stat().st_size >= 4 * (64 * 256 * 2)  # both weight matrices
    stored = onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False).graph.initializer
    big = [t for t in stored if len(t.dims) == 2]
    assert len(big) == 2 and all(t.data_location == onnx.TensorProto.EXTERNAL for t in big)
    assert [c.batch_size for c in record.checks] == [4, 9] and all(c.ok for c in record.checks)


def test_tuple_and_tensor_outputs_are_named(tmp_path):
    class Two(torch.nn.Module):
        def forward(self, x):
            return x + 1, x * 2

    class One(torch.nn.Module):
        def forward(self, x):
            return x.relu()

    assert to_onnx(Two(), torch.randn(2, 4), tmp_path / "two.onnx").output_names == ["output_0", "output_1"]
    assert to_onnx(One(), torch.randn(2, 4), tmp_path / "one.onnx").output_names == ["output"]


def test_non_tensor_output_is_a_typed_error(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            return {"y": x * 2, "note": "text"}

    with pytest.raises(ExportError, match="'note' is a str, not a tensor"):
        to_onnx(Bad(), torch.randn(2, 4), tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_missing_directory_is_a_typed_error(tmp_path):
    with pytest.raises(ExportError, match="does not exist; create it first"):
        to_onnx(torch.nn.Linear(4, 4), torch.randn(2, 4), tmp_path / "missing" / "m.onnx")


def test_module_that_rejects_the_inputs_is_a_typed_error(tmp_path):
    with pytest.raises(ExportError, match="does not run on the example inputs"):
        to_onnx(torch.nn.Linear(4, 4), torch.randn(2, 5), tmp_path / "m.onnx")


def test_something_else_than_a_module_is_a_typed_error(tmp_path):
    with pytest.raises(ExportError, match="pass an nn.Module"):
        to_onnx("model", torch.randn(2, 4), tmp_path / "m.onnx")


def test_disagreement_beyond_tolerance_raises_with_the_worst_difference(tmp_path):
    lin = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 64)).eval()
    with pytest.raises(ExportMismatchError, match="worst \\|difference\\|") as info:
        to_onnx(lin, torch.randn(4, 64), tmp_path / "m.onnx", rtol=0.0, atol=1e-12)
    assert info.value.worst_abs_diff > 1e-12
    assert info.value.output == "output"
