"""Graph with eval-mode dropout → the same graph without it (each dropout's users read its input).

An exported graph keeps every `aten.dropout(x, p, train=False)` of the model (a ViT-B has 25):
each is the identity but still a dispatched call. Removed here: `aten.dropout` and its
`feature_`/`alpha_` variants with `train=False` or `p=0`, `torch.nn.functional.dropout` calls
with `training=False` or `p=0`, and `nn.Dropout` leaf modules that are in eval mode or have
`p=0` (symbolic traces). The module is inference-only afterwards (see `fxapprox.capture`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from fxapprox.passes.record_pass import RecordPass, bypass_nodes

__all__ = ["RemoveDropoutPass", "remove_dropout", "DropoutRecord"]

aten = torch.ops.aten
_ATEN_DROPOUT = {aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default,
                 aten.feature_alpha_dropout.default}


@dataclass
class DropoutRecord:
    """What `remove_dropout` removed (node names)."""

    removed: list[str] = field(default_factory=list)


def _argument(node: torch.fx.Node, index: int, name: str, default: object) -> object:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _is_identity(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ATEN_DROPOUT:
        return _argument(node, 2, "train", True) is False or _argument(node, 1, "p", 0.5) == 0
    if node.op == "call_function" and node.target is torch.nn.functional.dropout:
        return _argument(node, 2, "training", True) is False or _argument(node, 1, "p", 0.5) == 0
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return isinstance(module, nn.modules.dropout._DropoutNd) and (not module.training or module.p == 0)
    return False


def remove_dropout(gm: torch.fx.GraphModule) -> DropoutRecord:
    """Bypass and erase every dropout that is the identity; recompile if any went."""
    record = DropoutRecord(bypass_nodes(gm, lambda node: _is_identity(gm, node)))
    if record.removed:
        gm.delete_all_unused_submodules()
    return record


class RemoveDropoutPass(RecordPass):
    """`PassBase` form of `remove_dropout` (its record in `.record`)."""

    function = staticmethod(remove_dropout)
