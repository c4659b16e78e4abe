"""`fxapprox demo` end to end on the real assets, at a tiny size."""

from __future__ import annotations

import json

import pytest

from fxapprox.cli import main
from fxapprox.study.demo import DemoConfig, run_demo

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_demo_writes_a_complete_report(tmp_path):
    cfg = DemoConfig(size=28, samples=32, analysis_samples=16, train_samples=64, test_samples=32, batch_size=16,
                     epochs=2, bench_batch_sizes=(1,), bench_iters=2)
    out = run_demo(cfg, tmp_path / "report")
    report = json.loads((out / "report.json").read_text())
    assert len(report["spans"]) >= 1 and sum(e - s for s, e in report["spans"]) == 2
    assert report["params"]["compressed"] < report["params"]["original"]
    assert [r["name"] for r in report["evaluation"]] == ["original", "identity", "linear"]
    assert all(c["ok"] for v in report["onnx"].values() for c in v["parity"])
    for name in ("report.md", "heatmap.png", "original.onnx", "compressed-linear.onnx", "analysis.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "plan-linear" / "plan.json").is_file()
    assert "chosen by the output score" in (out / "report.md").read_text()


def test_demo_refuses_a_non_empty_directory(tmp_path, capsys):
    (tmp_path / "x").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "x").read_text() == "keep me"
