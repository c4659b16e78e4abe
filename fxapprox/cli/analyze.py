"""`fxapprox analyze MODEL --data DATA ...` → every span's scores (JSON, heatmap PNG, markdown), top spans printed.

MODEL is a built-in asset name, a Hugging Face model directory or a hub id (`assets.load_model`);
DATA a built-in dataset name, a `save_to_disk` directory, a directory of Fashion-MNIST idx files
or a hub id (`assets.load_dataset`). Calibration samples are a seeded random subset of `--split`;
`--output-samples N` (default 128) draws N more and scores the `output` metric on them, the
default ranking (README Results: it predicts damage best).
"""

from __future__ import annotations

import argparse
import sys
import warnings

from fxapprox.atomic import atomic_write_text
from fxapprox.cli.common import (
    add_model_data_args,
    add_units_arg,
    load_model_and_calibration,
    nonnegative_int,
    output_parent,
    positive_int,
)
from fxapprox.metrics import METRIC_INFO, METRICS
from fxapprox.output_score import OUTPUT_TARGETS

__all__ = ["add_parser", "run", "DEFAULT_OUTPUT_SAMPLES"]

DEFAULT_OUTPUT_SAMPLES = 128


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
    p.add_argument("--metric", choices=tuple(METRIC_INFO), default=None,
                   help="metric to rank by (default: output; linear with --output-samples 0; 'heldout' needs "
                   "--holdout-folds)")
    p.add_argument("--holdout-folds", type=_folds, default=0, metavar="K",
                   help="also score the held-out residual, batches split into K >= 2 folds")
    p.add_argument("--output-samples", type=nonnegative_int, default=None, metavar="N",
                   help="score 'output': each span replaced by its fitted map, the damage to the model's output "
                   "(KL of a head's predictions, else the relative error of the final features) on N held-out "
                   "samples drawn after the --samples ones (costs one forward plus one suffix per span per "
                   f"batch; default: {DEFAULT_OUTPUT_SAMPLES}, or as many as the split holds after --samples; "
                   "0: off)")
    p.add_argument("--output-max-len", type=nonnegative_int, default=4, metavar="L",
                   help="score 'output' only for spans of up to L blocks (default: 4; 0: every span)")
    p.add_argument("--output-target", choices=OUTPUT_TARGETS, default="auto",
                   help="what 'output' compares: logits when the model has a head, else pooled final features "
                   "(default: auto)")
    add_units_arg(p)
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
    from fxapprox import distributed
    from fxapprox.analysis import UnderdeterminedScoreWarning, analyze

    wanted = DEFAULT_OUTPUT_SAMPLES if args.output_samples is None else args.output_samples
    model, _, loader = load_model_and_calibration(args, extra_samples=wanted,
                                                  at_most_extra=args.output_samples is None)
    args.output_samples = args.extra_samples
    with warnings.catch_warnings():  # the same text is printed once below, as a note
        warnings.simplefilter("ignore", UnderdeterminedScoreWarning)
        an = analyze(model, loader, num_samples=args.samples, tokens=args.tokens, blocks=args.blocks,
                     holdout_folds=args.holdout_folds, output_samples=args.output_samples,
                     output_max_len=args.output_max_len or None, output_target=args.output_target,
                     progress=not args.no_progress, units=args.units)
    if not distributed.is_main():  # under torchrun rank 0 alone prints and writes
        return 0
    an.model = args.model
    if args.metric is None:
        args.metric = "output" if args.output_samples else "linear"
    top = an.top_k(args.top, span_len=args.span_len, metric=args.metric)
    unit = "half-block unit" if an.units == "half" else "block"
    print(f"{an.model}: {an.num_blocks} {unit}s, {an.samples} samples, tokens={an.tokens}; "
          f"top {len(top)} spans by {args.metric} (s -> e replaces {unit}s s+1..e):")
    for rank, (s, e, value) in enumerate(top, 1):
        print(f"  {rank:2d}. {s:3d} -> {e:<3d} ({e - s} {unit}{'s' if e - s > 1 else ''})  {value:.4g}")
    for note in an.notes:
        print(f"note: {note}", file=sys.stderr)
    # the paths were checked before the work; their directories are made now that it succeeded
    if args.json:
        with output_parent(args.json):
            an.to_json(args.json)
        print(f"wrote {args.json}")
    if args.heatmap:
        with output_parent(args.heatmap):
            an.plot(args.heatmap, metric=args.heatmap_metric)
        print(f"wrote {args.heatmap}")
    if args.markdown:
        with output_parent(args.markdown):
            atomic_write_text(args.markdown, an.to_markdown(metric=args.metric))
        print(f"wrote {args.markdown}")
    return 0
