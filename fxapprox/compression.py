"""Model + calibration batches → a GraphModule with spans of blocks replaced by closed-form maps.

`compress()` captures the model, finds its blocks and their boundary nodes, streams the
calibration batches into boundary moments, chooses spans (given, or `num_blocks` by score),
fits each span's transform and rewrites the graph; `transform="mlp"` and `refine="output"` then
train the replacements (`fxapprox.refine`). `units="half"` counts spans in half blocks
(attention branch, MLP branch); `transform="auto"` picks identity or affine per span. `load()`
re-applies a saved plan without calibration data.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxapprox import distributed
from fxapprox.blocks import find_block_stack
from fxapprox.boundaries import UNITS
from fxapprox.calibrate import calibrate, calibrate_runs, iter_batches, split_samples
from fxapprox.errors import FoldError, FxApproxError, MissingScoreError, PlanMismatchError, SpanError
from fxapprox.fit import DEFAULT_RIDGE, PRIORS, fit_affine, fit_fold, identity_residual
from fxapprox.inputs import ModelInputs, as_model_inputs
from fxapprox.metrics import METRIC_INFO, heldout_matrix
from fxapprox.output_score import check_output_target, output_scores
from fxapprox.passes.fold_span import FoldRecord, FoldRewrite, find_fold_site, fold_spans
from fxapprox.passes.replace_span import ReplaceRecord, SpanRewrite, replace_spans, span_module_name
from fxapprox.plan import Plan, SpanPlan
from fxapprox.prepare import Traced, model_device, trace
from fxapprox.refine import RefineOptions, check_refine, refine_stage
from fxapprox.select import best_spans, candidate_costs, select_spans
from fxapprox.sequential import IterativeStep, iterative_spans
from fxapprox.span_modules import affine_linear, apply_refined, residual_mlp
from fxapprox.spans import all_spans, validate_spans
from fxapprox.stats import BoundaryMoments, FoldedMoments

__all__ = ["compress", "load", "apply_plan", "CompressionResult", "TRANSFORMS", "OUTPUT_METRIC", "REFITS", "SELECTIONS",
           "DEFAULT_AUTO_TOLERANCE"]

log = logging.getLogger(__name__)

TRANSFORMS = ("linear", "identity", "auto", "mlp")
OUTPUT_METRIC = "output"
# transform="auto": identity when its normalised residual exceeds the affine map's by at most this.
DEFAULT_AUTO_TOLERANCE = 0.01
REFITS = ("independent", "sequential")
SELECTIONS = ("dp", "iterative")
# Moment keys of the branch `B` of block s (`H_s = R + B`, for folding): far above any boundary index.
_BRANCH_KEY = 1 << 20


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


def _reference_param(model: nn.Module) -> torch.Tensor:
    floats = [p for p in model.parameters() if p.is_floating_point()]
    return floats[0] if floats else torch.empty(0)


def _rewrite(gm: torch.fx.GraphModule, boundaries, plan: Plan, like: torch.Tensor) -> tuple[ReplaceRecord,
                                                                                            FoldRecord | None]:
    """Apply the plan's spans to `gm` (the graph whose `boundaries` they are, or a copy): folds first, then the
    rest, then the plan's refined parameters.

    No span starts where a folded one ends (`_check_folds`), so the two passes touch different nodes.
    """
    folds, rewrites = [], []
    for sp in plan.spans:
        if sp.fold:
            folds.append(FoldRewrite(sp.s, sp.e, boundaries[sp.s].name, boundaries[sp.e].name,
                                     plan.weights[f"{sp.key}.weight"], plan.weights[f"{sp.key}.bias"]))
            continue
        linear = None
        if sp.transform == "linear":
            linear = affine_linear(plan.weights[f"{sp.key}.weight"], plan.weights[f"{sp.key}.bias"], like)
        elif sp.transform == "mlp":
            linear = residual_mlp(plan.weights, sp.key, like)
        rewrites.append(SpanRewrite(sp.s, sp.e, boundaries[sp.s].name, boundaries[sp.e].name, linear))
    fold_record = fold_spans(gm, folds) if folds else None
    record = replace_spans(gm, rewrites)
    apply_refined(gm, plan.weights)
    return record, fold_record


def _check_folds(spans, fold: bool, transform: str) -> None:
    if not fold:
        return
    if transform != "linear":
        raise FoldError(f"fold=True folds a fitted map; transform={transform!r} has none (an identity span "
                        "adds no module anyway): use transform='linear'")
    ends = {e for _, e in spans}
    for s, e in spans:
        if s in ends:
            raise FoldError(f"span ({s}, {e}) starts where another span ends: block {s} is removed, so there is "
                            "no down projection to fold into; merge the spans or use fold=False")


def _fold_branches(traced: Traced, starts) -> dict[int, torch.fx.Node]:
    """Branch node `B` of each block s in `starts` (`H_s = R + B`); typed error where there is none."""
    return {s: find_fold_site(traced.module, traced.boundaries[s], s).branch for s in starts}


def _fit_span(moments: BoundaryMoments, s: int, e: int, transform: str, fold: bool, widths: list[int],
              ridge: float, prior: str, tolerance: float) -> tuple[SpanPlan, dict[str, torch.Tensor]]:
    """One span's plan entry and weights from moments holding `H_s`, `H_e` (and `B_s` when folding).
    `"auto"`: the identity where the widths match and its residual is within `tolerance` of the
    affine map's, else the affine map."""
    if transform != "linear":
        ident = identity_residual(moments, s, e) if widths[s + 1] == widths[e + 1] else math.inf
        if transform == "identity":
            return SpanPlan(s, e, "identity", ident, widths[s + 1], widths[e + 1]), {}
    fit = fit_affine(moments, s, e, ridge, prior)
    if transform == "auto" and ident <= fit.residual + tolerance:
        return SpanPlan(s, e, "identity", ident, widths[s + 1], widths[e + 1]), {}
    sp = SpanPlan(s, e, "linear", fit.residual, widths[s + 1], widths[e + 1])
    if fold:
        unfolded, fit = fit.residual, fit_fold(moments, s, e, _BRANCH_KEY + s, ridge, prior)
        sp = SpanPlan(s, e, "linear", fit.residual, widths[s + 1], widths[e + 1], fold=True, unfolded_residual=unfolded)
    return sp, {f"{sp.key}.weight": fit.weight, f"{sp.key}.bias": fit.bias}


