"""`fxapprox demo` end to end on the real assets, at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fxapprox
from fxapprox.cli import main
from fxapprox.study.demo import DemoConfig, run_demo


@pytest.mark.real
@pytest.mark.slow
def test_demo_writes_a_complete_report_and_prints_a_summary(tmp_path, capsys):
    cfg = DemoConfig(size=28, samples=32, output_samples=16, train_samples=64, test_samples=32, batch_size=16,
                     epochs=2, bench_batch_sizes=(1,), bench_iters=3)
    out = run_demo(cfg, tmp_path / "report")
    report = json.loads((out / "report.json").read_text())
    assert len(report["spans"]) >= 1 and sum(e - s for s, e in report["spans"]) == 2
    assert report["params"]["compressed"] < report["params"]["original"]
    assert [r["name"] for r in report["evaluation"]] == ["original", "identity", "linear"]
    assert all(c["ok"] for v in report["onnx"].values() for c in v["parity"])
    for name in ("report.md", "heatmap.png", "original.onnx", "compressed-linear.onnx", "analysis.json"):
        assert (out / name).stat().st_size > 0
    # one sample count for scoring and fitting, the output score's held-out samples on top
    plan = json.loads((out / "plan-linear" / "plan.json").read_text())
    assert report["samples"] == {"fit_and_score": 32, "output_held_out": 16} and plan["num_samples"] == 32
    # the spans are the ones the output score of the analysis (the heatmap's matrix) selects
    analysis = fxapprox.Analysis.from_json(out / "analysis.json")
    assert report["chosen_by"] == "output"
    assert [list(sp) for sp in analysis.select(2, metric="output")] == report["spans"]
    assert all(Path(v["path"]).is_absolute() and Path(v["path"]).is_file() for v in report["onnx"].values())
    row = report["benchmark"]["rows"][0]
    assert row["original"]["p10_ms"] <= row["original"]["median_ms"] <= row["original"]["p90_ms"]
    md = (out / "report.md").read_text()
    assert "chosen by the output score" in md and "[p10–p90]" in md
    acc = report["evaluation"][0]["probe"]["mean"]
    assert f"| original | {100 * acc:.1f}% |" in md
    printed = capsys.readouterr().out
    spans = ", ".join(f"{s} → {e}" for s, e in report["spans"])
    assert f"replaced {spans} (2 blocks, chosen by the output score)" in printed
    assert f"original  probe accuracy {100 * acc:.1f}%" in printed
    assert "agreement with the original" in printed and f"speed-up {row['speedup']:.2f}×" in printed
    assert "p10–p90" in printed and f"report written to {out.resolve()}" in printed


def test_demo_heatmap_outlines_the_chosen_span(tmp_path):
    an = fxapprox.Analysis(model="m", num_blocks=3, tokens="all", samples=8, rows=80, widths=[4] * 4, ridge=0.0,
                           scores={"linear": np.arange(16, dtype=float).reshape(4, 4)})
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots()
    an._heatmap(ax, fig, "linear", mark=[(0, 2)])
    boxes = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert [(b.get_x(), b.get_y()) for b in boxes] == [(1.5, 0.5)]  # column e = 2, row s + 1 = 1
    assert min(t.get_fontsize() for t in ax.texts) >= 7
    plt.close(fig)
    assert an.plot(tmp_path / "h.png", metric="linear", mark=[(0, 2)]).stat().st_size > 0


@pytest.mark.real
def test_demo_refuses_a_non_empty_directory(tmp_path, capsys):
    (tmp_path / "x").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "already holds files; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "x").read_text() == "keep me"
