"""Span scores vs measured damage → ranking quality: P@k / R@k with bootstrap intervals, Spearman ρ.

The ground truth "best k spans" are the k with the least measured damage. P@k is the share of a
score's top k that are in the ground-truth top k, R@k the share of the ground-truth top k that
the score's top k finds (equal when both lists have k entries, as in TOAST Table 10). Bootstrap
intervals resample the test samples whose per-sample damage defines the ground truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["precision_recall_at_k", "bootstrap_at_k", "spearman", "AtK"]

Span = tuple[int, int]


@dataclass
class AtK:
    """P@k and R@k on the full test set, with bootstrap (lo, hi) percentile intervals."""

    k: int
    precision: float
    recall: float
    precision_ci: tuple[float, float]
    recall_ci: tuple[float, float]


def _top(values: Mapping[Span, float], k: int) -> list[Span]:
    return sorted(values, key=lambda sp: (values[sp], sp))[:k]


def precision_recall_at_k(predicted: Sequence[Span], truth: Sequence[Span], k: int) -> tuple[float, float]:
    """Share of the first k `predicted` in the first k `truth`, and the reverse."""
    p, t = set(predicted[:k]), set(truth[:k])
    hit = len(p & t)
    return hit / max(len(p), 1), hit / max(len(t), 1)


def bootstrap_at_k(score: Mapping[Span, float], damage: Mapping[Span, torch.Tensor], k: int = 5, *,
                   rounds: int = 1000, seed: int = 0, level: float = 0.95) -> AtK:
    """Score (lower = more redundant) vs per-sample damage `(N,)` per span (lower = better)."""
    spans = sorted(sp for sp in score if sp in damage)
    predicted = _top({sp: score[sp] for sp in spans}, k)
    matrix = torch.stack([damage[sp].double() for sp in spans])  # (spans, N), spans in tie-break order
    truth = _top({sp: float(v) for sp, v in zip(spans, matrix.mean(dim=1))}, k)
    precision, recall = precision_recall_at_k(predicted, truth, k)
    gen = torch.Generator().manual_seed(seed)
    n = matrix.shape[1]
    ps, rs = [], []
    for chunk in range(0, rounds, 100):
        m = min(100, rounds - chunk)
        idx = torch.randint(0, n, (m, n), generator=gen)
        counts = torch.zeros(m, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(m, n, dtype=torch.float64))
        means = counts @ matrix.T / n  # (m, spans): each resample's mean damage per span
        order = torch.sort(means, dim=1, stable=True).indices[:, :k]  # ties keep span order, as `_top`
        for row in order.tolist():
            p, r = precision_recall_at_k(predicted, [spans[i] for i in row], k)
            ps.append(p)
            rs.append(r)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    ci = lambda xs: (float(np.quantile(xs, lo)), float(np.quantile(xs, hi)))  # noqa: E731
    return AtK(k, precision, recall, ci(ps), ci(rs))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):
            tie = v == value
            r[tie] = r[tie].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])
