"""ONNX export of compressed BERT-style models: parity at batch 1/3/17 and two other sequence lengths."""

from __future__ import annotations

import onnx
import pytest
from export_helpers import compress, ops_by_scope, tiny_bert, token_batches

from fxapprox.export import to_onnx


@pytest.fixture(scope="module")
def bert():
    return tiny_bert()


@pytest.mark.parametrize("transform", ["linear", "identity"])
def test_compressed_bert_parity_over_batch_and_sequence(bert, transform, tmp_path):
    res = compress(bert, token_batches(), [(1, 3)], transform)
    example = token_batches(n=1, batch=3, seq=12, seed=7)[0]
    record = to_onnx(res, example, tmp_path / "bert.onnx", check_batch_sizes=(1, 17), check_seq_lens=(7, 20))
    assert [(c.batch_size, c.seq_len) for c in record.checks] == [(3, 12), (1, 12), (17, 12), (3, 7), (3, 20)]
    assert all(c.ok for c in record.checks)
    assert max(max(c.max_abs_diff.values()) for c in record.checks) < 1e-4
    assert record.output_names == ["last_hidden_state", "pooler_output"]
    assert record.dynamic_axes == {"input_ids": {0: "batch", 1: "sequence"},
                                   "attention_mask": {0: "batch", 1: "sequence"}}
    graph = onnx.load(str(record.path)).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    ops = ops_by_scope(record.path, "encoder.layer")
    assert "2" not in ops and "3" not in ops and "1" in ops
    span_ops = {k: v for k, v in ops.items() if k.startswith("fxapprox_")}
    assert span_ops == ({"fxapprox_blocks_2_to_3": {"MatMul": 1, "Add": 1}} if transform == "linear" else {})


def test_static_sequence_is_not_checked_at_other_lengths(bert, tmp_path):
    example = token_batches(n=1, batch=2, seq=8)[0]
    record = to_onnx(bert, example, tmp_path / "static.onnx", dynamic_seq=False, check_batch_sizes=(5,))
    assert [(c.batch_size, c.seq_len) for c in record.checks] == [(2, None), (5, None)]
    assert record.dynamic_axes == {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}
