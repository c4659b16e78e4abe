"""Built-in model + data set → a report directory: span heatmap, compressed plans, probe accuracy
of original vs identity vs linear, ONNX files checked in onnxruntime, and a latency comparison.

This is the README's main job (`fxapprox demo`): DINOv2-small on MNIST-5k by default, sized for
two CPU cores (112 px, a few hundred images); `full=True` uses the papers' 224 px protocol.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from fxapprox.atomic import atomic_write_text
from fxapprox.errors import MissingScoreError, OutputExistsError
from fxapprox.metrics import METRIC_INFO
from fxapprox.study import data

__all__ = ["DemoConfig", "run_demo", "summary", "default_out", "check_config", "DEMO_METRICS"]

log = logging.getLogger(__name__)

# scores the demo can choose spans by: every metric but `heldout`, which needs k-fold moments it does not gather
DEMO_METRICS = tuple(m for m in METRIC_INFO if m != "heldout")


@dataclass
class DemoConfig:
    """What the demo runs on and how big it is.

    The spans are scored and fitted on the same `samples` calibration samples; the `output` score
    (when `metric="output"`) is measured on `output_samples` further ones, held out from the fit.
    """

    model: str = "dinov2-small"
    data: str = "mnist-5k"
    size: int = 112
    samples: int = 256
    output_samples: int = 64
    num_blocks: int = 2
    metric: str = "output"  # the score that chooses the spans; README "Results": it predicts damage best
    train_samples: int = 1000
    test_samples: int = 500
    epochs: int = 40  # the papers' 5 epochs assume whole splits; on 1,000 samples they underfit
    batch_size: int = 32
    bench_batch_sizes: tuple[int, ...] = (1, 8)
    bench_iters: int = 50  # interleaved calls per model and batch size: medians stable to ~2% on 2 cores
    seed: int = 0

    @classmethod
    def full(cls, **overrides: Any) -> DemoConfig:
        """The papers' protocol: 224 px, 500 calibration samples, the whole test split."""
        base = dict(size=224, samples=500, output_samples=100, train_samples=None, test_samples=None,
                    epochs=5, bench_batch_sizes=(1, 8, 32))
        return cls(**{**base, **overrides})


def default_out() -> Path:
    """`reports/fxapprox-demo-DATE-TIME` under the current directory (`reports/` is git-ignored)."""
    return Path("reports") / f"fxapprox-demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _step(name: str):
    """One stage line on stderr, like every `fxapprox` command's."""
    print(f"[fxapprox demo] {name} ...", file=sys.stderr, flush=True)
    return time.perf_counter()


def check_config(cfg: DemoConfig, out: Path, overwrite: bool) -> None:
    """What can be checked before any work: the metric, the model's and the data's modalities (built-in
    names), and `out` (a non-empty directory only with `overwrite`)."""
    if cfg.metric not in DEMO_METRICS:
        raise MissingScoreError(f"the demo cannot choose spans by metric {cfg.metric!r}: use one of "
                                f"{', '.join(DEMO_METRICS)}")
    data.check_modality(cfg.model, None, cfg.data)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file, not a report directory: choose another directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} already holds files: choose another report directory, or pass "
                                "overwrite=True to write into it")


def run_demo(cfg: DemoConfig, out: Path | None = None, *, overwrite: bool = False) -> Path:
    """Run every stage on `cfg` and write the report into `out` (default `default_out()`); returns
    the report directory. A non-empty `out` → `OutputExistsError` unless `overwrite` (which replaces
    plans already there). A directory the demo made is removed again when a stage fails."""
    out = Path(out) if out is not None else default_out()
    check_config(cfg, out, overwrite)
    made = None if out.exists() else out  # the topmost directory this call makes (`reports/` too, when new)
    while made is not None and not made.parent.exists():
        made = made.parent
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _run(cfg, out, overwrite)
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise


