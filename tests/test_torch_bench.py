"""PyTorch benchmark of original vs compressed (`torch_compare`, `fxapprox bench --torch`): every
precision either times both modules or says why it could not; the report holds ratios."""

from __future__ import annotations

import json

import pytest
import torch
from export_helpers import compress, image_batches, tiny_vit

import fxapprox.cli as cli
from fxapprox.errors import ExportError
from fxapprox.export.torch_bench import TORCH_PRECISIONS, torch_compare


@pytest.fixture(scope="module")
def pair():
    model = tiny_vit()
    return model, compress(model, image_batches(), [(0, 2)], "linear")


def test_torch_compare_times_every_precision(pair):
    model, res = pair
    report = torch_compare(model, res, image_batches()[0], batch_sizes=(1, 3), warmup=1, warmup_s=0.0, iters=2,
                           device="cpu")
    assert report["flop_speedup"] > 1 and report["device"] == "cpu"
    assert [c["precision"] for c in report["cases"]] == list(TORCH_PRECISIONS)
    for case in report["cases"]:
        if "skipped" in case:  # only fp16, and only where this CPU has no fp16 kernels
            assert case["precision"] == "fp16" and case["skipped"]
            continue
        assert [r["batch_size"] for r in case["rows"]] == [1, 3]
        for r in case["rows"]:
            assert r["speedup"] == pytest.approx(r["original"]["median_ms"] / r["compressed"]["median_ms"])
            assert r["efficiency"] == pytest.approx(r["speedup"] / report["flop_speedup"])
    assert all(p.dtype == torch.float32 for p in res.module.parameters())  # bf16/fp16 ran on copies


def test_torch_compare_rejects_unknown_precisions(pair):
    with pytest.raises(ExportError, match="unknown precision"):
        torch_compare(*pair, image_batches()[0], precisions=["int4"])


def test_cli_bench_torch(pair, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_SUBCOMMANDS", ["bench"])
    model, res = pair
    model.save_pretrained(tmp_path / "vit")
    res.save(tmp_path / "plan")
    argv = ["bench", "--torch", str(tmp_path / "plan"), "--model", str(tmp_path / "vit"), "--device", "cpu",
            "--batch-sizes", "1,2", "--iters", "2", "--warmup", "0", "--torch-precisions", "fp32,bf16-autocast",
            "--json", str(tmp_path / "t.json")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "FLOP speed-up" in out and "bf16-autocast" in out
    report = json.loads((tmp_path / "t.json").read_text())
    assert [c["precision"] for c in report["cases"]] == ["fp32", "bf16-autocast"]
    assert cli.main(["bench", "--torch", str(tmp_path / "vit"), "--device", "cpu"]) == 2
    assert "not a compressed one" in capsys.readouterr().err
