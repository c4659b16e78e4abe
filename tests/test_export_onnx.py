"""ONNX export of original and compressed vision models: parity in onnxruntime, graph structure, metadata."""

from __future__ import annotations

import json
from collections import Counter

import onnx
import pytest
import torch
from export_helpers import (
    compress,
    contains_array,
    image_batches,
    initializer_arrays,
    ops_by_scope,
    tiny_vit,
)

from fxapprox.export import read_metadata, to_onnx

BATCHES = (1, 17)  # checked besides the example's batch of 3


@pytest.fixture(scope="module")
def vit():
    return tiny_vit()


@pytest.fixture(scope="module")
def example():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def vit_files(vit, example, tmp_path_factory):
    """The original ViT and two compressions of blocks 1..2 (span 0→2), linear and identity, in ONNX."""
    d = tmp_path_factory.mktemp("vit")
    linear = compress(vit, image_batches(), [(0, 2)], "linear")
    identity = compress(vit, image_batches(), [(0, 2)], "identity")
    return {
        "original": (vit, to_onnx(vit, example, d / "original.onnx", check_batch_sizes=BATCHES)),
        "linear": (linear, to_onnx(linear, example, d / "linear.onnx", check_batch_sizes=BATCHES)),
        "identity": (identity, to_onnx(identity, example, d / "identity.onnx", check_batch_sizes=BATCHES)),
    }


@pytest.mark.parametrize("kind", ["original", "linear", "identity"])
def test_vit_parity_at_batch_1_3_17(vit_files, kind):
    _, record = vit_files[kind]
    assert [c.batch_size for c in record.checks] == [3, 1, 17]
    assert all(c.ok for c in record.checks)
    assert max(max(c.max_abs_diff.values()) for c in record.checks) < 1e-4
    assert record.output_names == ["last_hidden_state", "pooler_output"]
    assert record.input_names == ["pixel_values"]
    assert record.dynamic_axes == {"pixel_values": {0: "batch"}}


def test_onnx_graph_has_model_output_names_and_dynamic_batch(vit_files):
    model = onnx.load(str(vit_files["linear"][1].path))
    assert [o.name for o in model.graph.output] == ["last_hidden_state", "pooler_output"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_linear_span_is_one_matmul_and_add_identity_adds_nothing(vit_files):
    orig = ops_by_scope(vit_files["original"][1].path, "layers")
    lin = ops_by_scope(vit_files["linear"][1].path, "layers")
    ident = ops_by_scope(vit_files["identity"][1].path, "layers")
    assert {"0", "1", "2", "3"} <= set(orig)
    mask = Counter({"IsNaN": 1, "Where": 2, "Add": 1})  # SDPA's all-true mask: the capture's cleanup drops it
    for ops in (lin, ident):
        assert "1" not in ops and "2" not in ops  # removed blocks left no node
        assert ops["0"] == orig["0"] - mask and ops["3"] == orig["3"] - mask
    assert lin["fxapprox_blocks_1_to_2"] == {"MatMul": 1, "Add": 1}
    assert not any(k.startswith("fxapprox_") for k in ident)
    total = lambda ops, op: sum(c[op] for c in ops.values())  # noqa: E731
    removed = orig["1"]["MatMul"] + orig["2"]["MatMul"]
    assert total(lin, "MatMul") == total(orig, "MatMul") - removed + 1
    assert total(ident, "MatMul") == total(orig, "MatMul") - removed


def test_removed_weights_are_not_in_the_file_and_it_shrinks(vit, vit_files):
    linear, record = vit_files["linear"]
    arrays = initializer_arrays(record.path)
    for name in ("layers.1.mlp.fc1.weight", "layers.2.attention.q_proj.weight", "layers.2.mlp.fc2.weight"):
        assert not contains_array(arrays, vit.get_parameter(name)), name
    assert contains_array(arrays, vit.get_parameter("layers.3.mlp.fc1.weight"))
    assert contains_array(arrays, linear.module.get_submodule("fxapprox_blocks_1_to_2").weight)
    removed = sum(p.numel() for n, p in vit.named_parameters() if n.startswith(("layers.1.", "layers.2.")))
    added = 32 * 32 + 32
    # float arrays only, no scalars: the original's file also holds the boolean mask and the scalar
    # constants of the all-true attention mask that the capture's cleanup drops
    weight_bytes = lambda kind: sum(a.nbytes for a in initializer_arrays(vit_files[kind][1].path)  # noqa: E731
                                    if a.dtype.kind == "f" and a.size > 1)
    assert weight_bytes("original") - weight_bytes("linear") == 4 * (removed - added)
    assert weight_bytes("original") - weight_bytes("identity") == 4 * removed
    # the file also loses the removed blocks' nodes (and their debug metadata)
    assert vit_files["original"][1].size_bytes - record.size_bytes > 4 * (removed - added)
    assert vit_files["identity"][1].size_bytes < record.size_bytes


def test_plan_is_stored_in_metadata_props(vit_files):
    meta = read_metadata(vit_files["linear"][1].path)
    plan = json.loads(meta["fxapprox.plan"])
    assert plan["model_class"] == "ViTModel" and plan["blocks"] == "layers"
    assert [(s["s"], s["e"], s["transform"]) for s in plan["spans"]] == [(0, 2, "linear")]
    assert plan["spans"][0]["removed_blocks"] == [1, 2] and plan["spans"][0]["residual"] >= 0
    assert meta["fxapprox.spans"] == "0->2:linear"
    assert "fxapprox.plan" not in read_metadata(vit_files["original"][1].path)
