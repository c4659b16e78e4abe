"""Refinement at the output and the `mlp` transform on tiny models: they train, deterministically,
never touch the original, reload bit for bit, export with parity and are counted."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_batches, tiny_net

import fxapprox
from fxapprox.blocks import find_block_stack
from fxapprox.costs import BlockLatency
from fxapprox.errors import ConfigError, RefineError
from fxapprox.export import count_flops, to_onnx
from fxapprox.refine import RefineOptions, refine_output
from fxapprox.span_modules import ResidualMLP, affine_linear

SPAN = [(0, 2)]  # block 3 stays: its norm and biases can be refined


def _model():
    return tiny_net(["mlp"] * 4)


def _compress(model, batches, spans=SPAN, **kw):
    return fxapprox.compress(model, batches, spans=spans, num_samples=sum(len(b) for b in batches),
                             progress=False, **kw)


def test_refinement_lowers_the_heldout_output_loss():
    report = _compress(_model(), tiny_batches(32, 16), spans=[(0, 3)], refine="output",
                       refine_options={"lr": 1e-3, "epochs": 4}).plan.refinement
    assert report["target"] == "features" and report["heldout_batches"] == 8 and report["train_batches"] == 48
    assert report["heldout_after"] < report["heldout_before"] and report["best_step"] > 0
    assert [st for st, _ in report["train_history"]] == [st for st, _ in report["history"][1:]]
    assert report["train_history"][-1][1] < report["train_history"][0][1]  # the training loss falls too
    assert report["trained"] == ["fxapprox_blocks_1_to_3.bias", "fxapprox_blocks_1_to_3.weight"]
    assert report["num_trained"] == 32 * 32 + 32


def test_refinement_is_deterministic_for_a_seed():
    model, batches = _model(), tiny_batches(8, 8)
    runs = [_compress(model, batches, refine="output", refine_options={"params": "maps+norms", "lr": 1e-3,
                                                                       "epochs": 2, "seed": 3}) for _ in range(2)]
    a, b = (r.plan.weights for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    closed = _compress(model, batches).plan.weights
    assert not torch.equal(a["span.0.2.weight"], closed["span.0.2.weight"])  # it trained


def test_the_original_model_is_never_modified():
    model, batches = _model(), tiny_batches(8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    res = _compress(model, batches, transform="mlp", refine="output",
                    refine_options={"params": "maps+norms", "lr": 1e-2, "epochs": 2, "mlp_epochs": 2})
    assert any(k.startswith("refined.blocks.3.") for k in res.plan.weights)  # a block's norm the original shares
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert grads == {k: p.requires_grad for k, p in model.named_parameters()}
    assert res.module.get_submodule("blocks.3") is not model.blocks[3]


@pytest.mark.parametrize("transform", ["linear", "mlp"])
def test_a_refined_plan_reloads_bit_for_bit(tmp_path, transform):
    model, batches = _model(), tiny_batches(8, 8)
    res = _compress(model, batches, transform=transform, refine="output",
                    refine_options={"params": "maps+norms", "lr": 1e-2, "epochs": 2, "mlp_epochs": 2})
    res.save(tmp_path / "plan")
    back = fxapprox.load(model, tmp_path / "plan")
    x = tiny_batches(1, 5, seed=9)[0]
    assert torch.equal(back.module(x), res.module(x))
    assert back.plan.refinement == json.loads(json.dumps(res.plan.refinement))
    assert [sp.transform for sp in back.plan.spans] == [transform]
    to_onnx(back, x, tmp_path / "refined.onnx", validate=True)


def test_the_mlp_starts_equal_to_the_closed_form():
    torch.manual_seed(0)
    linear = affine_linear(torch.randn(32, 24, dtype=torch.float64), torch.randn(24, dtype=torch.float64),
                           torch.empty(0))
    x = torch.randn(7, 5, 32)
    assert torch.equal(ResidualMLP(linear, 16)(x), linear(x))


def test_the_mlp_is_counted_and_exports_with_parity(tmp_path):
    model, batches = _model(), tiny_batches(8, 8)
    linear = _compress(model, batches)
    mlp = _compress(model, batches, transform="mlp", refine_options={"mlp_fraction": 0.25, "mlp_epochs": 3})
    fit = mlp.plan.refinement["mlp"][0]
    assert fit["flops_per_token"] <= 0.25 * fit["span_flops_per_token"] and fit["hidden"] > 1
    assert fit["heldout_after"] <= fit["heldout_before"]
    x = batches[0]
    name = "fxapprox_blocks_1_to_2"
    a, b = count_flops(linear, x), count_flops(mlp, x)
    tokens = x.shape[0] * x.shape[1]
    assert b.per_block[name] - a.per_block[name] >= 2 * tokens * fit["hidden"] * 64  # down and up matmuls
    assert b.params - a.params == b.params_per_block[name] - a.params_per_block[name] > 0
    assert mlp.num_params_after - linear.num_params_after == b.params - a.params
    to_onnx(mlp, x, tmp_path / "mlp.onnx", validate=True)


def test_bad_options_are_typed_errors():
    model, batches = _model(), tiny_batches(2, 4)
    with pytest.raises(ConfigError, match="refine=") as err:
        _compress(model, batches, refine="input")
    assert err.value.field == "refine"
    with pytest.raises(ConfigError, match="fold=True"):
        _compress(model, batches, transform="mlp", fold=True)
    with pytest.raises(ConfigError, match="an MLP's is not measured") as err:
        _compress(model, batches, spans=None, latency_budget=0.3, transform="mlp",
                  block_latency=BlockLatency(10.0, [2.0] * 4, 0.1, "cpu", 1))
    assert err.value.field == "latency_budget"
    with pytest.raises(RefineError, match="rows="):
        RefineOptions(rows="cls")
    with pytest.raises(RefineError, match="holdout"):
        RefineOptions(holdout=1.0)
    with pytest.raises(ConfigError, match="unknown field") as err:
        _compress(model, batches, refine="output", refine_options={"learning_rate": 1.0})
    assert err.value.field == "refine_options"
    with pytest.raises(ConfigError, match="holdout"):
        fxapprox.CompressConfig(spans=[(0, 1)], refine="output", refine_options={"holdout": 2})
    with pytest.raises(RefineError, match="at least 2 calibration batches"):
        _compress(model, tiny_batches(1, 4), refine="output")
    res = _compress(model, batches)
    with pytest.raises(RefineError, match="unknown options"):
        refine_output(res, model, batches, learning_rate=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "bert"])
def test_refinement_on_captured_hugging_face_graphs(tmp_path, family):
    from tiny_models import hf_family

    model, batches, other = hf_family(family)  # torch.export graphs; bert: padded tokens, masked
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = fxapprox.compress(model, batches * 2, spans=[(0, 1)], num_samples=24, progress=False, refine="output",
                            refine_options={"params": "maps+norms", "lr": 1e-3, "epochs": 2, "batch_size": 2})
    assert res.plan.refinement["target"] == "features" and res.plan.refinement["num_trained"] > 0
    # the exported graph reads every parameter through a get_attr at its top: the kept blocks' 1-D
    # parameters after the span are found all the same, nothing before it
    stack = find_block_stack(model).path
    tail = [p for p in res.plan.refinement["trained"] if not p.startswith("fxapprox_blocks_")]
    assert all(res.module.get_parameter(p).ndim == 1 and not p.startswith(("embeddings.", f"{stack}.0.", f"{stack}.1."))
               for p in tail)
    assert all(sum(p.startswith(f"{stack}.{k}.") for p in tail) >= 4 for k in (2, 3))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    res.save(tmp_path / "plan")
    back = fxapprox.load(model, tmp_path / "plan")
    got, want = back.module(**other), res.module(**other)
    assert torch.equal(got.last_hidden_state, want.last_hidden_state)


@pytest.mark.parametrize("budget", [0.2, 0.45])
def test_a_flop_budget_pays_for_the_mlps(budget):
    """The budget is met net of each map and its MLP, as measured on the compressed graph, and the
    MLPs cost more spans than linear maps alone would."""
    model, batches = _model(), tiny_batches(8, 8)
    options = {"mlp_fraction": 0.4, "mlp_epochs": 1}
    mlp = _compress(model, batches, spans=None, budget=budget, transform="mlp", refine_options=options)
    linear = _compress(model, batches, spans=None, budget=budget)
    x = batches[0]
    before, after = count_flops(model, x).total, count_flops(mlp, x).total
    assert mlp.reached["flops"] == pytest.approx(1 - after / before, rel=1e-6)
    assert mlp.reached["flops"] >= budget and all(sp.transform == "mlp" for sp in mlp.plan.spans)
    widths = [fit["hidden"] for fit in mlp.plan.refinement["mlp"]]
    assert all(w > 1 for w in widths)
    removed = lambda res: sum(e - s for s, e in res.spans)  # noqa: E731
    assert removed(mlp) >= removed(linear) and mlp.reached["flops"] <= linear.reached["flops"] + 0.25


def test_all_parameters_after_the_first_span_can_be_trained():
    model, batches = _model(), tiny_batches(8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = _compress(model, batches, refine="output", refine_options={"params": "all", "lr": 1e-3, "epochs": 2})
    report = res.plan.refinement
    trained = set(report["trained"])
    assert "fxapprox_blocks_1_to_2.weight" in trained
    assert any(res.module.get_parameter(p).ndim == 2 for p in trained if p.startswith("blocks.3."))  # a weight matrix
    assert not any(p.startswith(("blocks.0.", "blocks.1.", "blocks.2.")) for p in trained)  # before or in the span
    assert report["heldout_after"] < report["heldout_before"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("rows", ["pooled", "tokens+pooled"])
def test_the_loss_can_compare_the_pooled_features(rows):
    """`rows="pooled"` trains on the [CLS] row only: the held-out loss it reports is that row's error."""
    model, batches = _model(), tiny_batches(32, 16)
    res = _compress(model, batches, spans=[(0, 3)], refine="output",
                    refine_options={"rows": rows, "lr": 1e-3, "epochs": 4})
    report = res.plan.refinement
    assert report["options"]["rows"] == rows and report["heldout_after"] < report["heldout_before"]
    closed = _compress(model, batches, spans=[(0, 3)])
    held = [batches[i] for i in range(len(batches)) if i not in _train_indices(len(batches))]
    errs = []
    with torch.no_grad():
        for part in ("tokens", "pooled"):
            num = sum(float((_rows(closed.module(b), part) - _rows(model(b), part)).square().sum()) for b in held)
            den = sum(float(_rows(model(b), part).square().sum()) for b in held)
            errs.append((num / den) ** 0.5)
    expected = errs[1] if rows == "pooled" else sum(errs) / 2
    assert report["heldout_before"] == pytest.approx(expected, rel=1e-5)


