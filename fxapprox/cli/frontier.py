"""`fxapprox frontier MODEL --data DATA --out DIR` → every method's plan per FLOP budget, measured alike."""

from __future__ import annotations

import argparse
from pathlib import Path

from fxapprox.cli.common import check_out_dir, nonnegative_int, positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `frontier` on the `fxapprox` subparsers."""
    p = subparsers.add_parser(
        "frontier", help="each method's plan at each FLOP budget, measured alike (agreement, accuracy, latency)",
        description="For each budget (fraction of the model's FLOPs to save, net of added maps; default: what "
        "removing 1..6 whole blocks saves) the plan of each method (papers: TOAST Algorithm 1 top-1 span, linear "
        "map; shortgpt: lowest Block Influence blocks, identity; blockpruner: iterative half units, identity; "
        "replaceme: least-angle window, folded linear map; fxapprox: DP over the output score on mixed units "
        "(whole blocks and attention/MLP halves), linear maps refitted in sequence), "
        "then every plan measured the same way: FLOPs and parameters removed, onnxruntime latency at batch 1 "
        "and 32 interleaved with the original, agreement with the original's predictions under its frozen "
        "probe (bootstrap interval), accuracy ± SE, final-feature cosine. Writes frontier.{md,json,png} into "
        "--out after every plan. Under torchrun the ranks split the calibrations and the feature extraction; "
        "rank 0 alone exports, times and writes.",
    )
    p.add_argument("model", help="built-in model name (dinov2-small, minilm-l6), Hugging Face directory or hub id")
    p.add_argument("--data", required=True, help="built-in dataset name (mnist-5k, fashion-mnist, rotten-tomatoes) "
                   "or directory")
    p.add_argument("--out", required=True, help="report directory (frontier.md, frontier.json, frontier.png)")
    p.add_argument("--json", default=None, help="also write the machine-readable result here: {original: "
                   "{accuracy}, methods: {name: [{budget, flops_removed, params_removed, speedup_b1, speedup_b32, "
                   "agreement, agreement_ci, accuracy, accuracy_se, spans}, ...]}}")
    p.add_argument("--quick", action="store_true", help="sizes for 2 CPU cores (56 px, 256 calibration / 500 test "
                   "samples, frozen probe only, short latency runs): under 30 minutes on DINOv2-small / MNIST-5k")
    p.add_argument("--budgets", type=_budgets, default=None,
                   help="FLOP fractions to save, comma-separated, e.g. 0.08,0.25 (default: what removing 1..6 whole "
                   "blocks saves)")
    p.add_argument("--methods", type=_methods, default=None,
                   help="comma-separated subset of papers,shortgpt,blockpruner,replaceme,fxapprox,fxapprox-refined,"
                   "fxapprox-tuned,fxapprox-mlp,llm-streamline-style (default: the first five, the training-free "
                   "rules; fxapprox-refined trains fxapprox's maps and the norms and biases after them at the output, "
                   "fxapprox-tuned every parameter after the first span (lr 1e-5), fxapprox-mlp chooses and replaces "
                   "spans by map + MLP (10 %% of the span's FLOPs, paid from the budget) and refines them, "
                   "llm-streamline-style replaces its window by a trained FFN)")
    p.add_argument("--samples", type=positive_int, default=None,
                   help="calibration samples (default 500; 256 with --quick)")
    p.add_argument("--train", type=nonnegative_int, default=None,
                   help="probe training samples (0: whole split)")
    p.add_argument("--test", type=nonnegative_int, default=None,
                   help="test samples (0: whole split)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="image side in pixels (default 112; 56 with --quick)")
    p.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=None,
                   help="also retrain a probe per plan and seed (the papers' protocol; default on, off with --quick)")
    p.add_argument("--bench-iters", type=positive_int, default=None,
                   help="timed runs per batch size and model")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing a report there")
    p.add_argument("--keep-onnx", action="store_true", help="keep original.onnx in --out (plans' files are "
                   "always deleted once timed)")
    p.set_defaults(func=run)
    return p


def _budgets(text: str) -> tuple[float, ...]:
    """argparse type: `0.08,0.25` → budgets, with the format in the error."""
    from fxapprox.study.frontier import budgets_from_text

    try:
        return budgets_from_text(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err}, e.g. 0.08,0.25") from None


def _methods(text: str) -> tuple[str, ...]:
    """argparse type: a comma-separated subset of the field's methods."""
    from fxapprox.study.field_methods import METHODS

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown methods {unknown or [text]}: choose from {','.join(METHODS)}")
    return names


def run(args: argparse.Namespace) -> int:
    import torch

    from fxapprox import distributed
    from fxapprox.study import assets
    from fxapprox.study.frontier import config_for, frontier, write_report

    check_out_dir(args.out, args.overwrite)
    cfg = config_for(args.quick, budgets=args.budgets, methods=args.methods, samples=args.samples,
                     train_samples=args.train, test_samples=args.test, size=args.size, retrain=args.retrain,
                     bench_iters=args.bench_iters)
    model = assets.load_model(args.model)
    if torch.cuda.is_available():
        model = model.cuda()
    out = Path(args.out)
    result = frontier(model, args.model, assets.load_dataset(args.data), cfg,
                      on_progress=lambda partial: write_report(partial, out, args.json),
                      workdir=out / "onnx" if args.keep_onnx else None)
    if not distributed.is_main():  # under torchrun rank 0 alone writes and prints
        return 0
    write_report(result, out, args.json)
    print((out / "frontier.md").read_text())
    print(f"report written to {out.resolve()}")
    return 0