def _run(cfg: DemoConfig, out: Path, overwrite: bool) -> Path:
    import fxapprox
    from fxapprox.export import compare, to_onnx
    from fxapprox.study import assets
    from fxapprox.study.evaluate import compare_models

    timings: dict[str, float] = {}
    t = _step(f"loading {cfg.model} and {cfg.data}")
    dataset = assets.load_dataset(cfg.data)
    data.check_modality(cfg.model, dataset, cfg.data)  # a directory's columns are known once it is loaded
    model = assets.load_model(cfg.model)
    data.check_image_size(model, cfg.size)

    def loader(split: str, n: int | None, labels: bool = False, seed: int = cfg.seed):
        return data.data_loader(cfg.model, dataset, split=split, num_samples=n, batch_size=cfg.batch_size,
                                size=cfg.size, seed=seed, with_labels=labels)

    held_out = cfg.output_samples if cfg.metric == "output" else 0
    calib = data.calibration_loader(cfg.model, dataset, num_samples=cfg.samples + held_out,
                                    batch_size=cfg.batch_size, size=cfg.size, seed=cfg.seed)
    timings["load_s"] = time.perf_counter() - t

    t = _step(f"scoring every span on {cfg.samples} samples (all tokens)"
              + (f", the output score on {held_out} held-out samples" if held_out else ""))
    an = fxapprox.analyze(model, calib, num_samples=cfg.samples, tokens="all", output_samples=held_out,
                          output_max_len=cfg.num_blocks if held_out else None)
    an.model = cfg.model
    spans = an.select(cfg.num_blocks, metric=cfg.metric)
    an.to_json(out / "analysis.json")
    _plot_heatmap(an, out / "heatmap.png", cfg.metric, spans, max_len=cfg.num_blocks if held_out else None)
    timings["analyze_s"] = time.perf_counter() - t

    t = _step(f"compressing: span(s) {_spans(spans)} chosen by the {cfg.metric} score, linear and identity, "
              f"fitted on the same {cfg.samples} samples")
    linear = fxapprox.compress(model, calib, spans=spans, num_samples=cfg.samples)
    identity = fxapprox.compress(model, calib, spans=spans, transform="identity", num_samples=cfg.samples)
    for name, res in (("linear", linear), ("identity", identity)):
        res.plan.source = cfg.model
        res.save(out / f"plan-{name}", overwrite=overwrite)
    timings["compress_s"] = time.perf_counter() - t

    t = _step(f"evaluating original vs identity vs linear (linear probe, 3 seeds, {cfg.epochs} epochs)")
    reports = compare_models({"original": model, "identity": identity.module, "linear": linear.module},
                             loader("train", cfg.train_samples, True), loader("test", cfg.test_samples, True),
                             epochs=cfg.epochs)
    timings["evaluate_s"] = time.perf_counter() - t

    t = _step("exporting to ONNX and checking parity in onnxruntime")
    example = next(iter(loader("test", 4)))
    exports = {"original": to_onnx(model, example, out / "original.onnx"),
               "linear": to_onnx(linear, example, out / "compressed-linear.onnx")}
    timings["export_s"] = time.perf_counter() - t

    t = _step(f"benchmarking original vs compressed in onnxruntime ({cfg.bench_iters} interleaved calls each)")
    bench = compare(str(out / "original.onnx"), str(out / "compressed-linear.onnx"), example,
                    batch_sizes=cfg.bench_batch_sizes, iters=cfg.bench_iters, modules=(model, linear.module))
    timings["bench_s"] = time.perf_counter() - t

    report = {
        "config": {k: v for k, v in vars(cfg).items()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "spans": linear.spans,
        "chosen_by": cfg.metric,
        "samples": {"fit_and_score": an.samples, "output_held_out": an.output_samples},
        "residuals": {"linear": [sp.residual for sp in linear.plan.spans],
                      "identity": [sp.residual for sp in identity.plan.spans]},
        "params": {"original": linear.num_params_before, "compressed": linear.num_params_after},
        "top_spans": {m: an.top_k(5, metric=m) for m in dict.fromkeys((cfg.metric, "linear"))},
        "evaluation": [r.to_dict() for r in reports],
        "onnx": {k: {"path": str(Path(v.path).resolve()), "bytes": v.size_bytes,
                     "parity": [c.__dict__ for c in v.checks]}
                 for k, v in exports.items()},
        "benchmark": bench,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(out / "report.md", _markdown(report))
    print(summary(report), flush=True)
    print(f"report written to {out.resolve()}", flush=True)
    return out


def colour_label(an: Any, metric: str) -> str:
    """The one quantity the heatmap's colours show."""
    if metric == "output":
        if an.output_target == "logits":
            return "KL divergence of the compressed model's predictions from the original's"
        return "relative error of the final features (compressed vs original)"
    return METRIC_INFO[metric].description


def _plot_heatmap(an: Any, path: Path, metric: str, spans: list[tuple[int, int]], *, max_len: int | None) -> None:
    """The analysis' heatmap of `metric`, each cell also saying how many blocks its span removes, the
    colour bar naming the one quantity shown, the title saying why cells are blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cell = 0.75 * (an.num_blocks + 1) + 3.0
    fig, ax = plt.subplots(figsize=(cell + 1.5, cell))
    an._heatmap(ax, fig, metric, mark=spans)
    for text in ax.texts:  # column e, row s + 1: the span s → e removes e - s blocks
        col, row = text.get_position()
        removed = round(col) - round(row) + 1
        text.set_text(f"{text.get_text()}\n{removed} block{'s' if removed > 1 else ''}")
    fig.axes[-1].set_ylabel(colour_label(an, metric))
    blank = (f"\nblank: spans of more than {max_len} blocks, which the {metric} score does not score "
             f"(it scores spans of up to {max_len})" if max_len else "")
    ax.set_title(f"{an.model}: {metric} score of replacing blocks s+1..e\n"
                 f"each cell: the score and how many blocks the span removes{blank}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _spans(spans: list[tuple[int, int]]) -> str:
    return ", ".join(f"{s} → {e}" for s, e in spans)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _ratio(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}×"


def summary(r: dict[str, Any]) -> str:
    """A demo report → a few lines for the terminal: span, accuracy, agreement, parameters, speed-up."""
    cfg, p = r["config"], r["params"]
    lines = [f"{cfg['model']} on {cfg['data']}: replaced {_spans(r['spans'])} ({cfg['num_blocks']} blocks, chosen "
             f"by the {r['chosen_by']} score); parameters {p['original']:,} → {p['compressed']:,} "
             f"(−{100 * (1 - p['compressed'] / p['original']):.1f}%)"]
    for ev in r["evaluation"]:
        f = ev.get("fidelity") or {}
        agree = f"  agreement with the original {_pct(f.get('agreement'))}" if f else ""
        lines.append(f"  {ev['name']:<9} probe accuracy {_pct(ev['probe']['mean'])} ± {100 * ev['probe']['std']:.1f}"
                     f"{agree}")
    b = r["benchmark"]
    for row in b["rows"]:
        o, c = row["original"], row["compressed"]
        lines.append(f"  batch {row['batch_size']:>2}: speed-up {row['speedup']:.2f}× (FLOP ratio "
                     f"{_ratio(row['flop_speedup'])}); median [p10–p90] ms: original {o['median_ms']:.1f} "
                     f"[{o['p10_ms']:.1f}–{o['p90_ms']:.1f}], compressed {c['median_ms']:.1f} "
                     f"[{c['p10_ms']:.1f}–{c['p90_ms']:.1f}], {b['iters']} interleaved calls, {b['provider']}")
    return "\n".join(lines)


def _markdown(r: dict[str, Any]) -> str:
    cfg, samples = r["config"], r["samples"]
    held = (f", and the {r['chosen_by']} score on {samples['output_held_out']} further held-out samples"
            if samples["output_held_out"] else "")
    lines = [
        f"# fxapprox demo: {cfg['model']} on {cfg['data']}",
        "",
        f"{r['date']}, {r['machine']['platform']}, torch {r['machine']['torch']}, "
        f"{r['machine']['threads']} threads. Images at {cfg['size']} px. Every span is scored and the maps are "
        f"fitted on the same {samples['fit_and_score']} calibration samples (all tokens){held}.",
        "",
        f"Replaced span(s) {_spans(r['spans'])} ({cfg['num_blocks']} blocks, chosen by the {r['chosen_by']} "
        f"score); parameters {r['params']['original']:,} → {r['params']['compressed']:,}.",
        "",
        f"![{r['chosen_by']} score of every span, chosen span(s) outlined](heatmap.png)",
        "",
        f"## Linear probe ({cfg['train_samples'] or 'all'} train / {cfg['test_samples'] or 'all'} test images, "
        f"{cfg['epochs']} epochs; mean ± std over seeds 0, 1, 2) and fidelity to the original",
        "",
        "| model | accuracy | std | CKA | mean cosine | agreement |",
        "|---|---|---|---|---|---|",
    ]
    for ev in r["evaluation"]:
        p, f = ev["probe"], ev.get("fidelity") or {}
        fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {ev['name']} | {_pct(p['mean'])} | {100 * p['std']:.1f} | {fmt(f.get('cka'))} | "
                     f"{fmt(f.get('cosine'))} | {_pct(f.get('agreement'))} |")
    b = r["benchmark"]
    lines += ["", f"## onnxruntime latency ({b['provider']}), {b['iters']} interleaved calls each", "",
              "| batch | original ms, median [p10–p90] | compressed ms, median [p10–p90] | speed-up | FLOP ratio |",
              "|---|---|---|---|---|"]
    for row in b["rows"]:
        o, c = row["original"], row["compressed"]
        lines.append(f"| {row['batch_size']} | {o['median_ms']:.2f} [{o['p10_ms']:.2f}–{o['p90_ms']:.2f}] | "
                     f"{c['median_ms']:.2f} [{c['p10_ms']:.2f}–{c['p90_ms']:.2f}] | {row['speedup']:.2f}× | "
                     f"{_ratio(row['flop_speedup'])} |")
    for m, top in r["top_spans"].items():
        name = "linear error (TOAST Algorithm 1)" if m == "linear" else f"{m} score"
        lines += ["", f"Top spans by {name}: " + ", ".join(f"{s} → {e} ({v:.3g})" for s, e, v in top)]
    lines += ["", "Stage times (s): " + ", ".join(f"{k[:-2]} {v}" for k, v in r["timings_s"].items()), ""]
    return "\n".join(lines)
