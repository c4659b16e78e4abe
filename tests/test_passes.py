"""Graph passes: dead-code pruning really removes dropout/attention of removed blocks; PassManager use."""

from __future__ import annotations

import torch
from tiny_models import hf_family
from torch.fx.passes.infra.pass_manager import PassManager

from fxapprox.blocks import find_block_stack
from fxapprox.boundaries import block_of_node, find_boundaries
from fxapprox.capture import capture
from fxapprox.inputs import as_model_inputs
from fxapprox.passes.dead_code import prune_dead_code
from fxapprox.passes.replace_span import ReplaceSpansPass, SpanRewrite


def _captured_vit():
    model, batches, other = hf_family("vit")
    stack = find_block_stack(model)
    cap = capture(model, as_model_inputs(batches[0]), stack)
    return model, stack, cap.module, other


def _identity_rewrite(gm, stack, s, e):
    b = find_boundaries(gm, stack)
    return SpanRewrite(s, e, b[s].name, b[e].name, None)


def test_plain_dce_keeps_removed_blocks_but_prune_does_not():
    _, stack, gm, _ = _captured_vit()
    b = find_boundaries(gm, stack)
    b[3].replace_all_uses_with(b[0])  # blocks 1..3 are now dead code
    reference = torch.fx.GraphModule(gm, gm.graph.__deepcopy__())
    reference.graph.eliminate_dead_code()
    assert any(block_of_node(n, stack) in (1, 2, 3) for n in reference.graph.nodes)
    record = prune_dead_code(gm)
    assert not any(block_of_node(n, stack) in (1, 2, 3) for n in gm.graph.nodes)
    assert record.nodes_removed > 0
    assert {"layers.1", "layers.2", "layers.3"} <= set(record.submodules_removed)


def test_replace_spans_pass_in_pass_manager():
    model, stack, gm, other = _captured_vit()
    rewrite = _identity_rewrite(gm, stack, 0, 2)
    result = PassManager(passes=[ReplaceSpansPass([rewrite])], run_checks_after_each_pass=True)(gm)
    assert result.modified
    out = result.graph_module(**other)
    assert out.last_hidden_state.shape == model(**other).last_hidden_state.shape
    assert not any(k.startswith(("layers.1.", "layers.2.")) for k in result.graph_module.state_dict())
