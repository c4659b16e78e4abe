"""The compressed module behaves like the model's nn.Module: eval/train, dtype and device moves,
autocast, any batch size, bf16 models compressed and run in bf16, SDPA calls as eager makes them."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from tiny_models import hf_family

import fxapprox
from fxapprox.blocks import find_block_stack
from fxapprox.errors import GraphDtypeError, InferenceOnlyError
from fxapprox.inputs import as_model_inputs
from fxapprox.passes.attention_mask import SDPA_TARGETS, sdpa_mask
from fxapprox.prepare import trace

SPANS = [(0, 2)]


@functools.cache
def _compressed(family: str, dtype: torch.dtype = torch.float32):
    model, batches, other = hf_family(family)
    model.to(dtype)
    return model, fxapprox.compress(model, batches, spans=SPANS, num_samples=8, progress=False), other


def _fresh(family: str, dtype: torch.dtype = torch.float32):
    model, res, other = _compressed(family, dtype)
    return model, copy.deepcopy(res.module), other


def _hidden(module, inputs: dict, cast: torch.dtype | None = None) -> torch.Tensor:
    if cast is not None:
        inputs = {k: v.to(cast) if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        return module(**inputs).last_hidden_state


@pytest.mark.parametrize("family", ["vit", "dinov2", "clip-vision"])
def test_no_sdpa_of_a_maskless_model_carries_a_mask(family):
    _, gm, _ = _fresh(family)
    sdpa = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in SDPA_TARGETS]
    assert sdpa and all(sdpa_mask(n) is None for n in sdpa)
    assert not any(n.target is torch.ops.aten.dropout.default for n in gm.graph.nodes)


def test_eval_works_and_train_says_why_not():
    _, gm, other = _fresh("vit")
    assert gm.eval() is gm and not gm.training
    with pytest.raises(InferenceOnlyError, match="inference-only"):
        gm.train()
    with pytest.raises(NotImplementedError):  # what torch.export's module raised: callers catching it still do
        gm.train(True)
    assert not copy.deepcopy(gm).training


@pytest.mark.parametrize("family", ["vit", "bert"])
def test_any_batch_size(family):
    _, gm, other = _fresh(family)
    one = {k: v[:1] for k, v in other.items()}
    many = {k: v.repeat(5, *([1] * (v.ndim - 1)))[:11] for k, v in other.items()}
    assert torch.allclose(_hidden(gm, one)[0], _hidden(gm, other)[0], atol=1e-5)
    assert _hidden(gm, many).shape[0] == 11


@pytest.mark.parametrize("family", ["vit", "dinov2", "bert"])
def test_bf16_model_compresses_and_runs_in_bf16(family):
    model, gm, other = _fresh(family, torch.bfloat16)
    _, gm32, _ = _fresh(family)
    assert all(p.dtype == torch.bfloat16 for p in gm.parameters())
    got = _hidden(gm, other, torch.bfloat16)
    assert got.dtype == torch.bfloat16
    want = _hidden(gm32, other)
    assert (got.float() - want).norm() / want.norm() < 0.05  # bf16 keeps ~3 significant digits
    # the cleaned capture of a bf16 model is the bf16 model
    traced = trace(model, as_model_inputs(other), find_block_stack(model))
    assert torch.equal(_hidden(traced.module, other, torch.bfloat16), _hidden(model, other, torch.bfloat16))


def test_bf16_model_takes_the_float32_inputs_its_original_takes():
    model, gm, other = _fresh("dinov2", torch.bfloat16)
    assert torch.equal(_hidden(gm, other), _hidden(gm, other, torch.bfloat16))
    assert _hidden(model, other).dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["vit", "dinov2", "bert"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_converted_after_compression(family, dtype):
    _, gm, other = _fresh(family)
    want = _hidden(gm, other)
    gm.half() if dtype is torch.float16 else gm.to(dtype)
    got = _hidden(gm, other, dtype)
    assert got.dtype == dtype and (got.float() - want).norm() / want.norm() < 0.05


def test_conversion_the_graph_cannot_follow_is_refused_before_anything_changes():
    _, gm, other = _fresh("llama")  # RMSNorm's upcasts to float32 are written into the graph
    with pytest.raises(GraphDtypeError, match="model.to"):
        gm.half()
    assert all(p.dtype == torch.float32 for p in gm.parameters())


@pytest.mark.parametrize("family", ["vit", "bert", "llama"])
def test_autocast(family):
    _, gm, other = _fresh(family)
    want = _hidden(gm, other)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _hidden(gm, other)
    assert (got.float() - want).norm() / want.norm() < 0.05


def test_moving_the_module_moves_the_devices_written_into_the_graph():
    _, gm, other = _fresh("bert")  # builds its mask with arange(device="cpu") and to(device="cpu")
    gm.to("meta")
    assert not any(isinstance(a, torch.device) and a.type == "cpu" for n in gm.graph.nodes
                   for a in (*n.args, *n.kwargs.values()))
    assert _hidden(gm, {k: v.to("meta") for k, v in other.items()}).device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", ["vit", "bert"])
def test_cuda(family):
    _, gm, other = _fresh(family)
    want = _hidden(gm, other)
    gm.to("cuda")
    cuda = {k: v.cuda() for k, v in other.items()}
    assert torch.allclose(_hidden(gm, cuda).cpu(), want, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = _hidden(gm, cuda)
    torch.cuda.synchronize()
    assert (got.float().cpu() - want).norm() / want.norm() < 0.05
