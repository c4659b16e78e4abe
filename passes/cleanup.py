"""Captured GraphModule → the same computation with the work the eager model does not do removed.

`cleanup` runs, through one `PassManager`: `relax_tensor_guards` (export's dtype assertions),
`drop_true_masks` (SDPA masks proven all-true), `remove_dropout` (eval-mode dropout),
`remove_noop_copies` (contiguous/clone/alias that copy nothing), then `prune_dead_code` (the
mask arithmetic and size queries nothing uses any more). Every captured graph goes through it
(`fxapprox.prepare.trace`), so the uncompressed capture and every compressed module get the
same cleanup.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx
from torch.fx.passes.infra.pass_manager import PassManager

from fxapprox.passes.attention_mask import DropTrueMasksPass, MaskRecord
from fxapprox.passes.dead_code import PruneRecord, prune_dead_code
from fxapprox.passes.dropout import DropoutRecord, RemoveDropoutPass
from fxapprox.passes.noop_copies import CopyRecord, RemoveNoOpCopiesPass
from fxapprox.passes.tensor_guards import GuardRecord, RelaxTensorGuardsPass

__all__ = ["cleanup", "cleanup_passes", "CleanupRecord"]


@dataclass
class CleanupRecord:
    """What each cleanup pass changed."""

    guards: GuardRecord
    masks: MaskRecord
    dropout: DropoutRecord
    copies: CopyRecord
    pruned: PruneRecord


def cleanup_passes() -> list:
    """The cleanup passes in the order `cleanup` runs them (fresh instances)."""
    return [RelaxTensorGuardsPass(), DropTrueMasksPass(), RemoveDropoutPass(), RemoveNoOpCopiesPass()]


def cleanup(gm: torch.fx.GraphModule) -> CleanupRecord:
    """Run the cleanup passes on `gm` in place, prune the dead code they leave; what changed."""
    passes = cleanup_passes()
    PassManager(passes=passes, run_checks_after_each_pass=True)(gm)
    return CleanupRecord(*(p.record for p in passes), prune_dead_code(gm))
