"""Stage 5, rewrite: `Captured` + `Plan` → `CompressionResult` (the graph with its spans replaced).

Folded spans are written into the Linear ending the block before them (`passes/fold_span.py`), the
others replaced by one `nn.Linear` (a `ResidualMLP` for `transform="mlp"`; rewired to `H_s` for the
identity; `passes/replace_span.py`), and refined parameters (`refined.<path>` plan weights) set;
the removed blocks' nodes, parameters and buffers go. This stage never sees calibration data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fxapprox import distributed
from fxapprox.boundaries import Boundaries
from fxapprox.passes.fold_span import FoldRecord, FoldRewrite, fold_spans
from fxapprox.passes.replace_span import ReplaceRecord, SpanRewrite, replace_spans
from fxapprox.plan import Plan
from fxapprox.sequential import IterativeStep
from fxapprox.span_modules import affine_linear, apply_refined, residual_mlp
from fxapprox.stages.capture import Captured

__all__ = ["CompressionResult", "run", "rewrite_graph"]

log = logging.getLogger(__name__)


@dataclass
class CompressionResult:
    """The rewritten module and what was done to it."""

    module: torch.fx.GraphModule
    plan: Plan
    capture_path: str
    num_params_before: int
    num_params_after: int
    record: ReplaceRecord | None = field(default=None, repr=False)
    fold_record: FoldRecord | None = field(default=None, repr=False)
    selection_steps: list[IterativeStep] | None = field(default=None, repr=False)  # selection="iterative": in order

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Replaced spans `(s, e)` in the papers' convention."""
        return [(sp.s, sp.e) for sp in self.plan.spans]

    @property
    def residuals(self) -> dict[tuple[int, int], float]:
        """Normalised residual of each span's transform on the calibration data."""
        return {(sp.s, sp.e): sp.residual for sp in self.plan.spans}

    @property
    def reached(self) -> dict[str, float] | None:
        """For a budget: the fractions of the model's FLOPs and parameters (or latency) the plan saves."""
        return self.plan.reached

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the plan and fitted weights (JSON + safetensors) into directory `path` (under a
        process group: rank 0 only)."""
        return self.plan.save(path, overwrite=overwrite) if distributed.is_main() else Path(path)


def rewrite_graph(gm: torch.fx.GraphModule, boundaries: Boundaries, plan: Plan,
                  like: torch.Tensor) -> tuple[ReplaceRecord, FoldRecord | None]:
    """Apply the plan's spans to `gm` (the graph whose `boundaries` they are, or a copy): folds first, then the
    rest (a Linear, a `ResidualMLP` for `transform="mlp"`, or nothing), then the plan's refined parameters.

    No span starts where a folded one ends (`capture.check_folds`), so the two passes touch different nodes.
    """
    folds, rewrites = [], []
    for sp in plan.spans:
        if sp.fold:
            folds.append(FoldRewrite(sp.s, sp.e, boundaries[sp.s].name, boundaries[sp.e].name,
                                     plan.weights[f"{sp.key}.weight"], plan.weights[f"{sp.key}.bias"]))
            continue
        module = None
        if sp.transform == "linear":
            module = affine_linear(plan.weights[f"{sp.key}.weight"], plan.weights[f"{sp.key}.bias"], like)
        elif sp.transform == "mlp":
            module = residual_mlp(plan.weights, sp.key, like)
        rewrites.append(SpanRewrite(sp.s, sp.e, boundaries[sp.s].name, boundaries[sp.e].name, module))
    fold_record = fold_spans(gm, folds) if folds else None
    record = replace_spans(gm, rewrites)
    apply_refined(gm, plan.weights)
    return record, fold_record


def run(captured: Captured, plan: Plan) -> CompressionResult:
    """Rewrite `captured`'s graph (in place) by `plan`."""
    traced = captured.traced
    record, fold_record = rewrite_graph(traced.module, traced.boundaries, plan, captured.like)
    result = CompressionResult(traced.module, plan, traced.capture_path, captured.params_before,
                               sum(p.numel() for p in traced.module.parameters()), record, fold_record)
    log.info("compressed %s: spans %s, %d → %d parameters", plan.model_class, result.spans,
             result.num_params_before, result.num_params_after)
    return result
