"""selection="iterative": replace one block at a time, the least `output` damage given those already replaced."""

from __future__ import annotations

import pytest
import torch
from tiny_models import IN_FEATURES, TOKENS, tiny_batches, tiny_net

import fxapprox
from fxapprox.blocks import find_block_stack
from fxapprox.calibrate import calibrate
from fxapprox.inputs import as_model_inputs
from fxapprox.prepare import trace
from fxapprox.sequential import iterative_spans, runs_to_spans


def _net(kinds, shift_scale=0.05):
    model = tiny_net(kinds)
    with torch.no_grad():
        for block in model.blocks:
            block.shift.mul_(shift_scale)
    return model


def _steps(model, num_blocks, transform="identity"):
    batches = [as_model_inputs(b) for b in tiny_batches()]
    traced = trace(model, batches[0], find_block_stack(model))
    moments = calibrate(traced.module, traced.boundaries, list(range(-1, len(model.blocks))), batches, 32,
                        progress=False)
    return iterative_spans(traced, moments, batches[:2], num_blocks, transform=transform, ridge=1e-6,
                           progress=False)


def test_the_known_sequence_identity_then_small_shift_then_least_mlp():
    steps = _steps(_net(["mlp", "identity", "mlp", "shift", "mlp"]), 3)
    assert [s.block for s in steps[:2]] == [1, 3]
    assert steps[0].damage == 0.0 and 0 < steps[1].damage < steps[2].damage
    assert steps[1].spans == [(0, 1), (2, 3)]


def test_neighbouring_blocks_merge_into_one_span():
    steps = _steps(_net(["mlp", "identity", "identity", "mlp"]), 2)
    assert steps[-1].spans == [(0, 2)] and steps[-1].damage == 0.0


def test_runs_to_spans():
    assert runs_to_spans({0, 1, 3, 5, 6, 7}) == [(-1, 1), (2, 3), (4, 7)]


@pytest.mark.parametrize("transform", ["identity", "linear"])
def test_compress_iterative_replaces_the_affine_blocks(transform):
    model = _net(["mlp", "identity", "mlp", "shift", "mlp"], shift_scale=1.0 if transform == "linear" else 0.05)
    res = fxapprox.compress(model, tiny_batches(), num_blocks=2, selection="iterative", transform=transform,
                            num_samples=32, progress=False)
    assert res.spans == [(0, 1), (2, 3)]
    x = torch.randn(3, TOKENS, IN_FEATURES)
    if transform == "linear":  # both spans are exactly affine
        torch.testing.assert_close(res.module(x), model(x), rtol=1e-4, atol=1e-4)
