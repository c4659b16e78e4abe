"""`compress(budget=...)`, `param_budget=`, `latency_budget=`: the least damaging spans that save at
least the budget, counted on the graph net of the added maps; the result and the plan report it."""

from __future__ import annotations

import json

import pytest
from tiny_models import tiny_batches, tiny_net

import fxapprox
from fxapprox.costs import BlockLatency
from fxapprox.errors import SpanError
from fxapprox.export import compare_flops


def _model():
    model = tiny_net(["mlp", "mlp", "mlp", "mlp"])
    model.blocks[2].scale.zero_()  # block 2 computes as much as the others but returns its input
    return model


@pytest.mark.parametrize("selection", ["dp", "iterative", "topk"])
def test_flop_budget_is_reached_at_the_least_damage_and_reported(selection, tmp_path):
    res = fxapprox.compress(_model(), tiny_batches(), budget=0.1, selection=selection, num_samples=24, progress=False)
    assert res.spans == [(1, 2)]  # one block saves 0.1; the one that returns its input does least damage
    measured = compare_flops(_model(), res, tiny_batches(1)[0])
    removed = measured["flops_removed"] / measured["before"]["total"]
    assert res.reached["flops"] >= 0.1 and res.reached["flops"] == pytest.approx(removed, rel=1e-6)
    assert res.reached["params"] == pytest.approx(measured["params_removed"] / measured["before"]["params"])
    if selection == "iterative":
        assert len(res.selection_steps) == 1  # stops once the budget is met
    res.save(tmp_path)
    meta = json.loads((tmp_path / "plan.json").read_text())
    assert meta["reached"] == res.reached and meta["config"]["budget"] == 0.1


def test_a_larger_budget_takes_more_blocks_and_the_identity_counts_no_map():
    linear = fxapprox.compress(_model(), tiny_batches(), budget=0.4, num_samples=24, progress=False)
    assert sum(e - s for s, e in linear.spans) == 2 and linear.reached["flops"] >= 0.4
    ident = fxapprox.compress(_model(), tiny_batches(), budget=0.4, transform="identity", num_samples=24,
                              progress=False)
    assert ident.spans == linear.spans and ident.reached["flops"] > linear.reached["flops"]  # no map to pay for


def test_parameter_budget():
    res = fxapprox.compress(_model(), tiny_batches(), param_budget=0.15, num_samples=24, progress=False)
    assert res.spans == [(1, 2)] and res.reached["params"] >= 0.15


def test_latency_budget_reads_the_measured_block_latencies():
    latency = BlockLatency(10.0, [1.0, 1.0, 5.0, 1.0], 0.5, "CPUExecutionProvider", 32)
    res = fxapprox.compress(_model(), tiny_batches(), latency_budget=0.3, block_latency=latency, num_samples=24,
                            progress=False)
    assert res.spans == [(1, 2)] and res.reached == {"latency": pytest.approx((5.0 - 0.5) / 10.0)}
    with pytest.raises(SpanError, match="latencies are for 4 blocks, the model has 3"):
        fxapprox.compress(tiny_net(["mlp"] * 3), tiny_batches(), latency_budget=0.3, block_latency=latency,
                          progress=False)


def test_an_unreachable_budget_is_a_span_error():
    with pytest.raises(SpanError, match="saves"):
        fxapprox.compress(_model(), tiny_batches(), budget=0.99, num_samples=24, progress=False)
    with pytest.raises(SpanError, match="budget=0.99"):
        fxapprox.compress(_model(), tiny_batches(), budget=0.99, selection="topk", num_samples=24, progress=False)
