"""`fxapprox compress --config RECIPE` (flags beside it override its fields), `--config PLAN_DIR`
makes the same plan again, `--budget` / `--latency-budget` reach the plan; `--help` groups by stage."""

from __future__ import annotations

import json

import pytest
from tiny_models import tiny_batches, tiny_net

from fxapprox import cli
from fxapprox.cli import compress as compress_cli
from fxapprox.costs import BlockLatency


def _model():
    model = tiny_net(["mlp", "mlp", "mlp", "mlp"])
    model.blocks[2].scale.zero_()  # block 2 returns its input
    return model


@pytest.fixture
def tiny_cli(monkeypatch):
    seen = {}

    def load(args):
        seen["samples"] = args.samples
        return _model(), None, tiny_batches()

    monkeypatch.setattr(compress_cli, "load_model_and_calibration", load)
    return seen


def _run(tmp_path, *argv):
    return cli.main(["compress", "tiny", "--data", "none", "--no-progress", *argv])


def _plan(path):
    return json.loads((path / "plan.json").read_text())


def test_recipe_with_flags_over_it_and_a_plan_as_recipe(tmp_path, tiny_cli):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"num_blocks": 1, "transform": "identity", "metric": "cosine", "num_samples": 16}))
    assert _run(tmp_path, "--config", str(recipe), "--transform", "linear", "--out", str(tmp_path / "a")) == 0
    config = _plan(tmp_path / "a")["config"]
    assert (config["num_blocks"], config["transform"], config["metric"], config["num_samples"]) == (1, "linear",
                                                                                                     "cosine", 16)
    assert tiny_cli["samples"] == 16  # the recipe's sample count reached the loader
    # the plan directory as the recipe: the same plan again
    assert _run(tmp_path, "--config", str(tmp_path / "a"), "--out", str(tmp_path / "b")) == 0
    a, b = _plan(tmp_path / "a"), _plan(tmp_path / "b")
    assert a["spans"] == b["spans"] and a["config"] == b["config"]
    # a target flag replaces the recipe's target
    assert _run(tmp_path, "--config", str(tmp_path / "a"), "--budget", "0.1", "--json", str(tmp_path / "c.json"),
                "--out", str(tmp_path / "c")) == 0
    c = _plan(tmp_path / "c")
    assert c["config"]["num_blocks"] is None and c["config"]["budget"] == 0.1 and c["config"]["metric"] == "cosine"
    assert c["reached"]["flops"] >= 0.1 and json.loads((tmp_path / "c.json").read_text())["reached"] == c["reached"]


def test_bad_recipes_are_one_error_line(tmp_path, tiny_cli, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"num_blocks": 1, "tokens": "cls"}))
    assert _run(tmp_path, "--config", str(recipe), "--out", str(tmp_path / "a")) == 2
    assert "unknown option(s) tokens" in capsys.readouterr().err
    assert _run(tmp_path, "--out", str(tmp_path / "a")) == 2  # no target anywhere
    assert "exactly one of spans" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_budget_flags_reach_the_plan(tmp_path, tiny_cli, monkeypatch):
    assert _run(tmp_path, "--budget", "0.1", "--samples", "24", "--out", str(tmp_path / "f")) == 0
    assert _plan(tmp_path / "f")["spans"][0]["s"] == 1 and _plan(tmp_path / "f")["reached"]["flops"] >= 0.1
    latency = BlockLatency(10.0, [1.0, 1.0, 5.0, 1.0], 0.5, "CPUExecutionProvider", 32)
    monkeypatch.setattr(compress_cli, "_measure_latencies", lambda model, loader, args: latency)
    assert _run(tmp_path, "--latency-budget", "0.3", "--samples", "24", "--out", str(tmp_path / "l")) == 0
    plan = _plan(tmp_path / "l")
    assert plan["reached"] == {"latency": pytest.approx(0.45)} and plan["config"]["block_latency"]["block_ms"][2] == 5
    with pytest.raises(SystemExit):
        _run(tmp_path, "--budget", "1.5", "--out", str(tmp_path / "x"))


def test_help_groups_the_options_by_stage(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compress", "--help"])
    text = capsys.readouterr().out
    groups = ["what to remove", "capture:", "select (", "fit:", "rewrite:"]
    assert all(g in text for g in groups)
    assert [text.index(g) for g in groups] == sorted(text.index(g) for g in groups)
    body = text[text.index("what to remove"):]  # the option list, after the usage line
    assert body.index("\n  --budget") < body.index("capture:") < body.index("\n  --units") < body.index("select (")
