"""A graph function `(gm) → record` → a `PassBase` for `PassManager` that keeps the record.

The cleanup passes (`attention_mask`, `dropout`, `noop_copies`, `tensor_guards`) are plain
functions returning what they changed; this gives each its pass form. `bypass_nodes` is the
rewrite two of them share: identity nodes out, their users reading their input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

__all__ = ["RecordPass", "bypass_nodes"]


class RecordPass(PassBase):
    """`PassBase` form of `function(gm) -> record` (kept in `.record`); `changed(record)` says
    whether the graph was modified. Ensures a linted graph."""

    function: Callable[[torch.fx.GraphModule], Any]

    def __init__(self) -> None:
        super().__init__()
        self.record: Any = None

    @staticmethod
    def changed(record: Any) -> bool:
        return bool(record.removed)

    def call(self, graph_module: torch.fx.GraphModule) -> PassResult:
        self.record = type(self).function(graph_module)
        return PassResult(graph_module, type(self).changed(self.record))

    def ensures(self, graph_module: torch.fx.GraphModule) -> None:
        graph_module.graph.lint()


def bypass_nodes(gm: torch.fx.GraphModule, is_identity: Callable[[torch.fx.Node], bool]) -> list[str]:
    """Erase every node `is_identity` accepts (its users read its first argument instead);
    recompile if any went. The names of the erased nodes."""
    removed = []
    for node in list(gm.graph.nodes):
        if is_identity(node) and node.args and isinstance(node.args[0], torch.fx.Node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed.append(node.name)
    if removed:
        gm.recompile()
    return removed
