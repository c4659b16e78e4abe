"""Plans written in format 1 (before fold / prior / refit) still load."""

from __future__ import annotations

import json

import torch
from tiny_models import IN_FEATURES, TOKENS, tiny_batches, tiny_net

import fxapprox
from fxapprox.plan import PLAN_FORMAT


def test_format_1_plan_loads_as_unfolded_independent(tmp_path):
    model = tiny_net(["mlp", "shift", "mlp"])
    res = fxapprox.compress(model, tiny_batches(), spans=[(0, 1)], num_samples=32, progress=False)
    res.save(tmp_path)
    meta = json.loads((tmp_path / "plan.json").read_text())
    assert meta["format"] == PLAN_FORMAT != "fxapprox-plan/1"
    for key in ("prior", "refit"):
        del meta[key]
    for sp in meta["spans"]:
        del sp["fold"], sp["unfolded_residual"]
    meta["format"] = "fxapprox-plan/1"
    (tmp_path / "plan.json").write_text(json.dumps(meta))
    again = fxapprox.load(tiny_net(["mlp", "shift", "mlp"]), tmp_path)
    assert again.plan.prior == "zero" and again.plan.refit == "independent" and not again.plan.spans[0].fold
    x = torch.randn(2, TOKENS, IN_FEATURES)
    torch.testing.assert_close(again.module(x), res.module(x), rtol=0, atol=0)
