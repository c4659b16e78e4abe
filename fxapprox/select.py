"""Span costs → the set of non-overlapping spans to replace, by dynamic programming over the blocks.

Two budgets, both exact (not greedy):

* `num_blocks`: spans that remove exactly that many blocks at the least total cost
  (`best_spans`, `O(L² k)`);
* a saving budget (parameters or FLOPs): spans whose summed saving reaches `min_saving` at the
  least total cost (`best_spans_for_saving`, a Pareto front of (cost, saving) per boundary,
  savings capped at the budget so the front stays small).

`select_spans()` scores every candidate span from the boundary moments with `metric` (turned into
a non-negative cost, see `fxapprox.metrics.cost`) and runs the `num_blocks` program.

Selection rules share one interface, `rule(costs, num_units, k) -> spans` (`RULES`): `"dp"` (the
program above), `"topk"` (TOAST Algorithm 1: the one span of k units of least cost) and `"lowest"`
(ShortGPT: the k single units of least cost, merged into runs). A rule meets a saving budget by
`first_reaching`: the smallest k whose spans save enough (the `"dp"` rule has the exact program
`best_spans_for_saving` instead). `compress` (`fxapprox.stages.select`) and the frontier's field
methods (`fxapprox.study.field_methods`) both choose spans through them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from fxapprox.errors import SpanError
from fxapprox.fit import DEFAULT_RIDGE
from fxapprox.metrics import METRICS, check_metric, cost, score
from fxapprox.stats import BoundaryMoments

__all__ = ["select_spans", "candidate_costs", "best_spans", "best_spans_for_saving", "span_savings", "METRICS",
           "Rule", "RULES", "top_span", "lowest_units", "runs_to_spans", "first_reaching"]

Span = tuple[int, int]
Rule = Callable[[Mapping[Span, float], int, int], list[Span]]  # (costs, num_units, k) -> spans removing k units
T = TypeVar("T")
_TOLERANCE = 1e-9  # relative slack when comparing a saving with its budget


def candidate_costs(score_fn: Callable[[int, int], float], num_blocks_total: int, *, metric: str,
                    transform: str = "linear", widths: Sequence[int] | None = None,
                    max_span_len: int | None = None) -> dict[Span, float]:
    """Cost of every span the `metric` defines and the `transform` can take (identity: equal widths).

    `score_fn(s, e)` gives the raw score (NaN where undefined); costs are `metrics.cost` of it.
    """
    info = check_metric(metric)
    if transform not in ("linear", "identity"):
        raise ValueError(f"transform={transform!r} is not one of ('linear', 'identity')")
    costs: dict[Span, float] = {}
    for s in range(-1, num_blocks_total - 1):
        for e in range(s + 1, num_blocks_total):
            if max_span_len is not None and e - s > max_span_len:
                continue
            if info.consecutive_only and e != s + 1:
                continue
            if widths is not None and (transform == "identity" or info.equal_widths) and widths[s + 1] != widths[e + 1]:
                continue
            value = score_fn(s, e)
            if not math.isnan(value):
                costs[(s, e)] = cost(metric, value)
    return costs


def _by_start(costs: Mapping[Span, float]) -> dict[int, list[tuple[int, float]]]:
    starts: dict[int, list[tuple[int, float]]] = {}
    for (s, e), c in sorted(costs.items()):
        starts.setdefault(s, []).append((e, c))
    return starts


def best_spans(costs: Mapping[Span, float], num_blocks_total: int, num_blocks: int) -> list[Span]:
    """Non-overlapping spans from `costs` removing exactly `num_blocks` blocks at least total cost.

    `f[p][j]` is the least cost of spans ending at or before boundary `p` that remove `j` blocks;
    each boundary either passes to the next (block `p + 1` kept) or starts a span `(p, e)`.
    """
    if not 0 <= num_blocks <= num_blocks_total:
        raise SpanError(f"num_blocks={num_blocks} must lie in 0..{num_blocks_total}")
    starts = _by_start(costs)
    inf = math.inf
    best = {p: [inf] * (num_blocks + 1) for p in range(-1, num_blocks_total)}
    back: dict[tuple[int, int], tuple[int, int, Span | None]] = {}
    best[-1][0] = 0.0
    for p in range(-1, num_blocks_total):
        for j in range(num_blocks + 1):
            here = best[p][j]
            if here == inf:
                continue
            if p + 1 < num_blocks_total and here < best[p + 1][j]:
                best[p + 1][j], back[(p + 1, j)] = here, (p, j, None)
            for e, c in starts.get(p, ()):
                k = j + e - p
                if k <= num_blocks and here + c < best[e][k]:
                    best[e][k], back[(e, k)] = here + c, (p, j, (p, e))
    end = num_blocks_total - 1
    if best[end][num_blocks] == inf:
        raise SpanError(
            f"no set of non-overlapping candidate spans removes exactly {num_blocks} blocks "
            f"(candidates: {len(costs)}); lower num_blocks or allow longer spans / transform='linear'"
        )
    spans: list[Span] = []
    state = (end, num_blocks)
    while state != (-1, 0):
        p, j, span = back[state]
        if span is not None:
            spans.append(span)
        state = (p, j)
    return sorted(spans)


def best_spans_for_saving(costs: Mapping[Span, float], savings: Mapping[Span, float], num_blocks_total: int,
                          min_saving: float) -> list[Span]:
    """Non-overlapping spans whose savings sum to at least `min_saving`, at least total cost.

    Exact: per boundary, the Pareto front of (cost, saving) over span sets ending there, with
    savings capped at `min_saving`. Spans that save nothing (`savings <= 0`) are never chosen.
    """
    starts = _by_start({sp: c for sp, c in costs.items() if savings.get(sp, 0.0) > 0})
    # front[p]: list of (cost, capped saving, spans) with no member dominated by another.
    front: dict[int, list[tuple[float, float, tuple[Span, ...]]]] = {p: [] for p in range(-1, num_blocks_total)}
    front[-1] = [(0.0, 0.0, ())]

    for p in range(-1, num_blocks_total):
        front[p] = _pareto(front[p])
        for item in front[p]:
            if p + 1 < num_blocks_total:
                front[p + 1].append(item)
            for e, c in starts.get(p, ()):
                front[e].append((item[0] + c, min(item[1] + savings[(p, e)], min_saving), (*item[2], (p, e))))
    reached = [it for it in front[num_blocks_total - 1] if it[1] >= min_saving * (1 - 1e-12)]
    if not reached:
        top = max((it[1] for it in front[num_blocks_total - 1]), default=0.0)
        raise SpanError(
            f"no set of non-overlapping candidate spans saves {min_saving:g} (at most {top:g} "
            "reachable); lower the budget or allow more spans"
        )
    return sorted(min(reached, key=lambda it: (it[0], len(it[2])))[2])


def _pareto(items: list[tuple[float, float, tuple[Span, ...]]]) -> list[tuple[float, float, tuple[Span, ...]]]:
    """Items not dominated in (lower cost, higher saving); first found wins ties."""
    kept: list[tuple[float, float, tuple[Span, ...]]] = []
    for item in sorted(items, key=lambda it: (it[0], -it[1])):
        if not kept or item[1] > kept[-1][1]:
            kept.append(item)
    return kept


def span_savings(block_values: Sequence[float], replacement: Callable[[int, int], float],
                 spans: Sequence[Span]) -> dict[Span, float]:
    """Per span: `Σ block_values[s+1..e]` minus the `replacement(s, e)` cost of its transform."""
    return {(s, e): float(sum(block_values[s + 1:e + 1])) - replacement(s, e) for s, e in spans}


def select_spans(moments: BoundaryMoments, num_blocks_total: int, num_blocks: int, *, metric: str,
                 transform: str, widths: list[int], ridge: float = DEFAULT_RIDGE,
                 max_span_len: int | None = None) -> list[Span]:
    """Spans removing exactly `num_blocks` blocks at least total `metric` cost, by dynamic programming."""
    check_metric(metric)
    costs = candidate_costs(lambda s, e: score(moments, s, e, metric, ridge=ridge), num_blocks_total,
                            metric=metric, transform=transform, widths=widths, max_span_len=max_span_len)
    if not costs:
        raise SpanError(f"no span can take transform={transform!r} under metric={metric!r}")
    return best_spans(costs, num_blocks_total, num_blocks)


def runs_to_spans(removed: set[int]) -> list[Span]:
    """Replaced units → maximal runs of consecutive units as spans `(first - 1, last)`."""
    spans: list[Span] = []
    for b in sorted(removed):
        if spans and spans[-1][1] == b - 1:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((b - 1, b))
    return spans


def top_span(costs: Mapping[Span, float], num_units: int, k: int) -> list[Span]:
    """TOAST Algorithm 1: the span of exactly `k` units of least cost (ties: the earlier one)."""
    fitting = [(c, sp) for sp, c in costs.items() if sp[1] - sp[0] == k]
    if not fitting:
        raise SpanError(f"no candidate span removes exactly {k} of {num_units} units")
    return [min(fitting)[1]]


def lowest_units(costs: Mapping[Span, float], num_units: int, k: int) -> list[Span]:
    """ShortGPT: the `k` units `u` whose single-unit spans `(u - 1, u)` cost least (ties: the earlier
    one), not necessarily contiguous; consecutive ones merged into one span."""
    single = sorted((c, e) for (s, e), c in costs.items() if e == s + 1)
    if len(single) < k:
        raise SpanError(f"only {len(single)} single units can be scored; cannot remove {k}")
    return runs_to_spans({e for _, e in single[:k]})


RULES: dict[str, Rule] = {"dp": best_spans, "topk": top_span, "lowest": lowest_units}


def first_reaching(plans: Iterable[tuple[T, float]], target: float) -> tuple[T, float, bool]:
    """The first `(plan, saving)` of `plans` (in growing order) whose saving is at least `target`:
    `(plan, saving, True)`; when none is, the one that saves most, `(plan, saving, False)`."""
    seen: list[tuple[T, float]] = []
    for plan, saved in plans:
        if saved >= target * (1 - _TOLERANCE):
            return plan, saved, True
        seen.append((plan, saved))
    if not seen:
        raise SpanError("no candidate plan")
    plan, saved = max(seen, key=lambda c: c[1])
    return plan, saved, False
