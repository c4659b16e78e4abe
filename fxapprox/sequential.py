"""Compounding-aware selection: greedy span removal, each step scored given what is already replaced.

* `iterative_spans`: BlockPruner / SLEB-style selection. Starting from the whole model, replace
  the block whose replacement (merged with the already replaced neighbours into one span, mapped
  by its fitted transform) gives the least `output` damage — the relative error of the pooled final
  features — given what is already replaced; re-score; repeat until `num_blocks` are gone.
  Candidates run through `ReplacedRunner`, an interpreter of the original graph that substitutes
  `T(H_s)` for `H_e` for each replaced span. Under a process group each rank scores its share of a
  step's candidates and every rank takes the same best one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from tqdm.auto import tqdm

from fxapprox import distributed
from fxapprox.capture import flat_graph_inputs
from fxapprox.errors import SpanError
from fxapprox.features import last_hidden_state, pool_features
from fxapprox.inputs import ModelInputs, token_mask
from fxapprox.output_score import fitted_maps
from fxapprox.prepare import Traced, model_device
from fxapprox.select import runs_to_spans
from fxapprox.stats import BoundaryMoments

__all__ = ["ReplacedRunner", "IterativeStep", "iterative_spans", "runs_to_spans"]

log = logging.getLogger(__name__)

Span = tuple[int, int]
Fitted = tuple[torch.Tensor, torch.Tensor] | None  # (W, b) of `x W + b`, None for the identity


class ReplacedRunner(torch.fx.Interpreter):
    """Runs the original graph with `H_e` ← `T(H_s)` for each span `(s, e)` of `maps` (blocks inside still run)."""

    def __init__(self, traced: Traced, maps: dict[Span, Fitted]):
        super().__init__(traced.module, garbage_collect_values=True)
        b = traced.boundaries
        self.targets = {b[e]: (b[s], fitted) for (s, e), fitted in maps.items()}
        self.sources = {b[s] for s, _ in maps}
        self.saved: dict[torch.fx.Node, torch.Tensor] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        if n in self.targets:
            source, fitted = self.targets[n]
            h = self.saved[source]
            result = h if fitted is None else h @ fitted[0].to(h.dtype) + fitted[1].to(h.dtype)
        else:
            result = super().run_node(n)
        if n in self.sources:
            self.saved[n] = result
        return result

    def features(self, inputs: ModelInputs) -> torch.Tensor:
        """Pooled final features `(batch, d)` of one batch, in float64 on the CPU."""
        self.saved.clear()
        with torch.no_grad():
            output = self.run(*flat_graph_inputs(self.module, inputs))
        self.saved.clear()
        return pool_features(last_hidden_state(output), token_mask(inputs)).double().cpu()


@dataclass
class IterativeStep:
    """One greedy step: the block replaced, the spans after it and their `output` damage."""

    block: int
    spans: list[Span]
    damage: float


def iterative_spans(traced: Traced, moments: BoundaryMoments, batches: Sequence[ModelInputs], num_blocks: int, *,
                    transform: str = "linear", ridge: float, progress: bool = True,
                    until: Callable[[list[Span]], bool] | None = None) -> list[IterativeStep]:
    """Replace `num_blocks` blocks one at a time, each time the one whose replacement (merged with replaced
    neighbours) does the least `output` damage on `batches` given those already replaced; stop earlier
    once `until(spans)` holds (e.g. a budget is met).

    Maps are fitted from `moments` (every boundary watched); identity spans need equal widths.
    Cost per step: one forward of the original graph per remaining block per batch.
    """
    num_total = traced.num_units
    if not 1 <= num_blocks <= num_total:
        raise SpanError(f"num_blocks={num_blocks} must lie in 1..{num_total}")
    fits: dict[Span, Fitted] = {}
    device = model_device(traced.module)

    def fitted(span: Span) -> Fitted:
        if span not in fits:
            fits.update(fitted_maps(moments, [span], transform=transform, ridge=ridge, device=device)[0])
        return fits[span]

    def allowed(span: Span) -> bool:
        return transform != "identity" or traced.widths[span[0] + 1] == traced.widths[span[1] + 1]

    batches = [b.to(device) for b in batches]
    reference = [ReplacedRunner(traced, {}).features(b) for b in batches]
    total = sum(float(f.square().sum()) for f in reference)
    if total == 0.0:
        raise ValueError("the final features are all zero on the scoring batches: the output damage is undefined")

    def damage(block: int) -> float:
        runner = ReplacedRunner(traced, {sp: fitted(sp) for sp in runs_to_spans(removed | {block})})
        return math.sqrt(sum(float((runner.features(b) - ref).square().sum())
                             for b, ref in zip(batches, reference)) / total)

    removed: set[int] = set()
    steps: list[IterativeStep] = []
    bar = tqdm(total=num_blocks, desc="iterative selection", unit="block", leave=False,
               disable=not (progress and distributed.is_main()))
    for _ in range(num_blocks):
        candidates = [block for block in range(num_total) if block not in removed
                      and all(allowed(sp) for sp in runs_to_spans(removed | {block}))]
        if not candidates:
            raise SpanError(f"no block can be replaced by transform={transform!r} after {sorted(removed)} "
                            "(identity needs equal widths); use transform='linear'")
        with distributed.lockstep():
            mine = {block: damage(block) for block in distributed.share(candidates)}
        damages = distributed.gather_dict(mine)
        best = min(candidates, key=lambda block: (damages[block], block))
        removed.add(best)
        steps.append(IterativeStep(best, runs_to_spans(removed), damages[best]))
        log.info("iterative selection: block %d → spans %s, output damage %.4g", best, steps[-1].spans,
                 damages[best])
        bar.update()
        if until is not None and until(steps[-1].spans):
            break
    bar.close()
    return steps
