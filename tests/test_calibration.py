"""Calibration statistics: padding exclusion, sample limits, batching, early stop."""

from __future__ import annotations

import pytest
import torch
from tiny_models import hf_family, tiny_batches, tiny_net

import fxapprox
from fxapprox.calibrate import calibrate
from fxapprox.fit import fit_affine
from fxapprox.prepare import prepare


def _bert_double():
    model, _, _ = hf_family("bert")
    return model.double()


def _sentences(n=6, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 100, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g) for _ in range(n)]


def test_padding_does_not_change_the_fitted_map():
    model = _bert_double()
    sentences = _sentences()
    unpadded = [{"input_ids": s[None], "attention_mask": torch.ones(1, len(s), dtype=torch.long)} for s in sentences]
    width = 24  # heavy padding: most positions of every row are padding
    ids = torch.zeros(len(sentences), width, dtype=torch.long)
    mask = torch.zeros(len(sentences), width, dtype=torch.long)
    for i, s in enumerate(sentences):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    padded = [{"input_ids": ids, "attention_mask": mask}]
    a = fxapprox.compress(model, unpadded, spans=[(0, 2)], num_samples=len(sentences), progress=False)
    b = fxapprox.compress(model, padded, spans=[(0, 2)], num_samples=len(sentences), progress=False)
    key = "span.0.2"
    torch.testing.assert_close(a.plan.weights[key + ".weight"], b.plan.weights[key + ".weight"], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(a.plan.weights[key + ".bias"], b.plan.weights[key + ".bias"], rtol=1e-7, atol=1e-9)
    assert a.residuals[(0, 2)] == pytest.approx(b.residuals[(0, 2)], rel=1e-7)


def _moments(model, batches, indices, num_samples):
    prepared = prepare(model, batches)
    return calibrate(prepared.traced.module, prepared.traced.boundaries, indices, prepared.batches, num_samples,
                     progress=False)


def test_stops_after_num_samples_and_counts_rows():
    model = tiny_net(["mlp", "mlp", "mlp"])
    m = _moments(model, tiny_batches(n_batches=4, batch=8), [0, 2], num_samples=20)
    assert m.samples == 20
    assert m.rows == 20 * 5


def test_moments_match_stored_activations_and_batch_order():
    model = tiny_net(["mlp", "mlp", "mlp"])
    batches = tiny_batches(n_batches=3, batch=4)
    m1 = _moments(model, batches, [0, 2], num_samples=12)
    m2 = _moments(model, batches[::-1], [0, 2], num_samples=12)
    torch.testing.assert_close(m1.gram, m2.gram, rtol=1e-12, atol=1e-10)
    # direct: H_0 and H_2 from eager hooks
    acts = {}
    hooks = [model.blocks[i].register_forward_hook(lambda mod, i_, o, i=i: acts.setdefault(i, []).append(o))
             for i in (0, 2)]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hooks:
        h.remove()
    x = torch.cat(acts[0]).reshape(-1, 32).double()
    y = torch.cat(acts[2]).reshape(-1, 32).double()
    torch.testing.assert_close(m1.cross(0, 2), x.T @ y, rtol=1e-10, atol=1e-8)
    fit = fit_affine(m1, 0, 2, ridge=0.0)
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    sol = torch.linalg.lstsq(xa, y).solution
    torch.testing.assert_close(fit.weight, sol[:-1], rtol=1e-6, atol=1e-6)
    direct = (y - xa @ sol).norm() / y.norm()
    assert fit.residual == pytest.approx(float(direct), rel=1e-6)


def test_fewer_rows_than_dimensions_stays_finite():
    model = tiny_net(["mlp", "mlp", "mlp"])
    batches = [torch.randn(1, 2, 12)]  # 2 rows, width 32
    res = fxapprox.compress(model, batches, spans=[(0, 2)], num_samples=1, progress=False)
    w = res.plan.weights["span.0.2.weight"]
    assert torch.isfinite(w).all() and 0 <= res.residuals[(0, 2)] < 1e-2
