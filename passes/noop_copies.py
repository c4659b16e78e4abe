"""Graph with copies that change nothing → the same graph without them (users read the input).

Removed: `aten.contiguous` of a tensor that is contiguous for every shape the graph accepts,
and `aten.clone` / `aten.alias` (no memory format asked for) where nothing in the graph mutates
a tensor and the copy is not itself a graph output (a caller could otherwise see an input
aliased). `to` / `_to_copy` casts are kept: under autocast, or called with another dtype than at
capture, they do change dtypes, and where they do not, eager PyTorch returns the tensor itself
at the cost of one dispatch, as the eager model does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import guard_or_false

from fxapprox.passes.dead_code import mutates
from fxapprox.passes.record_pass import RecordPass, bypass_nodes

__all__ = ["RemoveNoOpCopiesPass", "remove_noop_copies", "CopyRecord"]

aten = torch.ops.aten
_COPIES = {aten.clone.default, aten.alias.default}


@dataclass
class CopyRecord:
    """What `remove_noop_copies` removed (node names)."""

    removed: list[str] = field(default_factory=list)


def _statically_contiguous(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return False
    try:
        return bool(guard_or_false(val.is_contiguous()))
    except Exception:  # a size the shape environment cannot decide: keep the node
        return False


def _is_noop(node: torch.fx.Node, mutation_free: bool) -> bool:
    if node.op != "call_function" or not node.args:
        return False
    memory_format = node.kwargs.get("memory_format")
    if node.target is aten.contiguous.default:
        keep_format = memory_format in (None, torch.contiguous_format)
        return keep_format and len(node.args) == 1 and _statically_contiguous(node.args[0])
    if node.target in _COPIES:
        return mutation_free and memory_format in (None, torch.preserve_format) and len(node.args) == 1 \
            and not any(user.op == "output" for user in node.users)
    return False


def remove_noop_copies(gm: torch.fx.GraphModule) -> CopyRecord:
    """Bypass and erase every copy that changes nothing; recompile if any went."""
    mutation_free = not any(mutates(n) for n in gm.graph.nodes)
    return CopyRecord(bypass_nodes(gm, lambda node: _is_noop(node, mutation_free)))


class RemoveNoOpCopiesPass(RecordPass):
    """`PassBase` form of `remove_noop_copies` (its record in `.record`)."""

    function = staticmethod(remove_noop_copies)
