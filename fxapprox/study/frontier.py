"""Model + labelled data + FLOP budgets → the quality/speed frontier of the field's methods, measured alike.

For every budget (fraction of the model's FLOPs to save, net of added maps; by default what
removing 1 .. 6 whole blocks saves) each method of `fxapprox.study.field_methods` makes its plan,
`fxapprox.compress` builds it, and every plan is measured the same way:

* FLOPs and parameters removed, counted on the rewritten graph (`fxapprox.export.count_flops`);
* onnxruntime CPU latency at batch 1 and 32, the plan and the original exported to ONNX and timed
  interleaved in one run (`fxapprox.export.compare`); speed-up = original / plan;
* on the test split, with a linear probe trained once on the original model's final features and
  kept frozen (the deployed head): agreement with the original's predictions per test sample
  (mean and bootstrap interval), accuracy ± SE, final-feature cosine and CKA; with
  `retrain=True` also the papers' protocol (a probe retrained per plan and seed:
  `fxapprox.study.damage.measure_damage`).

Identical plans (two methods, or two budgets, choosing the same spans) are measured once. The
result is a JSON-ready dict; `write_report` renders it as JSON, a markdown table and a Pareto
plot (agreement vs measured speed-up, one line per method, interval bars), and `frontier(...,
on_progress=...)` hands the result over after every stage so an interrupted run keeps its rows.

Under a process group (`torchrun`) every rank runs `frontier` with the same arguments: the
calibrations and the greedy selection split as in `fxapprox.compress`, each rank extracts the
features of its share of the probe and test batches (all ranks get all of them, in order), and
rank 0 alone exports and times (so no other rank disturbs the timing) and calls `on_progress`.
Every rank returns the same result.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from fxapprox import distributed
from fxapprox.atomic import atomic_write_text, save_figure
from fxapprox.config import CompressConfig
from fxapprox.errors import FoldError, NoMiddleBoundaryError
from fxapprox.study.damage import measure_damage, probe_accuracy
from fxapprox.study.field_methods import DEFAULT_METHODS, METHODS, MethodPlan, block_budgets, pruning_order, rule_plan
from fxapprox.study.span_features import SpanFeatures

__all__ = ["FrontierConfig", "frontier", "write_report", "json_view", "to_markdown", "plot", "bootstrap_mean_ci",
           "budgets_from_text", "config_for"]

log = logging.getLogger(__name__)


@dataclass
class FrontierConfig:
    """Sizes of every stage (the defaults are the whole-split protocol; `quick()` fits 2 CPU cores)."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    budgets: tuple[float, ...] | None = None  # None: what removing 1 .. max_blocks whole blocks saves
    max_blocks: int = 6
    samples: int = 500            # calibration samples: every fit, the all-token scores
    paper_samples: int = 50       # the papers' [CLS] score
    output_samples: int = 128     # held-out calibration samples of the `output` score
    max_len: int | None = None    # longest span the output score rates (None: all)
    train_samples: int | None = 10000
    test_samples: int | None = None
    size: int = 112
    batch_size: int = 64
    epochs: int = 30
    seed: int = 0                 # the frozen probe's seed
    retrain: bool = True          # also the papers' protocol: a probe retrained per plan and seed
    seeds: tuple[int, ...] = (0, 1, 2)
    bench_batch_sizes: tuple[int, ...] = (1, 32)
    bench_iters: int = 30
    bench_warmup: int = 5
    bench_example: int = 8        # rows of the example batch the benchmark repeats
    check_parity: bool = True     # onnxruntime parity check of every exported plan
    bootstrap: int = 1000

    @classmethod
    def quick(cls, **overrides: Any) -> FrontierConfig:
        """Two CPU cores, under 30 minutes for DINOv2-small / MNIST-5k at 56 px or MiniLM / Rotten
        Tomatoes: fewer samples, a frozen probe only, short latency runs."""
        sizes = dict(samples=256, output_samples=64, max_len=6, train_samples=1000, test_samples=500, size=56,
                     retrain=False, bench_iters=10, bench_warmup=2, check_parity=False, bootstrap=500)
        return cls(**{**sizes, **overrides})


