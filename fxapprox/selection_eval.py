"""Model + labelled data → how well each span score predicts the damage a span really does.

Every span of up to `max_len` blocks is scored by every score (the papers' [CLS]-on-50-samples
linear error, every metric on all tokens, the k-fold `heldout` residual and the `output` error
of the final features on held-out calibration samples), and its real damage is measured with
the low-noise ground truth of `fxapprox.damage` on the test split (probe agreement with the
original model, accuracy ± SE over seeds, CKA / cosine). The result ranks the scores by P@k /
R@k (bootstrap intervals) and Spearman ρ, and compares, for `num_blocks = 1..4`, the spans
chosen with the best score against the papers' Algorithm 1 top-1 span.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from fxapprox.damage import Damage, measure_damage, probe_accuracy, probe_predictions
from fxapprox.ranking import bootstrap_at_k, spearman
from fxapprox.span_features import output_errors, span_features
from fxapprox.spans import all_spans

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
    selection_blocks: tuple[int, ...] = (1, 2, 3, 4)
    bootstrap: int = 1000


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
    at = bootstrap_at_k({sp: costs[sp] for sp in spans}, {sp: damage[sp].disagreement for sp in spans}, k,
                        rounds=rounds)
    dis = [1 - damage[sp].agreement for sp in spans]
    drop = [-damage[sp].probe.mean for sp in spans]
    return {"score": name, "spans": len(spans), "p_at_k": at.precision, "p_ci": at.precision_ci,
            "r_at_k": at.recall, "r_ci": at.recall_ci,
            "rho_disagreement": spearman([costs[sp] for sp in spans], dis),
            "rho_accuracy_drop": spearman([costs[sp] for sp in spans], drop),
            "top": sorted(spans, key=lambda sp: costs[sp])[:k]}


def select_eval(model: torch.nn.Module, model_name: str, dataset: Any, cfg: SelectEvalConfig,
                on_ranking: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Scores, ground truth, ranking quality and selections → one JSON-ready dict.

    `on_ranking(result)` is called once the ranking is known, before the (slower) selections.
    """
    import fxapprox
    from fxapprox import data
    from fxapprox.evaluate import extract_features
    from fxapprox.select import best_spans

    def loader(split, n, seed, labels=False):
        return data.data_loader(model_name, dataset, split=split, num_samples=n, batch_size=cfg.batch_size,
                                size=cfg.size, seed=seed, with_labels=labels)

    calib = data.calibration_loader(model_name, dataset, num_samples=cfg.samples, batch_size=cfg.batch_size,
                                    size=cfg.size, seed=0)
    paper = fxapprox.analyze(model, calib, num_samples=cfg.paper_samples, tokens="cls")
    ours = fxapprox.analyze(model, calib, num_samples=cfg.samples, tokens="all", holdout_folds=cfg.folds)
    cls_heldout = fxapprox.analyze(model, calib, num_samples=cfg.samples, tokens="cls", holdout_folds=cfg.folds)
    spans = [sp for sp in all_spans(ours.num_blocks, cfg.max_len)]
    feats = span_features(model, calib, spans, {
        "heldout": loader("train", cfg.output_samples, seed=1),
        "train": loader("train", cfg.train_samples, seed=2, labels=True),
        "test": loader("test", cfg.test_samples, seed=3, labels=True),
    }, num_samples=cfg.samples)
    original, damage = measure_damage(feats, seeds=cfg.seeds, epochs=cfg.epochs)
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
    selections: list[dict[str, Any]] = []
    result = {
        "model": model_name, "config": asdict(cfg),
        "original": original.to_dict(),
        "spans": [{"span": list(sp), **damage[sp].to_dict(),
                   "scores": {n: c.get(sp) for n, c in scores.items()}} for sp in spans],
        "ranking": ranking, "ranking_single_block": ranking_single, "best_score": best["score"],
        "selections": selections,
    }
    if on_ranking is not None:
        on_ranking(result)
    train, test = loader("train", cfg.train_samples, 2, True), loader("test", cfg.test_samples, 3, True)
    ytr, yte = feats.labels["train"], feats.labels["test"]
    num_classes = int(max(ytr.max(), yte.max())) + 1
    ref_preds = probe_predictions(feats.original["train"], ytr, feats.original["test"], cfg.seeds, num_classes,
                                  epochs=cfg.epochs)
    for k in cfg.selection_blocks:
        chosen = {"papers top-1 (linear, cls)": [tuple(paper.top_k(1, span_len=k, metric="linear")[0][:2])],
                  f"best score DP ({best['score']})": best_spans(scores[best["score"]], ours.num_blocks, k)}
        for label, sel in chosen.items():
            res = fxapprox.compress(model, calib, spans=sel, num_samples=cfg.samples, progress=False)
            tr, _ = extract_features(res.module, train, desc="train features")
            te, _ = extract_features(res.module, test, desc="test features")
            preds = probe_predictions(tr, ytr, te, cfg.seeds, num_classes, epochs=cfg.epochs)
            probe = probe_accuracy(preds, yte, cfg.seeds, len(ytr))
            selections.append({"num_blocks": k, "selector": label, "spans": [list(s) for s in res.spans],
                               "accuracy": probe.mean, "stderr": probe.stderr, "std": probe.std,
                               "agreement": float((preds == ref_preds).float().mean())})
    return result


