"""Boundary moments → redundancy scores of spans `(s, e)`: linear, mse, br, cosine, angular, cka, identity.

Every score is a closed form of the streaming statistics in `BoundaryMoments` (rows are tokens,
[CLS] tokens or token means, whatever was calibrated):

* `linear` (TOAST): `||H_e - (H_s W + b)||_F / ||H_e||_F`, the ridge affine least-squares residual
  (`fit.fit_affine`'s, computed for all targets of a source at once; a source without variance,
  like a constant [CLS] embedding, predicts the mean: `W = 0`).
* `mse` (TBA): `Σ_rows ||h_e - h_s||² / rows`.
* `br` (RBA block redundancy): `-mse(h_e, h_s)` for consecutive boundaries (`e = s + 1`) only.
* `cosine`: `1 - mean_rows cos(h_s, h_e)`; `angular`: `mean_rows arccos(cos(h_s, h_e)) / π`.
* `cka`: linear CKA, `||C_se||²_F / (||C_ss||_F ||C_ee||_F)` on centred cross-products.
* `identity`: `||H_e - H_s||_F / ||H_e||_F`, the residual of the identity transform.
* `heldout`: the `linear` residual of rows the fit did not see: per fold of `FoldedMoments`, fit
  on the other folds and measure on this one (the honest score when rows ≤ width, where the
  in-sample fit interpolates).
* `output`: the relative error of the model's pooled final features with the span replaced by its
  fitted map; not a closed form of the moments but forward passes (`fxapprox.output_score`).

`br` and `cka` are similarities (higher = more redundant); `cost()` turns any score into a
non-negative cost where lower = more redundant, which is what ranking and selection minimise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fxapprox.errors import SpanError
from fxapprox.fit import DEFAULT_RIDGE, NO_VARIANCE, identity_residual
from fxapprox.stats import BoundaryMoments, FoldedMoments

__all__ = ["METRICS", "MetricInfo", "METRIC_INFO", "score", "cost", "score_matrix", "check_metric",
           "linear_residuals", "heldout_residuals", "heldout_matrix"]


@dataclass(frozen=True)
class MetricInfo:
    """How a metric reads: its direction and which spans it is defined for."""

    name: str
    description: str
    higher_is_redundant: bool = False
    consecutive_only: bool = False
    equal_widths: bool = False


METRIC_INFO: dict[str, MetricInfo] = {
    m.name: m for m in (
        MetricInfo("linear", "normalised affine least-squares residual (TOAST)"),
        MetricInfo("mse", "mean squared distance ||h_e - h_s||² (TBA)", equal_widths=True),
        MetricInfo("br", "block redundancy -mse(h_b, h_b-1) (RBA)", higher_is_redundant=True,
                   consecutive_only=True, equal_widths=True),
        MetricInfo("cosine", "1 - mean cosine similarity", equal_widths=True),
        MetricInfo("angular", "mean angular distance arccos(cos)/π", equal_widths=True),
        MetricInfo("cka", "linear CKA similarity", higher_is_redundant=True),
        MetricInfo("identity", "normalised residual of the identity map", equal_widths=True),
        MetricInfo("heldout", "held-out affine residual (fit on the other folds)"),
        MetricInfo("output", "damage to the output, span replaced by its map (held out): final-feature "
                   "relative error, or KL of the head's predictions"),
    )
}
# Metrics that one `BoundaryMoments` gives; `heldout` needs `FoldedMoments` (`heldout_matrix`),
# `output` forward passes (`fxapprox.output_score`).
METRICS = tuple(name for name in METRIC_INFO if name not in ("heldout", "output"))


def check_metric(metric: str) -> MetricInfo:
    """The `MetricInfo` of `metric`, or `ValueError` naming the known ones."""
    try:
        return METRIC_INFO[metric]
    except KeyError:
        raise ValueError(f"metric={metric!r} is not one of {tuple(METRIC_INFO)}") from None


def _check_span(m: BoundaryMoments, s: int, e: int, info: MetricInfo) -> None:
    if s not in m.indices or e not in m.indices or s >= e:
        raise SpanError(f"span ({s}, {e}) needs watched boundaries s < e (watched: {m.indices})")
    if info.consecutive_only and e != s + 1:
        raise SpanError(f"metric {info.name!r} is defined for single blocks (e = s + 1) only, not ({s}, {e})")
    if info.equal_widths and m.dims[s] != m.dims[e]:
        raise SpanError(
            f"metric {info.name!r} compares H_{s} and H_{e} directly, but their widths differ "
            f"({m.dims[s]} vs {m.dims[e]}); use metric='linear' or 'cka'"
        )


def _mse(m: BoundaryMoments, s: int, e: int) -> float:
    sq = torch.trace(m.cross(e, e)) - 2 * torch.trace(m.cross(s, e)) + torch.trace(m.cross(s, s))
    return max(float(sq), 0.0) / m.rows


def _variance_norm(m: BoundaryMoments, k: int, cache: dict[int, float] | None = None) -> float:
    """`||C_kk||_F` of the centred cross-product, 0 when it is rounding noise (no variance)."""
    if cache is not None and k in cache:
        return cache[k]
    norm = float(torch.linalg.matrix_norm(m.centred_cross(k, k)))
    if norm <= NO_VARIANCE * float(torch.linalg.matrix_norm(m.cross(k, k))):
        norm = 0.0
    if cache is not None:
        cache[k] = norm
    return norm


def _cka(m: BoundaryMoments, s: int, e: int, cache: dict[int, float] | None = None) -> float:
    """Linear CKA; 0 when either side has no variance (e.g. a constant [CLS] embedding)."""
    norm_s, norm_e = _variance_norm(m, s, cache), _variance_norm(m, e, cache)
    if norm_s == 0.0 or norm_e == 0.0:
        return 0.0
    return float(torch.linalg.matrix_norm(m.centred_cross(s, e)) ** 2 / (norm_s * norm_e))


def _ridge_weights(m: BoundaryMoments | _Difference, s: int, targets: list[int],
                   ridge: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge `W` for every target stacked `(d_s, Σ d_e)`, the stacked centred `C_se`, and `λ`."""
    cxx = m.centred_cross(s, s)
    d = cxx.shape[0]
    lam = ridge * torch.clamp(torch.trace(cxx) / d, min=1e-12)
    cxy = torch.cat([m.centred_cross(s, e) for e in targets], dim=1)
    if _variance_norm(m, s) == 0.0:  # constant source (e.g. the [CLS] embedding): predict the mean
        return torch.zeros_like(cxy), cxy, lam
    return torch.linalg.solve(cxx + lam * torch.eye(d, dtype=cxx.dtype, device=cxx.device), cxy), cxy, lam


