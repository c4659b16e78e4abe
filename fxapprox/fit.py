"""Boundary moments → closed-form span transforms (identity, ridge affine `x W + b`, folded maps) and their residuals.

The residual is `||H_e - T(H_s)||_F / ||H_e||_F` over every calibration row, computed from the
moments alone: `||Y - XW - b||² = tr(YᵀY) - 2 tr(Wᵀ XᵀY) + tr(Wᵀ XᵀX W)` on centred data.
The ridge term is relative to the mean eigenvalue of the centred `XᵀX`, so the solve stays
well-posed with fewer rows than dimensions. It shrinks `W` towards a prior: zero (`prior="zero"`,
plain ridge) or the identity (`prior="identity"`, `(Cxx + λI) W = Cxy + λI`, equal widths only),
which keeps the directions the calibration rows never span passing through unchanged.
`fit_fold` fits the map a fold writes into a down projection: branch `B` → `H_e - R`, where
`H_s = R + B` (see `fxapprox.passes.fold_span`), its moments read from those of `H_s`, `B`, `H_e`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fxapprox.errors import SpanError
from fxapprox.stats import BoundaryMoments

__all__ = ["AffineFit", "fit_affine", "fit_fold", "identity_residual", "DEFAULT_RIDGE", "NO_VARIANCE", "PRIORS"]

DEFAULT_RIDGE = 1e-6
# Centred second moment below this fraction of the raw one: the source has no variance.
NO_VARIANCE = 1e-12
PRIORS = ("zero", "identity")

# A linear combination of watched boundaries: ((key, coefficient), ...).
_Combo = tuple[tuple[int, float], ...]


@dataclass
class AffineFit:
    """`H_e ≈ H_s @ weight + bias` (float64), and its normalised residual on the fitted rows."""

    weight: torch.Tensor
    bias: torch.Tensor
    residual: float


def _relative(sq_error: torch.Tensor, total: torch.Tensor) -> float:
    return float(torch.sqrt(torch.clamp(sq_error, min=0.0) / torch.clamp(total, min=1e-300)))


def _centred(m: BoundaryMoments, a: _Combo, b: _Combo) -> torch.Tensor:
    """Centred cross moment of two combinations of boundaries."""
    return sum(ca * cb * m.centred_cross(ka, kb) for ka, ca in a for kb, cb in b)


def _sum(m: BoundaryMoments, a: _Combo) -> torch.Tensor:
    return sum(c * m.sum(k) for k, c in a)


def _solve(m: BoundaryMoments, x: _Combo, y: _Combo, target: int, ridge: float, prior: str) -> AffineFit:
    """Ridge least squares `Y ≈ X W + b` for combinations `x`, `y`; residual relative to `||H_target||`."""
    if prior not in PRIORS:
        raise ValueError(f"prior={prior!r} is not one of {PRIORS}")
    cxx, cxy = _centred(m, x, x), _centred(m, x, y)
    d = cxx.shape[0]
    if prior == "identity" and cxy.shape[0] != cxy.shape[1]:
        raise SpanError(f"prior='identity' needs a map between equal widths, not {cxy.shape[0]} → {cxy.shape[1]}; "
                        "use prior='zero'")
    eye = torch.eye(d, dtype=cxx.dtype, device=cxx.device)
    w0 = eye if prior == "identity" else torch.zeros_like(cxy)
    if torch.trace(cxx) <= NO_VARIANCE * sum(torch.trace(m.cross(k, k)) for k, _ in x):
        weight = w0  # a constant source (e.g. [CLS] at the embeddings) predicts the mean
    else:
        lam = ridge * torch.trace(cxx) / d
        weight = torch.linalg.solve(cxx + lam * eye, cxy + lam * w0)
    bias = (_sum(m, y) - _sum(m, x) @ weight) / m.rows
    cyy_trace = torch.trace(_centred(m, y, y))
    sq_error = cyy_trace - 2 * torch.sum(weight * cxy) + torch.sum(weight * (cxx @ weight))
    return AffineFit(weight, bias, _relative(sq_error, torch.trace(m.cross(target, target))))


def fit_affine(m: BoundaryMoments, s: int, e: int, ridge: float = DEFAULT_RIDGE, prior: str = "zero") -> AffineFit:
    """Least-squares affine map from `H_s` to `H_e`, with relative ridge `ridge` towards `prior`."""
    return _solve(m, ((s, 1.0),), ((e, 1.0),), e, ridge, prior)


def fit_fold(m: BoundaryMoments, s: int, e: int, branch: int, ridge: float = DEFAULT_RIDGE,
             prior: str = "zero") -> AffineFit:
    """`T, c` with `B T + c ≈ H_e - R` where `H_s = R + B` and `B` is watched as key `branch`.

    The residual is `||H_e - (R + B T + c)|| / ||H_e||`, comparable with `fit_affine(m, s, e)`'s.
    """
    return _solve(m, ((branch, 1.0),), ((e, 1.0), (s, -1.0), (branch, 1.0)), e, ridge, prior)


def identity_residual(m: BoundaryMoments, s: int, e: int) -> float:
    """`||H_e - H_s|| / ||H_e||` from the moments (requires equal widths)."""
    sq_error = torch.trace(m.cross(e, e)) - 2 * torch.trace(m.cross(s, e)) + torch.trace(m.cross(s, s))
    return _relative(sq_error, torch.trace(m.cross(e, e)))