def _train_indices(n):
    from fxapprox.refine import split_batches
    return [i for i, b in enumerate(range(n)) if b in split_batches(list(range(n)), 0.25, 0)[0]]


def _rows(hidden, part):
    return hidden[:, 0] if part == "pooled" else hidden.reshape(-1, hidden.shape[-1])


def test_pooled_rows_need_a_backbone():
    import transformers as tf
    from tiny_models import _vision_batches

    torch.manual_seed(0)
    config = tf.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8, num_labels=5)
    model, batches = tf.ViTForImageClassification(config).eval(), _vision_batches(n_batches=2)
    with pytest.raises(RefineError, match="has a head"):
        fxapprox.compress(model, batches, spans=[(0, 1)], num_samples=8, progress=False, refine="output",
                          refine_options={"rows": "pooled"})


def test_warmup_scales_the_first_steps():
    """With `warmup=10` the first step is taken at `lr / 10`: one step of it lands on the held-out loss
    of one step at a tenth of the rate without warmup."""
    model, batches = _model(), tiny_batches(32, 16)

    def after_one_step(lr, warmup):
        res = _compress(model, batches, spans=[(0, 3)], refine="output",
                        refine_options={"lr": lr, "steps": 1, "warmup": warmup})
        return res.plan.refinement["history"][1][1]

    assert after_one_step(1e-3, 10) == pytest.approx(after_one_step(1e-4, 0), rel=1e-9)
    assert after_one_step(1e-3, 10) != pytest.approx(after_one_step(1e-3, 0), rel=1e-9)
    with pytest.raises(RefineError, match="warmup"):
        RefineOptions(warmup=-1)
