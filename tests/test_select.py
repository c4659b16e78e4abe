"""Span selection by dynamic programming == exhaustive search over non-overlapping span sets; beats greedy."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import tiny_batches, tiny_net

import fxapprox
from fxapprox.errors import SpanError
from fxapprox.select import best_spans, best_spans_for_saving, candidate_costs


def all_span_sets(costs, num_blocks_total):
    """Every set of non-overlapping spans from `costs` (e_i <= s_j), by recursion over the start."""
    spans = sorted(costs)

    def rec(start_pos):
        yield ()
        for s, e in spans:
            if s >= start_pos:
                for rest in rec(e):
                    yield ((s, e), *rest)

    yield from rec(-1)


def exhaustive(costs, num_blocks_total, num_blocks):
    best = math.inf
    for chosen in all_span_sets(costs, num_blocks_total):
        if sum(e - s for s, e in chosen) == num_blocks:
            best = min(best, sum(costs[sp] for sp in chosen))
    return best


@st.composite
def cost_tables(draw, with_savings=False):
    n = draw(st.integers(1, 6))
    spans = [(s, e) for s in range(-1, n - 1) for e in range(s + 1, n)]
    keep = draw(st.lists(st.booleans(), min_size=len(spans), max_size=len(spans)))
    values = st.integers(0, 20).map(lambda v: v / 4) | st.floats(0, 10, allow_nan=False)
    costs = {sp: draw(values) for sp, k in zip(spans, keep) if k or sp[1] == sp[0] + 1}
    if not with_savings:
        return n, costs
    savings = {sp: draw(st.integers(-3, 12)) for sp in costs}
    return n, costs, savings


@settings(max_examples=150, deadline=None)
@given(cost_tables(), st.data())
def test_dp_equals_exhaustive_search(table, data):
    n, costs = table
    k = data.draw(st.integers(0, n))
    want = exhaustive(costs, n, k)
    if math.isinf(want):
        with pytest.raises(SpanError):
            best_spans(costs, n, k)
        return
    chosen = best_spans(costs, n, k)
    assert sum(e - s for s, e in chosen) == k
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(chosen, chosen[1:]))
    assert sum(costs[sp] for sp in chosen) == pytest.approx(want, abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(cost_tables(with_savings=True), st.data())
def test_budget_dp_equals_exhaustive_search(table, data):
    n, costs, savings = table
    budget = data.draw(st.integers(1, 25))
    feasible = [ch for ch in all_span_sets(costs, n)
                if all(savings[sp] > 0 for sp in ch) and sum(savings[sp] for sp in ch) >= budget]
    if not feasible:
        with pytest.raises(SpanError, match="saves"):
            best_spans_for_saving(costs, savings, n, budget)
        return
    want = min(sum(costs[sp] for sp in ch) for ch in feasible)
    chosen = best_spans_for_saving(costs, savings, n, budget)
    assert sum(savings[sp] for sp in chosen) >= budget
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(chosen, chosen[1:]))
    assert sum(costs[sp] for sp in chosen) == pytest.approx(want, abs=1e-9)


def greedy(costs, num_blocks):
    """Cheapest span first, as long as it fits the remaining budget and overlaps nothing chosen."""
    chosen, left = [], num_blocks
    for (s, e), _ in sorted(costs.items(), key=lambda kv: kv[1]):
        if e - s <= left and all(e <= s2 or e2 <= s for s2, e2 in chosen):
            chosen.append((s, e))
            left -= e - s
    return sorted(chosen) if left == 0 else None


def test_dp_beats_greedy_on_a_constructed_case():
    # Greedy takes the cheapest single block (1, 2) first; the second block then costs 0.9 at best.
    # Two blocks removed together by (-1, 1) cost 0.15 in all.
    costs = {(-1, 0): 1.0, (0, 1): 1.0, (1, 2): 0.1, (2, 3): 0.9, (-1, 1): 0.15, (0, 2): 1.0, (1, 3): 1.0}
    g = greedy(costs, 2)
    assert g == [(1, 2), (2, 3)] and sum(costs[sp] for sp in g) == pytest.approx(1.0)
    assert best_spans(costs, 4, 2) == [(-1, 1)]


def test_candidate_costs_respect_metric_and_transform():
    score = lambda s, e: float(e - s)  # noqa: E731
    widths = [4, 4, 8, 8, 8]
    lin = candidate_costs(score, 4, metric="linear", widths=widths)
    assert len(lin) == 10
    ident = candidate_costs(score, 4, metric="linear", transform="identity", widths=widths)
    assert set(ident) == {(-1, 0), (1, 2), (1, 3), (2, 3)}
    br = candidate_costs(lambda s, e: -1.0, 4, metric="br", widths=[4] * 5)
    assert set(br) == {(-1, 0), (0, 1), (1, 2), (2, 3)} and set(br.values()) == {1.0}
    assert set(candidate_costs(score, 4, metric="cka", max_span_len=1)) == set(br)


def test_unreachable_num_blocks_is_a_span_error():
    with pytest.raises(SpanError, match="exactly 3"):
        best_spans({(0, 1): 0.0}, 3, 3)


def test_compress_num_blocks_uses_the_dp():
    """Two separate identity blocks: the best 2-block removal is two spans, not one 2-block span."""
    model = tiny_net(["mlp", "identity", "mlp", "identity", "mlp"])
    res = fxapprox.compress(model, tiny_batches(), num_blocks=2, transform="identity", metric="mse",
                            num_samples=32, progress=False)
    assert res.spans == [(0, 1), (2, 3)]