def write_report(result: dict[str, Any], out: Path) -> None:
    """JSON, markdown table and score-vs-damage plot into directory `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "select_eval.json").write_text(json.dumps(result, indent=2, default=list) + "\n")
    k = result["config"]["k"]
    o = result["original"]["probe"]
    lines = [f"# Span scores vs measured damage: {result['model']}", "",
             f"Original probe accuracy {o['mean']:.4f} ± {o['stderr']:.4f} (SE, seeds {o['seeds']}), "
             f"{o['num_train']} train / {o['num_test']} test samples.", "",
             f"Ground truth: per-sample disagreement of the probe predictions with the original model's "
             f"(same seeds). P@{k} = R@{k} here (both top lists have {k} entries); 95% bootstrap intervals.", ""]
    for title, rows in (("All spans up to %d blocks" % result["config"]["max_len"], result["ranking"]),
                        ("Single-block spans", result["ranking_single_block"])):
        lines += [f"## {title}", "", f"| score | spans | P@{k} | 95% CI | Spearman ρ (disagreement) | "
                  "Spearman ρ (accuracy drop) |", "|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: -(r["rho_disagreement"] if not math.isnan(r["rho_disagreement"]) else -2)):
            lines.append(f"| {r['score']} | {r['spans']} | {r['p_at_k']:.2f} | {r['p_ci'][0]:.2f}–{r['p_ci'][1]:.2f} | "
                         f"{r['rho_disagreement']:.3f} | {r['rho_accuracy_drop']:.3f} |")
        lines.append("")
    lines += ["## Selections", "", "| blocks | selector | spans | accuracy ± SE | agreement |", "|---|---|---|---|---|"]
    for s in result["selections"]:
        spans = ", ".join(f"{a} → {b}" for a, b in s["spans"])
        lines.append(f"| {s['num_blocks']} | {s['selector']} | {spans} | {s['accuracy']:.4f} ± {s['stderr']:.4f} | "
                     f"{s['agreement']:.4f} |")
    lines += ["", "## Measured damage per span", "", "| span | accuracy ± SE | agreement | frozen-probe agreement | CKA | cosine |",
              "|---|---|---|---|---|---|"]
    for sp in result["spans"]:
        p = sp["probe"]
        lines.append(f"| {sp['span'][0]} → {sp['span'][1]} | {p['mean']:.4f} ± {p['stderr']:.4f} | {sp['agreement']:.4f} | "
                     f"{sp['frozen_agreement']:.4f} | {sp['cka']:.4f} | {sp['cosine']:.4f} |")
    (out / "select_eval.md").write_text("\n".join(lines) + "\n")
    _plot(result, out / "select_eval.png")


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
    fig.savefig(path, dpi=110)
    plt.close(fig)
