"""`fxapprox export` and `fxapprox bench` end to end on a tiny ViT directory and its compression plan."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from export_helpers import compress, image_batches, tiny_vit

import fxapprox.cli as cli
from fxapprox.export import read_metadata


@pytest.fixture(scope="module", autouse=True)
def _subcommands():
    """The parser with just the two subcommands under test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_SUBCOMMANDS", ["export", "bench"])
        yield


@pytest.fixture(scope="module")
def model_and_plan(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = tiny_vit()
    model.save_pretrained(d / "vit")
    compress(model, image_batches(), [(0, 2)], "linear").save(d / "plan")
    return d / "vit", d / "plan"


@pytest.fixture(scope="module")
def exported(model_and_plan, tmp_path_factory):
    """Both models exported once through the CLI: (original.onnx, compressed.onnx, json record, stdout)."""
    vit, plan = model_and_plan
    d = tmp_path_factory.mktemp("onnx")
    assert cli.main(["export", str(vit), "--onnx", str(d / "original.onnx")]) == 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["export", str(plan), "--model", str(vit), "--onnx", str(d / "compressed.onnx"),
                         "--batch-size", "3", "--json", str(d / "export.json")]) == 0
    return d / "original.onnx", d / "compressed.onnx", json.loads((d / "export.json").read_text()), out.getvalue()


def test_export_plan_dir_writes_checked_onnx_with_plan_and_flops(exported):
    _, compressed, record, _ = exported
    assert compressed.is_file() and record["path"] == str(compressed)
    assert [c["batch_size"] for c in record["checks"]] == [3, 7] and all(c["ok"] for c in record["checks"])
    assert record["output_names"] == ["last_hidden_state", "pooler_output"]
    meta = read_metadata(compressed)
    assert meta["fxapprox.spans"] == "0->2:linear"
    assert json.loads(meta["fxapprox.flops"])["per_item"] == record["flops_per_item"] > 0


def test_export_prints_a_parity_table(exported):
    lines = exported[3].splitlines()
    assert lines[0].startswith("wrote ") and any("0->2:linear" in line for line in lines)
    header = lines.index(next(line for line in lines if "max |diff|" in line))
    rows = [line.split() for line in lines[header + 1:]]
    assert [(r[0], r[2], r[-1]) for r in rows] == [("3", "last_hidden_state", "yes"), ("3", "pooler_output", "yes"),
                                                   ("7", "last_hidden_state", "yes"), ("7", "pooler_output", "yes")]


def test_export_without_check(model_and_plan, tmp_path, capsys):
    vit, plan = model_and_plan
    assert cli.main(["export", str(plan), "--model", str(vit), "--onnx", str(tmp_path / "c.onnx"), "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "0->2:linear" in out and "max |diff|" not in out


def test_bench_two_onnx_files_compares_with_flop_ratio_from_metadata(exported, tmp_path, capsys):
    original, compressed, _, _ = exported
    argv = ["bench", str(original), str(compressed), "--batch-sizes", "1,4", "--iters", "4", "--warmup", "1",
            "--json", str(tmp_path / "bench.json")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "FLOP speed-up" in out and "efficiency" in out
    report = json.loads((tmp_path / "bench.json").read_text())
    flops = [json.loads(read_metadata(p)["fxapprox.flops"])["per_item"] for p in (original, compressed)]
    assert report["flop_speedup"] == pytest.approx(flops[0] / flops[1])
    assert [r["batch_size"] for r in report["rows"]] == [1, 4] and report["provider"].endswith("ExecutionProvider")


def test_bench_one_file_and_torch_models(exported, model_and_plan, capsys):
    vit, plan = model_and_plan
    assert cli.main(["bench", str(exported[0]), "--batch-sizes", "2", "--iters", "2", "--warmup", "0"]) == 0
    assert "items/s" in capsys.readouterr().out
    argv = ["bench", str(vit), str(plan), "--model", str(vit), "--device", "cpu", "--batch-sizes", "2",
            "--iters", "2", "--warmup", "0"]
    assert cli.main(argv) == 0
    assert "torch" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["export", "{plan}", "--onnx", "{tmp}/x.onnx"], "pass --model"),
    (["export", "{vit}", "--onnx", "{onnx}/x.onnx"], "is a file, so no directory can be made under it"),
    (["bench", "{tmp}/none.onnx"], "does not exist"),
    (["bench", "{onnx}", "--providers", "NoSuchExecutionProvider"], "not available"),
    (["bench", "{onnx}", "{vit}"], "not one of each"),
])
def test_bad_input_exits_2_with_a_message(argv, message, model_and_plan, exported, tmp_path, capsys):
    vit, plan = model_and_plan
    argv = [a.format(plan=plan, vit=vit, tmp=tmp_path, onnx=exported[0]) for a in argv]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_plan_that_names_its_model_exports_without_model_option(model_and_plan, tmp_path):
    vit, plan = model_and_plan
    from fxapprox.plan import Plan

    named = Plan.read(plan)
    named.source = str(vit)
    named.save(tmp_path / "named")
    assert cli.main(["export", str(tmp_path / "named"), "--onnx", str(tmp_path / "c.onnx"), "--no-check"]) == 0
    assert (tmp_path / "c.onnx").stat().st_size > 0


def test_export_optimize_int8_reports_fused_ops_of_original_and_compressed(model_and_plan, tmp_path, capsys):
    vit, plan = model_and_plan
    argv = ["export", str(plan), "--model", str(vit), "--onnx", str(tmp_path / "c.onnx"), "--optimize",
            "--precision", "int8", "--json", str(tmp_path / "c.json")]
    assert cli.main(argv) == 0
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["precision"] == "int8" and all(c["ok"] for c in record["final_checks"])
    assert record["fused_ops"]["original"]["Attention"] == 4 and record["fused_ops"]["exported"]["Attention"] == 2
    assert "fused ops" in capsys.readouterr().out


def test_bench_baseline_optimized_fuses_both_files_and_keeps_the_flop_ratio(exported, tmp_path):
    original, compressed, _, _ = exported
    argv = ["bench", str(original), str(compressed), "--baseline", "optimized", "--batch-sizes", "2", "--iters", "2",
            "--warmup", "0", "--json", str(tmp_path / "b.json")]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    flops = [json.loads(read_metadata(p)["fxapprox.flops"])["per_item"] for p in (original, compressed)]
    assert report["baseline"] == "optimized" and report["flop_speedup"] == pytest.approx(flops[0] / flops[1])


def test_bench_baseline_optimized_exports_models_and_plans(model_and_plan, tmp_path):
    vit, plan = model_and_plan
    argv = ["bench", str(vit), str(plan), "--model", str(vit), "--baseline", "optimized", "--precision", "int8",
            "--batch-sizes", "2", "--iters", "2", "--warmup", "0", "--json", str(tmp_path / "b.json")]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["backend"] == "onnxruntime" and report["flop_speedup"] > 1
