"""`fxapprox compress --fold --refit sequential --prior identity --selection iterative` reach the plan, and
`fxapprox eval --plan DIR` evaluates the plan compress saved."""

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


def test_eval_applies_a_plan_saved_by_compress(tmp_path, capsys):
    from cli_helpers import image_dataset_dir, vit_dir
    from export_helpers import IMAGE

    vit, images = vit_dir(tmp_path / "vit"), image_dataset_dir(tmp_path / "images", n=16)
    common = ["--data", str(images), "--image-size", str(IMAGE), "--no-progress"]
    plan = tmp_path / "plan"
    assert cli.main(["compress", str(vit), *common, "--samples", "16", "--spans", "1-2", "--units", "half",
                     "--out", str(plan), "--json", str(tmp_path / "compress.json")]) == 0
    probe = ["--test-split", "train", "--train-samples", "16", "--test-samples", "8", "--probe-seeds", "0",
             "--epochs", "1"]
    assert cli.main(["eval", str(vit), *common, *probe, "--plan", str(plan),
                     "--json", str(tmp_path / "eval.json")]) == 0
    made, evaluated = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("compress", "eval"))
    assert evaluated["plan"] == str(plan) and evaluated["units"] == "half" and evaluated["spans"] == [[1, 2]]
    assert evaluated["transforms"] == ["linear"] and evaluated["transform"] is None
    assert evaluated["params_after"] == made["params_after"] < evaluated["params_before"]
    assert [r["name"] for r in evaluated["results"]] == ["original", "plan"]
    shown = capsys.readouterr()
    assert "(plan " in shown.out
    assert "features" not in shown.err and "linear probe" not in shown.err  # --no-progress: no bar at all
    assert cli.main(["eval", str(vit), *common, *probe, "--plan", str(tmp_path / "no-plan")]) == 2
    assert "is not an fxapprox plan directory" in capsys.readouterr().err


def test_refine_and_mlp_flags_reach_the_plan(tmp_path, monkeypatch, capsys):
    model = tiny_net(["mlp"] * 4)
    monkeypatch.setattr(compress_cli, "load_model_and_calibration", lambda args: (model, None, tiny_batches(4, 8)))
    argv = ["compress", "tiny", "--data", "none", "--samples", "32", "--spans", "0-2", "--transform", "mlp",
            "--mlp-fraction", "0.2", "--refine", "output", "--refine-params", "maps+norms", "--refine-time", "600",
            "--out", str(tmp_path / "plan"), "--no-progress"]
    assert cli.main(argv) == 0
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert plan["spans"][0]["transform"] == "mlp" and plan["refinement"]["params"] == "maps+norms"
    assert plan["refinement"]["options"]["mlp_fraction"] == 0.2 and plan["refinement"]["mlp"][0]["hidden"] >= 1
    assert "refined" in capsys.readouterr().out
    assert cli.main([*argv[:-3], "--fold", "--out", str(tmp_path / "p2")]) == 2
    assert "fold=True" in capsys.readouterr().err
