"""refit="sequential": each span fitted on the model with the earlier spans replaced, against the original target."""

from __future__ import annotations

import pytest
import torch
from export_helpers import image_batches, tiny_dinov2
from tiny_models import tiny_batches, tiny_net

import fxapprox

CHAIN = ["mlp"] * 5


def _error(res, model, batches) -> float:
    """Relative error of the model's output over `batches`."""
    num = sum(float((res.module(x) - model(x)).square().sum()) for x in batches)
    return (num / sum(float(model(x).square().sum()) for x in batches)) ** 0.5


@pytest.mark.parametrize("spans, held", [([(0, 1), (2, 4)], True), ([(0, 2), (3, 4)], True),
                                         ([(0, 1), (1, 3)], False)], ids=["apart", "apart-longer", "adjacent"])
def test_sequential_refit_lowers_the_compounded_error(spans, held):
    model = tiny_net(CHAIN, seed=3)
    calib, held_out = tiny_batches(6, seed=1), tiny_batches(4, seed=2)
    independent = fxapprox.compress(model, calib, spans=spans, num_samples=48, progress=False)
    sequential = fxapprox.compress(model, calib, spans=spans, num_samples=48, refit="sequential", progress=False)
    with torch.no_grad():
        assert _error(sequential, model, calib) < _error(independent, model, calib)
        # held-out too, except for the adjacent plan, whose second map overfits its 240 rows of width 32
        assert not held or _error(sequential, model, held_out) < _error(independent, model, held_out)
    key = sequential.plan.spans[0].key
    for part in ("weight", "bias"):  # the first span sees the original model either way
        assert torch.equal(sequential.plan.weights[f"{key}.{part}"], independent.plan.weights[f"{key}.{part}"])
    assert sequential.plan.refit == "sequential"
    assert sequential.plan.spans[1].residual != independent.plan.spans[1].residual


def test_sequential_refit_with_folds():
    model = tiny_dinov2()
    spans = [(0, 1), (2, 3)]
    kw = dict(spans=spans, fold=True, num_samples=48, progress=False)
    independent = fxapprox.compress(model, image_batches(), **kw)
    sequential = fxapprox.compress(model, image_batches(), refit="sequential", **kw)
    x = torch.cat(image_batches()[:3])
    with torch.no_grad():
        want = model(pixel_values=x).last_hidden_state
        errors = [float((r.module(pixel_values=x).last_hidden_state - want).norm() / want.norm())
                  for r in (independent, sequential)]
    assert errors[1] < errors[0]
    assert [sp.fold for sp in sequential.plan.spans] == [True, True]
