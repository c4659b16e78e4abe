"""compress() on hand-written models whose spans have known answers."""

from __future__ import annotations

import torch
from tiny_models import IN_FEATURES, TOKENS, tiny_batches, tiny_net

import fxapprox
from fxapprox.passes.replace_span import span_module_name

SHIFT_NET = ["mlp", "mlp", "mlp", "shift", "shift", "mlp"]


def _block_params(model, index):
    return sum(p.numel() for p in model.blocks[index].parameters())


def test_affine_span_is_reproduced_and_scored_zero():
    model = tiny_net(SHIFT_NET)
    res = fxapprox.compress(model, tiny_batches(), spans=[(2, 4)], num_samples=32, progress=False)
    assert res.residuals[(2, 4)] < 1e-5
    x = torch.randn(3, TOKENS, IN_FEATURES)
    torch.testing.assert_close(res.module(x), model(x), rtol=1e-4, atol=1e-4)
    d = model.blocks[0].norm.normalized_shape[0]
    removed = _block_params(model, 3) + _block_params(model, 4)
    assert res.num_params_before - res.num_params_after == removed - (d * d + d)


def test_identity_transform_does_not_reproduce_a_shift():
    model = tiny_net(SHIFT_NET)
    res = fxapprox.compress(model, tiny_batches(), spans=[(2, 4)], transform="identity", num_samples=32,
                            progress=False)
    x = torch.randn(3, TOKENS, IN_FEATURES)
    assert (res.module(x) - model(x)).abs().max() > 1e-2
    assert res.residuals[(2, 4)] > 1e-3
    assert res.num_params_before - res.num_params_after == _block_params(model, 3) + _block_params(model, 4)


def test_identity_span_over_identity_blocks_is_bit_exact():
    model = tiny_net(["mlp", "identity", "identity", "mlp"])
    res = fxapprox.compress(model, tiny_batches(), spans=[(0, 2)], transform="identity", num_samples=16,
                            progress=False)
    x = torch.randn(5, TOKENS, IN_FEATURES)
    assert torch.equal(res.module(x), model(x))
    assert res.residuals[(0, 2)] == 0.0


def test_rewrite_structure_one_node_per_linear_span_and_blocks_gone():
    model = tiny_net(["mlp", "shift", "mlp", "shift", "shift", "mlp"])
    res = fxapprox.compress(model, tiny_batches(), spans=[(0, 1), (2, 4)], num_samples=16, progress=False)
    gm = res.module
    gm.graph.lint()
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    for s, e in res.spans:
        assert targets.count(span_module_name(s, e)) == 1
    assert not any(t in targets for t in ("blocks.1", "blocks.3", "blocks.4"))
    keys = gm.state_dict().keys()
    assert not any(k.startswith(("blocks.1.", "blocks.3.", "blocks.4.")) for k in keys)
    assert any(k.startswith("blocks.2.") for k in keys)


def test_touching_spans_chain():
    model = tiny_net(["mlp", "shift", "shift", "shift", "mlp"])
    res = fxapprox.compress(model, tiny_batches(), spans=[(0, 2), (2, 3)], num_samples=32, progress=False)
    x = torch.randn(2, TOKENS, IN_FEATURES)
    torch.testing.assert_close(res.module(x), model(x), rtol=1e-4, atol=1e-4)


def test_span_from_embeddings():
    model = tiny_net(["shift", "shift", "mlp"])
    res = fxapprox.compress(model, tiny_batches(), spans=[(-1, 1)], num_samples=32, progress=False)
    x = torch.randn(2, TOKENS, IN_FEATURES)
    torch.testing.assert_close(res.module(x), model(x), rtol=1e-4, atol=1e-4)


def test_num_blocks_picks_the_affine_span():
    model = tiny_net(["mlp", "mlp", "shift", "shift", "mlp", "mlp"])
    res = fxapprox.compress(model, tiny_batches(), num_blocks=2, metric="linear", num_samples=32, progress=False)
    assert res.spans == [(1, 3)]


def test_original_model_is_untouched():
    model = tiny_net(SHIFT_NET)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fxapprox.compress(model, tiny_batches(), spans=[(2, 4)], num_samples=16, progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_num_blocks_by_output_error_picks_the_span_that_does_not_change_the_output():
    model = tiny_net(["mlp", "mlp", "shift", "shift", "mlp", "mlp"])
    res = fxapprox.compress(model, tiny_batches(), num_blocks=2, metric="output", num_samples=32, progress=False)
    assert res.spans == [(1, 3)]
    ident = tiny_net(["mlp", "identity", "mlp", "identity", "mlp"])
    res = fxapprox.compress(ident, tiny_batches(), num_blocks=2, metric="output", transform="identity",
                            num_samples=16, progress=False)
    assert res.spans == [(0, 1), (2, 3)]
