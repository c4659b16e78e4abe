"""A graph function `(gm) → record` → a `PassBase` for `PassManager` that keeps the record.

The cleanup passes (`attention_mask`, `dropout`, `noop_copies`, `tensor_guards`) are plain
functions returning what they changed; this gives each its pass form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

__all__ = ["RecordPass"]


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
