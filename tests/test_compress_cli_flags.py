"""`fxapprox compress --fold --refit sequential --prior identity --selection iterative` reach the plan."""

from __future__ import annotations

import json

from tiny_models import tiny_batches, tiny_net

import fxapprox
from fxapprox import cli
from fxapprox.cli import compress as compress_cli


def test_compress_flags_reach_the_plan(tmp_path, monkeypatch):
    model = tiny_net(["mlp", "shift", "mlp", "mlp"])
    monkeypatch.setattr(compress_cli, "load_model_and_calibration", lambda args: (model, None, tiny_batches()))
    seen = {}
    real = fxapprox.compress

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(fxapprox, "compress", spy)
    argv = ["compress", "tiny", "--data", "none", "--samples", "32", "--num-blocks", "1", "--selection", "iterative",
            "--prior", "identity", "--refit", "sequential", "--out", str(tmp_path / "plan"), "--no-progress",
            "--json", str(tmp_path / "summary.json")]
    assert cli.main(argv) == 0
    assert (seen["selection"], seen["prior"], seen["refit"], seen["fold"]) == ("iterative", "identity", "sequential",
                                                                               False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["spans"][0]["s"] == 0 and summary["spans"][0]["e"] == 1  # the affine shift block
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert plan["prior"] == "identity" and plan["refit"] == "sequential" and plan["format"] == "fxapprox-plan/2"
