"""`fxapprox select-eval MODEL --data DATA` → which span score predicts real damage (table, JSON, plot)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fxapprox.cli.common import (
    add_units_arg,
    check_out_dir,
    nonnegative_int,
    optional_positive_ints,
    positive_int,
    spans_arg,
)

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `select-eval` on the `fxapprox` subparsers."""
    p = subparsers.add_parser(
        "select-eval", help="rank every span by every score and measure each span's real damage",
        description="Scores every span of up to --max-len blocks with every score (papers' [CLS] linear "
        "error, all-token metrics, k-fold held-out residual, output error), measures each span's damage "
        "on the test split (probe agreement with the original, accuracy ± SE over seeds, CKA, cosine), "
        "and reports P@k / R@k with bootstrap intervals (against the least-disagreement and the "
        "least-accuracy-drop spans) and Spearman ρ per score; then every span replaced by the identity, "
        "an optional fit-sample ablation (--sample-sizes) and num_blocks=1..4 selections by the best score "
        "vs the papers' Algorithm 1. The report is rewritten after every stage. Heavy: use a GPU for whole "
        "splits.",
    )
    p.add_argument("model", help="built-in model name, Hugging Face model directory or hub id")
    p.add_argument("--data", required=True, help="built-in dataset name or directory")
    p.add_argument("--samples", type=positive_int, default=256, help="calibration samples (default: 256)")
    p.add_argument("--train", type=nonnegative_int, default=2000,
                   help="probe training samples (0: whole split; default 2000)")
    p.add_argument("--test", type=nonnegative_int, default=1000, help="test samples (0: whole split; default 1000)")
    p.add_argument("--size", type=positive_int, default=112, help="image side in pixels (default: 112)")
    p.add_argument("--max-len", type=positive_int, default=4,
                   help="longest span scored, in blocks (units with --units half; default: 4)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="batch size of feature extraction")
    p.add_argument("--epochs", type=positive_int, default=30, help="probe epochs (default 30: the papers' 5 underfit "
                   "on subsets)")
    p.add_argument("--no-identity", action="store_true", help="skip measuring every span replaced by the identity")
    p.add_argument("--sample-sizes", type=optional_positive_ints, default="",
                   help="fit-sample ablation (TOAST Figure 5), comma-separated, "
                   "e.g. 10,50,100,500,1000 (default: none)")
    p.add_argument("--ablation-spans", type=spans_arg, default=None,
                   help="spans of the sample-size ablation, e.g. 0-1,9-10 (default: every single-block span)")
    p.add_argument("--selection-blocks", type=optional_positive_ints, default="1,2,3,4",
                   help="num_blocks values to compare selections at "
                   "('' to skip)")
    p.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap rounds for the P@k intervals")
    add_units_arg(p)
    p.add_argument("--out", required=True, help="directory for select_eval.{md,json,png}")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from fxapprox.study import assets
    from fxapprox.study.selection_eval import SelectEvalConfig, select_eval, write_report

    check_out_dir(args.out, overwrite=True)  # a report is rewritten in place: only refuse a file or no way to make it
    cfg = SelectEvalConfig(samples=args.samples, train_samples=args.train or None, test_samples=args.test or None,
                           size=args.size, max_len=args.max_len, batch_size=args.batch_size, bootstrap=args.bootstrap,
                           epochs=args.epochs, identity=not args.no_identity,
                           sample_sizes=args.sample_sizes,
                           ablation_spans=tuple(args.ablation_spans) if args.ablation_spans else None,
                           selection_blocks=args.selection_blocks,
                           units=args.units)
    model = assets.load_model(args.model)
    if torch.cuda.is_available():
        model = model.cuda()
    out = Path(args.out)
    result = select_eval(model, args.model, assets.load_dataset(args.data), cfg,
                         on_progress=lambda partial: write_report(partial, out))
    write_report(result, out)
    print((Path(args.out) / "select_eval.md").read_text())
    print(f"report written to {Path(args.out).resolve()}")
    return 0