def _stream_node(gm: torch.fx.GraphModule, boundaries, done: list[SpanPlan], k: int) -> torch.fx.Node:
    """The node of `gm` (rewritten with the spans `done`) that carries `H_k` to the rest of the model."""
    nodes = {n.name: n for n in gm.graph.nodes}
    for sp in done:
        if sp.e == k:
            if sp.transform == "linear" and not sp.fold:
                name = span_module_name(sp.s, k)
                return next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == name)
            return _stream_node(gm, boundaries, done, sp.s)
    return nodes[boundaries[k].name]


def _fit_sequential(traced: Traced, moments: BoundaryMoments, plan: Plan, spans, batches, *, transform: str,
                    fold: bool, ridge: float, prior: str, tolerance: float, like: torch.Tensor, device,
                    progress: bool) -> None:
    """Fit span 1 on the original moments; span i on `H_s` of the graph with spans 1..i-1 already replaced
    (one more pass over the calibration batches, up to `H_s` there and `H_e` in the original) against the
    original `H_e`. Appends to `plan`."""
    for i, (s, e) in enumerate(sorted(spans)):
        m = moments
        if i:
            gm = copy.deepcopy(traced.module)
            _rewrite(gm, traced.boundaries, plan, like)
            h_s = _stream_node(gm, traced.boundaries, plan.spans, s)
            watched = {h_s: s}
            if fold:
                watched[find_fold_site(gm, h_s, s).branch] = _BRANCH_KEY + s
            m = calibrate_runs([(gm, watched), (traced.module, {traced.boundaries[e]: e})], batches,
                               moments.samples, device=device, progress=progress)
        sp, weights = _fit_span(m, s, e, transform, fold, traced.widths, ridge, prior, tolerance)
        plan.spans.append(sp)
        plan.weights.update(weights)


def _select_by_output(traced: Traced, moments, inputs: ModelInputs, num_blocks: int, transform: str,
                      ridge: float, target: str) -> list[tuple[int, int]]:
    """Spans removing `num_blocks` blocks at the least total `output` damage: each candidate span's
    map replaces it and its damage to the model's output on `inputs` (the first calibration batch;
    see `output_score`) is its cost; then the same dynamic program as for the other metrics."""
    widths = traced.widths
    candidates = [(s, e) for s, e in all_spans(traced.num_units, num_blocks)
                  if transform != "identity" or widths[s + 1] == widths[e + 1]]
    costs = output_scores(traced, moments, [inputs], candidates, transform=transform, ridge=ridge, target=target)
    return best_spans(costs, traced.num_units, num_blocks)


def _select_by_heldout(folded: FoldedMoments, moments, num_blocks_total: int, num_blocks: int, transform: str,
                       widths: list[int], ridge: float) -> list[tuple[int, int]]:
    """Spans removing `num_blocks` blocks at the least total `heldout` residual (k-fold)."""
    matrix = heldout_matrix(folded, moments, ridge=ridge)
    costs = candidate_costs(lambda s, e: float(matrix[s + 1, e + 1]), num_blocks_total, metric="heldout",
                            transform=transform, widths=widths)
    return best_spans(costs, num_blocks_total, num_blocks)


