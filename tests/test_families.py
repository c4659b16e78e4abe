"""compress() on every supported model family (small random configs): structure, shapes, batch sizes."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tiny_models import HF_FAMILIES, IMAGE, hf_family, timm_vit, torchvision_vit

import fxapprox
from fxapprox.blocks import find_block_stack


def _check_removed(res, model, removed: list[int]):
    stack = find_block_stack(model)
    keys = list(res.module.state_dict().keys())
    for i in removed:
        prefix = stack.block_path(i) + "."
        assert not any(k.startswith(prefix) for k in keys), f"parameters of block {i} survive"
        assert not any(stack.block_path(i) in str(v) for n in res.module.graph.nodes
                       for v in [n.meta.get("nn_module_stack", {})]), f"nodes of block {i} survive"
    kept = [i for i in range(stack.num_blocks) if i not in removed]
    assert all(any(k.startswith(stack.block_path(i) + ".") for k in keys) for i in kept)


@pytest.mark.parametrize("family", HF_FAMILIES)
@pytest.mark.parametrize("spans", [[(0, 2)], [(-1, 0), (1, 3)]], ids=["one-span", "two-spans"])
def test_hf_family(family, spans):
    model, batches, other = hf_family(family)
    res = fxapprox.compress(model, batches, spans=spans, num_samples=12, progress=False)
    assert res.capture_path == "export"
    res.module.graph.lint()
    no_cache = {"use_cache": False} if getattr(model.config, "use_cache", False) else {}
    with torch.no_grad():  # the compressed graph of a decoder returns no key/value cache
        got, want = res.module(**other), model(**other, **no_cache)
    assert type(got) is type(want)
    assert list(got.keys()) == list(want.keys())
    for key in want.keys():
        if isinstance(want[key], torch.Tensor):
            assert got[key].shape == want[key].shape and torch.isfinite(got[key]).all()
    _check_removed(res, model, [b for s, e in spans for b in range(s + 1, e + 1)])
    assert res.num_params_after < res.num_params_before


def test_compressed_module_takes_positional_and_keyword_calls():
    model, batches, other = hf_family("vit")
    res = fxapprox.compress(model, batches, spans=[(0, 2)], num_samples=8, progress=False)
    x = other["pixel_values"]
    assert torch.equal(res.module(x).last_hidden_state, res.module(pixel_values=x).last_hidden_state)
    positional = fxapprox.compress(model, [b["pixel_values"] for b in batches], spans=[(0, 2)], num_samples=8,
                                   progress=False)
    assert torch.equal(positional.module(pixel_values=x).last_hidden_state, res.module(x).last_hidden_state)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision not installed")
def test_torchvision_vit():
    model = torchvision_vit()
    res = fxapprox.compress(model, [torch.randn(4, 3, IMAGE, IMAGE) for _ in range(3)], spans=[(0, 2)],
                            num_samples=12, progress=False)
    assert res.capture_path == "symbolic_trace"
    x = torch.randn(5, 3, IMAGE, IMAGE)
    assert res.module(x).shape == model(x).shape
    _check_removed(res, model, [1, 2])


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")
def test_timm_vit():
    model = timm_vit()
    res = fxapprox.compress(model, [torch.randn(4, 3, IMAGE, IMAGE) for _ in range(3)],
                            spans=[(-1, 0), (1, 3)], num_samples=12, progress=False)
    x = torch.randn(5, 3, IMAGE, IMAGE)
    assert res.module(x).shape == model(x).shape
    _check_removed(res, model, [0, 2, 3])
