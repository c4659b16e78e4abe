"""Model + labelled data → how well each span score predicts the damage a span really does.

Every span of up to `max_len` blocks is scored by every score (the papers' [CLS]-on-50-samples
linear error, every metric on all tokens, the k-fold `heldout` residual and the `output` error
of the final features on held-out calibration samples), and its real damage is measured with
the low-noise ground truth of `fxapprox.damage` on the test split (probe agreement with the
original model, accuracy ± SE over seeds, CKA / cosine). The result ranks the scores by P@k /
R@k (bootstrap intervals) against the least-disagreement and the least-accuracy-drop spans, and
Spearman ρ; it also measures every span replaced by the identity, the accuracy of chosen spans
fitted on 10…1000 samples (TOAST Figure 5), and compares, for `num_blocks = 1..4`, the spans
chosen with the best score against the papers' Algorithm 1 top-1 span.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fxapprox.atomic import atomic_write_text, save_figure
from fxapprox.prepare import model_device
from fxapprox.spans import all_spans
from fxapprox.study.damage import Damage, measure_damage, probe_accuracy, probe_predictions
from fxapprox.study.ranking import bootstrap_at_k, spearman
from fxapprox.study.span_features import output_errors, span_features

__all__ = ["SelectEvalConfig", "select_eval", "write_report"]

log = logging.getLogger(__name__)

Span = tuple[int, int]


@dataclass
class SelectEvalConfig:
    """Sizes of every stage (defaults fit two CPU cores on a small subset; raise them on a GPU)."""

    samples: int = 256          # calibration samples for the fits and the all-token scores
    paper_samples: int = 50     # the papers' [CLS] score
    output_samples: int = 128   # held-out calibration samples for the `output` score
    max_len: int = 4
    train_samples: int | None = 2000
    test_samples: int | None = 1000
    size: int = 112
    batch_size: int = 64
    folds: int = 2
    k: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 30            # the papers' 5 epochs underfit on subsets (5 × 8 steps at 2,000 samples)
    identity: bool = True       # also measure every span replaced by the identity
    sample_sizes: tuple[int, ...] = ()         # fit-sample ablation (TOAST Figure 5), e.g. (10, 50, 100, 500, 1000)
    ablation_spans: tuple[Span, ...] | None = None  # spans of the ablation; None: every single-block span
    selection_blocks: tuple[int, ...] = (1, 2, 3, 4)
    bootstrap: int = 1000
    units: str = "block"        # "half": spans, max_len and selection sizes count half blocks


def _costs_from_matrix(an, metric: str, spans: list[Span]) -> dict[Span, float]:
    from fxapprox.metrics import cost

    m = an.scores[metric]
    out = {}
    for s, e in spans:
        v = float(m[s + 1, e + 1])
        if not math.isnan(v):
            out[(s, e)] = cost(metric, v)
    return out


def _rank_row(name: str, costs: dict[Span, float], damage: dict[Span, Damage], k: int, rounds: int) -> dict:
    spans = [sp for sp in costs if sp in damage]
    costs = {sp: costs[sp] for sp in spans}
    agree = bootstrap_at_k(costs, {sp: damage[sp].disagreement for sp in spans}, k, rounds=rounds)
    drop = bootstrap_at_k(costs, {sp: damage[sp].errors for sp in spans}, k, rounds=rounds)
    dis = [1 - damage[sp].agreement for sp in spans]
    acc_drop = [-damage[sp].probe.mean for sp in spans]
    return {"score": name, "spans": len(spans), "p_at_k": agree.precision, "p_ci": agree.precision_ci,
            "r_at_k": agree.recall, "r_ci": agree.recall_ci,
            "p_at_k_accuracy_drop": drop.precision, "p_ci_accuracy_drop": drop.precision_ci,
            "rho_disagreement": spearman([costs[sp] for sp in spans], dis),
            "rho_accuracy_drop": spearman([costs[sp] for sp in spans], acc_drop),
            "top": sorted(spans, key=lambda sp: costs[sp])[:k]}


def _probe_summary(preds: torch.Tensor, labels: torch.Tensor, ref_preds: torch.Tensor, cfg, n_train: int) -> dict:
    probe = probe_accuracy(preds, labels, cfg.seeds, n_train)
    return {"accuracy": probe.mean, "stderr": probe.stderr, "std": probe.std,
            "agreement": float((preds == ref_preds).float().mean())}


def select_eval(model: torch.nn.Module, model_name: str, dataset: Any, cfg: SelectEvalConfig, *,
                preprocessor: Any = None,
                on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Scores, ground truth, ranking quality, identity, sample-size ablation and selections → one
    JSON-ready dict.

    The data go through `preprocessor` (see `fxapprox.study.data.make_preprocessor`), by default the one
    `model_name` implies. `on_progress(result)` is called after every stage (ranking, identity,
    each ablation size, each selection size) with the result so far, so a long run that is cut
    short keeps what it finished. The train and test loaders are materialised once (their
    preprocessed tensors are held in memory).
    """
    import fxapprox
    from fxapprox.select import best_spans
    from fxapprox.study import data
    from fxapprox.study.evaluate import extract_features

    proc = preprocessor if preprocessor is not None else model_name

    def loader(split, n, seed, labels=False):
        return list(data.data_loader(proc, dataset, split=split, num_samples=n, batch_size=cfg.batch_size,
                                     size=cfg.size, seed=seed, with_labels=labels))

    def report():
        if on_progress is not None:
            on_progress(result)

    device = model_device(model)
    probe_kw = dict(seeds=cfg.seeds, epochs=cfg.epochs, device=device, progress=False)
    calib_samples = max((cfg.samples, *cfg.sample_sizes))
    calib = data.calibration_loader(proc, dataset, num_samples=calib_samples, batch_size=cfg.batch_size,
                                    size=cfg.size, seed=0)
    paper = fxapprox.analyze(model, calib, num_samples=cfg.paper_samples, tokens="cls", units=cfg.units)
    ours = fxapprox.analyze(model, calib, num_samples=cfg.samples, tokens="all", holdout_folds=cfg.folds,
                            flops=True, units=cfg.units)
    cls_heldout = fxapprox.analyze(model, calib, num_samples=cfg.samples, tokens="cls", holdout_folds=cfg.folds,
                                   units=cfg.units)
    spans = [sp for sp in all_spans(ours.num_blocks, cfg.max_len)]
    probe_data = {"train": loader("train", cfg.train_samples, seed=2, labels=True),
                  "test": loader("test", cfg.test_samples, seed=3, labels=True)}
    feats = span_features(model, calib, spans, {"heldout": loader("train", cfg.output_samples, seed=1),
                                                **probe_data}, num_samples=cfg.samples, units=cfg.units)
    original, damage = measure_damage(feats, **probe_kw)
    scores: dict[str, dict[Span, float]] = {
        f"linear (cls, {paper.samples}) [papers]": _costs_from_matrix(paper, "linear", spans),
        f"heldout (cls, {cls_heldout.samples})": _costs_from_matrix(cls_heldout, "heldout", spans),
        f"output (final features, {cfg.output_samples} held-out)": output_errors(feats, "heldout"),
    }
    for metric in ours.scores:
        scores[f"{metric} (all tokens, {ours.samples})"] = _costs_from_matrix(ours, metric, spans)
    ranking = [_rank_row(name, c, damage, cfg.k, cfg.bootstrap) for name, c in scores.items() if c]
    single = [sp for sp in spans if sp[1] - sp[0] == 1]
    ranking_single = [_rank_row(name, {sp: v for sp, v in c.items() if sp in single}, damage, cfg.k, cfg.bootstrap)
                      for name, c in scores.items() if any(sp in single for sp in c)]
    best = max(ranking, key=lambda r: (r["rho_disagreement"] if not math.isnan(r["rho_disagreement"]) else -2))
    total_params, total_flops = ours.total_params, ours.total_flops
    span_rows = []
    for sp in spans:
        params, flops = ours.savings(*sp, "linear")
        id_params, id_flops = ours.savings(*sp, "identity")
        span_rows.append({"span": list(sp), **damage[sp].to_dict(), "scores": {n: c.get(sp) for n, c in scores.items()},
                          "params_removed": params, "flops_removed": flops,
                          "params_removed_identity": id_params, "flops_removed_identity": id_flops})
    result = {
        "model": model_name, "config": asdict(cfg), "total_params": total_params, "total_flops": total_flops,
        "original": original.to_dict(), "spans": span_rows,
        "ranking": ranking, "ranking_single_block": ranking_single, "best_score": best["score"],
        "sample_sizes": [], "selections": [],
    }
    report()
    original_sets = [(feats.original["train"], feats.original["test"])]
    del feats
    if cfg.identity:
        id_feats = span_features(model, calib, spans, probe_data, transform="identity", num_samples=cfg.samples,
                                 units=cfg.units)
        _, id_damage = measure_damage(id_feats, **probe_kw)
        for row, sp in zip(span_rows, spans):
            row["identity"] = id_damage[sp].to_dict()
        del id_feats
        report()
    ablation_spans = list(cfg.ablation_spans or single)
    for n in cfg.sample_sizes:
        n_feats = span_features(model, calib, ablation_spans, probe_data, num_samples=n, units=cfg.units)
        _, n_damage = measure_damage(n_feats, **probe_kw)
        result["sample_sizes"].append({"samples": n, "spans": [{"span": list(sp), **n_damage[sp].to_dict()}
                                                               for sp in ablation_spans]})
        del n_feats
        report()
    train, test = probe_data["train"], probe_data["test"]
    ytr = torch.cat([b["labels"] for b in train])
    yte = torch.cat([b["labels"] for b in test])
    num_classes = int(max(ytr.max(), yte.max())) + 1
    for k in cfg.selection_blocks:
        chosen = {"papers top-1 (linear, cls)": [tuple(paper.top_k(1, span_len=k, metric="linear")[0][:2])],
                  f"best score DP ({best['score']})": best_spans(scores[best["score"]], ours.num_blocks, k)}
        sets = []
        for sel in chosen.values():
            res = fxapprox.compress(model, calib, spans=sel, num_samples=cfg.samples, progress=False, units=cfg.units)
            sets.append((extract_features(res.module, train, desc="train features")[0],
                         extract_features(res.module, test, desc="test features")[0]))
        preds, _ = probe_predictions(original_sets + sets, ytr, cfg.seeds, num_classes, epochs=cfg.epochs,
                                  device=device)
        for (label, sel), p in zip(chosen.items(), preds[1:]):
            result["selections"].append({"num_blocks": k, "selector": label, "spans": [list(s) for s in sel],
                                         **_probe_summary(p, yte, preds[0], cfg, len(ytr))})
        report()
    return result


