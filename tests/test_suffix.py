"""SuffixRunner: running from a boundary with a replaced value equals the rewritten graph."""

from __future__ import annotations

import pytest
import torch
from tiny_models import hf_family, tiny_batches, tiny_net

import fxapprox
from fxapprox.blocks import find_block_stack
from fxapprox.boundaries import find_boundaries
from fxapprox.capture import capture
from fxapprox.inputs import as_model_inputs
from fxapprox.suffix import SuffixRunner


def _setup(family):
    if family == "tiny":
        model, batches = tiny_net(["mlp"] * 4), tiny_batches()
        other = torch.randn(3, 5, 12)
    else:
        model, batches, other = hf_family(family)
    stack = find_block_stack(model)
    cap = capture(model, as_model_inputs(batches[0]), stack)
    return model, batches, as_model_inputs(other), SuffixRunner(cap.module, find_boundaries(cap.module, stack))


def _first(out):
    return out if isinstance(out, torch.Tensor) else out[0]


@pytest.mark.parametrize("family", ["tiny", "vit", "bert"])
def test_suffix_with_identity_equals_identity_rewrite(family):
    model, batches, inputs, runner = _setup(family)
    cache = runner.prefix(inputs)
    assert torch.equal(_first(cache.output), _first(inputs.call(model)))
    res = fxapprox.compress(model, batches, spans=[(0, 2)], transform="identity", num_samples=4, progress=False)
    assert torch.equal(_first(runner.run_from(2, cache.boundaries[0], cache)), _first(inputs.call(res.module)))


def test_suffix_from_unchanged_boundary_reproduces_output():
    _, _, inputs, runner = _setup("vit")
    cache = runner.prefix(inputs)
    out = runner.run_from(1, cache.boundaries[1], cache)
    assert type(out) is type(cache.output)
    assert torch.equal(out.last_hidden_state, cache.output.last_hidden_state)
