"""Blocks s+1..e of a GraphModule → one `call_module` to a new module on `H_s` (an `nn.Linear`, or any
`nn.Module` mapping `H_s` to `H_e`'s shape, e.g. a residual MLP), or `H_s` itself.

Every user of `H_e` is redirected to the replacement, then dead code, and the submodules,
parameters and buffers of the removed blocks, are pruned; the graph is linted and recompiled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from fxapprox.passes.dead_code import PruneRecord, prune_dead_code
from fxapprox.passes.span_pass import SpanPass

__all__ = ["SpanRewrite", "ReplaceSpansPass", "replace_spans", "ReplaceRecord", "span_module_name"]


def span_module_name(s: int, e: int) -> str:
    """Attribute name of the module that replaces blocks s+1..e."""
    return f"fxapprox_blocks_{s + 1}_to_{e}"


@dataclass
class SpanRewrite:
    """Replace blocks s+1..e: `H_e` (node `target`) ← `linear(H_s)` or `H_s` (node `source`); `linear` may
    be any `nn.Module` of one tensor."""

    s: int
    e: int
    source: str
    target: str
    linear: nn.Module | None = None


@dataclass
class ReplaceRecord:
    """What `replace_spans` changed."""

    spans: list[tuple[int, int]]
    nodes_before: int
    nodes_after: int
    added_modules: list[str] = field(default_factory=list)
    pruned: PruneRecord | None = None


def replace_spans(gm: torch.fx.GraphModule, rewrites: list[SpanRewrite]) -> ReplaceRecord:
    """Apply every rewrite to `gm` in place and prune what no longer runs."""
    nodes = {n.name: n for n in gm.graph.nodes}
    before = len(nodes)
    added = []
    replaced: dict[str, torch.fx.Node] = {}  # H_e of an earlier span → its replacement
    for rw in sorted(rewrites, key=lambda r: r.s):
        source, target = replaced.get(rw.source, nodes[rw.source]), nodes[rw.target]
        if rw.linear is None:
            replacement = source
        else:
            name = span_module_name(rw.s, rw.e)
            gm.add_submodule(name, rw.linear)
            with gm.graph.inserting_after(source):
                replacement = gm.graph.call_module(name, (source,))
            if "val" in target.meta:
                replacement.meta["val"] = target.meta["val"]
            added.append(name)
        target.replace_all_uses_with(replacement)
        replaced[rw.target] = replacement
    pruned = prune_dead_code(gm)
    return ReplaceRecord([(rw.s, rw.e) for rw in rewrites], before, len(gm.graph.nodes), added, pruned)


class ReplaceSpansPass(SpanPass):
    """`PassBase` form of `replace_spans`; requires the boundary nodes, ensures a linted graph."""

    rewrite = staticmethod(replace_spans)
