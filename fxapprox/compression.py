"""Model + calibration batches → a GraphModule with spans of blocks replaced by closed-form maps.

`compress()` captures the model, finds its blocks and their boundary nodes, streams the
calibration batches into boundary moments, chooses spans (given, or `num_blocks` by score),
fits each span's transform and rewrites the graph. `load()` re-applies a saved plan without
calibration data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxapprox import distributed
from fxapprox.blocks import find_block_stack
from fxapprox.calibrate import calibrate, iter_batches
from fxapprox.errors import PlanMismatchError, SpanError
from fxapprox.fit import DEFAULT_RIDGE, fit_affine, identity_residual
from fxapprox.inputs import ModelInputs, as_model_inputs
from fxapprox.output_score import output_scores
from fxapprox.passes.replace_span import ReplaceRecord, SpanRewrite, replace_spans
from fxapprox.plan import Plan, SpanPlan
from fxapprox.prepare import Traced, model_device, trace
from fxapprox.select import best_spans, select_spans
from fxapprox.spans import all_spans, validate_spans

__all__ = ["compress", "load", "CompressionResult", "TRANSFORMS", "OUTPUT_METRIC"]

log = logging.getLogger(__name__)

TRANSFORMS = ("linear", "identity")
OUTPUT_METRIC = "output"


@dataclass
class CompressionResult:
    """The rewritten module and what was done to it."""

    module: torch.fx.GraphModule
    plan: Plan
    capture_path: str
    num_params_before: int
    num_params_after: int
    record: ReplaceRecord | None = field(default=None, repr=False)

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Replaced spans `(s, e)` in the papers' convention."""
        return [(sp.s, sp.e) for sp in self.plan.spans]

    @property
    def residuals(self) -> dict[tuple[int, int], float]:
        """Normalised residual of each span's transform on the calibration data."""
        return {(sp.s, sp.e): sp.residual for sp in self.plan.spans}

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the plan and fitted weights (JSON + safetensors) into directory `path` (under a
        process group: rank 0 only)."""
        return self.plan.save(path, overwrite=overwrite) if distributed.is_main() else Path(path)


def _count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_identity_widths(spans, transform: str, widths: list[int]) -> None:
    if transform != "identity":
        return
    for s, e in spans:
        if widths[s + 1] != widths[e + 1]:
            raise SpanError(
                f"identity span ({s}, {e}) maps width {widths[s + 1]} to width {widths[e + 1]}; "
                "use transform='linear' for spans between boundaries of different widths"
            )


def _linear(weight: torch.Tensor, bias: torch.Tensor, like: torch.Tensor) -> nn.Linear:
    """Float64 `x @ weight + bias` → an `nn.Linear` in the dtype and device of `like`."""
    lin = nn.Linear(weight.shape[0], weight.shape[1], device=like.device, dtype=like.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight.T)
        lin.bias.copy_(bias)
    return lin.requires_grad_(False)


def _reference_param(model: nn.Module) -> torch.Tensor:
    floats = [p for p in model.parameters() if p.is_floating_point()]
    return floats[0] if floats else torch.empty(0)


def _rewrite(traced: Traced, plan: Plan, like: torch.Tensor) -> ReplaceRecord:
    boundaries = traced.boundaries
    rewrites = []
    for sp in plan.spans:
        linear = None
        if sp.transform == "linear":
            linear = _linear(plan.weights[f"{sp.key}.weight"], plan.weights[f"{sp.key}.bias"], like)
        rewrites.append(SpanRewrite(sp.s, sp.e, boundaries[sp.s].name, boundaries[sp.e].name, linear))
    return replace_spans(traced.module, rewrites)


def _select_by_output(traced: Traced, moments, inputs: ModelInputs, num_blocks: int, transform: str,
                      ridge: float) -> list[tuple[int, int]]:
    """Spans removing `num_blocks` blocks at the least total `output` error: each candidate span's
    map replaces it and the relative error of the final features on `inputs` (the first
    calibration batch) is its cost; then the same dynamic program as for the other metrics."""
    widths = traced.widths
    candidates = [(s, e) for s, e in all_spans(traced.stack.num_blocks, num_blocks)
                  if transform != "identity" or widths[s + 1] == widths[e + 1]]
    costs = output_scores(traced, moments, [inputs], candidates, transform=transform, ridge=ridge)
    return best_spans(costs, traced.stack.num_blocks, num_blocks)


def compress(model: nn.Module, calib_loader: Iterable[Any], *, spans: list[tuple[int, int]] | None = None,
             num_blocks: int | None = None, transform: str = "linear", metric: str = "linear",
             num_samples: int = 500, blocks: str | None = None, ridge: float = DEFAULT_RIDGE,
             progress: bool = True) -> CompressionResult:
    """Replace spans of blocks of `model` by closed-form maps fitted on `calib_loader`.

    Give `spans=[(s, e), ...]` (blocks s+1..e are replaced), or `num_blocks=k` to let the
    `metric` score choose non-overlapping spans that remove k blocks. `metric="output"` scores a
    span by the relative error of the model's final features when the span is replaced by its
    fitted map (on the first calibration batch; one suffix per candidate span of up to k blocks).
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform={transform!r} is not one of {TRANSFORMS}")
    if (spans is None) == (num_blocks is None):
        raise SpanError("pass exactly one of spans=[(s, e), ...] or num_blocks=k")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be at least 1")
    stack = find_block_stack(model, blocks)
    if spans is not None:
        spans = validate_spans(spans, stack.num_blocks)
    elif not 1 <= num_blocks <= stack.num_blocks:
        raise SpanError(
            f"num_blocks={num_blocks} cannot be removed from a model with {stack.num_blocks} "
            f"blocks: choose 1 <= num_blocks <= {stack.num_blocks}"
        )
    distributed.check_same(model, blocks=stack.num_blocks, spans=spans,
                           num_blocks=num_blocks, transform=transform, metric=metric, num_samples=num_samples,
                           ridge=ridge)
    params_before = _count_params(model)
    first, batches = iter_batches(calib_loader)
    traced = trace(model, first, stack)
    widths = traced.widths
    if spans is not None:
        _check_identity_widths(spans, transform, widths)
        watched = sorted({k for span in spans for k in span})
    else:
        watched = list(range(-1, stack.num_blocks))
    moments = calibrate(traced.module, traced.boundaries, watched, batches, num_samples,
                        device=model_device(model), progress=progress)
    if spans is None and metric == OUTPUT_METRIC:
        spans = _select_by_output(traced, moments, first.to(model_device(model)), num_blocks, transform, ridge)
    elif spans is None:
        spans = select_spans(moments, stack.num_blocks, num_blocks, metric=metric, transform=transform,
                             widths=widths, ridge=ridge)
    if num_blocks is not None:
        log.info("selected spans %s by %s score", spans, metric)
    plan = Plan(type(model).__name__, stack.path, stack.num_blocks, [], moments.samples, ridge,
                example=traced.example)
    for s, e in spans:
        if transform == "linear":
            fit = fit_affine(moments, s, e, ridge)
            sp = SpanPlan(s, e, "linear", fit.residual, widths[s + 1], widths[e + 1])
            plan.weights[f"{sp.key}.weight"], plan.weights[f"{sp.key}.bias"] = fit.weight, fit.bias
        else:
            sp = SpanPlan(s, e, "identity", identity_residual(moments, s, e), widths[s + 1], widths[e + 1])
        plan.spans.append(sp)
    record = _rewrite(traced, plan, _reference_param(model))
    result = CompressionResult(traced.module, plan, traced.capture_path, params_before,
                               _count_params(traced.module), record)
    log.info("compressed %s: spans %s, %d → %d parameters", plan.model_class, result.spans,
             params_before, result.num_params_after)
    return result


