"""Span (s, e) after a block whose output is `H_s = R + B`, `B` a Linear's output → that Linear giving `B T + c`.

ReplaceMe's fold, on any captured graph: where block s ends with its branch `B = (g Wᵀ + b) ⊙ γ`
(a down projection `W, b`, optionally a layer-scale `γ` and eval-mode dropout) added to the
residual stream `R`, the map `T, c` fitted on `B → H_e - R` is written into the Linear:
`W ← Tᵀ diag(γ) W`, `b ← (b ⊙ γ) T + c` (row-vector convention), the layer-scale multiply is
bypassed, and every user of `H_e` reads `H_s` instead. Blocks s+1..e go; no module is added (the
new weight and bias are two parameters of the root module, replacing the old ones, which the
pruning removes with the layer scale and the dead blocks). Nothing shared with the original model
is written to.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from fxapprox.errors import FoldError
from fxapprox.passes.dead_code import PruneRecord, prune_dead_code
from fxapprox.passes.span_pass import SpanPass

__all__ = ["FoldSite", "FoldRewrite", "FoldRecord", "FoldSpansPass", "find_fold_site", "fold_spans",
           "fold_param_name"]

_ADD = {torch.ops.aten.add.Tensor, operator.add, torch.add}
_MUL = {torch.ops.aten.mul.Tensor, operator.mul, torch.mul}
_LINEAR = {torch.ops.aten.linear.default, torch.nn.functional.linear}
_NORMS = {torch.ops.aten.layer_norm.default, torch.nn.functional.layer_norm}
_PASS_THROUGH = {torch.ops.aten.clone.default, torch.ops.aten.alias.default}
_DROPOUT = {torch.ops.aten.dropout.default, torch.nn.functional.dropout}


def fold_param_name(s: int, e: int, what: str) -> str:
    """Root attribute holding the folded `weight` / `bias` for span (s, e)."""
    return f"fxapprox_fold_{s + 1}_to_{e}_{what}"


@dataclass
class FoldSite:
    """`add = R + B` at `H_s`: `branch` is `B` as added, `linear` the Linear it comes from, `scale` γ (or None)."""

    add: torch.fx.Node
    residual: torch.fx.Node
    branch: torch.fx.Node
    linear: torch.fx.Node
    scale: torch.fx.Node | None
    mul: torch.fx.Node | None


def _attr(gm: torch.fx.GraphModule, node: torch.fx.Node) -> torch.Tensor:
    owner, _, name = node.target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def _is_dropout_off(node: torch.fx.Node) -> bool:
    train = node.kwargs.get("train", node.args[2] if len(node.args) > 2 else None)
    return train is False


def _trace_branch(gm: torch.fx.GraphModule, start: torch.fx.Node):
    """Walk back from an input of the add through dropout / layer scale to a Linear: (linear, scale, mul, chain)."""
    node, scale, mul, chain = start, None, None, []
    while isinstance(node, torch.fx.Node) and node.op == "call_function":
        chain.append(node)
        if node.target in _LINEAR:
            return node, scale, mul, chain
        if node.target in _PASS_THROUGH or (node.target in _DROPOUT and _is_dropout_off(node)):
            node = node.args[0]
        elif node.target in _MUL and mul is None and len(node.args) == 2:
            consts = [a for a in node.args if isinstance(a, torch.fx.Node) and a.op == "get_attr"]
            if len(consts) != 1 or _attr(gm, consts[0]).ndim > 1:
                return None
            scale, mul = consts[0], node
            node = node.args[1] if node.args[0] is scale else node.args[0]
        else:
            return None
    return None


def find_fold_site(gm: torch.fx.GraphModule, h_s: torch.fx.Node, s: int) -> FoldSite:
    """The add, residual, branch, Linear and layer scale of block s's output node `h_s`, or `FoldError`."""
    if s < 0:
        raise FoldError("a span starting at the embeddings (s = -1) has no block before it to fold into; "
                        "use fold=False for it or start the span at block 0 or later")
    if h_s.op == "call_module":
        raise FoldError(f"block {s} is one opaque call in the captured graph ({h_s.target}, symbolic_trace "
                        "path): its down projection is not visible to fold into; use fold=False")
    if h_s.op == "call_function" and h_s.target in _NORMS:
        raise FoldError(f"block {s} ends in a LayerNorm (post-norm block, as in BERT): a Linear folded before "
                        "the norm cannot add to the stream; use fold=False for this span")
    if not (h_s.op == "call_function" and h_s.target in _ADD and len(h_s.args) == 2
            and all(isinstance(a, torch.fx.Node) for a in h_s.args)):
        raise FoldError(f"the output of block {s} ({h_s.name}: {h_s.target}) is not a residual add of two "
                        "tensors; nothing to fold into, use fold=False")
    found = [(i, _trace_branch(gm, a)) for i, a in enumerate(h_s.args)]
    found = [(i, f) for i, f in found if f is not None]
    if len(found) != 1:
        why = "no Linear" if not found else "a Linear on both sides"
        raise FoldError(f"the residual add ending block {s} ({h_s.name}) has {why} feeding it through dropout "
                        "or a layer scale; nothing unique to fold into, use fold=False")
    i, (linear, scale, mul, chain) = found[0]
    if any(len(n.users) != 1 for n in chain):
        raise FoldError(f"the down projection of block {s} ({linear.name}) or a node after it has other users; "
                        "folding would change them, use fold=False")
    if len(linear.args) < 2 or any(not (isinstance(a, torch.fx.Node) and a.op == "get_attr")
                                   for a in linear.args[1:3] if a is not None):
        raise FoldError(f"the weight of {linear.name} in block {s} is not a parameter of the graph; use fold=False")
    return FoldSite(h_s, h_s.args[1 - i], h_s.args[i], linear, scale, mul)


