"""Stage 4, fit: `Calibration` + `Selection` + config → `Plan` (each span's closed-form map and residual).

Each span gets the identity, an affine least-squares map (`fxapprox.fit.fit_affine`), or with
`transform="auto"` the identity where its residual is within `auto_tolerance` of the map's; with
`fold=True` the map from the branch `B_s` to `H_e - R` (`fit_fold`). `refit="sequential"` fits
span i on the activations of the graph with spans 1..i-1 already replaced (one more pass over the
calibration batches per span, `fxapprox.calibrate.calibrate_runs`) against the original `H_e`.
"""

from __future__ import annotations

import copy
import math

import torch

from fxapprox.calibrate import calibrate_runs
from fxapprox.config import CompressConfig
from fxapprox.fit import fit_affine, fit_fold, identity_residual
from fxapprox.passes.fold_span import find_fold_site
from fxapprox.passes.replace_span import span_module_name
from fxapprox.plan import Plan, SpanPlan
from fxapprox.stages.calibrate import BRANCH_KEY, Calibration
from fxapprox.stages.rewrite import rewrite_graph
from fxapprox.stages.select import Selection
from fxapprox.stats import BoundaryMoments

__all__ = ["run"]


def _fit_span(moments: BoundaryMoments, s: int, e: int, config: CompressConfig,
              widths: list[int]) -> tuple[SpanPlan, dict[str, torch.Tensor]]:
    """One span's plan entry and weights from moments holding `H_s`, `H_e` (and `B_s` when folding).
    `"auto"`: the identity where the widths match and its residual is within `auto_tolerance` of the
    affine map's, else the affine map."""
    transform, ridge, prior = config.transform, config.ridge, config.prior
    transform = "linear" if transform == "mlp" else transform  # the MLP goes on the map later (stages.refine)
    if transform != "linear":
        ident = identity_residual(moments, s, e) if widths[s + 1] == widths[e + 1] else math.inf
        if transform == "identity":
            return SpanPlan(s, e, "identity", ident, widths[s + 1], widths[e + 1]), {}
    fit = fit_affine(moments, s, e, ridge, prior)
    if transform == "auto" and ident <= fit.residual + config.auto_tolerance:
        return SpanPlan(s, e, "identity", ident, widths[s + 1], widths[e + 1]), {}
    sp = SpanPlan(s, e, "linear", fit.residual, widths[s + 1], widths[e + 1])
    if config.fold:
        unfolded, fit = fit.residual, fit_fold(moments, s, e, BRANCH_KEY + s, ridge, prior)
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


def run(calibration: Calibration, selection: Selection, config: CompressConfig) -> Plan:
    """Fit every selected span (see the module docstring) → the plan (spans, weights, the config, and
    for a budget what it reached)."""
    captured, moments = calibration.captured, calibration.moments
    traced = captured.traced
    plan = Plan(captured.model_class, traced.stack.path, traced.stack.num_blocks, [], moments.samples, config.ridge,
                example=traced.example, units=config.units, prior=config.prior, refit=config.refit,
                config=config.to_dict())
    for i, (s, e) in enumerate(sorted(selection.spans) if config.refit == "sequential" else selection.spans):
        m = moments
        if i and config.refit == "sequential":
            gm = copy.deepcopy(traced.module)
            rewrite_graph(gm, traced.boundaries, plan, captured.like)
            h_s = _stream_node(gm, traced.boundaries, plan.spans, s)
            watched = {h_s: s}
            if config.fold:
                watched[find_fold_site(gm, h_s, s).branch] = BRANCH_KEY + s
            m = calibrate_runs([(gm, watched), (traced.module, {traced.boundaries[e]: e})], captured.batches,
                               moments.samples, device=captured.device, progress=config.progress)
        sp, weights = _fit_span(m, s, e, config, traced.widths)
        plan.spans.append(sp)
        plan.weights.update(weights)
    if selection.reached is not None:
        plan.reached = selection.reached_by(plan)
    return plan
