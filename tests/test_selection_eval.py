"""Span features from suffixes, measured damage, and ranking quality (P@k, bootstrap, Spearman)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import hf_family, tiny_batches, tiny_net

import fxapprox
from fxapprox.blocks import find_block_stack
from fxapprox.study.damage import measure_damage
from fxapprox.study.ranking import bootstrap_at_k, precision_recall_at_k, spearman
from fxapprox.study.span_features import SpanFeatures, output_errors, span_features


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


def test_stacked_probes_equal_probes_trained_alone():
    from fxapprox.study.evaluate import train_probe, train_probes

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    sets = [torch.randn(300, 8, generator=g) + y[:, None], torch.randn(300, 5, generator=g),
            torch.randn(300, 8, generator=g)]
    stacked = train_probes(sets, y, num_classes=3, seed=4, epochs=3, batch_size=64)
    for x, probe in zip(sets, stacked):
        alone = train_probe(x, y, num_classes=3, seed=4, epochs=3, batch_size=64)
        assert probe.weight.shape == alone.weight.shape
        torch.testing.assert_close(probe.weight, alone.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(probe.bias, alone.bias, rtol=1e-5, atol=1e-6)


def _image_dataset():
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, 3, n)
        images = [Image.fromarray((rng.random((28, 28)) * 80 + 60 * lab).astype("uint8")) for lab in labels]
        return datasets.Dataset.from_dict({"image": images, "label": labels.tolist()})

    return datasets.DatasetDict({"train": split(96), "test": split(40)})


def test_select_eval_end_to_end_writes_every_stage(tmp_path):
    from fxapprox.study.data import ImagePreprocessor
    from fxapprox.study.selection_eval import SelectEvalConfig, select_eval, write_report

    model, _, _ = hf_family("vit")
    cfg = SelectEvalConfig(samples=24, paper_samples=8, output_samples=8, max_len=2, train_samples=None,
                           test_samples=None, size=32, batch_size=8, epochs=2, sample_sizes=(8, 24),
                           ablation_spans=((0, 1),), selection_blocks=(1, 2), bootstrap=20)
    stages = []
    result = select_eval(model, "tiny-vit", _image_dataset(), cfg, preprocessor=ImagePreprocessor(32),
                         on_progress=lambda r: stages.append(len(r["sample_sizes"]) + len(r["selections"])))
    assert stages == [0, 0, 1, 2, 4, 6]  # ranking, identity, 2 sizes, 2 selection sizes × 2 selectors
    assert len(result["spans"]) == 4 + 3  # single blocks -1→0 .. 2→3, pairs -1→1 .. 1→3
    stack = find_block_stack(model)
    width, block = 32, sum(p.numel() for p in model.get_submodule(stack.block_path(0)).parameters())
    for row in result["spans"]:
        n = row["span"][1] - row["span"][0]
        assert row["params_removed"] == n * block - (width * width + width)
        assert row["params_removed_identity"] == n * block
        assert 0 <= row["identity"]["agreement"] <= 1 and row["flops_removed"] > 0
    assert [r["samples"] for r in result["sample_sizes"]] == [8, 24]
    same = next(sp for sp in result["spans"] if sp["span"] == [0, 1])
    assert result["sample_sizes"][1]["spans"][0]["probe"] == same["probe"]  # n = samples is the main fit
    assert {s["num_blocks"] for s in result["selections"]} == {1, 2}
    assert all(0 <= r["p_at_k"] <= 1 and 0 <= r["p_at_k_accuracy_drop"] <= 1 for r in result["ranking"])
    write_report(result, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"select_eval.json", "select_eval.md", "select_eval.png",
                                                    "sample_sizes.png"}
    assert "identity acc." in (tmp_path / "select_eval.md").read_text()
