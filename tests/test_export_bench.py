"""Benchmarking: onnxruntime (the provider that ran), PyTorch eager, interleaved original-vs-compressed."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from torch import nn

from fxapprox.errors import ExportError, ProviderUnavailableError
from fxapprox.export import benchmark, compare, compare_flops, to_onnx
from fxapprox.export.benchmark import onnx_example_inputs, resolve_providers

HAS_ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def _mlp(hidden: int) -> nn.Module:
    torch.manual_seed(hidden)
    return nn.Sequential(nn.Linear(64, hidden), nn.GELU(), nn.Linear(hidden, 64)).eval()


@pytest.fixture(scope="module")
def models():
    return _mlp(512), _mlp(64)


@pytest.fixture(scope="module")
def files(models, tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    x = torch.randn(4, 64)
    return tuple(to_onnx(m, x, d / f"{name}.onnx").path for m, name in zip(models, ("big", "small")))


def test_onnxruntime_reports_the_provider_that_ran(files):
    res = benchmark(files[0], torch.randn(2, 64), batch_sizes=(1, 4), warmup=1, iters=5)
    assert res.backend == "onnxruntime"
    assert res.provider == ("CUDAExecutionProvider" if HAS_ORT_CUDA else "CPUExecutionProvider")
    assert [t.batch_size for t in res.timings] == [1, 4]
    for t in res.timings:
        assert t.iters == 5 and 0 < t.min_ms <= t.median_ms <= t.p90_ms
        assert t.items_per_s == pytest.approx(t.batch_size / (t.median_ms / 1e3))


def test_explicit_cpu_provider_and_short_names(files):
    assert resolve_providers("cpu") == (["CPUExecutionProvider"], True)
    assert resolve_providers(None)[1] is False
    res = benchmark(files[0], torch.randn(2, 64), providers=["CPUExecutionProvider"], batch_sizes=(2,),
                    warmup=0, iters=2)
    assert res.provider == "CPUExecutionProvider" and res.device == "cpu"


@pytest.mark.skipif(HAS_ORT_CUDA, reason="onnxruntime has CUDA here")
def test_unavailable_cuda_provider_is_a_typed_error(files):
    with pytest.raises(ProviderUnavailableError, match="onnxruntime-gpu"):
        benchmark(files[0], torch.randn(2, 64), providers=["cuda"])


def test_unknown_provider_is_a_typed_error(files):
    with pytest.raises(ProviderUnavailableError, match="NoSuchExecutionProvider"):
        benchmark(files[0], torch.randn(2, 64), providers=["NoSuchExecutionProvider"])


def test_inputs_are_made_from_the_onnx_graph(files):
    inputs = onnx_example_inputs(files[0], batch_size=3)
    assert list(inputs.kwargs) == ["input"] and inputs.kwargs["input"].shape == (3, 64)
    res = benchmark(files[0], batch_sizes=(1,), warmup=0, iters=2)
    assert res.timings[0].batch_size == 1


def test_torch_eager_on_cpu_leaves_the_model_in_place(models):
    model = models[0]
    res = benchmark(model, torch.randn(2, 64), device="cpu", batch_sizes=(1, 3), warmup=1, iters=3)
    assert (res.backend, res.provider, res.device) == ("torch", "torch-cpu", "cpu")
    assert [t.batch_size for t in res.timings] == [1, 3]
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_torch_device_is_a_typed_error(models):
    with pytest.raises(ProviderUnavailableError, match="no CUDA device"):
        benchmark(models[0], torch.randn(2, 64), device="cuda")


def test_compare_onnx_files_interleaved_with_flop_ratio(models, files):
    report = compare(*files, torch.randn(2, 64), batch_sizes=(1, 16), warmup=1, iters=6, modules=models)
    flop_ratio = compare_flops(*models, torch.randn(1, 64))["flop_ratio"]
    assert report["backend"] == "onnxruntime" and report["flop_speedup"] == pytest.approx(flop_ratio)
    assert flop_ratio == pytest.approx(8.0, rel=0.01)
    assert [r["batch_size"] for r in report["rows"]] == [1, 16]
    for r in report["rows"]:
        assert r["original"]["iters"] == r["compressed"]["iters"] == 6
        assert r["speedup"] == pytest.approx(r["original"]["median_ms"] / r["compressed"]["median_ms"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / flop_ratio)
        assert r["latency_ratio"] == pytest.approx(1 / r["speedup"])


def test_compare_modules_in_torch_and_given_flop_ratio(models, files):
    report = compare(*models, torch.randn(2, 64), batch_sizes=(4,), warmup=0, iters=2, device="cpu")
    assert report["backend"] == "torch" and report["flop_speedup"] == pytest.approx(8.0, rel=0.01)
    given = compare(*files, torch.randn(2, 64), batch_sizes=(4,), warmup=0, iters=2, flop_speedup=2.0)
    assert given["flop_speedup"] == 2.0 and given["flops"] is None


def test_compare_needs_two_of_a_kind(models, files):
    with pytest.raises(ExportError, match="not one of each"):
        compare(files[0], models[1], torch.randn(2, 64))
    with pytest.raises(ExportError, match="is not a file"):
        benchmark(files[0].with_name("nope.onnx"), torch.randn(2, 64))
