"""Deployment forms: fused graphs (optimize=True), fp16 and int8 files, IO binding, the runtime choice."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from export_helpers import compress, image_batches, tiny_bert, tiny_vit, token_batches

from fxapprox.errors import ExportError, ExportMismatchError, ProviderUnavailableError, RuntimeMissingError
from fxapprox.export import benchmark, to_onnx
from fxapprox.export.optimize import SPAN_PREFIX, fused_ops, optimize_onnx
from fxapprox.export.precision import PRECISION_TOLERANCES

SPAN = (0, 2)  # blocks 1 and 2 of 4 replaced by one Linear
REMOVED = SPAN[1] - SPAN[0]


def _example(kind: str):
    if kind == "vit":
        return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    return {k: v[:3] for k, v in token_batches(1)[0].items()}


@pytest.fixture(scope="module", params=["vit", "bert"])
def fused(request, tmp_path_factory):
    """(kind, original module, compressed result, fused original record, fused compressed record)."""
    kind = request.param
    d = tmp_path_factory.mktemp(kind)
    model = tiny_vit() if kind == "vit" else tiny_bert()
    batches = image_batches() if kind == "vit" else token_batches()
    res = compress(model, batches, [SPAN], "linear")
    example = _example(kind)
    original = to_onnx(model, example, d / "original.onnx", optimize=True)
    compressed = to_onnx(res, example, d / "compressed.onnx", optimize=True)
    return kind, model, res, original, compressed


def test_optimized_graphs_hold_fused_attention_and_pass_parity(fused):
    _, _, _, original, compressed = fused
    assert original.optimization["fused_ops"]["Attention"] == 4
    assert compressed.optimization["fused_ops"]["Attention"] == 4 - REMOVED
    for record in (original, compressed):
        assert "Attention" not in record.optimization["fused_ops_before"]
        assert record.final_checks and all(c.ok for c in record.final_checks)
        assert fused_ops(record.path) == record.optimization["fused_ops"]


def test_span_linear_leaves_the_surrounding_fusions_intact(fused):
    kind, _, _, original, compressed = fused
    a, b = original.optimization["fused_ops"], compressed.optimization["fused_ops"]
    # Each removed block takes exactly its own two SkipLayerNormalizations; no plain LayerNorm is added.
    assert b["SkipLayerNormalization"] == a["SkipLayerNormalization"] - 2 * REMOVED
    assert b.get("LayerNormalization", 0) == a.get("LayerNormalization", 0)
    assert b["BiasGelu"] == a["BiasGelu"] - REMOVED
    # The span's MatMul reads a fused op's stream and its output reaches a fused op.
    graph = onnx.load(str(compressed.path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    users = lambda value: [n for n in graph.node if value in n.input]  # noqa: E731
    bias_add = next(n for n in graph.node if n.op_type == "Add" and any(i.startswith(SPAN_PREFIX) for i in n.input))
    matmul = producer[next(i for i in bias_add.input if not i.startswith(SPAN_PREFIX))]
    assert matmul.op_type == "MatMul"
    reached = {n.op_type for n in users(bias_add.output[0])}
    reached |= {n.op_type for u in users(bias_add.output[0]) if u.op_type == "Add" for n in users(u.output[0])}
    assert reached & {"SkipLayerNormalization", "Attention"}
    assert compressed.optimization["span_linears_in_residual_form"] == (1 if kind == "vit" else 0)


def test_residual_form_is_needed_for_the_pre_norm_fusion(fused, tmp_path):
    """Without the residual rewrite the ViT's first LayerNorm after the span stays unfused."""
    kind, _, res, _, compressed = fused
    if kind != "vit":
        pytest.skip("post-norm blocks (BERT) put no LayerNorm right after the span")
    from fxapprox.export import optimize as opt

    raw = to_onnx(res, _example(kind), tmp_path / "raw.onnx", validate=False).path
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(opt, "_residual_span_linears", lambda model: 0)
        plain = optimize_onnx(raw, tmp_path / "plain.onnx")["fused_ops"]
    assert plain["LayerNormalization"] == compressed.optimization["fused_ops"]["LayerNormalization"] + 1


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_low_precision_files_within_their_stated_tolerance(fused, precision, tmp_path):
    kind, _, res, _, fp32 = fused
    record = to_onnx(res, _example(kind), tmp_path / f"{precision}.onnx", optimize=True, precision=precision)
    assert record.precision == precision and all(c.ok for c in record.final_checks)
    kind_, bound, atol = PRECISION_TOLERANCES[precision]
    worst_rel = max(max(c.rel_err.values()) for c in record.final_checks)
    assert 0 < worst_rel  # the conversion really changed the numbers
    if kind_ == "relative":
        assert record.tolerance == {"relative": bound} and worst_rel <= bound
    else:
        assert record.tolerance == {"rtol": bound, "atol": atol}
    graph = onnx.load(str(record.path)).graph
    if precision == "fp16":
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
        assert graph.input[0].type.tensor_type.elem_type == fp32_input_type(fp32.path)  # inputs stay as they were
    else:
        assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in graph.node)
        assert record.size_bytes < fp32.size_bytes
    assert record.optimization["fused_ops"]["Attention"] == 4 - REMOVED


