"""Refinement at the output and the `mlp` transform on tiny models: they train, deterministically,
never touch the original, reload bit for bit, export with parity and are counted."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_batches, tiny_net

import fxapprox
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
    with pytest.raises(ConfigError, match="a budget cannot pay for it"):
        _compress(model, batches, spans=None, budget=0.3, transform="mlp")
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
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    res.save(tmp_path / "plan")
    back = fxapprox.load(model, tmp_path / "plan")
    got, want = back.module(**other), res.module(**other)
    assert torch.equal(got.last_hidden_state, want.last_hidden_state)
