"""prior="identity": ridge towards W = I beats plain ridge (towards 0) on near-identity spans fitted on few rows."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_batches, tiny_net

import fxapprox
from fxapprox.errors import SpanError
from fxapprox.fit import fit_affine
from fxapprox.stats import BoundaryMoments

D = 32


def _near_identity(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    a = torch.randn(D, D, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    return x, x + 0.05 * x @ a + 0.1


def _moments(x: torch.Tensor, y: torch.Tensor) -> BoundaryMoments:
    m = BoundaryMoments([0, 1])
    m.update({0: x, 1: y}, x.shape[0])
    return m


def _heldout_error(fit, x, y) -> float:
    return float((x @ fit.weight + fit.bias - y).norm() / y.norm())


def test_identity_prior_beats_zero_prior_with_fewer_rows_than_width():
    m = _moments(*_near_identity(12, seed=0))  # 12 rows for width 32: the plain fit is underdetermined
    x_test, y_test = _near_identity(500, seed=1)
    zero, ident = (fit_affine(m, 0, 1, prior=p) for p in ("zero", "identity"))
    assert _heldout_error(ident, x_test, y_test) < 0.5 * _heldout_error(zero, x_test, y_test)


def test_priors_agree_when_the_rows_determine_the_map():
    m = _moments(*_near_identity(400, seed=0))
    zero, ident = (fit_affine(m, 0, 1, prior=p) for p in ("zero", "identity"))
    torch.testing.assert_close(zero.weight, ident.weight, rtol=0, atol=1e-5)
    assert zero.residual == pytest.approx(ident.residual, abs=1e-5)


def test_identity_prior_on_compress_and_typed_error_on_unequal_widths():
    model = tiny_net(["mlp", "shift", "mlp"])
    res = fxapprox.compress(model, tiny_batches(1, batch=2), spans=[(0, 1)], num_samples=2, prior="identity",
                            progress=False)
    assert res.plan.prior == "identity"
    m = BoundaryMoments([0, 1])
    m.update({0: torch.randn(40, 8, dtype=torch.float64), 1: torch.randn(40, 6, dtype=torch.float64)}, 40)
    with pytest.raises(SpanError, match="equal widths"):
        fit_affine(m, 0, 1, prior="identity")
