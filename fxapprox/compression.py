"""Model + calibration batches + `CompressConfig` → a GraphModule with spans of blocks replaced by closed-form maps.

`compress()` composes the five stages of `fxapprox.stages`: capture (graph, block boundaries) →
calibrate (boundary moments) → select (spans: given, `num_blocks` by a score, or a budget) → fit
(each span's map) → rewrite (the graph) → refine (only when asked: replacements trained at the
output). Its keyword arguments build a `CompressConfig` (or
override the fields of the one given). `load()` / `apply_plan()` re-apply a saved plan without
calibration data.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from fxapprox.blocks import find_block_stack
from fxapprox.config import DEFAULT_AUTO_TOLERANCE, OUTPUT_METRIC, REFITS, SELECTIONS, TRANSFORMS, CompressConfig
from fxapprox.errors import PlanMismatchError
from fxapprox.inputs import as_model_inputs
from fxapprox.plan import Plan
from fxapprox.prepare import trace
from fxapprox.stages import calibrate, capture, fit, refine, rewrite, select
from fxapprox.stages.capture import reference_param
from fxapprox.stages.rewrite import CompressionResult, rewrite_graph

__all__ = ["compress", "load", "apply_plan", "CompressionResult", "CompressConfig", "TRANSFORMS", "OUTPUT_METRIC",
           "REFITS", "SELECTIONS", "DEFAULT_AUTO_TOLERANCE"]


def compress(model: nn.Module, calib_loader: Iterable[Any], config: CompressConfig | None = None,
             **overrides: Any) -> CompressionResult:
    """Replace spans of blocks of `model` by closed-form maps fitted on `calib_loader`.

    `config` holds every option (`CompressConfig`); keyword arguments build one (`compress(model,
    loader, num_blocks=2)`) or override fields of the one given. Exactly one of:
    `spans=[(s, e), ...]` (blocks s+1..e are replaced); `num_blocks=k` (the `selection` rule
    chooses spans removing k blocks by the `metric` score); `budget=f` (the spans of least total
    score whose replacement removes at least the fraction f of the model's FLOPs, counted on the
    graph net of the added maps); `param_budget=f` (of its parameters); `latency_budget=f` (of
    its latency, from `block_latency=` measured per block, see `fxapprox.study.latency`).
    `result.reached` (and the saved plan's `reached`) says what a budget's plan saves.

    The default `metric="output"` (the score that best predicts which spans keep the model's
    predictions) scores a span by the damage to the model's output when the span is replaced by
    its fitted map, on the first calibration batch: `output_target="auto"` compares the logits (KL
    divergence) of a model with a head and the pooled final features (relative error) of a
    backbone; `"features"` compares pooled features. Every metric `Analysis.select` takes is
    accepted: `"heldout"` calibrates 2-fold moments (batch i → fold i mod 2) for it.
    `selection`: `"dp"` (least total cost, dynamic program), `"iterative"` (one unit at a time,
    the least `output` damage given those already replaced, merged with replaced neighbours),
    `"topk"` (TOAST Algorithm 1: the one span of k units of least cost), `"lowest"` (ShortGPT: the
    k single units of least cost).
    `units="half"` counts spans and `num_blocks` in half blocks: boundary 2k is block k's stream
    after its attention branch, 2k+1 its output, so `(2k-1, 2k)` is block k's attention branch
    alone and `(2k, 2k+1)` its MLP. `transform="auto"` replaces each span by the identity where its
    normalised calibration residual is at most `auto_tolerance` above the affine map's (and the
    widths match), else by the affine map; spans are chosen as for `"linear"`.
    `prior="identity"` shrinks equal-width maps towards `W = I` instead of 0 (few samples).
    `refit="sequential"` fits each span on the activations of the model with the earlier spans
    already replaced (one more calibration pass per span, up to its start).
    `fold=True` writes each span's map into the Linear that ends the unit before it (`H_s = R + B`:
    fit `B → H_e - R`), so no module is added.
    `transform="mlp"` adds to each span's affine map a residual bottleneck MLP fitted on its
    boundaries, and `refine="output"` then trains the replacements at the model's output (the
    refine stage, `fxapprox.refine`; settings in `refine_options`, a `RefineOptions` or a dict).
    """
    config = CompressConfig(**overrides) if config is None else config.replace(**overrides)
    captured = capture.run(model, calib_loader, config)
    calibration = calibrate.run(captured, config)
    selection = select.run(calibration, config)
    plan = fit.run(calibration, selection, config)
    result = rewrite.run(captured, plan)
    result.selection_steps = selection.steps
    return refine.run(model, captured, result, config, selection.unit_costs)


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
    params_before = sum(p.numel() for p in model.parameters())
    traced = trace(model, example, stack, plan.units, inline_blocks=any(sp.fold for sp in plan.spans))
    widths = traced.widths
    for sp in plan.spans:
        if (widths[sp.s + 1], widths[sp.e + 1]) != (sp.in_features, sp.out_features):
            raise PlanMismatchError(
                f"span ({sp.s}, {sp.e}) of the plan maps width {sp.in_features} → {sp.out_features}, "
                f"but the model's boundaries have widths {widths[sp.s + 1]} → {widths[sp.e + 1]}"
            )
    record, fold_record = rewrite_graph(traced.module, traced.boundaries, plan, reference_param(model))
    return CompressionResult(traced.module, plan, traced.capture_path, params_before,
                             sum(p.numel() for p in traced.module.parameters()), record, fold_record)