def _pm(probe: dict[str, Any]) -> str:
    return f"{100 * probe['mean']:.2f} ± {100 * probe['std']:.2f}"


def _millions(v: float | None) -> str:
    return "–" if v is None else f"{v / 1e6:.2f} M"


def _span_table(result: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Papers' table format: span, parameters and FLOPs removed, accuracy with identity and linear."""
    tp, tf = result["total_params"], result["total_flops"]
    lines = ["| span | params removed (linear) | FLOPs removed (linear) | identity acc. (%) | linear acc. (%) | "
             "agreement | frozen-probe agreement | CKA | cosine |", "|---|---|---|---|---|---|---|---|---|"]
    for sp in rows:
        flops = "–" if sp["flops_removed"] is None or not tf else f"{100 * sp['flops_removed'] / tf:.1f} %"
        ident = _pm(sp["identity"]["probe"]) if "identity" in sp else "–"
        lines.append(f"| {sp['span'][0]} → {sp['span'][1]} | {_millions(sp['params_removed'])} "
                     f"({100 * sp['params_removed'] / tp:.1f} %) | {flops} | {ident} | {_pm(sp['probe'])} | "
                     f"{sp['agreement']:.4f} | {sp['frozen_agreement']:.4f} | {sp['cka']:.4f} | {sp['cosine']:.4f} |")
    return lines


def write_report(result: dict[str, Any], out: Path) -> None:
    """JSON, markdown tables and plots (score vs damage; sample-size ablation) into directory `out`."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "select_eval.json", json.dumps(result, indent=2, default=list) + "\n")
    cfg = result["config"]
    k = cfg["k"]
    o = result["original"]["probe"]
    lines = [f"# Span scores vs measured damage: {result['model']}", "",
             f"Original probe accuracy {_pm(o)} % (mean ± std over seeds {o['seeds']}; SE "
             f"{100 * o['stderr']:.2f}), {o['num_train']} train / {o['num_test']} test samples, {cfg['size']} px "
             f"(images), {cfg['epochs']} probe epochs; maps fitted on {cfg['samples']} calibration samples.", "",
             f"Ground truth: the {k} spans whose probe predictions disagree least with the original model's (same "
             f"seeds), and, as in TOAST Table 10, the {k} spans with the smallest accuracy drop. P@{k} = R@{k} here "
             f"(both top lists have {k} entries); 95% bootstrap intervals over the test samples.", ""]
    for title, rows in ((f"All spans up to {cfg['max_len']} blocks", result["ranking"]),
                        ("Single-block spans", result["ranking_single_block"])):
        lines += [f"## Scores: {title}", "",
                  f"| score | spans | P@{k} (agreement) | 95% CI | P@{k} (accuracy drop) | "
                  "95% CI | Spearman ρ (disagreement) | Spearman ρ (accuracy drop) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: -(r["rho_disagreement"] if not math.isnan(r["rho_disagreement"]) else -2)):
            lines.append(f"| {r['score']} | {r['spans']} | {r['p_at_k']:.2f} | {r['p_ci'][0]:.2f}–{r['p_ci'][1]:.2f} | "
                         f"{r['p_at_k_accuracy_drop']:.2f} | {r['p_ci_accuracy_drop'][0]:.2f}–"
                         f"{r['p_ci_accuracy_drop'][1]:.2f} | {r['rho_disagreement']:.3f} | "
                         f"{r['rho_accuracy_drop']:.3f} |")
        lines.append("")
    single = [sp for sp in result["spans"] if sp["span"][1] - sp["span"][0] == 1]
    multi = [sp for sp in result["spans"] if sp["span"][1] - sp["span"][0] > 1]
    lines += ["## Single-block spans (papers' table format)", "",
              f"Accuracy mean ± std over seeds; original {_pm(o)} %. Agreement etc. are for the linear map.", ""]
    lines += _span_table(result, single) + [""]
    if result["sample_sizes"]:
        sizes = [r["samples"] for r in result["sample_sizes"]]
        lines += ["## Sample-size ablation (TOAST Figure 5)", "",
                  "Linear accuracy (%) of each span fitted on the first n calibration samples (agreement in brackets).",
                  "", "| span | " + " | ".join(f"n = {n}" for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
        for i, sp in enumerate(result["sample_sizes"][0]["spans"]):
            cells = [f"{_pm(r['spans'][i]['probe'])} ({r['spans'][i]['agreement']:.3f})"
                     for r in result["sample_sizes"]]
            lines.append(f"| {sp['span'][0]} → {sp['span'][1]} | " + " | ".join(cells) + " |")
        lines.append("")
    if result["selections"]:
        lines += ["## Selections", "", "| blocks | selector | spans | accuracy ± SE (%) | agreement |",
                  "|---|---|---|---|---|"]
        for s in result["selections"]:
            spans = ", ".join(f"{a} → {b}" for a, b in s["spans"])
            lines.append(f"| {s['num_blocks']} | {s['selector']} | {spans} | {100 * s['accuracy']:.2f} ± "
                         f"{100 * s['stderr']:.2f} | {s['agreement']:.4f} |")
        lines.append("")
    lines += ["## Multi-block spans", ""] + _span_table(result, multi)
    atomic_write_text(out / "select_eval.md", "\n".join(lines) + "\n")
    _plot(result, out / "select_eval.png")
    if result["sample_sizes"]:
        _plot_sample_sizes(result, out / "sample_sizes.png")


def _plot_sample_sizes(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["samples"] for r in result["sample_sizes"]]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    for i, sp in enumerate(result["sample_sizes"][0]["spans"]):
        acc = [100 * r["spans"][i]["probe"]["mean"] for r in result["sample_sizes"]]
        ax.plot(sizes, acc, marker="o", label=f"{sp['span'][0]} → {sp['span'][1]}")
    ax.axhline(100 * result["original"]["probe"]["mean"], color="black", linestyle="--", label="original")
    ax.set_xscale("log")
    ax.set_xlabel("calibration samples for the fit")
    ax.set_ylabel("linear-probe accuracy (%)")
    ax.set_title(f"{result['model']}: accuracy vs fit samples (linear map)")
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["ranking"]
    cols = 4
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.6 * nrows), squeeze=False, constrained_layout=True)
    dis = {tuple(sp["span"]): 1 - sp["agreement"] for sp in result["spans"]}
    for ax, r in zip(axes.flat, rows):
        pts = [(sp["scores"][r["score"]], dis[tuple(sp["span"])], sp["span"][1] - sp["span"][0])
               for sp in result["spans"] if sp["scores"].get(r["score"]) is not None]
        x, y, length = zip(*pts)
        sc = ax.scatter(x, y, c=length, cmap="viridis", s=18, vmin=1, vmax=result["config"]["max_len"])
        ax.set_title(f"{r['score']}\nρ = {r['rho_disagreement']:.2f}, P@{result['config']['k']} = {r['p_at_k']:.2f}",
                     fontsize=8)
        ax.set_xlabel("score (cost: lower = more redundant)", fontsize=7)
        ax.set_ylabel("disagreement with original", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.colorbar(sc, ax=axes, shrink=0.6, label="blocks in span")
    fig.suptitle(f"{result['model']}: span scores vs measured damage (test split)")
    save_figure(fig, path, dpi=110)
    plt.close(fig)