@dataclass
class FoldRewrite:
    """Fold span (s, e): `T` (`weight`, `(d, d)`) and `c` (`bias`) into the Linear ending block s (`source`: `H_s`)."""

    s: int
    e: int
    source: str
    target: str
    weight: torch.Tensor
    bias: torch.Tensor


@dataclass
class FoldRecord:
    """What `fold_spans` changed."""

    spans: list[tuple[int, int]]
    linears: list[str]
    bypassed_scales: list[str]
    nodes_before: int
    nodes_after: int
    added_parameters: list[str] = field(default_factory=list)
    pruned: PruneRecord | None = None


def _param(gm: torch.fx.GraphModule, name: str, value: torch.Tensor, before: torch.fx.Node) -> torch.fx.Node:
    gm.register_parameter(name, nn.Parameter(value, requires_grad=False))
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(name)


def fold_spans(gm: torch.fx.GraphModule, rewrites: list[FoldRewrite]) -> FoldRecord:
    """Fold every rewrite's map into its Linear in place, redirect `H_e` to `H_s`, prune what no longer runs."""
    nodes = {n.name: n for n in gm.graph.nodes}
    before = len(nodes)
    linears, scales, added = [], [], []
    for rw in rewrites:
        site = find_fold_site(gm, nodes[rw.source], rw.s)
        w = _attr(gm, site.linear.args[1])
        b_node = site.linear.args[2] if len(site.linear.args) > 2 else site.linear.kwargs.get("bias")
        w64 = w.detach().double()
        b64 = _attr(gm, b_node).detach().double() if b_node is not None else w64.new_zeros(w.shape[0])
        gamma = _attr(gm, site.scale).detach().double() if site.scale is not None else w64.new_ones(())
        gamma = gamma.expand(w.shape[0])
        t, c = rw.weight.to(w64), rw.bias.to(w64)
        new_w = t.T @ (gamma[:, None] * w64)
        new_b = (b64 * gamma) @ t + c
        names = (fold_param_name(rw.s, rw.e, "weight"), fold_param_name(rw.s, rw.e, "bias"))
        w_node = _param(gm, names[0], new_w.to(w.dtype), site.linear)
        b_new = _param(gm, names[1], new_b.to(w.dtype), site.linear)
        site.linear.args = (site.linear.args[0], w_node, b_new)
        site.linear.kwargs = {k: v for k, v in site.linear.kwargs.items() if k != "bias"}
        if site.mul is not None:
            site.mul.replace_all_uses_with(site.mul.args[1] if site.mul.args[0] is site.scale else site.mul.args[0])
            scales.append(site.scale.target)
        nodes[rw.target].replace_all_uses_with(site.add)
        linears.append(site.linear.name)
        added += names
    pruned = prune_dead_code(gm)
    return FoldRecord([(rw.s, rw.e) for rw in rewrites], linears, scales, before, len(gm.graph.nodes), added, pruned)


class FoldSpansPass(SpanPass):
    """`PassBase` form of `fold_spans`; requires the boundary nodes, ensures a linted graph."""

    rewrite = staticmethod(fold_spans)