def load(model: nn.Module, path: str | Path, *, example_inputs: Any = None) -> CompressionResult:
    """Re-apply the plan saved in directory `path` to `model` (no calibration data needed)."""
    plan = Plan.read(path)
    if type(model).__name__ != plan.model_class:
        raise PlanMismatchError(
            f"the plan in {path} was made for {plan.model_class}, not {type(model).__name__}; "
            "load it into the model it was computed on"
        )
    try:
        stack = find_block_stack(model, plan.blocks)
    except Exception as err:
        raise PlanMismatchError(f"the plan's block stack {plan.blocks!r} does not fit this model: {err}") from None
    if stack.num_blocks != plan.num_blocks:
        raise PlanMismatchError(
            f"the plan is for {plan.num_blocks} blocks in {plan.blocks!r}, the model has "
            f"{stack.num_blocks}; load it into the model it was computed on"
        )
    example = plan.example if example_inputs is None else as_model_inputs(example_inputs)
    params_before = _count_params(model)
    traced = trace(model, example, stack)
    widths = traced.widths
    for sp in plan.spans:
        if (widths[sp.s + 1], widths[sp.e + 1]) != (sp.in_features, sp.out_features):
            raise PlanMismatchError(
                f"span ({sp.s}, {sp.e}) of the plan maps width {sp.in_features} → {sp.out_features}, "
                f"but the model's boundaries have widths {widths[sp.s + 1]} → {widths[sp.e + 1]}"
            )
    record = _rewrite(traced, plan, _reference_param(model))
    return CompressionResult(traced.module, plan, traced.capture_path, params_before,
                             _count_params(traced.module), record)
