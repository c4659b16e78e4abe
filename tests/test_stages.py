"""The stages of `fxapprox.stages`, run one by one, give what `compress` gives; a selection can be
inspected (and changed) before fitting; the selection rules share one interface."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_models import tiny_batches, tiny_net

import fxapprox
from fxapprox import CompressConfig
from fxapprox.select import RULES, first_reaching, lowest_units, top_span
from fxapprox.stages import calibrate, capture, fit, rewrite, select


def _model():
    model = tiny_net(["mlp", "mlp", "mlp", "mlp"])
    model.blocks[2].scale.zero_()  # block 2 computes as much as the others but returns its input
    return model


@pytest.mark.parametrize("options", [dict(num_blocks=2), dict(spans=[(0, 1), (2, 3)], transform="auto"),
                                     dict(num_blocks=1, selection="iterative", refit="sequential")])
def test_stages_one_by_one_equal_compress(options):
    config = CompressConfig(num_samples=24, progress=False, **options)
    captured = capture.run(_model(), tiny_batches(), config)
    calibration = calibrate.run(captured, config)
    selection = select.run(calibration, config)
    plan = fit.run(calibration, selection, config)
    staged = rewrite.run(captured, plan)
    whole = fxapprox.compress(_model(), tiny_batches(), config=config)
    assert staged.spans == whole.spans == selection.spans
    ref = whole.module.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in staged.module.state_dict().items())
    x = tiny_batches(1, seed=7)[0]
    assert torch.equal(staged.module(x), whole.module(x))


def test_a_selection_can_be_inspected_and_changed_before_fitting():
    config = CompressConfig(num_blocks=1, num_samples=24, transform="identity", metric="cosine", progress=False)
    captured = capture.run(_model(), tiny_batches(), config)
    calibration = calibrate.run(captured, config)
    selection = select.run(calibration, config)
    assert selection.spans == [(1, 2)] and selection.rule == "dp"  # the block that returns its input
    res = rewrite.run(captured, fit.run(calibration, dataclasses.replace(selection, spans=[(0, 1)]), config))
    assert res.spans == [(0, 1)] and res.plan.spans[0].transform == "identity"


def test_rules_share_one_interface():
    costs = {(-1, 0): 0.5, (0, 1): 0.1, (1, 2): 0.3, (2, 3): 0.05, (0, 2): 0.2, (1, 3): 0.6, (-1, 1): 0.9}
    assert top_span(costs, 4, 2) == [(0, 2)]
    assert lowest_units(costs, 4, 2) == [(0, 1), (2, 3)] and lowest_units(costs, 4, 3) == [(0, 3)]
    assert RULES["dp"](costs, 4, 2) == [(0, 1), (2, 3)]
    assert first_reaching([("a", 0.1), ("b", 0.3), ("c", 0.5)], 0.25) == ("b", 0.3, True)
    assert first_reaching([("a", 0.1), ("b", 0.2)], 0.25) == ("b", 0.2, False)


@pytest.mark.parametrize("selection, metric, spans", [("topk", "linear", [(1, 3)]), ("lowest", "cosine", [(1, 2)])])
def test_compress_takes_the_field_rules(selection, metric, spans):
    model = tiny_net(["mlp", "mlp", "shift", "shift", "mlp"])
    k = spans[0][1] - spans[0][0]
    if selection == "lowest":
        model = _model()
    res = fxapprox.compress(model, tiny_batches(), num_blocks=k, selection=selection, metric=metric,
                            transform="identity" if selection == "lowest" else "linear", num_samples=24,
                            progress=False)
    assert res.spans == spans
