"""Generated ONNX files and inputs → `benchmark`/`compare` succeed or raise a typed one-line `ExportError` (or
`UnsupportedBatchError` for inputs that are no batch) naming the file or the inputs the graph takes.

Hypothesis runs derandomized (`derandomize=True`: the same examples on every run), bounded by `max_examples`,
no deadline. Files: two small graphs built with `onnx.helper` (a float `x` of shape (batch, 5, 12), token ids
`input_ids` of shape (batch, seq)), truncated or bit-flipped; inputs of generated names, dtypes and shapes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxapprox.errors import ExportError, FxApproxError

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fxapprox.export import benchmark, compare  # noqa: E402

SETTINGS = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAST = dict(batch_sizes=(1, 2), warmup=0, iters=1, providers="cpu")


def _float_model() -> bytes:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "float",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _token_model() -> bytes:
    table = numpy_helper.from_array(np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "input_ids"], ["h"])], "tokens",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", "seq", 4])], [table])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


MODELS = {"float": _float_model(), "tokens": _token_model()}


def _check(err: FxApproxError, path: Path) -> None:
    text = str(err)
    assert "\n" not in text, text
    assert str(path) in text or "the ONNX graph takes" in text or "example inputs" in text, text


def _bench(data: bytes, inputs=None, other: bytes | None = None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        path.write_bytes(data)
        try:
            if other is None:
                benchmark(path, inputs, **FAST)
            else:
                (Path(tmp) / "o.onnx").write_bytes(other)
                compare(Path(tmp) / "o.onnx", path, inputs, **FAST)
        except FxApproxError as err:
            _check(err, path)
            return "typed"
    return "ok"


@settings(max_examples=60, **SETTINGS)
@given(name=st.sampled_from(sorted(MODELS)), cut=st.integers(0, 10**6), flips=st.lists(st.integers(0, 10**9),
                                                                                         max_size=3))
def test_truncated_or_bit_flipped_files(name, cut, flips):
    data = bytearray(MODELS[name])
    if flips:
        for bit in flips:
            data[(bit // 8) % len(data)] ^= 1 << (bit % 8)
    else:
        data = data[: cut % len(data)]
    outcome = _bench(bytes(data))
    if not flips:
        assert outcome == "typed"


@st.composite
def inputs(draw):
    name = draw(st.sampled_from(["x", "input_ids", "pixel_values", None]))
    rank = draw(st.integers(1, 4))
    shape = [draw(st.integers(1, 3))] + [draw(st.sampled_from([1, 5, 12])) for _ in range(rank - 1)]
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.int64, torch.int32]))
    t = (torch.rand(shape) * 9).to(dtype)
    return t if name is None else {name: t}


@settings(max_examples=45, **SETTINGS)
@given(name=st.sampled_from(sorted(MODELS)), given_inputs=inputs())
def test_inputs_of_other_models_and_names(name, given_inputs):
    _bench(MODELS[name], given_inputs)


@settings(max_examples=20, **SETTINGS)
@given(cut=st.integers(0, 10**6), given_inputs=st.one_of(st.none(), inputs()))
def test_compare_with_a_truncated_or_other_file(cut, given_inputs):
    data = MODELS["float"][: cut % len(MODELS["float"])]
    _bench(data, torch.randn(2, 5, 12) if given_inputs is None else given_inputs, other=MODELS["float"])


def test_fitting_inputs_run(tmp_path):
    assert _bench(MODELS["float"], torch.randn(2, 5, 12)) == "ok"
    assert _bench(MODELS["tokens"], None) == "ok"  # example inputs made from the graph's inputs


@pytest.mark.parametrize("data, message", [
    (b"", "is empty"),
    (MODELS["float"][:40], "onnxruntime cannot load .*m.onnx"),
])
def test_damaged_file_names_it(tmp_path, data, message):
    (tmp_path / "m.onnx").write_bytes(data)
    with pytest.raises(ExportError, match=message):
        benchmark(tmp_path / "m.onnx", torch.randn(2, 5, 12), **FAST)


def test_inputs_that_do_not_fit_name_what_the_graph_takes(tmp_path):
    (tmp_path / "m.onnx").write_bytes(MODELS["float"])
    with pytest.raises(ExportError, match=r"the ONNX graph takes x: tensor\(float\) \['batch', 5, 12\]; the inputs "
                                          r"given are x: float32 \[1, 5, 7\]"):
        benchmark(tmp_path / "m.onnx", torch.randn(2, 5, 7), **FAST)
