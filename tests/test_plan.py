"""Saved plans: round trip without calibration data, and plans that do not fit the model."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import IN_FEATURES, TOKENS, hf_family, tiny_batches, tiny_net

import fxapprox
from fxapprox.errors import PlanMismatchError


def test_round_trip_reproduces_compressed_outputs(tmp_path):
    model = tiny_net(["mlp", "shift", "shift", "mlp", "mlp"])
    res = fxapprox.compress(model, tiny_batches(), spans=[(0, 2), (3, 4)], num_samples=16, progress=False)
    res.save(tmp_path / "plan")
    meta = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert [(s["s"], s["e"]) for s in meta["spans"]] == [(0, 2), (3, 4)]
    loaded = fxapprox.load(tiny_net(["mlp", "shift", "shift", "mlp", "mlp"]), tmp_path / "plan")
    assert loaded.spans == res.spans
    x = torch.randn(7, TOKENS, IN_FEATURES)
    assert torch.equal(loaded.module(x), res.module(x))
    assert loaded.num_params_after == res.num_params_after


def test_round_trip_hf_model_mixed_transforms(tmp_path):
    model, batches, other = hf_family("vit")
    res = fxapprox.compress(model, batches, spans=[(0, 2)], transform="identity", num_samples=8, progress=False)
    res.save(tmp_path / "p")
    loaded = fxapprox.load(hf_family("vit")[0], tmp_path / "p")
    assert torch.equal(loaded.module(**other).last_hidden_state, res.module(**other).last_hidden_state)


def test_save_refuses_to_overwrite(tmp_path):
    res = fxapprox.compress(tiny_net(["mlp"] * 3), tiny_batches(), spans=[(0, 1)], num_samples=8, progress=False)
    res.save(tmp_path)
    with pytest.raises(FileExistsError):
        res.save(tmp_path)
    res.save(tmp_path, overwrite=True)


@pytest.mark.parametrize(
    "other_model, match",
    [
        (lambda: hf_family("vit")[0], "made for TinyNet"),
        (lambda: tiny_net(["mlp"] * 6), "blocks"),
    ],
    ids=["other-class", "other-depth"],
)
def test_plan_for_another_model_is_refused(tmp_path, other_model, match):
    res = fxapprox.compress(tiny_net(["mlp"] * 4), tiny_batches(), spans=[(0, 2)], num_samples=8, progress=False)
    res.save(tmp_path)
    with pytest.raises(PlanMismatchError, match=match):
        fxapprox.load(other_model(), tmp_path)


def test_plan_for_other_widths_is_refused(tmp_path):
    from tiny_models import TinyNet

    res = fxapprox.compress(tiny_net(["mlp"] * 4), tiny_batches(), spans=[(0, 2)], num_samples=8, progress=False)
    res.save(tmp_path)
    with pytest.raises(PlanMismatchError, match="width"):
        fxapprox.load(TinyNet(["mlp"] * 4, d=16).eval(), tmp_path)


def test_not_a_plan_directory(tmp_path):
    with pytest.raises(PlanMismatchError, match="not an fxapprox plan"):
        fxapprox.load(tiny_net(["mlp"] * 3), tmp_path)
