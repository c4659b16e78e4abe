"""The field's rules on models whose pick is known, and `fxapprox frontier` end to end on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import half_net, hf_family, tiny_batches, tiny_net

import fxapprox
from fxapprox.study.field_methods import (
    block_budgets,
    block_influence,
    fxapprox_plan,
    papers_plan,
    pruning_order,
    replaceme_plan,
    rule_plan,
    shortgpt_plan,
)
from fxapprox.study.frontier import bootstrap_mean_ci, budgets_from_text, config_for


def _analysis(silent: tuple[int, ...], **kw):
    """Analysis of a 4-block tiny net whose blocks in `silent` compute as much as the others but
    return their input unchanged (MLP output scaled by 0)."""
    model = tiny_net(["mlp"] * 4)
    for b in silent:
        model.blocks[b].scale.zero_()
    return fxapprox.analyze(model, tiny_batches(6, 8), flops=True, progress=False, **kw)


def test_shortgpt_removes_the_block_whose_output_equals_its_input():
    an = _analysis((2,), num_samples=48, tokens="all")
    influence = block_influence(an)
    assert influence[2] == pytest.approx(0.0, abs=1e-9) and min(influence[:2] + influence[3:]) > 1e-4
    one, two = block_budgets(an, 2)
    plan = shortgpt_plan(an, one)
    assert plan.compress_kwargs == {"spans": [(1, 2)], "transform": "identity"}
    assert plan.reaches_budget and plan.predicted_flops_removed >= one
    second = min((0, 1, 3), key=lambda k: influence[k])  # the next lowest influence joins it
    spans = shortgpt_plan(an, two).compress_kwargs["spans"]
    assert sorted(b for s, e in spans for b in range(s + 1, e + 1)) == sorted([2, second])


def test_replaceme_picks_the_window_with_the_smallest_angle():
    an = _analysis((1, 2), num_samples=48, tokens="all")
    one, two = block_budgets(an, 2)
    plan = replaceme_plan(an, two, fold=False)
    assert plan.compress_kwargs == {"spans": [(0, 2)], "transform": "linear"}
    assert an.score(0, 2, "angular") == pytest.approx(0.0, abs=1e-6)
    assert any("not folded" in n for n in plan.notes)
    folded = replaceme_plan(an, one, fold=True)
    assert folded.compress_kwargs["fold"] is True and folded.compress_kwargs["spans"][0] in ((0, 1), (1, 2))
    # a folded map adds no FLOPs: the same window saves what the identity saves
    assert folded.predicted_flops_removed == pytest.approx(an.savings(*folded.compress_kwargs["spans"][0],
                                                                      "identity")[1] / an.total_flops)


def test_replaceme_windows_need_a_block_before_them():
    an = _analysis((0,), num_samples=48, tokens="all")
    plan = replaceme_plan(an, block_budgets(an, 1)[0], fold=False)
    (s, _), = plan.compress_kwargs["spans"]
    assert s >= 0  # block 0's window (-1, 0) has angle 0 but no down projection before it


def test_papers_take_algorithm_1_top_span_of_the_least_length():
    an = _analysis((1,), num_samples=48, tokens="cls")
    one, two = block_budgets(an, 2)
    assert papers_plan(an, one).compress_kwargs == {"spans": [(0, 1)], "transform": "linear"}  # the silent block
    s, e, _ = an.top_k(1, span_len=2, metric="linear")[0]
    assert papers_plan(an, two).compress_kwargs["spans"] == [(s, e)]
    # a budget just above one block's saving needs the next plan up: two blocks
    assert papers_plan(an, one * 1.01).compress_kwargs["spans"] == [(s, e)]
    beyond = papers_plan(an, 0.99)
    assert not beyond.reaches_budget and beyond.compress_kwargs["spans"] == [(-1, 3)] and beyond.notes


def test_fxapprox_takes_the_span_of_least_output_error():
    an = _analysis((2,), num_samples=32, tokens="all", output_samples=16)
    one = block_budgets(an, 1)[0]
    plan = fxapprox_plan(an, one)
    assert plan.compress_kwargs == {"spans": [(1, 2)], "transform": "linear", "refit": "sequential"}
    assert plan.reaches_budget


def test_fxapprox_chooses_on_mixed_units_with_a_half_unit_analysis():
    model = half_net(3)
    with torch.no_grad():  # block 1's MLP adds exactly zero: unit 3, span (2, 3), costs nothing to replace
        model.blocks[1].fc2.weight.zero_()
        model.blocks[1].fc2.bias.zero_()
    batches = tiny_batches(6, 8)
    blocks = fxapprox.analyze(model, batches, num_samples=32, flops=True, tokens="all", output_samples=16,
                              progress=False)
    mixed = fxapprox.analyze(model, batches, num_samples=32, flops=True, tokens="all", output_samples=16,
                             units="half", progress=False)
    half = mixed.savings(2, 3)[1] / mixed.total_flops
    plan = rule_plan("fxapprox", half * 0.999, paper=blocks, scores=blocks, mixed=mixed)
    assert plan.compress_kwargs == {"spans": [(2, 3)], "units": "half", "transform": "linear",
                                    "refit": "sequential"}
    assert plan.reaches_budget and plan.predicted_flops_removed == pytest.approx(half)
    whole = rule_plan("fxapprox", half * 0.999, paper=blocks, scores=blocks)  # without it: whole blocks
    assert whole.config.units == "block" and whole.predicted_flops_removed > half


def test_blockpruner_removes_the_unit_that_does_nothing_first():
    model = half_net(3)
    with torch.no_grad():  # block 1's MLP adds exactly zero: unit 3, span (2, 3), is the identity
        model.blocks[1].fc2.weight.zero_()
        model.blocks[1].fc2.bias.zero_()
    order = pruning_order(model, tiny_batches(), num_samples=32, max_units=2)
    assert order.units[0] == 3 and order.spans_after[0] == [(2, 3)]
    assert len(order.units) == 2 and sum(order.unit_flops) < order.total_flops
    first = order.unit_flops[3] / order.total_flops
    plan = rule_plan("blockpruner", first * 0.999, paper=None, scores=None, order=order)
    assert plan.compress_kwargs == {"spans": [(2, 3)], "units": "half", "transform": "identity"}
    assert plan.reaches_budget
    bigger = rule_plan("blockpruner", first * 1.001, paper=None, scores=None, order=order)
    assert len(bigger.compress_kwargs["spans"]) >= 1 and bigger.predicted_flops_removed > first
    res = fxapprox.compress(model, tiny_batches(), num_samples=32, progress=False, **plan.compress_kwargs)
    x = tiny_batches(1, seed=5)[0]
    assert torch.allclose(res.module(x), model(x), atol=1e-6)


def test_replaceme_folds_its_map():
    an = _analysis((), num_samples=32, tokens="all")
    assert rule_plan("replaceme", 0.2, paper=an, scores=an).compress_kwargs["fold"]
    with pytest.raises(ValueError, match="not one of"):
        rule_plan("sleb", 0.2, paper=an, scores=an)


def test_bootstrap_interval_of_a_mean():
    assert bootstrap_mean_ci(torch.full((50,), 0.7), rounds=50) == pytest.approx((0.7, 0.7))
    values = (torch.arange(400) % 4 == 0).double()  # mean 0.25
    lo, hi = bootstrap_mean_ci(values, rounds=300)
    assert lo < 0.25 < hi and hi - lo < 0.12


def test_budgets_and_config_from_the_command_line():
    from fxapprox.cli import build_parser

    args = build_parser().parse_args(["frontier", "dinov2-small", "--data", "mnist-5k", "--out", "o", "--quick",
                                      "--budgets", "0.08,0.25", "--json", "f.json", "--test", "0"])
    assert args.func.__module__ == "fxapprox.cli.frontier" and args.quick and args.json == "f.json"
    assert args.budgets == budgets_from_text("0.08,0.25") == (0.08, 0.25)
    with pytest.raises(ValueError, match="fractions"):
        budgets_from_text("0.2,1.5")
    cfg = config_for(True, budgets=(0.08,), test_samples=args.test, samples=None)
    assert (cfg.size, cfg.retrain, cfg.budgets, cfg.test_samples, cfg.samples) == (56, False, (0.08,), None, 256)
    assert config_for(False).retrain and config_for(False).size == 112


@pytest.mark.slow
def test_frontier_end_to_end_writes_every_stage(tmp_path):
    from test_selection_eval import _image_dataset

    from fxapprox.study.data import ImagePreprocessor
    from fxapprox.study.frontier import FrontierConfig, frontier, write_report

    model, _, _ = hf_family("vit")
    methods = ("papers", "shortgpt", "blockpruner", "replaceme", "fxapprox")
    cfg = FrontierConfig(methods=methods, max_blocks=2, samples=24, paper_samples=8, output_samples=8,
                         train_samples=None, test_samples=None, size=32, batch_size=8, epochs=2, seeds=(0,),
                         bench_iters=2, bench_warmup=1, bench_example=2, check_parity=False, bootstrap=20)
    stages = []

    def on_progress(partial):
        stages.append(sum(len(rows) for rows in partial["methods"].values()))
        write_report(partial, tmp_path / "out", tmp_path / "view.json")

    result = frontier(model, "tiny-vit", _image_dataset(), cfg, preprocessor=ImagePreprocessor(32),
                      on_progress=on_progress)
    assert stages == list(range(0, 2 * len(methods) + 1))  # the setup, then every plan
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"frontier.json", "frontier.md", "frontier.png"}
    view = json.loads((tmp_path / "view.json").read_text())
    assert 0 <= view["original"]["accuracy"] <= 1 and set(view["methods"]) == set(methods)
    keys = {"budget", "flops_removed", "params_removed", "speedup_b1", "speedup_b32", "agreement", "agreement_ci",
            "accuracy", "accuracy_se", "spans"}
    for method, rows in view["methods"].items():
        assert [r["budget"] for r in rows] == view["budgets"] == result["budgets"]
        for r in rows:
            assert keys <= set(r), method
            assert r["agreement_ci"][0] <= r["agreement"] <= r["agreement_ci"][1]
            assert r["speedup_b1"] > 0 and r["speedup_b32"] > 0 and "retrained_accuracy" in r
            if r["reaches_budget"]:  # counted on the rewritten graph, near what the rule predicted from the analysis
                assert r["flops_removed"] == pytest.approx(r["predicted_flops_removed"], rel=0.05)
                assert r["flops_removed"] >= r["budget"] * (1 - 1e-3)
    row = view["methods"]["shortgpt"][0]
    res = fxapprox.compress(model, _image_batches(), spans=[tuple(sp) for sp in row["spans"]], transform="identity",
                            num_samples=8, progress=False)
    assert row["params_removed"] == pytest.approx(1 - res.num_params_after / res.num_params_before)
    table = (tmp_path / "out" / "frontier.md").read_text()
    assert "ShortGPT" in table and "retrained acc." in table and table.count("\n| ") == 1 + 2 * len(methods)


def _image_batches():
    return [{"pixel_values": torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i))} for i in range(2)]


@pytest.mark.slow
def test_latency_selection_meets_its_budget_when_measured_again():
    from tiny_models import TinyNet

    from fxapprox.study.latency import block_latencies, plan_latency, select_by_latency

    torch.manual_seed(0)
    model = TinyNet(["mlp"] * 4, d=256).eval()
    calib = tiny_batches(12, 16)  # 160 calibration samples: 800 token rows for width 256
    an = fxapprox.analyze(model, calib, num_samples=160, tokens="all", output_samples=32, progress=False)
    kw = dict(batch_size=256, iters=15, warmup=3)
    lat = block_latencies(model, calib, calib[0], num_samples=160, **kw)
    assert len(lat.block_ms) == 4 and sum(lat.block_ms) > 0 and lat.provider  # one block may time below noise
    budget = 0.4  # about two of the four equal blocks
    spans = select_by_latency(an, lat, budget)
    assert sum(lat.saving(*sp) for sp in spans) >= budget * lat.original_ms
    res = fxapprox.compress(model, calib, spans=spans, num_samples=160, progress=False)
    base, plan, _ = plan_latency(model, res, calib[0], **kw)
    # two of four equal blocks go (about half the time); on a shared machine a timing can be off by 15 %
    noise = max(0.15, 2 * float(torch.tensor(lat.block_ms).std()) * len(res.plan.spans) / lat.original_ms)
    assert (base - plan) / base >= budget - noise
