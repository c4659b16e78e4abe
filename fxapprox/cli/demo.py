"""`fxapprox demo` → the whole pipeline on a built-in real model and data set, with a report directory."""

from __future__ import annotations

import argparse

from fxapprox.cli.common import check_out_dir, positive_int
from fxapprox.study.demo import DEMO_METRICS

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `demo` on the `fxapprox` subparsers."""
    p = subparsers.add_parser(
        "demo", help="analyze, compress, evaluate, export and benchmark a real model end to end",
        description="Runs every stage on DINOv2-small + MNIST-5k (defaults, minutes on 2 CPU cores): "
        "span heatmap, compression (linear and identity), linear-probe accuracy of original vs "
        "compressed, ONNX export with parity check, onnxruntime latency. Prints a summary and writes a "
        "report directory (markdown, JSON, PNG, ONNX, plans).",
    )
    p.add_argument("--model", default="dinov2-small", help="built-in model name or HF directory")
    p.add_argument("--data", default="mnist-5k", help="built-in dataset name or directory")
    p.add_argument("--size", type=positive_int, default=None, help="image side in pixels (default 112; 224 with "
                   "--full)")
    p.add_argument("--samples", type=positive_int, default=None, help="calibration samples that score the spans and "
                   "fit the maps (default 256; 500 with --full)")
    p.add_argument("--num-blocks", type=positive_int, default=2, help="blocks to remove (default: 2)")
    p.add_argument("--metric", choices=DEMO_METRICS, default="output", help="score that chooses the spans "
                   "(default: output, the final-feature error, which predicts real damage best; linear: the papers' "
                   "error)")
    p.add_argument("--full", action="store_true", help="the papers' protocol: 224 px, 500 samples, whole "
                   "splits (meant for a GPU)")
    p.add_argument("--out", default=None, help="report directory, new or empty (default: "
                   "reports/fxapprox-demo-DATE-TIME under the current directory; reports/ is git-ignored)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from fxapprox.study.demo import DemoConfig, run_demo

    if args.out is not None:
        check_out_dir(args.out, args.overwrite)
    given = {"model": args.model, "data": args.data, "size": args.size, "samples": args.samples,
             "num_blocks": args.num_blocks, "metric": args.metric}
    overrides = {k: v for k, v in given.items() if v is not None}
    cfg = DemoConfig.full(**overrides) if args.full else DemoConfig(**overrides)
    run_demo(cfg, args.out, overwrite=args.overwrite)
    return 0
