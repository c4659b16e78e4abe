"""Stage 3, select: `Calibration` + config → `Selection` (the spans to replace, and what a budget reached).

Given spans are checked and kept. Otherwise the config's `selection` rule chooses: `"dp"`, `"topk"`
and `"lowest"` (`fxapprox.select.RULES`) read a cost per candidate span from the `metric` score
(`output`: each candidate replaced by its fitted map, damage to the model's output on the first
calibration batch, `fxapprox.output_score`; `heldout`: k-fold residuals; the rest from the
moments), `"iterative"` removes one unit at a time by output damage (`fxapprox.sequential`).
Budgets are savings counted on the graph (`fxapprox.costs.unit_costs`, net of the maps, and for
`transform="mlp"` of the MLPs `refine_options` sizes) or
measured latencies (`fxapprox.costs.BlockLatency`): the `"dp"` rule finds the span set of least
total cost that saves the budget exactly (`best_spans_for_saving`); the other rules take their
smallest plan that saves it. This stage never rewrites the graph.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from fxapprox.config import OUTPUT_METRIC, CompressConfig, RefineOptions
from fxapprox.costs import BlockLatency, MlpSize, UnitCosts, unit_costs
from fxapprox.errors import SpanError
from fxapprox.metrics import heldout_matrix, score
from fxapprox.output_score import output_scores
from fxapprox.select import RULES, best_spans_for_saving, candidate_costs, first_reaching
from fxapprox.sequential import IterativeStep, iterative_spans
from fxapprox.spans import all_spans, validate_spans
from fxapprox.stages.calibrate import Calibration, fold_branches
from fxapprox.stages.capture import check_folds

__all__ = ["Selection", "run"]

log = logging.getLogger(__name__)

Span = tuple[int, int]
_BUDGETS = {"budget": "flops", "param_budget": "params", "latency_budget": "latency"}


@dataclass
class Selection:
    """The chosen spans, the rule that chose them, the iterative rule's steps, and for a budget what
    the spans save (`reached`: fractions of the model's FLOPs and parameters, or of its latency,
    assuming a map for every span that is not an identity; `reached_by(plan)` with the fitted ones)."""

    spans: list[Span]
    rule: str
    steps: list[IterativeStep] | None = field(default=None, repr=False)
    unit_costs: UnitCosts | None = field(default=None, repr=False)
    block_latency: BlockLatency | None = field(default=None, repr=False)
    reached: dict[str, float] | None = None
    mlp: MlpSize | None = None  # transform="mlp": how each span's MLP is sized (and priced)

    def saved(self, spans: list[Span], transforms: list[str]) -> dict[str, float] | None:
        """Fractions saved by replacing `spans` with `transforms` (`"identity"`: no map added; `"mlp"`:
        a map and an MLP sized by `self.mlp`)."""
        out: dict[str, float] = {}
        if self.unit_costs is not None:
            out["flops"] = self.unit_costs.fraction(spans, transforms, "flops", self.mlp)
            out["params"] = self.unit_costs.fraction(spans, transforms, "params", self.mlp)
        if self.block_latency is not None:
            lat = self.block_latency
            out["latency"] = sum(lat.saving(s, e, t) for (s, e), t in zip(spans, transforms)) / lat.original_ms
        return out or None

    def reached_by(self, plan) -> dict[str, float] | None:
        """`saved` by the fitted plan's spans (identity and folded maps add nothing; with `mlp` set,
        every map gets its MLP after the fit)."""
        with_map = "linear" if self.mlp is None else "mlp"
        return self.saved([(sp.s, sp.e) for sp in plan.spans],
                          ["identity" if sp.transform == "identity" or sp.fold else with_map for sp in plan.spans])


def _span_costs(cal: Calibration, config: CompressConfig, chooser: str, max_len: int | None) -> dict[Span, float]:
    """Cost of every candidate span of at most `max_len` units by `config.metric`."""
    traced, moments = cal.captured.traced, cal.moments
    widths, num_units = traced.widths, traced.num_units
    if config.metric == OUTPUT_METRIC:
        candidates = [(s, e) for s, e in all_spans(num_units, max_len)
                      if chooser != "identity" or widths[s + 1] == widths[e + 1]]
        return output_scores(traced, moments, [cal.captured.first], candidates, transform=chooser,
                             ridge=config.ridge, target=config.output_target)
    if cal.folded is not None:
        matrix = heldout_matrix(cal.folded, moments, ridge=config.ridge)
        read = lambda s, e: float(matrix[s + 1, e + 1])  # noqa: E731
    else:
        read = lambda s, e: score(moments, s, e, config.metric, ridge=config.ridge)  # noqa: E731
    costs = candidate_costs(read, num_units, metric=config.metric, transform=chooser, widths=widths,
                            max_span_len=max_len)
    if not costs:
        raise SpanError(f"no span can take transform={chooser!r} under metric={config.metric!r}")
    return costs


def _saving_fn(cal: Calibration, config: CompressConfig, kind: str, transform: str, mlp: MlpSize | None,
               counted: UnitCosts | None) -> tuple[Callable[[Span], float], float, UnitCosts | None]:
    """Per span what it saves of `kind`, the budget in the same unit, and the unit costs counted
    (`counted`, when the caller has them already)."""
    if kind == "latency":
        lat = config.block_latency
        return (lambda sp: lat.saving(*sp, transform)), config.latency_budget * lat.original_ms, counted
    costs = counted or unit_costs(cal.captured.traced, cal.captured.device)
    if kind == "flops":
        return (lambda sp: costs.saving(*sp, transform, "flops", mlp)), config.budget * costs.total_flops, costs
    return (lambda sp: costs.saving(*sp, transform, "params", mlp)), config.param_budget * costs.total_params, costs


def _short(config: CompressConfig, name: str, best: float, total: float) -> SpanError:
    return SpanError(f"no set of spans the {config.selection!r} rule can choose saves {name}={getattr(config, name)} "
                     f"of the model (at most {best / total:.4f}); lower the budget")


def run(calibration: Calibration, config: CompressConfig) -> Selection:
    """Choose the spans `config` asks for (see the module docstring)."""
    traced = calibration.captured.traced
    num_units = traced.num_units
    chooser = "linear" if config.transform in ("auto", "mlp") else config.transform
    mlp = (config.refine_options or RefineOptions()).mlp_size if config.transform == "mlp" else None
    # transform="mlp": the refine stage sizes each MLP by these unit costs, the ones a budget prices it with
    counted = unit_costs(traced, calibration.captured.device) if mlp is not None else None
    if config.spans is not None:
        return Selection(validate_spans(config.spans, num_units, config.units), "given", unit_costs=counted, mlp=mlp)
    budget = next((name for name in _BUDGETS if getattr(config, name) is not None), None)
    steps, spans = None, []
    if budget is None:
        k = config.num_blocks
        if config.selection == "iterative":
            steps = iterative_spans(traced, calibration.moments, [calibration.captured.first], k, transform=chooser,
                                    ridge=config.ridge, progress=config.progress)
            spans = steps[-1].spans
        else:
            max_len = 1 if config.selection == "lowest" else k
            spans = RULES[config.selection](_span_costs(calibration, config, chooser, max_len), num_units, k)
    else:
        kind = _BUDGETS[budget]
        saves_as = "identity" if chooser == "identity" or config.fold else "mlp" if mlp else "linear"
        saving, target, counted = _saving_fn(calibration, config, kind, saves_as, mlp, counted)
        total = target / getattr(config, budget)

        def saved(chosen: list[Span]) -> float:
            return sum(saving(sp) for sp in chosen)

        if config.selection == "iterative":
            steps = iterative_spans(traced, calibration.moments, [calibration.captured.first], num_units,
                                    transform=chooser, ridge=config.ridge, progress=config.progress,
                                    until=lambda chosen: saved(chosen) >= target)
            spans = steps[-1].spans
            if saved(spans) < target:
                raise _short(config, budget, saved(spans), total)
        elif config.selection == "dp":
            costs = _span_costs(calibration, config, chooser, None)
            spans = best_spans_for_saving(costs, {sp: saving(sp) for sp in costs}, num_units, target)
        else:
            max_len = 1 if config.selection == "lowest" else None
            costs = _span_costs(calibration, config, chooser, max_len)
            rule = RULES[config.selection]

            def plans() -> Iterator[tuple[list[Span], float]]:
                for k in range(1, num_units + 1):
                    try:
                        chosen = rule(costs, num_units, k)
                    except SpanError:
                        continue
                    yield chosen, saved(chosen)

            spans, best, ok = first_reaching(plans(), target)
            if not ok:
                raise _short(config, budget, best, total)
    check_folds(spans, config.fold)
    if config.fold:
        fold_branches(traced, sorted({s for s, _ in spans}))  # typed error for a chosen span that cannot fold
    selection = Selection(spans, config.selection, steps, counted, config.block_latency, mlp=mlp)
    if budget is not None:
        selection.reached = selection.saved(spans, [saves_as] * len(spans))
    log.info("selected spans %s by %s", spans, "iterative output damage" if config.selection == "iterative" else
             f"the {config.selection} rule on the {config.metric} score")
    return selection