def fp32_input_type(path) -> int:
    return onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type


def test_int8_parity_failure_names_the_relative_error(fused, tmp_path, monkeypatch):
    kind, _, res, _, _ = fused
    from fxapprox.export import precision as prec

    monkeypatch.setitem(prec.PRECISION_TOLERANCES, "int8", ("relative", 1e-9, None))
    with pytest.raises(ExportMismatchError, match="relative error"):
        to_onnx(res, _example(kind), tmp_path / "int8.onnx", precision="int8")


def test_unknown_precision_is_a_typed_error(tmp_path):
    with pytest.raises(ExportError, match="fp32, fp16, int8"):
        to_onnx(tiny_vit(), _example("vit"), tmp_path / "x.onnx", precision="int4")


def test_io_binding_on_the_cpu_provider_runs_and_matches_session_run(fused):
    import onnxruntime as ort

    from fxapprox.export.benchmark import _ort_runner
    from fxapprox.inputs import as_model_inputs

    kind, _, _, _, compressed = fused
    res = benchmark(compressed.path, _example(kind), providers=["cpu"], batch_sizes=(2,), warmup=1, iters=2,
                    io_binding=True)
    assert res.io_binding and res.provider == "CPUExecutionProvider"
    session = ort.InferenceSession(str(compressed.path), providers=["CPUExecutionProvider"])
    inputs = as_model_inputs(_example(kind))
    bound = [v.numpy() for v in _ort_runner(session, "CPUExecutionProvider", inputs, True)()]
    plain = _ort_runner(session, "CPUExecutionProvider", inputs, False)()
    assert len(bound) == len(plain) and all(np.array_equal(a, b) for a, b in zip(bound, plain))


def test_requested_but_missing_cuda_provider_error_is_unchanged(fused):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(ProviderUnavailableError, match=r"\['CUDAExecutionProvider'\] are not available here"):
        benchmark(fused[4].path, _example(fused[0]), providers=["cuda"], batch_sizes=(1,), iters=1)


def test_no_onnxruntime_installed_is_a_typed_error(monkeypatch):
    from fxapprox.export.runtime import onnxruntime

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(RuntimeMissingError, match=r"\.\[cpu\]"):
        onnxruntime()


def test_runtime_is_one_extra_and_the_install_commands_choose_it():
    """The core pins no runtime; `cpu` / `gpu` each bring one; every README/CI install that runs
    fxapprox picks `cpu` (the tests and the demo need a runtime)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("onnxruntime") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert [d.split(">")[0] for d in extras["cpu"]] == ["onnxruntime"]
    assert [d.split(">")[0] for d in extras["gpu"]] == ["onnxruntime-gpu"]
    assert not any(d.startswith("onnxruntime") for name, deps in extras.items() if name not in ("cpu", "gpu")
                   for d in deps)
    installs = re.findall(r'pip install (?:-q )?-e "\.\[([a-z,]+)\]"', (root / "README.md").read_text()
                          + (root / ".ci" / "run").read_text())
    assert installs and all(("cpu" in i.split(",")) != ("gpu" in i.split(",")) for i in installs)