def linear_residuals(m: BoundaryMoments, s: int, targets: list[int], ridge: float = DEFAULT_RIDGE) -> list[float]:
    """`fit_affine(m, s, e, ridge).residual` for every `e` in `targets`, from one solve.

    `C_ss + λI` is shared by all targets: one solve with every `C_se` stacked as right-hand sides,
    and since `C_ss W = C_se - λW` the residual needs no `d³` product:
    `||Y - XW - b||² = tr(C_ee) - Σ W∘C_se - λ||W||²`.
    """
    if not targets:
        return []
    weight, cxy, lam = _ridge_weights(m, s, targets, ridge)
    out, start = [], 0
    for e in targets:
        w, c = weight[:, start:start + m.dims[e]], cxy[:, start:start + m.dims[e]]
        start += m.dims[e]
        total = torch.trace(m.cross(e, e))
        centred_total = total - torch.dot(m.sum(e), m.sum(e)) / m.rows  # tr(C_ee)
        sq = centred_total - torch.sum(w * c) - lam * torch.sum(w * w)
        out.append(float(torch.sqrt(torch.clamp(sq, min=0.0) / torch.clamp(total, min=1e-300))))
    return out


def score(m: BoundaryMoments, s: int, e: int, metric: str = "linear", *, ridge: float = DEFAULT_RIDGE) -> float:
    """Score of span `(s, e)` under `metric` from the moments `m`; `SpanError` where undefined."""
    info = check_metric(metric)
    _check_span(m, s, e, info)
    if metric == "heldout":
        raise ValueError("the 'heldout' score needs folded moments: use heldout_matrix(FoldedMoments)")
    if metric == "output":
        raise ValueError("the 'output' score needs forward passes: use fxapprox.output_score.output_scores")
    if metric == "linear":
        return linear_residuals(m, s, [e], ridge)[0]
    if metric == "mse":
        return _mse(m, s, e)
    if metric == "br":
        return -_mse(m, s, e)
    if metric == "cosine":
        return 1.0 - m.mean_cosine(s, e)
    if metric == "angular":
        return m.mean_angle(s, e)
    if metric == "cka":
        return _cka(m, s, e)
    return identity_residual(m, s, e)


