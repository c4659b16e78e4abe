"""`fxapprox analyze MODEL --data DATA ...` → every span's scores (JSON, heatmap PNG, markdown), top spans printed.

MODEL is a built-in asset name, a Hugging Face model directory or a hub id (`assets.load_model`);
DATA a built-in dataset name, a `save_to_disk` directory, a directory of Fashion-MNIST idx files
or a hub id (`assets.load_dataset`). Calibration samples are a seeded random subset of `--split`;
`--output-samples N` draws N more and scores the `output` metric on them.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from fxapprox.cli.common import add_model_data_args, load_model_and_calibration, nonnegative_int, positive_int
from fxapprox.metrics import METRIC_INFO, METRICS

__all__ = ["add_parser", "run"]


def _folds(text: str) -> int:
    value = nonnegative_int(text)
    if value == 1:
        raise argparse.ArgumentTypeError("1 fold holds nothing out: give 0 (off) or K >= 2")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `analyze` on the `fxapprox` subparsers."""
    p = subparsers.add_parser(
        "analyze", help="score every span of blocks by every redundancy metric",
        description="One calibration pass scores every span s → e (blocks s+1..e) with the metrics "
        f"{', '.join(METRICS)}; prints the most redundant spans (TOAST Algorithm 1).",
    )
    add_model_data_args(p, samples=50)
    p.add_argument("--tokens", choices=("cls", "mean", "all"), default="all",
                   help="rows scored per sample: every token, the token mean, or the first token (default: all; "
                   "'--tokens cls' is the papers' setting, whose fit interpolates when --samples is below the "
                   "hidden width: every span then scores ~0)")
    p.add_argument("--metric", choices=tuple(METRIC_INFO), default="linear",
                   help="metric to rank by (default: linear; 'heldout' needs --holdout-folds, "
                   "'output' --output-samples)")
    p.add_argument("--holdout-folds", type=_folds, default=0, metavar="K",
                   help="also score the held-out residual, batches split into K >= 2 folds")
    p.add_argument("--output-samples", type=nonnegative_int, default=0, metavar="N",
                   help="also score 'output': each span replaced by its fitted map, the relative error of "
                   "the final features on N held-out samples drawn after the --samples ones (costs one "
                   "forward plus one suffix per span per batch; default: 0, off)")
    p.add_argument("--output-max-len", type=positive_int, default=None, metavar="L",
                   help="score 'output' only for spans of up to L blocks (default: every span)")
    p.add_argument("--top", type=positive_int, default=5, help="spans to print (default: 5)")
    p.add_argument("--span-len", type=positive_int, default=None, help="rank only spans of this many blocks")
    p.add_argument("--json", metavar="PATH", help="write the full analysis as JSON")
    p.add_argument("--heatmap", metavar="PATH", help="write heatmaps of the score matrices (PNG)")
    p.add_argument("--heatmap-metric", choices=tuple(METRIC_INFO), default=None,
                   help="draw only this metric (default: every metric, one panel each)")
    p.add_argument("--markdown", metavar="PATH", help="write the ranked span table as markdown")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Load model and data, analyse, print the top spans and write the requested files."""
    from fxapprox.analysis import UnderdeterminedScoreWarning, analyze

    model, _, loader = load_model_and_calibration(args, extra_samples=args.output_samples)
    with warnings.catch_warnings():  # the same text is printed once below, as a note
        warnings.simplefilter("ignore", UnderdeterminedScoreWarning)
        an = analyze(model, loader, num_samples=args.samples, tokens=args.tokens, blocks=args.blocks,
                     holdout_folds=args.holdout_folds, output_samples=args.output_samples,
                     output_max_len=args.output_max_len, progress=not args.no_progress)
    an.model = args.model
    top = an.top_k(args.top, span_len=args.span_len, metric=args.metric)
    print(f"{an.model}: {an.num_blocks} blocks, {an.samples} samples, tokens={an.tokens}; "
          f"top {len(top)} spans by {args.metric} (s -> e replaces blocks s+1..e):")
    for rank, (s, e, value) in enumerate(top, 1):
        print(f"  {rank:2d}. {s:3d} -> {e:<3d} ({e - s} block{'s' if e - s > 1 else ''})  {value:.4g}")
    for note in an.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        an.to_json(args.json)
        print(f"wrote {args.json}")
    if args.heatmap:
        an.plot(args.heatmap, metric=args.heatmap_metric)
        print(f"wrote {args.heatmap}")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(an.to_markdown(metric=args.metric))
        print(f"wrote {args.markdown}")
    return 0
