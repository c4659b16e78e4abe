"""FLOPs of every family in the matrix (tests/tiny_models.py) → `count_flops` / `compare_flops` checked
against `torch.utils.flop_counter.FlopCounterMode` on the eager model, before and after compression.

The reference after compression is the eager count less the eager FLOPs of the replaced blocks plus
the FlopCounterMode count of the fitted map: a removed block whose work survives in the rewritten
graph (MPNet's in-place `scores += position_bias` kept its query and key alive) shows up as a
difference, and one block and four blocks replaced then remove the same FLOPs.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import HF_FAMILIES, hf_family
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import fxapprox
from fxapprox.blocks import find_block_stack
from fxapprox.export import compare_flops, count_flops
from fxapprox.inputs import as_model_inputs


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode has no formula for the CPU kernel of scaled-dot-product attention
_REFERENCE_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa}


def _eager(model, inputs):
    """Eager FlopCounterMode → (total, FLOPs per block, block input shape)."""
    stack = find_block_stack(model)
    shapes = {}

    def record(module, args, kwargs):
        shapes.setdefault("h", (args[0] if args else next(iter(kwargs.values()))).shape)

    hook = model.get_submodule(stack.block_path(0)).register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_REFERENCE_FORMULAS) as counter:
            inputs.call(model)
    finally:
        hook.remove()
    counts = counter.get_flop_counts()
    root = type(model).__name__
    per_block = [sum(counts.get(f"{root}.{stack.block_path(i)}", {}).values()) for i in range(stack.num_blocks)]
    return counter.get_total_flops(), per_block, shapes["h"]


def _map_flops(res, name, shape):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        res.module.get_submodule(name)(torch.zeros(shape))
    return counter.get_total_flops()


@pytest.fixture(scope="module", params=HF_FAMILIES)
def family(request):
    model, batches, _ = hf_family(request.param)
    one = as_model_inputs(batches[0]).take(1)
    return request.param, model, batches, one


def test_count_matches_flop_counter_on_the_eager_model(family):
    _, model, _, x = family
    total, per_block, _ = _eager(model, x)
    fc = count_flops(model, x)
    assert fc.total == total and fc.total == sum(fc.per_block.values()) + fc.other
    assert [fc.per_block[str(i)] for i in range(len(per_block))] == per_block
    assert all(per_block)


@pytest.mark.parametrize("span", [(0, 1), (-1, 3)], ids=["one-block", "four-blocks"])
def test_flops_removed_are_the_replaced_blocks_less_the_map(family, span):
    name, model, batches, x = family
    total, per_block, hidden = _eager(model, x)
    res = fxapprox.compress(model, batches, spans=[span], num_samples=12, progress=False)
    report = compare_flops(model, res, x)
    s, e = span
    added = _map_flops(res, f"fxapprox_blocks_{s + 1}_to_{e}", hidden)
    assert report["before"]["total"] == total
    assert report["after"]["per_block"][f"fxapprox_blocks_{s + 1}_to_{e}"] == added
    assert all(str(i) not in report["after"]["per_block"] for i in range(s + 1, e + 1))
    assert report["flops_removed"] == sum(per_block[s + 1:e + 1]) - added, name