def bootstrap_mean_ci(values: torch.Tensor, *, rounds: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` `(N,)` (resampling the N entries)."""
    v = values.double().flatten()
    if v.numel() == 0:
        raise ValueError("no values to bootstrap")
    gen = torch.Generator().manual_seed(seed)
    means = torch.cat([v[torch.randint(0, v.numel(), (min(100, rounds - i), v.numel()), generator=gen)].mean(dim=1)
                       for i in range(0, rounds, 100)])
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(lo), float(hi)


@dataclass
class _Original:
    """What every plan is compared with: the original's features, frozen probe and its predictions."""

    train: torch.Tensor | None
    test: torch.Tensor
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    probe: torch.nn.Linear
    predictions: torch.Tensor
    onnx: Path
    extra: dict[str, Any] = field(default_factory=dict)


def _quality(original: _Original, train: torch.Tensor | None, test: torch.Tensor, cfg: FrontierConfig) -> dict:
    """A plan's test features (and train features with `retrain`) → agreement, accuracy, cosine."""
    from fxapprox.study.evaluate import linear_cka, mean_cosine

    with torch.no_grad():
        preds = original.probe(test.float()).argmax(dim=1)
    same = (preds == original.predictions).double()
    acc = probe_accuracy(preds.unsqueeze(0), original.test_labels, [cfg.seed], len(original.train_labels))
    out = {"agreement": float(same.mean()), "agreement_ci": list(bootstrap_mean_ci(same, rounds=cfg.bootstrap)),
           "accuracy": acc.mean, "accuracy_se": acc.stderr,
           "cosine": mean_cosine(original.test, test), "cka": linear_cka(original.test, test)}
    if cfg.retrain and train is not None and original.train is not None:
        feats = SpanFeatures(original={"train": original.train, "test": original.test},
                             replaced={(0, 0): {"train": train, "test": test}},
                             labels={"train": original.train_labels, "test": original.test_labels})
        ref, damage = measure_damage(feats, seeds=cfg.seeds, epochs=cfg.epochs, progress=False)
        d = damage[(0, 0)]
        out.update(retrained_accuracy=d.probe.mean, retrained_accuracy_se=d.probe.stderr,
                   retrained_accuracy_std=d.probe.std, retrained_agreement=d.agreement,
                   retrained_agreement_ci=list(bootstrap_mean_ci(1 - d.disagreement, rounds=cfg.bootstrap)))
        original.extra.setdefault("retrained", {"accuracy": ref.probe.mean, "accuracy_se": ref.probe.stderr,
                                                "accuracy_std": ref.probe.std})
    return out


def _speed(original: _Original, result: Any, model: torch.nn.Module, example: Any, cfg: FrontierConfig,
           workdir: Path) -> dict:
    """Export the plan, time it interleaved with the original → speed-ups, FLOPs and parameters removed."""
    from fxapprox.export import compare, to_onnx

    path = workdir / "plan.onnx"
    to_onnx(result, example, path, validate=cfg.check_parity)
    try:
        bench = compare(str(original.onnx), str(path), example, batch_sizes=cfg.bench_batch_sizes,
                        iters=cfg.bench_iters, warmup=cfg.bench_warmup, modules=(model, result.module))
    finally:
        path.unlink(missing_ok=True)
        Path(f"{path}.data").unlink(missing_ok=True)
    flops = bench["flops"]
    out = {"flops_removed": flops["flops_removed"] / flops["before"]["total"],
           "params_removed": flops["params_removed"] / flops["before"]["params"],
           "flops_removed_per_sample": flops["before"]["per_item"] - flops["after"]["per_item"],
           "params_removed_count": flops["params_removed"], "flop_speedup": bench["flop_speedup"],
           "provider": bench["provider"], "latency_ms": {}}
    for row in bench["rows"]:
        bs = row["batch_size"]
        out[f"speedup_b{bs}"] = row["speedup"]
        out[f"efficiency_b{bs}"] = row["efficiency"]
        out["latency_ms"][str(bs)] = {"original": row["original"]["median_ms"], "plan": row["compressed"]["median_ms"]}
    return out


def _split_features(module: torch.nn.Module, batches: list[Any], desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Final features and labels of `batches`, in order: each rank extracts its share, every rank gets all."""
    from fxapprox.inputs import as_model_inputs
    from fxapprox.study.evaluate import extract_features

    mine = distributed.share(list(range(len(batches))))
    parts = {}
    with distributed.lockstep():
        if mine:
            feats, labels = extract_features(module, [batches[i] for i in mine], desc=desc)
            sizes = [as_model_inputs(batches[i]).batch_size for i in mine]
            parts = dict(zip(mine, zip(feats.split(sizes), labels.split(sizes))))
    everything = distributed.gather_dict(parts)
    joined = [everything[i] for i in range(len(batches))]
    return torch.cat([feats for feats, _ in joined]), torch.cat([labels for _, labels in joined])


def _plan_key(result: Any, config: CompressConfig) -> str:
    """What makes two compressions the same model: the plan's spans and the options beyond them."""
    spans = [{k: v for k, v in asdict(sp).items() if k != "residual"} for sp in result.plan.spans]
    options = {k: getattr(config, k) for k in ("units", "fold", "refit", "prior", "refine", "refine_options")}
    return json.dumps({"spans": spans, **options}, sort_keys=True, default=str)


def frontier(model: torch.nn.Module, model_name: str, dataset: Any, cfg: FrontierConfig, *,
             preprocessor: Any = None, on_progress: Callable[[dict[str, Any]], None] | None = None,
             workdir: str | Path | None = None) -> dict[str, Any]:
    """Every method's plan at every budget, each measured the same way → one JSON-ready dict.

    `dataset` is a `datasets.DatasetDict` with `train` and `test` splits; the data go through
    `preprocessor` (see `fxapprox.study.data.make_preprocessor`), by default the one `model_name`
    implies. `on_progress(result)` is called after the setup and after every plan. ONNX files go to
    `workdir` (default: a temporary directory); each plan's file is deleted once it is timed.
    Under a process group: see the module's docstring (`on_progress` is called on rank 0 alone).
    """
    import fxapprox
    from fxapprox.study import data
    from fxapprox.study.evaluate import train_probe

    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}: choose from {METHODS}")
    proc = preprocessor if preprocessor is not None else model_name
    model.eval()

    def loader(split, n, seed, labels=False, batch_size=cfg.batch_size):
        return list(data.data_loader(proc, dataset, split=split, num_samples=n, batch_size=batch_size,
                                     size=cfg.size, seed=seed, with_labels=labels))

    def report():
        if on_progress is not None and distributed.is_main():
            on_progress(result)

    started = time.perf_counter()
    calib = data.calibration_loader(proc, dataset, num_samples=cfg.samples + cfg.output_samples,
                                    batch_size=cfg.batch_size, size=cfg.size, seed=0)
    paper = fxapprox.analyze(model, calib, num_samples=cfg.paper_samples, tokens="cls", flops=True, progress=False)
    scores = fxapprox.analyze(model, calib, num_samples=cfg.samples, tokens="all", flops=True,
                              output_samples=cfg.output_samples, output_max_len=cfg.max_len, progress=False)
    mixed = None
    if any(m.startswith("fxapprox") for m in cfg.methods):  # fxapprox's rows choose on mixed units
        try:
            mixed = fxapprox.analyze(model, calib, num_samples=cfg.samples, tokens="all", flops=True, units="half",
                                     output_samples=cfg.output_samples,
                                     output_max_len=2 * cfg.max_len if cfg.max_len else None, progress=False)
        except NoMiddleBoundaryError as err:
            log.warning("fxapprox's rows choose whole blocks only: %s", err)
    budgets = list(cfg.budgets) if cfg.budgets else block_budgets(scores, cfg.max_blocks)
    train = loader("train", cfg.train_samples, seed=2, labels=True)
    test = loader("test", cfg.test_samples, seed=3, labels=True)
    example = loader("test", cfg.bench_example, seed=4, batch_size=cfg.bench_example)[0]
    train_x, train_y = _split_features(model, train, desc="train features")
    test_x, test_y = _split_features(model, test, desc="test features")
    probe = train_probe(train_x, train_y, num_classes=int(max(train_y.max(), test_y.max())) + 1, seed=cfg.seed,
                        epochs=cfg.epochs)
    with torch.no_grad():
        predictions = probe(test_x).argmax(dim=1)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fxapprox-frontier-")
        workdir = tmp.name
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    from fxapprox.export import to_onnx

    def export_original() -> None:
        to_onnx(model, example, workdir / "original.onnx", validate=cfg.check_parity)

    distributed.on_main(export_original)
    original = _Original(train_x if cfg.retrain else None, test_x, train_y, test_y, probe, predictions,
                         workdir / "original.onnx")
    acc = probe_accuracy(predictions.unsqueeze(0), test_y, [cfg.seed], len(train_y))
    order = None
    if "blockpruner" in cfg.methods:
        order = pruning_order(model, calib, num_samples=cfg.samples, max_units=2 * scores.num_blocks - 1)
    result: dict[str, Any] = {
        "model": model_name, "config": asdict(cfg), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "budgets": budgets, "num_blocks": scores.num_blocks, "images": "pixel_values" in example,
        "original": {"accuracy": acc.mean, "accuracy_se": acc.stderr, "test_samples": len(test_y),
                     "train_samples": len(train_y), "flops_per_sample": scores.total_flops,
                     "params": scores.total_params},
        "methods": {m: [] for m in cfg.methods}, "timings_s": {"setup": round(time.perf_counter() - started, 1)},
    }
    report()
    measured: dict[str, dict[str, Any]] = {}
    try:
        for budget in budgets:
            for method in result["methods"]:
                t = time.perf_counter()
                plan = rule_plan(method, budget, paper=paper, scores=scores, order=order, mixed=mixed)
                row = _measure_plan(plan, model, calib, cfg, original, example, workdir, measured,
                                    features=lambda module: (
                                        _split_features(module, train, desc="train features")[0]
                                        if cfg.retrain else None,
                                        _split_features(module, test, desc="test features")[0]))
                result["methods"][method].append(row)
                result["original"].update(original.extra)
                result["timings_s"][f"{method}@{budget:.3f}"] = round(time.perf_counter() - t, 1)
                log.info("%s at budget %.3f: spans %s, agreement %.4f, speed-up b%d %.2f", method, budget,
                         row["spans"], row["agreement"], cfg.bench_batch_sizes[-1],
                         row.get(f"speedup_b{cfg.bench_batch_sizes[-1]}", math.nan))
                report()
    finally:
        if tmp is not None:
            tmp.cleanup()
    result["timings_s"]["total"] = round(time.perf_counter() - started, 1)
    return result


def _measure_plan(plan: MethodPlan, model: torch.nn.Module, calib: Any, cfg: FrontierConfig, original: _Original,
                  example: Any, workdir: Path, measured: dict[str, dict[str, Any]],
                  features: Callable[[torch.nn.Module], tuple[torch.Tensor | None, torch.Tensor]]) -> dict[str, Any]:
    """Compress by `plan`, then measure (or reuse the measurement of the same plan) → one table row."""
    import fxapprox

    config = plan.config.replace(num_samples=cfg.samples, progress=False)
    started = time.perf_counter()
    try:
        res = fxapprox.compress(model, calib, config=config)
    except FoldError as err:  # e.g. post-norm blocks (BERT): ReplaceMe's fold needs a Linear added to the stream
        plan.config = plan.config.replace(fold=False)
        plan.notes.append(f"map not folded: {err}")
        res = fxapprox.compress(model, calib, config=config.replace(fold=False))
    cost = _training_cost(res, time.perf_counter() - started)
    key = _plan_key(res, plan.config)
    if key not in measured:
        train, test = features(res.module)
        speed = distributed.on_main(lambda: _speed(original, res, model, example, cfg, workdir))
        measured[key] = {**_quality(original, train, test, cfg), **speed}
    options = {k: v for k, v in plan.compress_kwargs.items() if k != "spans"}
    return {"budget": plan.budget, **measured[key], "spans": [list(sp) for sp in res.spans],
            "units": plan.config.units, "rule": plan.rule,
            "transforms": [sp.transform for sp in res.plan.spans], "options": options,
            "predicted_flops_removed": plan.predicted_flops_removed, "reaches_budget": plan.reaches_budget,
            "notes": plan.notes, **cost}


def _training_cost(res: Any, seconds: float) -> dict[str, float]:
    """A plan with trained replacements (`refine`, `transform="mlp"`): the training's seconds (the
    local MLP fits and the refinement), its multiple of the rest of `compress`, and the refinement's
    held-out loss before and after, its best step and why it stopped; else nothing."""
    ref = res.plan.refinement
    if not ref:
        return {}
    trained = ref.get("seconds", 0.0) + sum(f["seconds"] for f in ref.get("mlp", []))
    losses = {k: ref[k] for k in ("heldout_before", "heldout_after", "best_step", "stopped") if k in ref}
    return {"compress_s": round(seconds, 1), "train_s": round(trained, 3),
            "train_x_compress": round(trained / max(seconds - trained, 1e-9), 3), **losses}


# --- report ------------------------------------------------------------------------------------

_LABELS = {"papers": "papers (TBA/TOAST)", "shortgpt": "ShortGPT", "blockpruner": "BlockPruner-style",
           "replaceme": "ReplaceMe-style", "fxapprox": "fxapprox", "fxapprox-refined": "fxapprox-refined",
           "fxapprox-tuned": "fxapprox-tuned", "fxapprox-mlp": "fxapprox-mlp",
           "llm-streamline-style": "LLM-Streamline-style"}


def json_view(result: dict[str, Any]) -> dict[str, Any]:
    """The `--json` schema scripts read: the original's accuracy and every method's rows."""
    return {"model": result["model"], "budgets": result["budgets"], "original": result["original"],
            "methods": result["methods"]}


def _spans_text(row: dict[str, Any]) -> str:
    half = " (half units)" if row["units"] == "half" else ""
    return ", ".join(f"{s} → {e}" for s, e in row["spans"]) + half


def to_markdown(result: dict[str, Any]) -> str:
    """The frontier as a markdown table, one row per budget and method."""
    cfg, o = result["config"], result["original"]
    bs = cfg["bench_batch_sizes"]
    lines = [f"# Quality/speed frontier: {result['model']}", "",
             f"{result['date']}, {result['machine']['platform']}, torch {result['machine']['torch']}, "
             f"{result['machine']['threads']} threads. {cfg['samples']} calibration samples; test "
             f"{o['test_samples']} / probe train {o['train_samples']} samples"
             + (f"; images at {cfg['size']} px." if result.get("images", True) else "."), "",
             f"Original: accuracy {100 * o['accuracy']:.2f} ± {100 * o['accuracy_se']:.2f} % (frozen probe, seed "
             f"{cfg['seed']}), {o['params'] / 1e6:.2f} M parameters. Agreement: share of test samples on which the "
             "original's frozen probe predicts the same class from the plan's features as from the original's "
             f"(95 % bootstrap interval). Speed-up: onnxruntime median latency, original / plan, timed interleaved "
             f"({cfg['bench_iters']} runs).", ""]
    retrained = any("retrained_accuracy" in r for rows in result["methods"].values() for r in rows)
    trained = any("train_s" in r for rows in result["methods"].values() for r in rows)
    head = ("| budget | method | spans | FLOPs removed | params removed | "
            + " | ".join(f"speed-up b{b}" for b in bs) + " | agreement | 95 % CI | accuracy ± SE (%) | cosine |"
            + (" retrained acc. ± SE (%) | retrained agreement |" if retrained else "")
            + (" training s (× compress) |" if trained else ""))
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for budget in result["budgets"]:
        for m, rows in result["methods"].items():
            for r in rows:
                if r["budget"] != budget:
                    continue
                mark = "" if r["reaches_budget"] else " (short)"
                cells = [f"{100 * budget:.1f} %", _LABELS[m], _spans_text(r), f"{100 * r['flops_removed']:.1f} %{mark}",
                         f"{100 * r['params_removed']:.1f} %",
                         *[f"{r.get(f'speedup_b{b}', math.nan):.2f}×" for b in bs],
                         f"{r['agreement']:.4f}", f"{r['agreement_ci'][0]:.3f}–{r['agreement_ci'][1]:.3f}",
                         f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_se']:.2f}", f"{r['cosine']:.4f}"]
                if retrained:
                    cells += [f"{100 * r['retrained_accuracy']:.2f} ± {100 * r['retrained_accuracy_se']:.2f}",
                              f"{r['retrained_agreement']:.4f}"] if "retrained_accuracy" in r else ["–", "–"]
                if trained:
                    cells.append(f"{r['train_s']:.0f} ({r['train_x_compress']:.1f}×)" if "train_s" in r else "–")
                lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({n for rows in result["methods"].values() for r in rows for n in r["notes"]})
    if notes:
        lines += ["", "Notes:", *[f"* {n}" for n in notes]]
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in result["timings_s"].items()), ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Pareto plot: agreement vs measured speed-up (largest benchmark batch) and vs FLOPs removed,
    one line per method, bootstrap intervals as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bs = result["config"]["bench_batch_sizes"][-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    for m, rows in result["methods"].items():
        if not rows:
            continue
        y = [r["agreement"] for r in rows]
        err = [[r["agreement"] - r["agreement_ci"][0] for r in rows],
               [r["agreement_ci"][1] - r["agreement"] for r in rows]]
        speed, flops = [r[f"speedup_b{bs}"] for r in rows], [100 * r["flops_removed"] for r in rows]
        for ax, x in ((axes[0], speed), (axes[1], flops)):
            order = sorted(range(len(rows)), key=lambda i: x[i])
            ax.errorbar([x[i] for i in order], [y[i] for i in order],
                        yerr=[[err[0][i] for i in order], [err[1][i] for i in order]], marker="o", capsize=3,
                        label=_LABELS[m])
    axes[0].set_xlabel(f"measured onnxruntime speed-up at batch {bs} (original / plan)")
    axes[1].set_xlabel("FLOPs removed (%)")
    for ax in axes:
        ax.set_ylabel("agreement with the original's predictions")
        ax.grid(alpha=0.3)
    if any(result["methods"].values()):
        axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['model']}: quality vs speed (frozen probe, 95 % bootstrap intervals)")
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def write_report(result: dict[str, Any], out: Path, json_path: str | Path | None = None) -> None:
    """`frontier.json` (everything), `frontier.md`, `frontier.png` into `out`; the `--json` view to `json_path`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "frontier.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "frontier.md", to_markdown(result))
    plot(result, out / "frontier.png")
    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(json_view(result), indent=2) + "\n")


def budgets_from_text(text: str) -> tuple[float, ...]:
    """`"0.08,0.25"` → `(0.08, 0.25)`; each a fraction in (0, 1)."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    bad = [v for v in values if not 0 < v < 1]
    if bad or not values:
        raise ValueError(f"budgets must be fractions of the FLOPs in (0, 1), comma-separated; got {text!r}")
    return values


def config_for(quick: bool, **overrides: Any) -> FrontierConfig:
    """`FrontierConfig.quick(...)` or the whole-split `FrontierConfig(...)`; None overrides are dropped
    and a sample count of 0 means the whole split."""
    given = {k: (None if k.endswith("_samples") and v == 0 else v) for k, v in overrides.items() if v is not None}
    return FrontierConfig.quick(**given) if quick else replace(FrontierConfig(), **given)

