"""`CompressConfig`: every bad field → a typed error naming it, JSON and plan round trips, and
`compress(config=c)` equal to the keyword call bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_batches, tiny_net

import fxapprox
from fxapprox import CompressConfig
from fxapprox.costs import BlockLatency
from fxapprox.errors import ConfigError, MissingScoreError, SpanError
from fxapprox.plan import Plan

LATENCY = BlockLatency(10.0, [1.0, 2.0, 3.0], 0.5, "CPUExecutionProvider", 32)


@pytest.mark.parametrize("kwargs, field", [
    ({}, "spans"),
    ({"num_blocks": 1, "budget": 0.2}, "budget"),
    ({"spans": "9-11"}, "spans"),
    ({"spans": []}, "spans"),
    ({"num_blocks": 0}, "num_blocks"),
    ({"num_blocks": 1.5}, "num_blocks"),
    ({"budget": 1.0}, "budget"),
    ({"param_budget": -0.1}, "param_budget"),
    ({"latency_budget": 0.2}, "block_latency"),
    ({"latency_budget": 0.2, "block_latency": LATENCY, "units": "half"}, "units"),
    ({"num_blocks": 1, "block_latency": {"original_ms": 1.0}}, "block_latency"),
    ({"num_blocks": 1, "blocks": 3}, "blocks"),
    ({"num_blocks": 1, "units": "quarter"}, "units"),
    ({"num_blocks": 1, "num_samples": 0}, "num_samples"),
    ({"num_blocks": 1, "selection": "greedy"}, "selection"),
    ({"num_blocks": 1, "metric": "bogus"}, "metric"),
    ({"num_blocks": 1, "output_target": "probs"}, "output_target"),
    ({"num_blocks": 1, "transform": "mlp2"}, "transform"),
    ({"num_blocks": 1, "auto_tolerance": float("nan")}, "auto_tolerance"),
    ({"num_blocks": 1, "ridge": -1.0}, "ridge"),
    ({"num_blocks": 1, "prior": "one"}, "prior"),
    ({"num_blocks": 1, "refit": "joint"}, "refit"),
    ({"num_blocks": 1, "fold": "yes"}, "fold"),
    ({"num_blocks": 1, "fold": True, "transform": "identity"}, "fold"),
    ({"num_blocks": 1, "progress": 1}, "progress"),
])
def test_each_bad_field_raises_a_config_error_naming_it(kwargs, field):
    with pytest.raises(ConfigError, match=field) as info:
        CompressConfig(**kwargs)
    assert info.value.field == field


def test_config_errors_keep_the_error_types_compress_raised():
    with pytest.raises(SpanError, match="exactly one"):
        CompressConfig(spans=[(0, 1)], num_blocks=1)
    with pytest.raises(MissingScoreError, match="not 'bogus'"):
        CompressConfig(num_blocks=1, metric="bogus")


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="num_block, tokens") as info:
        CompressConfig.from_dict({"num_block": 2, "tokens": "cls"})
    assert info.value.field == "num_block"
    with pytest.raises(ConfigError, match="metrics"):
        CompressConfig(num_blocks=1).replace(metrics="linear")


@pytest.mark.parametrize("config", [
    CompressConfig(spans=[(0, 2), (3, 4)], transform="auto", auto_tolerance=0.05, fold=False),
    CompressConfig(num_blocks=2, units="half", selection="iterative", prior="identity", refit="sequential"),
    CompressConfig(budget=0.25, metric="heldout", blocks="encoder.layer", progress=False),
    CompressConfig(latency_budget=0.3, block_latency=LATENCY),
])
def test_json_round_trip(config):
    again = CompressConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.to_dict() == config.to_dict()
    assert again.progress == config.progress


def test_replace_swaps_the_target_and_changes_lists_what_differs():
    config = CompressConfig(num_blocks=2, transform="identity").replace(budget=0.3)
    assert (config.num_blocks, config.budget, config.transform) == (None, 0.3, "identity")
    assert config.changes() == {"budget": 0.3, "transform": "identity"}


def _state(res):
    return {k: v.clone() for k, v in res.module.state_dict().items()}


def test_compress_with_a_config_equals_the_keyword_call_bit_for_bit():
    options = dict(num_blocks=2, num_samples=24, prior="identity", refit="sequential", progress=False)
    x = tiny_batches(1, seed=9)[0]
    by_kwargs = fxapprox.compress(tiny_net(["mlp", "shift", "mlp", "mlp"]), tiny_batches(), **options)
    by_config = fxapprox.compress(tiny_net(["mlp", "shift", "mlp", "mlp"]), tiny_batches(),
                                  config=CompressConfig(**options))
    overridden = fxapprox.compress(tiny_net(["mlp", "shift", "mlp", "mlp"]), tiny_batches(),
                                   config=CompressConfig(num_blocks=1, num_samples=24, progress=False),
                                   num_blocks=2, prior="identity", refit="sequential")
    reference = _state(by_kwargs)
    for res in (by_config, overridden):
        assert res.spans == by_kwargs.spans
        state = _state(res)
        assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)
        assert torch.equal(res.module(x), by_kwargs.module(x))
    assert by_config.plan.config == by_kwargs.plan.config == CompressConfig(**options).to_dict()


def test_the_plan_records_its_config_and_loads_without_it(tmp_path):
    config = CompressConfig(num_blocks=1, num_samples=24, transform="auto", progress=False)
    res = fxapprox.compress(tiny_net(["mlp", "identity", "mlp"]), tiny_batches(), config=config)
    res.save(tmp_path / "plan")
    plan = Plan.read(tmp_path / "plan")
    assert CompressConfig.from_dict(plan.config) == config
    again = fxapprox.compress(tiny_net(["mlp", "identity", "mlp"]), tiny_batches(),
                              config=CompressConfig.from_dict(plan.config))
    assert again.spans == res.spans and all(torch.equal(again.plan.weights[k], res.plan.weights[k])
                                            for k in res.plan.weights)
    # a format-2 plan written before the config was recorded
    meta = json.loads((tmp_path / "plan" / "plan.json").read_text())
    del meta["config"], meta["reached"]
    (tmp_path / "plan" / "plan.json").write_text(json.dumps(meta))
    old = fxapprox.load(tiny_net(["mlp", "identity", "mlp"]), tmp_path / "plan")
    assert old.plan.config is None and old.plan.reached is None and old.spans == res.spans


def test_refine_options_round_trip_through_json_and_are_checked():
    config = CompressConfig(spans=[(0, 2)], transform="mlp", refine="output",
                            refine_options={"params": "maps+norms", "mlp_fraction": 0.2})
    back = CompressConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config and back.refine_options.mlp_fraction == 0.2 and back.trains
    assert config.changes()["refine_options"]["params"] == "maps+norms"
    with pytest.raises(ConfigError) as err:
        CompressConfig(spans=[(0, 2)], refine_options={"epochs": "three"})
    assert err.value.field == "refine_options"
