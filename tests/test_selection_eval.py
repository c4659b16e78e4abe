"""Span features from suffixes, measured damage, and ranking quality (P@k, bootstrap, Spearman)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import hf_family, tiny_batches, tiny_net

import fxapprox
from fxapprox.damage import measure_damage
from fxapprox.ranking import bootstrap_at_k, precision_recall_at_k, spearman
from fxapprox.span_features import SpanFeatures, output_errors, span_features


def _labelled(n_batches, seed):
    g = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(6, 3, 32, 32, generator=g), "labels": torch.randint(0, 3, (6,), generator=g)}
            for _ in range(n_batches)]


def test_span_features_equal_the_compressed_modules():
    model, batches, _ = hf_family("vit")
    test = _labelled(2, seed=5)
    feats = span_features(model, batches, [(0, 2), (1, 2)], {"test": test}, num_samples=12, progress=False)
    x = torch.cat([b["pixel_values"] for b in test])
    for span in [(0, 2), (1, 2)]:
        res = fxapprox.compress(model, batches, spans=[span], num_samples=12, progress=False)
        assert torch.equal(feats.replaced[span]["test"], res.module(pixel_values=x).last_hidden_state[:, 0])
    assert torch.equal(feats.original["test"], model(pixel_values=x).last_hidden_state[:, 0])
    assert torch.equal(feats.labels["test"], torch.cat([b["labels"] for b in test]))


def test_output_error_is_zero_only_where_blocks_do_nothing():
    model = tiny_net(["mlp", "identity", "mlp"])
    feats = span_features(model, tiny_batches(), [(0, 1), (1, 2)], {"held": tiny_batches(2, seed=9)},
                          transform="identity", num_samples=16, pooling="cls", progress=False)
    errors = output_errors(feats, "held")
    assert errors[(0, 1)] == 0.0 and errors[(1, 2)] > 1e-3


def test_damage_of_unchanged_features_is_none():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(200, 8, generator=g), torch.randn(100, 8, generator=g)
    ytr, yte = (train[:, 0] > 0).long(), (test[:, 0] > 0).long()
    noisy = test + 3 * torch.randn(100, 8, generator=g)
    feats = SpanFeatures(original={"train": train, "test": test},
                         replaced={(0, 1): {"train": train, "test": test}, (1, 2): {"train": train, "test": noisy}},
                         labels={"train": ytr, "test": yte})
    original, damage = measure_damage(feats, seeds=(0, 1), epochs=20, progress=False)
    assert damage[(0, 1)].agreement == 1.0 and damage[(0, 1)].cka == pytest.approx(1.0)
    assert damage[(0, 1)].probe.accuracies == original.probe.accuracies
    assert damage[(1, 2)].agreement < 0.9 and damage[(1, 2)].disagreement.shape == (100,)


def test_precision_recall_and_spearman():
    assert precision_recall_at_k([(0, 1), (1, 2), (2, 3)], [(1, 2), (0, 1), (5, 6)], 2) == (1.0, 1.0)
    assert precision_recall_at_k([(0, 1), (1, 2)], [(2, 3), (3, 4)], 2) == (0.0, 0.0)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_bootstrap_is_certain_when_damage_is_deterministic():
    spans = [(i, i + 1) for i in range(8)]
    damage = {sp: torch.full((50,), float(i)) for i, sp in enumerate(spans)}
    good = bootstrap_at_k({sp: float(i) for i, sp in enumerate(spans)}, damage, 3, rounds=50)
    bad = bootstrap_at_k({sp: -float(i) for i, sp in enumerate(spans)}, damage, 3, rounds=50)
    assert (good.precision, good.precision_ci) == (1.0, (1.0, 1.0))
    assert (bad.precision, bad.recall) == (0.0, 0.0)
