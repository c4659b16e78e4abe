"""Exported graph with dtype/device assertions on tensors → the same graph without them.

`torch.export` puts an `aten._assert_tensor_metadata(x, dtype=..., device=...)` before every
`to` it specialised, pinning the dtype the example had: a graph captured on float32 batches
refuses the bfloat16 inputs its model accepts ("Tensor dtype mismatch! Expected: Float, Got:
c10::BFloat16"), and every `to(float32)` of an upcast (RMSNorm, softmax) refuses the bfloat16
activations autocast gives it. The `to` after each assertion converts whatever it is given, so
where nothing in the graph mutates a tensor (export's reason to care whether `to` aliased), the
graph is dtype-generic without the assertion, as the eager model is. Assertions that also check
sizes or strides, and every assertion in a graph with mutating ops, are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx

from fxapprox.passes.dead_code import mutates
from fxapprox.passes.record_pass import RecordPass

__all__ = ["RelaxTensorGuardsPass", "relax_tensor_guards", "GuardRecord"]

_ASSERT = torch.ops.aten._assert_tensor_metadata.default
_RELAXED = ("dtype", "device", "layout")


@dataclass
class GuardRecord:
    """What `relax_tensor_guards` removed (node names) and the dtypes those nodes had pinned."""

    removed: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)


def _checks_only_type(node: torch.fx.Node) -> bool:
    names = [a.name for a in _ASSERT._schema.arguments]
    given = {**dict(zip(names, node.args)), **node.kwargs}
    return all(value is None for name, value in given.items() if name not in (*_RELAXED, names[0]))


def relax_tensor_guards(gm: torch.fx.GraphModule) -> GuardRecord:
    """Erase the dtype/device assertions of a mutation-free graph; recompile if any went."""
    record = GuardRecord()
    if any(mutates(n) for n in gm.graph.nodes):
        return record
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is _ASSERT and _checks_only_type(node):
            dtype = node.kwargs.get("dtype")
            gm.graph.erase_node(node)
            record.removed.append(node.name)
            record.dtypes.append(str(dtype))
    if record.removed:
        gm.recompile()
    return record


class RelaxTensorGuardsPass(RecordPass):
    """`PassBase` form of `relax_tensor_guards` (its record in `.record`)."""

    function = staticmethod(relax_tensor_guards)
