"""The trained frontier rows (`fxapprox-refined`, `-tuned`, `-mlp`, `llm-streamline-style`) and a tiny frontier run."""

from __future__ import annotations

import json

import pytest
from test_frontier import _analysis
from tiny_models import hf_family

from fxapprox.config import CompressConfig
from fxapprox.costs import MlpSize
from fxapprox.study.field_methods import (
    DEFAULT_METHODS,
    FFN_RATIO,
    METHODS,
    REFINED,
    TRAINED,
    block_budgets,
    fxapprox_plan,
    rule_plan,
)


def test_the_command_line_takes_both_names():
    from fxapprox.cli import build_parser

    args = build_parser().parse_args(["frontier", "dinov2-small", "--data", "mnist-5k", "--out", "o",
                                      "--methods", "fxapprox,fxapprox-refined,llm-streamline-style"])
    assert args.methods == ("fxapprox", "fxapprox-refined", "llm-streamline-style")
    assert set(METHODS) - set(DEFAULT_METHODS) == {"fxapprox-refined", "fxapprox-tuned", "fxapprox-mlp",
                                                      "llm-streamline-style"}


def test_fxapprox_refined_refines_fxapprox_plan():
    an = _analysis((2,), num_samples=32, tokens="all", output_samples=16)
    one = block_budgets(an, 1)[0]
    plan = rule_plan("fxapprox-refined", one, paper=an, scores=an)
    assert plan.config == fxapprox_plan(an, one).config.replace(**REFINED)
    kwargs = plan.compress_kwargs
    assert kwargs["refine"] == "output" and kwargs["refine_options"]["params"] == "maps+norms"
    tuned = rule_plan("fxapprox-tuned", one, paper=an, scores=an)
    assert tuned.config.spans == plan.config.spans and tuned.rule == "dp"
    options = tuned.compress_kwargs["refine_options"]
    assert options["params"] == "all" and options["lr"] == 1e-5


def test_fxapprox_mlp_pays_for_its_mlps():
    an = _analysis((2,), num_samples=32, tokens="all", output_samples=16)
    one = block_budgets(an, 1)[0]
    linear = rule_plan("fxapprox", one, paper=an, scores=an)
    plan = rule_plan("fxapprox-mlp", one, paper=an, scores=an)
    assert plan.config.transform == "mlp" and plan.config.refine == "output" and plan.reaches_budget
    mlp = MlpSize(TRAINED["fxapprox-mlp"]["refine_options"]["mlp_fraction"])
    saved = sum(an.savings(s, e, "mlp", mlp)[1] for s, e in plan.config.spans) / an.total_flops
    assert plan.predicted_flops_removed == pytest.approx(saved) and saved >= one
    # one block no longer pays for itself once its MLP is counted: the plan removes more blocks
    assert sum(e - s for s, e in plan.config.spans) > sum(e - s for s, e in linear.config.spans)


def test_streamline_takes_the_most_alike_window_and_pays_for_its_ffn():
    an = _analysis((0, 1, 2), num_samples=32, tokens="all")  # blocks 0-2 return their input
    plan = rule_plan("llm-streamline-style", 0.01, paper=an, scores=an)
    hidden = FFN_RATIO * an.widths[0]
    # a 4d FFN costs more than one or two of these blocks (d → 2d → d): the least window that saves is 3 blocks
    assert plan.config == CompressConfig(spans=[(-1, 2)], transform="mlp", refine_options={"mlp_hidden": hidden})
    ffn = 2 * an.tokens_per_sample[0] * hidden * 2 * an.widths[0] / an.total_flops
    assert plan.predicted_flops_removed == pytest.approx(block_budgets(an, 3)[2] - ffn)


@pytest.mark.slow
def test_a_frontier_with_the_trained_rows(tmp_path):
    from test_selection_eval import _image_dataset

    from fxapprox.study.data import ImagePreprocessor
    from fxapprox.study.frontier import FrontierConfig, frontier, write_report

    model, _, _ = hf_family("vit")
    methods = ("fxapprox", "fxapprox-refined", "llm-streamline-style")
    cfg = FrontierConfig(methods=methods, budgets=(0.3,), samples=24, paper_samples=8, output_samples=8,
                         train_samples=None, test_samples=None, size=32, batch_size=8, epochs=2, seeds=(0,),
                         retrain=False, bench_iters=2, bench_warmup=1, bench_example=2, check_parity=False,
                         bootstrap=20)
    result = frontier(model, "tiny-vit", _image_dataset(), cfg, preprocessor=ImagePreprocessor(32))
    write_report(result, tmp_path / "out", tmp_path / "view.json")
    view = json.loads((tmp_path / "view.json").read_text())
    plain, refined, streamline = (view["methods"][m][0] for m in methods)
    assert "train_s" not in plain
    assert refined["spans"] == plain["spans"] and refined["options"]["refine"] == "output"
    assert refined["train_s"] > 0 and refined["train_x_compress"] > 0
    assert refined["heldout_after"] <= refined["heldout_before"] and refined["stopped"] in ("steps", "patience")
    assert set(streamline["transforms"]) == {"mlp"} and streamline["train_s"] > 0
    # the FFN's FLOPs are paid: counted on the graph near the prediction (this tiny ViT's analysis totals differ
    # from the graph's by a few points of the FLOPs, which a 4d FFN on a 32-wide model magnifies)
    assert streamline["flops_removed"] == pytest.approx(streamline["predicted_flops_removed"], abs=0.05)
    table = (tmp_path / "out" / "frontier.md").read_text()
    assert "LLM-Streamline-style" in table and "training s (× compress)" in table