def cost(metric: str, value: float) -> float:
    """Score → non-negative cost, lower = more redundant (`br` → mse, `cka` → 1 - CKA)."""
    if metric == "br":
        return -value
    if metric == "cka":
        return 1.0 - value
    check_metric(metric)
    return value


def _defined(m: BoundaryMoments, s: int, e: int, info: MetricInfo) -> bool:
    if s not in m.indices or e not in m.indices or s >= e:
        return False
    if info.consecutive_only and e != s + 1:
        return False
    return not (info.equal_widths and m.dims[s] != m.dims[e])


def score_matrix(m: BoundaryMoments, metric: str = "linear", *, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """Scores of every span as an `(L+1, L+1)` array indexed `[s + 1, e + 1]`, NaN where undefined.

    `L + 1` is the number of boundaries `-1 .. L-1`, read from the largest watched index.
    `linear` runs one solve per source boundary (`linear_residuals`).
    """
    info = check_metric(metric)
    size = max(m.indices) + 2
    out = np.full((size, size), np.nan)
    cache: dict[int, float] = {}
    for s in m.indices:
        targets = [e for e in m.indices if _defined(m, s, e, info)]
        if metric == "linear":
            for e, value in zip(targets, linear_residuals(m, s, targets, ridge)):
                out[s + 1, e + 1] = value
            continue
        for e in targets:
            out[s + 1, e + 1] = _cka(m, s, e, cache) if metric == "cka" else score(m, s, e, metric, ridge=ridge)
    return out


class _Difference:
    """Moments of `total` minus those of `part` (the rows outside one fold), read slice by slice."""

    def __init__(self, total: BoundaryMoments, part: BoundaryMoments):
        self.total, self.part = total, part
        self.rows = total.rows - part.rows
        self.dims = total.dims

    def cross(self, a: int, b: int) -> torch.Tensor:
        return self.total.cross(a, b) - self.part.cross(a, b)

    def sum(self, k: int) -> torch.Tensor:
        return self.total.sum(k) - self.part.sum(k)

    def centred_cross(self, a: int, b: int) -> torch.Tensor:
        return self.cross(a, b) - torch.outer(self.sum(a), self.sum(b)) / self.rows


def heldout_residuals(folded: FoldedMoments, total: BoundaryMoments, s: int, targets: list[int],
                      ridge: float = DEFAULT_RIDGE) -> list[float]:
    """Held-out `linear` residual of `H_s → H_e` for each target: `sqrt(Σ_f err_f / Σ_f ||Y_f||²)`.

    For each fold f the ridge affine map is fitted on the other folds' moments and its squared
    error on fold f follows from fold f's uncentred moments:
    `tr(YᵀY) - 2 tr(WᵀXᵀY) + tr(WᵀXᵀXW) - 2 bᵀΣy + 2 bᵀWᵀΣx + n bᵀb`.
    """
    err = torch.zeros(len(targets), dtype=torch.float64, device=total.sums.device)
    norm = torch.zeros(len(targets), dtype=torch.float64, device=total.sums.device)
    for part in folded.parts:
        if part.rows == 0 or part.rows == total.rows:
            continue
        rest = _Difference(total, part)
        weight, _, _ = _ridge_weights(rest, s, targets, ridge)
        xx_w = part.cross(s, s) @ weight
        start = 0
        for i, e in enumerate(targets):
            w, xxw = weight[:, start:start + total.dims[e]], xx_w[:, start:start + total.dims[e]]
            start += total.dims[e]
            b = (rest.sum(e) - rest.sum(s) @ w) / rest.rows
            yy = torch.trace(part.cross(e, e))
            err[i] += (yy - 2 * torch.sum(w * part.cross(s, e)) + torch.sum(w * xxw) - 2 * b @ part.sum(e)
                       + 2 * b @ (part.sum(s) @ w) + part.rows * b @ b)
            norm[i] += yy
    if not bool((norm > 0).all()):
        raise ValueError("held-out scores need at least two folds that saw rows: give more batches than folds")
    return [float(v) for v in torch.sqrt(torch.clamp(err, min=0.0) / norm)]


def heldout_matrix(folded: FoldedMoments, total: BoundaryMoments | None = None, *,
                   ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """`heldout` scores of every span as an `(L+1, L+1)` array indexed `[s + 1, e + 1]`."""
    total = folded.total() if total is None else total
    size = max(total.indices) + 2
    out = np.full((size, size), np.nan)
    for s in total.indices:
        targets = [e for e in total.indices if e > s]
        if targets:
            out[s + 1, np.array(targets) + 1] = heldout_residuals(folded, total, s, targets, ridge)
    return out

