"""Cleanup passes: all-true SDPA masks, eval-mode dropout, no-op copies and export's dtype
assertions go; outputs do not change; masks that read an input (BERT's padding) stay."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from tiny_models import hf_family
from torch import nn
from torch.export import Dim

from fxapprox.blocks import find_block_stack
from fxapprox.capture import capture
from fxapprox.inputs import as_model_inputs
from fxapprox.passes.attention_mask import SDPA_TARGETS, drop_true_masks, sdpa_mask
from fxapprox.passes.cleanup import cleanup
from fxapprox.passes.dropout import remove_dropout
from fxapprox.passes.noop_copies import remove_noop_copies
from fxapprox.passes.tensor_guards import relax_tensor_guards
from fxapprox.prepare import trace

FAMILIES = ["vit", "dinov2", "bert", "modernbert", "clip-vision", "llama"]
MASKLESS = {"vit", "dinov2", "clip-vision"}
aten = torch.ops.aten


@functools.cache
def _capture(family: str):
    model, batches, other = hf_family(family)
    return model, capture(model, as_model_inputs(batches[0]), find_block_stack(model)).module, other


def _captured(family: str):
    """(model, a fresh copy of its raw capture, a batch)."""
    model, gm, other = _capture(family)
    return model, copy.deepcopy(gm), other


def _outputs(gm, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        out = as_model_inputs(inputs).call(gm)
    return [t for t in torch.utils._pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _count(gm, targets) -> int:
    return sum(n.op == "call_function" and n.target in targets for n in gm.graph.nodes)


def _masked_sdpa(gm) -> list[str]:
    return [n.name for n in gm.graph.nodes if n.op == "call_function" and n.target in SDPA_TARGETS
            and sdpa_mask(n) is not None]


_DROPOUT = {aten.dropout.default}
_ASSERT = {aten._assert_tensor_metadata.default}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rewrite, gone", [
    (relax_tensor_guards, lambda gm: _count(gm, _ASSERT) == 0),
    (remove_dropout, lambda gm: _count(gm, _DROPOUT) == 0),
    (remove_noop_copies, lambda gm: True),
    (drop_true_masks, lambda gm: True),
    (cleanup, lambda gm: _count(gm, _ASSERT | _DROPOUT) == 0),
], ids=["guards", "dropout", "copies", "masks", "cleanup"])
def test_pass_keeps_outputs_and_removes_its_nodes(family, rewrite, gone):
    _, gm, other = _captured(family)
    before = _outputs(gm, other)
    rewrite(gm)
    gm.graph.lint()
    assert gone(gm)
    after = _outputs(gm, other)
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize("family", FAMILIES)
def test_masks_dropped_exactly_where_the_model_has_none(family):
    _, gm, _ = _captured(family)
    assert bool(_masked_sdpa(gm)) is (family != "clip-vision")  # CLIP's vision tower passes no mask at all
    record = drop_true_masks(gm)
    if family in MASKLESS:
        assert not _masked_sdpa(gm) and not record.kept
    else:  # BERT/ModernBERT read attention_mask; Llama's mask is causal
        assert _masked_sdpa(gm) and not record.dropped


def test_cleanup_prunes_the_mask_arithmetic_of_a_vit():
    _, gm, _ = _captured("vit")
    assert _count(gm, {aten.arange.default, aten.ge.Scalar}) > 0
    record = cleanup(gm)
    assert _count(gm, {aten.arange.default, aten.ge.Scalar, aten.expand.default}) == 1  # the CLS token's expand
    assert record.pruned.nodes_removed > 0 and len(record.masks.dropped) == 4


class _Masks(nn.Module):
    """Attention with a mask built from shapes alone: all-true, all-zero float, causal, or a sliding window."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        n = q.shape[2]
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        mask = {
            "true": (j + 2 >= 1).expand(q.shape[0], 1, n, n),
            "ones": torch.ones(n, n, dtype=torch.bool) & (i >= 0),
            "zeros": torch.zeros(n, n),
            "causal": i >= j,
            "window": j > i - 3,
            "constant": torch.full((n, n), 2.0) > 1.0,
        }[self.kind]
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)


def _export_masks(kind: str) -> torch.fx.GraphModule:
    q = torch.randn(2, 2, 5, 8)
    dims = {"q": {0: Dim.AUTO, 2: Dim.AUTO}}
    return torch.export.export(_Masks(kind), (q,), dynamic_shapes=dims, strict=False).module()


@pytest.mark.parametrize("kind, dropped", [("true", True), ("ones", True), ("zeros", True), ("constant", True),
                                           ("causal", False), ("window", False)])
def test_only_masks_true_for_every_shape_are_dropped(kind, dropped):
    gm = _export_masks(kind)
    q = torch.randn(3, 2, 7, 8)
    with torch.no_grad():
        before = gm(q)
        record = drop_true_masks(gm)
        after = gm(q)
    assert bool(record.dropped) is dropped and bool(record.kept) is not dropped
    assert torch.allclose(after, before, atol=1e-6)  # an all-true mask may pick another kernel
    if dropped:
        eager = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        assert torch.equal(after, eager)


class _Copies(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = (x * 2).clone()
        z = y.transpose(0, 1).contiguous()  # a real copy: kept
        return y + 1, z.view(-1)


def test_noop_copies_go_real_copies_stay():
    x = torch.randn(4, 3)
    dims = {"x": {0: Dim.AUTO, 1: Dim.AUTO}}
    gm = torch.export.export(_Copies(), (x,), dynamic_shapes=dims, strict=False).module()
    mul = next(n for n in gm.graph.nodes if n.target is aten.mul.Tensor)
    with gm.graph.inserting_after(mul):  # export drops x.contiguous() of a contiguous x itself; put one back
        noop = gm.graph.call_function(aten.contiguous.default, (mul,))
    mul.replace_all_uses_with(noop, delete_user_cb=lambda user: user is not noop)
    noop.meta["val"] = mul.meta["val"]
    gm.recompile()
    before = gm(x)
    record = remove_noop_copies(gm)
    assert sorted(record.removed) == ["clone", noop.name]
    assert _count(gm, {aten.contiguous.default}) == 1 and _count(gm, {aten.clone.default}) == 0
    assert all(torch.equal(a, b) for a, b in zip(gm(x), before))


def test_dropout_in_train_mode_with_p_stays():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    gm = torch.fx.symbolic_trace(model)
    assert not remove_dropout(copy.deepcopy(gm)).removed
    model.eval()
    assert remove_dropout(torch.fx.symbolic_trace(model)).removed


def _bert_padding_batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 100, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    return ids, mask


def test_traced_bert_still_honours_padding():
    model, batches, _ = hf_family("bert")
    traced = trace(model, as_model_inputs(batches[0]), find_block_stack(model))
    assert len(_masked_sdpa(traced.module)) == 4
    ids, mask = _bert_padding_batch()
    with torch.no_grad():
        padded = traced.module(input_ids=ids, attention_mask=mask).last_hidden_state
        unmasked = traced.module(input_ids=ids, attention_mask=torch.ones_like(mask)).last_hidden_state
        alone = traced.module(input_ids=ids[1:, :4].repeat(2, 1),
                              attention_mask=mask[1:, :4].repeat(2, 1)).last_hidden_state
        eager = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(padded, eager, atol=1e-5)
    assert torch.allclose(padded[1, :4], alone[0], atol=1e-5)  # padding changes nothing it should not see
    assert not torch.allclose(padded[1, :4], unmasked[1, :4], atol=1e-3)  # and is not ignored
