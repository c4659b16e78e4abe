"""Boundary moments → closed-form span transforms (identity, ridge affine `x W + b`) and their residuals.

The residual is `||H_e - T(H_s)||_F / ||H_e||_F` over every calibration row, computed from the
moments alone: `||Y - XW - b||² = tr(YᵀY) - 2 tr(Wᵀ XᵀY) + tr(Wᵀ XᵀX W)` on centred data.
The ridge term is relative to the mean eigenvalue of the centred `XᵀX`, so the solve stays
well-posed with fewer rows than dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fxapprox.stats import BoundaryMoments

__all__ = ["AffineFit", "fit_affine", "identity_residual", "DEFAULT_RIDGE", "NO_VARIANCE"]

DEFAULT_RIDGE = 1e-6
# Centred second moment below this fraction of the raw one: the source has no variance.
NO_VARIANCE = 1e-12


@dataclass
class AffineFit:
    """`H_e ≈ H_s @ weight + bias` (float64), and its normalised residual on the fitted rows."""

    weight: torch.Tensor
    bias: torch.Tensor
    residual: float


def _relative(sq_error: torch.Tensor, total: torch.Tensor) -> float:
    return float(torch.sqrt(torch.clamp(sq_error, min=0.0) / torch.clamp(total, min=1e-300)))


def fit_affine(m: BoundaryMoments, s: int, e: int, ridge: float = DEFAULT_RIDGE) -> AffineFit:
    """Least-squares affine map from `H_s` to `H_e`, with relative ridge `ridge`."""
    cxx = m.centred_cross(s, s)
    cxy = m.centred_cross(s, e)
    d = cxx.shape[0]
    if torch.trace(cxx) <= NO_VARIANCE * torch.trace(m.cross(s, s)):
        weight = torch.zeros_like(cxy)  # a constant source (e.g. [CLS] at the embeddings) predicts the mean
    else:
        lam = ridge * torch.trace(cxx) / d
        weight = torch.linalg.solve(cxx + lam * torch.eye(d, dtype=cxx.dtype, device=cxx.device), cxy)
    bias = (m.sum(e) - m.sum(s) @ weight) / m.rows
    cyy_trace = torch.trace(m.centred_cross(e, e))
    sq_error = cyy_trace - 2 * torch.sum(weight * cxy) + torch.sum(weight * (cxx @ weight))
    return AffineFit(weight, bias, _relative(sq_error, torch.trace(m.cross(e, e))))


def identity_residual(m: BoundaryMoments, s: int, e: int) -> float:
    """`||H_e - H_s|| / ||H_e||` from the moments (requires equal widths)."""
    sq_error = torch.trace(m.cross(e, e)) - 2 * torch.trace(m.cross(s, e)) + torch.trace(m.cross(s, s))
    return _relative(sq_error, torch.trace(m.cross(e, e)))