def compress(model: nn.Module, calib_loader: Iterable[Any], *, spans: list[tuple[int, int]] | None = None,
             num_blocks: int | None = None, transform: str = "linear", metric: str = OUTPUT_METRIC,
             num_samples: int = 500, blocks: str | None = None, ridge: float = DEFAULT_RIDGE,
             output_target: str = "auto", progress: bool = True, units: str = "block",
             auto_tolerance: float = DEFAULT_AUTO_TOLERANCE, prior: str = "zero", refit: str = "independent",
             fold: bool = False, selection: str = "dp", refine: str | None = None,
             refine_options: RefineOptions | dict[str, Any] | None = None) -> CompressionResult:
    """Replace spans of blocks of `model` by closed-form maps fitted on `calib_loader`.

    Give `spans=[(s, e), ...]` (blocks s+1..e are replaced), or `num_blocks=k` to let the
    `metric` score choose non-overlapping spans that remove k blocks. The default,
    `metric="output"` (the score that best predicts which spans keep the model's predictions),
    scores a span by the damage to the model's output when the span is replaced by its fitted map,
    on the first calibration batch (a graph suffix per candidate span of up to k blocks):
    `output_target="auto"` compares the logits (KL divergence of the predicted distributions) of a
    model with a head and the pooled final features (relative error) of a backbone; `"features"`
    compares pooled features (for a model with a head, of the last block's output). Every metric
    `Analysis.select` takes is accepted: `"heldout"` calibrates 2-fold moments (batch i → fold
    i mod 2) for it.
    `units="half"` counts spans and `num_blocks` in half blocks: boundary 2k is block k's stream
    after its attention branch, 2k+1 its output, so `(2k-1, 2k)` is block k's attention branch
    alone and `(2k, 2k+1)` its MLP. `transform="auto"` replaces each span by the identity where its
    normalised calibration residual is at most `auto_tolerance` above the affine map's (and the
    widths match), else by the affine map; spans are chosen as for `"linear"`.
    `selection="iterative"` instead replaces one unit at a time, the one with the least `output`
    damage given those already replaced (merged with replaced neighbours into one span).
    `prior="identity"` shrinks equal-width maps towards `W = I` instead of 0 (few samples).
    `refit="sequential"` fits each span on the activations of the model with the earlier spans
    already replaced (one more calibration pass per span, up to its start).
    `fold=True` writes each span's map into the Linear that ends the unit before it (`H_s = R + B`:
    fit `B → H_e - R`), so no module is added.
    `transform="mlp"` adds to each span's affine map a bottleneck MLP fitted on its boundaries and
    `refine="output"` then trains the maps at the model's output (`fxapprox.refine`; settings in
    `refine_options`, a `RefineOptions` or a dict of its fields).
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform={transform!r} is not one of {TRANSFORMS}")
    for name, value, allowed in (("prior", prior, PRIORS), ("refit", refit, REFITS),
                                 ("selection", selection, SELECTIONS), ("units", units, UNITS)):
        if value not in allowed:
            raise ValueError(f"{name}={value!r} is not one of {allowed}")
    if (spans is None) == (num_blocks is None):
        raise SpanError("pass exactly one of spans=[(s, e), ...] or num_blocks=k")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be at least 1")
    if metric not in METRIC_INFO:
        raise MissingScoreError(f"compress takes metric= one of {tuple(METRIC_INFO)}, not {metric!r}")
    check_output_target(output_target)
    mlp = transform == "mlp"  # issue 21: the closed-form map first, then add_mlps / refine_output
    refine_options = check_refine(refine, mlp=mlp, fold=fold, units=units, options=refine_options)
    transform = "linear" if mlp else transform
    stack = find_block_stack(model, blocks)
    num_units = stack.num_blocks * (2 if units == "half" else 1)
    if spans is not None:
        spans = validate_spans(spans, num_units, units)
        _check_folds(spans, fold, transform)
    elif not 1 <= num_blocks <= num_units:
        raise SpanError(
            f"num_blocks={num_blocks} cannot be removed from a model with {num_units} "
            f"{'half-block units' if units == 'half' else 'blocks'}: choose 1 <= num_blocks <= {num_units}"
        )
    distributed.check_same(model, blocks=stack.num_blocks, spans=spans,
                           num_blocks=num_blocks, transform=transform, metric=metric, num_samples=num_samples,
                           ridge=ridge, units=units, prior=prior, refit=refit, fold=fold, selection=selection)
    params_before = _count_params(model)
    first, batches = iter_batches(calib_loader)
    if refit == "sequential" or mlp or refine:  # the same calibration samples again (later spans, training)
        batches = list(split_samples(batches, num_samples)[0])
    traced = trace(model, first, stack, units)
    widths = traced.widths
    device = model_device(model)
    if spans is not None:
        _check_identity_widths(spans, transform, widths)
        watched = sorted({k for span in spans for k in span})
        branches = _fold_branches(traced, sorted({s for s, _ in spans})) if fold else {}
    else:
        watched = list(range(-1, num_units))
        branches = _foldable_branches(traced) if fold else {}
    nodes = {k: traced.boundaries[k] for k in watched}
    nodes.update({_BRANCH_KEY + s: b for s, b in branches.items()})
    folded = FoldedMoments(sorted(nodes)) if spans is None and metric == "heldout" and selection == "dp" else None
    moments = calibrate(traced.module, nodes, sorted(nodes), batches, num_samples, device=device, progress=progress,
                        moments=folded)
    chooser = "linear" if transform == "auto" else transform
    if folded is not None:
        moments = folded.total()
    steps = None
    if spans is None and selection == "iterative":
        steps = iterative_spans(traced, moments, [first.to(device)], num_blocks, transform=chooser, ridge=ridge,
                                progress=progress)
        spans = steps[-1].spans
    elif folded is not None:
        spans = _select_by_heldout(folded, moments, num_units, num_blocks, chooser, widths, ridge)
    elif spans is None and metric == OUTPUT_METRIC:
        spans = _select_by_output(traced, moments, first.to(device), num_blocks, chooser, ridge, output_target)
    elif spans is None:
        spans = select_spans(moments, num_units, num_blocks, metric=metric, transform=chooser,
                             widths=widths, ridge=ridge)
    if num_blocks is not None:
        log.info("selected spans %s by %s", spans, "iterative output damage" if selection == "iterative" else
                 f"{metric} score")
        _check_folds(spans, fold, transform)
        if fold:
            _fold_branches(traced, sorted({s for s, _ in spans}))  # typed error for a chosen span that cannot fold
    plan = Plan(type(model).__name__, stack.path, stack.num_blocks, [], moments.samples, ridge,
                example=traced.example, units=units, prior=prior, refit=refit)
    like = _reference_param(model)
    if refit == "sequential":
        _fit_sequential(traced, moments, plan, spans, batches, transform=transform, fold=fold, ridge=ridge,
                        prior=prior, tolerance=auto_tolerance, like=like, device=device, progress=progress)
    else:
        for s, e in spans:
            sp, weights = _fit_span(moments, s, e, transform, fold, widths, ridge, prior, auto_tolerance)
            plan.spans.append(sp)
            plan.weights.update(weights)
    record, fold_record = _rewrite(traced.module, traced.boundaries, plan, like)
    result = CompressionResult(traced.module, plan, traced.capture_path, params_before,
                               _count_params(traced.module), record, fold_record, steps)
    if mlp or refine:
        refine_stage(result, model, batches, mlp=mlp, refine=refine, options=refine_options,
                     boundaries=traced.boundaries, progress=progress)
        result.num_params_after = _count_params(result.module)
    log.info("compressed %s: spans %s, %d → %d parameters", plan.model_class, result.spans,
             params_before, result.num_params_after)
    return result


def _foldable_branches(traced: Traced) -> dict[int, torch.fx.Node]:
    """Branch nodes of every block that has one (for folding spans a score will choose)."""
    found = {}
    for s in range(traced.num_units):
        try:
            found.update(_fold_branches(traced, [s]))
        except FxApproxError:
            continue
    return found


def load(model: nn.Module, path: str | Path, *, example_inputs: Any = None) -> CompressionResult:
    """Re-apply the plan saved in directory `path` to `model` (no calibration data needed)."""
    return apply_plan(model, Plan.read(path), example_inputs=example_inputs, source=f"the plan in {path}")


def apply_plan(model: nn.Module, plan: Plan, *, example_inputs: Any = None,
               source: str = "the plan") -> CompressionResult:
    """`plan` (e.g. `Plan.read(path)`, read once) applied to `model`; `source` names it in errors."""
    if type(model).__name__ != plan.model_class:
        raise PlanMismatchError(
            f"{source} was made for {plan.model_class}, not {type(model).__name__}; "
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
    traced = trace(model, example, stack, plan.units)
    widths = traced.widths
    for sp in plan.spans:
        if (widths[sp.s + 1], widths[sp.e + 1]) != (sp.in_features, sp.out_features):
            raise PlanMismatchError(
                f"span ({sp.s}, {sp.e}) of the plan maps width {sp.in_features} → {sp.out_features}, "
                f"but the model's boundaries have widths {widths[sp.s + 1]} → {widths[sp.e + 1]}"
            )
    record, fold_record = _rewrite(traced.module, traced.boundaries, plan, _reference_param(model))
    return CompressionResult(traced.module, plan, traced.capture_path, params_before,
                             _count_params(traced.module), record, fold_record)
