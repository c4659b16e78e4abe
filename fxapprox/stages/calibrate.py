"""Stage 2, calibrate: `Captured` + config → `Calibration` (the boundary moments the later stages read).

Watches the boundaries the given spans need (every boundary when the spans are still to be
chosen) and, with `fold=True`, the branch `B` of each block a span may start after
(`H_s = R + B`); streams the calibration batches into float64 moments
(`fxapprox.calibrate.calibrate`). The `heldout` score calibrates 2-fold moments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fxapprox.calibrate import calibrate
from fxapprox.config import CompressConfig
from fxapprox.errors import FxApproxError
from fxapprox.passes.fold_span import find_fold_site
from fxapprox.prepare import Traced
from fxapprox.stages.capture import Captured
from fxapprox.stats import BoundaryMoments, FoldedMoments

__all__ = ["Calibration", "run", "BRANCH_KEY"]

# Moment keys of the branch `B` of block s (`H_s = R + B`, for folding): far above any boundary index.
BRANCH_KEY = 1 << 20


@dataclass
class Calibration:
    """Moments of the watched boundaries (and fold branches at `BRANCH_KEY + s`); `folded` holds the
    per-fold moments of the `heldout` score."""

    captured: Captured
    moments: BoundaryMoments
    folded: FoldedMoments | None = None


def fold_branches(traced: Traced, starts) -> dict[int, torch.fx.Node]:
    """Branch node `B` of each block s in `starts` (`H_s = R + B`); typed error where there is none."""
    return {s: find_fold_site(traced.module, traced.boundaries[s], s).branch for s in starts}


def _foldable_branches(traced: Traced) -> dict[int, torch.fx.Node]:
    """Branch nodes of every block that has one (for folding spans a score will choose)."""
    found = {}
    for s in range(traced.num_units):
        try:
            found.update(fold_branches(traced, [s]))
        except FxApproxError:
            continue
    return found


def run(captured: Captured, config: CompressConfig) -> Calibration:
    """Stream `captured`'s batches (`config.num_samples` samples) into the moments the config's spans need."""
    traced = captured.traced
    if config.spans is not None:
        watched = sorted({k for span in config.spans for k in span})
        branches = fold_branches(traced, sorted({s for s, _ in config.spans})) if config.fold else {}
    else:
        watched = list(range(-1, traced.num_units))
        branches = _foldable_branches(traced) if config.fold else {}
    nodes = {k: traced.boundaries[k] for k in watched}
    nodes.update({BRANCH_KEY + s: b for s, b in branches.items()})
    heldout = config.spans is None and config.metric == "heldout" and config.selection != "iterative"
    folded = FoldedMoments(sorted(nodes)) if heldout else None
    moments = calibrate(traced.module, nodes, sorted(nodes), captured.batches, config.num_samples,
                        device=captured.device, progress=config.progress, moments=folded)
    if folded is not None:
        moments = folded.total()
    return Calibration(captured, moments, folded)
