"""fold=True: the span's map written into the down projection of the block before it (ReplaceMe's fold)."""

from __future__ import annotations

import pytest
import torch
from export_helpers import HIDDEN, image_batches, tiny_bert, tiny_dinov2, tiny_vit, token_batches
from tiny_models import tiny_batches, tiny_net

import fxapprox
from fxapprox.blocks import find_block_stack
from fxapprox.errors import FoldError
from fxapprox.export import to_onnx
from fxapprox.inputs import as_model_inputs
from fxapprox.passes.dead_code import prune_dead_code
from fxapprox.passes.fold_span import find_fold_site
from fxapprox.prepare import trace

SPAN = (1, 3)


def _explicit(model, batch, plan):
    """The same map applied explicitly: `H_s = R + (B T + c)`, T a separate Linear on the branch, H_e ← H_s."""
    traced = trace(model, as_model_inputs(batch), find_block_stack(model), inline_blocks=True)
    gm, (s, e) = traced.module, SPAN
    site = find_fold_site(gm, traced.boundaries[s], s)
    key = plan.spans[0].key
    lin = torch.nn.Linear(HIDDEN, HIDDEN, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(plan.weights[f"{key}.weight"].T)
        lin.bias.copy_(plan.weights[f"{key}.bias"])
    gm.add_submodule("explicit_map", lin)
    with gm.graph.inserting_after(site.branch):
        mapped = gm.graph.call_module("explicit_map", (site.branch,))
    site.add.args = tuple(mapped if a is site.branch else a for a in site.add.args)
    traced.boundaries[e].replace_all_uses_with(site.add)
    prune_dead_code(gm)
    return gm


@pytest.mark.parametrize("make, extra", [(tiny_vit, 0), (tiny_dinov2, HIDDEN)], ids=["vit", "dinov2-layer-scale"])
def test_fold_equals_explicit_map_and_saves_a_linear(make, extra):
    model = make().double()
    batches = [b.double() for b in image_batches()]
    folded = fxapprox.compress(model, batches, spans=[SPAN], fold=True, num_samples=64, progress=False)
    plain = fxapprox.compress(model, batches, spans=[SPAN], num_samples=64, progress=False)
    x = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    explicit = _explicit(model, batches[0], folded.plan)
    torch.testing.assert_close(folded.module(x).last_hidden_state, explicit(pixel_values=x).last_hidden_state,
                               rtol=0, atol=1e-5)
    assert not any(n.op == "call_module" and str(n.target).startswith("fxapprox") for n in folded.module.graph.nodes)
    # the unfolded plan adds a d×d Linear; the fold adds nothing (and drops DINOv2's layer scale γ)
    assert plain.num_params_after - folded.num_params_after == HIDDEN * HIDDEN + HIDDEN + extra
    sp = folded.plan.spans[0]
    assert sp.fold and sp.unfolded_residual == pytest.approx(plain.plan.spans[0].residual)
    assert 0 < sp.residual < 1
    assert folded.fold_record.spans == [SPAN]


def test_fold_leaves_the_original_model_untouched():
    model = tiny_dinov2()
    x = torch.randn(2, 3, 32, 32)
    before = model(pixel_values=x).last_hidden_state
    fxapprox.compress(model, image_batches(), spans=[SPAN], fold=True, num_samples=32, progress=False)
    torch.testing.assert_close(model(pixel_values=x).last_hidden_state, before, rtol=0, atol=0)


def test_folded_plan_saves_loads_and_exports(tmp_path):
    model = tiny_dinov2()
    res = fxapprox.compress(model, image_batches(), spans=[(0, 1), (2, 3)], fold=True, num_samples=64, progress=False)
    res.save(tmp_path / "plan")
    again = fxapprox.load(tiny_dinov2(), tmp_path / "plan")
    assert [sp.fold for sp in again.plan.spans] == [True, True]
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(again.module(pixel_values=x).last_hidden_state,
                               res.module(pixel_values=x).last_hidden_state, rtol=0, atol=0)
    export = to_onnx(res, {"pixel_values": x}, tmp_path / "folded.onnx")  # raises if onnxruntime disagrees
    assert export.path.exists()


@pytest.mark.parametrize("spans, message", [([(-1, 1)], "embeddings"), ([(0, 1), (1, 2)], "starts where")])
def test_fold_typed_errors_on_spans(spans, message):
    with pytest.raises(FoldError, match=message):
        fxapprox.compress(tiny_vit(), image_batches(), spans=spans, fold=True, num_samples=16, progress=False)


def test_fold_typed_error_on_post_norm_blocks():
    with pytest.raises(FoldError, match="post-norm"):
        fxapprox.compress(tiny_bert(), token_batches(), spans=[SPAN], fold=True, num_samples=16, progress=False)


def test_fold_on_blocks_symbolic_trace_keeps_as_leaves(tmp_path):
    """A hand-written model is traced with its blocks as leaf calls; fold re-traces it with them inlined."""
    model = tiny_net(["mlp"] * 4).double()
    batches = [b.double() for b in tiny_batches()]
    folded = fxapprox.compress(model, batches, spans=[SPAN], fold=True, num_samples=32, progress=False)
    plain = fxapprox.compress(model, batches, spans=[SPAN], num_samples=32, progress=False)
    assert folded.capture_path == "symbolic_trace" and folded.plan.spans[0].fold
    x = tiny_batches(seed=7)[0].double()
    torch.testing.assert_close(folded.module(x), _explicit(model, batches[0], folded.plan)(x), rtol=0, atol=1e-6)
    # the fold adds no d×d Linear; the inlined graph also drops the unused `shift` of blocks 0 and 1
    assert plain.num_params_after - folded.num_params_after == 32 * 32 + 32 + 2 * 32
    folded.save(tmp_path / "plan")
    again = fxapprox.load(tiny_net(["mlp"] * 4).double(), tmp_path / "plan")
    torch.testing.assert_close(again.module(x), folded.module(x), rtol=0, atol=1e-12)
