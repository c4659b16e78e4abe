"""A span rewrite function `(gm, rewrites) → record` → a `PassBase` for `PassManager`.

Both span passes (`replace_span`, `fold_span`) take rewrites that name a source and a target
boundary node; the pass form checks that those nodes exist before and lints the graph after.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

__all__ = ["SpanPass"]


class SpanPass(PassBase):
    """`PassBase` form of `rewrite(gm, rewrites) -> record` (kept in `.record`); requires the
    rewrites' boundary nodes, ensures a linted graph."""

    rewrite: Callable[[torch.fx.GraphModule, Any], Any]

    def __init__(self, rewrites: Sequence[Any]):
        super().__init__()
        self.rewrites = list(rewrites)
        self.record: Any = None

    def requires(self, graph_module: torch.fx.GraphModule) -> None:
        names = {n.name for n in graph_module.graph.nodes}
        missing = [n for rw in self.rewrites for n in (rw.source, rw.target) if n not in names]
        if missing:
            raise ValueError(f"boundary nodes {missing} are not in the graph")

    def call(self, graph_module: torch.fx.GraphModule) -> PassResult:
        self.record = type(self).rewrite(graph_module, self.rewrites)
        return PassResult(graph_module, True)

    def ensures(self, graph_module: torch.fx.GraphModule) -> None:
        graph_module.graph.lint()
