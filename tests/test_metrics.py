"""Streaming span scores (fxapprox.metrics over BoundaryMoments) == the same metrics on stored activations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fxapprox.errors import SpanError
from fxapprox.fit import fit_affine
from fxapprox.metrics import METRICS, cost, score, score_matrix
from fxapprox.stats import BoundaryMoments

RTOL = 1e-6


# --- direct computations on stored activations (independent of the moments) -------------------

def direct_linear(x: torch.Tensor, y: torch.Tensor, ridge: float = 0.0) -> float:
    """Affine least squares by torch.linalg.lstsq (ridge 0) or an explicit ridge solve; ||Y-Ŷ||/||Y||."""
    if ridge == 0.0:
        xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
        sol = torch.linalg.lstsq(xa, y, driver="gelsd").solution
        pred = xa @ sol
    else:
        xc, yc = x - x.mean(0), y - y.mean(0)
        cxx = xc.T @ xc
        lam = ridge * torch.clamp(torch.trace(cxx) / x.shape[1], min=1e-12)
        w = torch.linalg.solve(cxx + lam * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ yc)
        pred = (x - x.mean(0)) @ w + y.mean(0)
    return float(torch.linalg.norm(y - pred) / torch.linalg.norm(y))


def direct(metric: str, x: torch.Tensor, y: torch.Tensor, ridge: float = 0.0) -> float:
    if metric == "linear":
        return direct_linear(x, y, ridge)
    if metric in ("mse", "br"):
        v = float(((y - x) ** 2).sum(dim=1).mean())
        return -v if metric == "br" else v
    if metric == "cka":
        xc, yc = x - x.mean(0), y - y.mean(0)
        if not (xc.abs().max() > 1e-12 * x.abs().max() and yc.abs().max() > 1e-12 * y.abs().max()):
            return 0.0  # no variance: CKA taken as 0
        return float(torch.linalg.norm(yc.T @ xc) ** 2 / (torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc)))
    cos = torch.nn.functional.cosine_similarity(x, y, dim=1, eps=1e-300).clamp(-1, 1)
    if metric == "cosine":
        return float(1 - cos.mean())
    if metric == "angular":
        return float(torch.arccos(cos).mean() / math.pi)
    if metric == "identity":
        return float(torch.linalg.norm(y - x) / torch.linalg.norm(y))
    raise KeyError(metric)


def defined(metric: str, s: int, e: int, dims: dict[int, int]) -> bool:
    if metric == "br" and e != s + 1:
        return False
    return metric in ("linear", "cka") or dims[s] == dims[e]


# --- random activations -----------------------------------------------------------------------

DIMS = {-1: 6, 0: 6, 1: 8, 2: 6, 3: 6}


def random_activations(rows: int = 120, seed: int = 0) -> dict[int, torch.Tensor]:
    """Boundaries that depend on each other (nearly linearly) with offsets, one of another width."""
    g = torch.Generator().manual_seed(seed)
    acts = {-1: torch.randn(rows, 6, generator=g, dtype=torch.float64) * 2 + 1}
    prev = acts[-1]
    for k in range(4):
        d = DIMS[k]
        w = torch.randn(prev.shape[1], d, generator=g, dtype=torch.float64) / 3
        h = torch.tanh(prev @ w) + 0.3 * torch.randn(rows, d, generator=g, dtype=torch.float64) + 0.5
        if d == prev.shape[1]:
            h = h + prev
        acts[k] = h
        prev = h
    return acts


def moments_of(acts: dict[int, torch.Tensor], splits: list[int], product_dtype=torch.float64) -> BoundaryMoments:
    m = BoundaryMoments(list(acts), product_dtype=product_dtype)
    start = 0
    for n in splits:
        m.update({k: a[start:start + n] for k, a in acts.items()}, n)
        start += n
    return m


@pytest.mark.parametrize("metric", METRICS)
def test_streaming_equals_direct_on_random_activations(metric):
    acts = random_activations()
    m = moments_of(acts, [50, 7, 63])
    for s in acts:
        for e in acts:
            if s < e and defined(metric, s, e, DIMS):
                got, want = score(m, s, e, metric, ridge=0.0), direct(metric, acts[s], acts[e])
                assert got == pytest.approx(want, rel=RTOL, abs=1e-12), (s, e)
            elif s < e:
                with pytest.raises(SpanError):
                    score(m, s, e, metric)


def test_linear_with_ridge_equals_explicit_ridge_solve():
    acts = random_activations(rows=20)  # few rows: the ridge term is visible in the residual
    m = moments_of(acts, [20])
    for ridge in (1e-3, 0.1):
        for s, e in [(-1, 0), (0, 1), (1, 3), (-1, 3)]:
            want = direct_linear(acts[s], acts[e], ridge)
            assert fit_affine(m, s, e, ridge).residual == pytest.approx(want, rel=RTOL)


def test_batching_order_and_split_do_not_change_scores():
    acts = random_activations(rows=90, seed=3)
    perm = torch.randperm(90, generator=torch.Generator().manual_seed(0))
    shuffled = {k: a[perm] for k, a in acts.items()}
    a = moments_of(acts, [30, 30, 30])
    b = moments_of(shuffled, [1, 44, 45])
    for metric in METRICS:
        np.testing.assert_allclose(score_matrix(a, metric), score_matrix(b, metric), rtol=1e-9, atol=1e-12)


def test_merge_equals_one_stream():
    acts = random_activations(rows=60, seed=5)
    whole = moments_of(acts, [60])
    part1 = moments_of({k: a[:25] for k, a in acts.items()}, [25])
    part2 = moments_of({k: a[25:] for k, a in acts.items()}, [35])
    part1.merge(part2)
    for metric in METRICS:
        np.testing.assert_allclose(score_matrix(part1, metric), score_matrix(whole, metric), rtol=1e-9, atol=1e-12)


def test_gram_property_is_the_full_symmetric_product():
    acts = random_activations(rows=40)
    m = moments_of(acts, [13, 27])
    z = torch.cat([acts[k] for k in sorted(acts)], dim=1)
    torch.testing.assert_close(m.gram, z.T @ z, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(m.cross(2, 0), acts[2].T @ acts[0], rtol=1e-12, atol=1e-10)


def test_cost_turns_similarities_into_nonnegative_costs():
    assert cost("br", -2.5) == 2.5
    assert cost("cka", 0.75) == 0.25
    assert cost("linear", 0.1) == 0.1
    with pytest.raises(ValueError, match="not one of"):
        cost("nope", 0.0)


def test_identical_boundaries_score_as_fully_redundant():
    h = torch.randn(30, 5, dtype=torch.float64)
    m = moments_of({0: h, 1: h.clone()}, [30])
    assert score(m, 0, 1, "mse") == 0.0
    assert score(m, 0, 1, "identity") == 0.0
    assert score(m, 0, 1, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert score(m, 0, 1, "angular") < 1e-6
    assert score(m, 0, 1, "cka") == pytest.approx(1.0)
    assert score(m, 0, 1, "linear") < 1e-5


def test_batched_linear_residuals_equal_fit_affine():
    from fxapprox.metrics import linear_residuals

    acts = random_activations(rows=25, seed=2)  # few rows: the ridge term matters
    m = moments_of(acts, [10, 15])
    for ridge in (1e-6, 1e-2):
        for s in (-1, 0, 1):
            targets = [e for e in acts if e > s]
            got = linear_residuals(m, s, targets, ridge)
            want = [fit_affine(m, s, e, ridge).residual for e in targets]
            assert got == pytest.approx(want, rel=1e-9)
            assert [score(m, s, e, "linear", ridge=ridge) for e in targets] == pytest.approx(got, rel=1e-9)


def test_float32_activations_with_large_offsets_stay_within_1e_5():
    """Float32 products on mean-shifted rows, float64 totals: the offset costs no precision."""
    acts = {k: (a * 3 + 20.0).float() for k, a in random_activations(rows=600, seed=1).items()}
    m = moments_of(acts, [200, 200, 200], product_dtype=None)
    for metric in METRICS:
        for s in acts:
            for e in acts:
                if s < e and defined(metric, s, e, DIMS):
                    want = direct(metric, acts[s].double(), acts[e].double(), ridge=1e-6)
                    assert score(m, s, e, metric) == pytest.approx(want, rel=1e-5, abs=1e-12), (metric, s, e)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_source_predicts_the_mean(dtype):
    """A constant boundary (ViT's [CLS] at the embeddings) explains nothing: residual of the mean."""
    acts = random_activations(rows=50, seed=4)
    acts[-1] = acts[-1][:1].expand(50, -1).clone()
    acts = {k: a.to(dtype) for k, a in acts.items()}
    m = moments_of(acts, [32, 18], product_dtype=None)
    y = acts[0].double()
    want = float(torch.linalg.norm(y - y.mean(0)) / torch.linalg.norm(y))
    assert score(m, -1, 0, "linear") == pytest.approx(want, rel=1e-6)
    assert score(m, -1, 0, "cka") == 0.0


def test_heldout_residual_equals_direct_fold_by_fold_fit():
    from fxapprox.metrics import heldout_matrix
    from fxapprox.stats import FoldedMoments

    acts = random_activations(rows=90, seed=6)
    splits = [20, 25, 15, 30]  # batches → folds 0, 1, 0, 1
    folded = FoldedMoments(list(acts), 2)
    start, fold_rows = 0, {0: [], 1: []}
    for i, n in enumerate(splits):
        folded.update({k: a[start:start + n] for k, a in acts.items()}, n)
        fold_rows[i % 2].extend(range(start, start + n))
        start += n
    got = heldout_matrix(folded, ridge=1e-3)
    for s in acts:
        for e in acts:
            if s >= e:
                continue
            err = norm = 0.0
            for f in (0, 1):
                fit, test = fold_rows[1 - f], fold_rows[f]
                x, y = acts[s][fit], acts[e][fit]
                xc, yc = x - x.mean(0), y - y.mean(0)
                cxx = xc.T @ xc
                lam = 1e-3 * torch.trace(cxx) / x.shape[1]
                w = torch.linalg.solve(cxx + lam * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ yc)
                pred = (acts[s][test] - x.mean(0)) @ w + y.mean(0)
                err += float(((acts[e][test] - pred) ** 2).sum())
                norm += float((acts[e][test] ** 2).sum())
            assert got[s + 1, e + 1] == pytest.approx(math.sqrt(err / norm), rel=1e-6), (s, e)
    assert folded.samples == 90 and folded.total().rows == 90
