"""Boundary moments → spans to replace: the `num_blocks`-long span with the least score.

This is TOAST's Algorithm 1 restricted to one span of the requested length (top-1 with
`span_len = num_blocks`).
"""

from __future__ import annotations

from fxapprox.errors import SpanError
from fxapprox.fit import fit_affine
from fxapprox.stats import BoundaryMoments

__all__ = ["select_spans", "METRICS"]

METRICS = ("linear",)


def select_spans(moments: BoundaryMoments, num_blocks_total: int, num_blocks: int, *, metric: str,
                 transform: str, widths: list[int], ridge: float) -> list[tuple[int, int]]:
    """The span removing exactly `num_blocks` blocks with the smallest `metric` score."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not one of {METRICS}")
    candidates = [
        (s, s + num_blocks) for s in range(-1, num_blocks_total - num_blocks)
        if transform != "identity" or widths[s + 1] == widths[s + num_blocks + 1]
    ]
    if not candidates:
        raise SpanError(f"no span of {num_blocks} blocks can take transform={transform!r}")
    return [min(candidates, key=lambda span: fit_affine(moments, *span, ridge).residual)]
