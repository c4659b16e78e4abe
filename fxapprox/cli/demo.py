"""`fxapprox demo` → the whole pipeline on a built-in real model and data set, with a report directory."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `demo` on the `fxapprox` subparsers."""
    p = subparsers.add_parser(
        "demo", help="analyze, compress, evaluate, export and benchmark a real model end to end",
        description="Runs every stage on DINOv2-small + MNIST-5k (defaults, minutes on 2 CPU cores): "
        "span heatmap, compression (linear and identity), linear-probe accuracy of original vs "
        "compressed, ONNX export with parity check, onnxruntime latency. Writes a report directory "
        "(markdown, JSON, PNG, ONNX, plans) and prints its path.",
    )
    p.add_argument("--model", default="dinov2-small", help="built-in model name or HF directory")
    p.add_argument("--data", default="mnist-5k", help="built-in dataset name or directory")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 112; 224 with --full)")
    p.add_argument("--samples", type=int, default=None, help="calibration samples (default 256; 500 with --full)")
    p.add_argument("--num-blocks", type=int, default=2, help="blocks to remove (default: 2)")
    p.add_argument("--metric", default="output", help="score that chooses the spans (default: output, the "
                   "final-feature error, which predicts real damage best; linear: the papers' error)")
    p.add_argument("--full", action="store_true", help="the papers' protocol: 224 px, 500 samples, whole "
                   "splits (meant for a GPU)")
    p.add_argument("--out", default=None, help="report directory (default: ./fxapprox-demo-DATE-TIME)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from fxapprox.study.demo import DemoConfig, run_demo

    given = {"model": args.model, "data": args.data, "size": args.size, "samples": args.samples,
             "num_blocks": args.num_blocks, "metric": args.metric}
    overrides = {k: v for k, v in given.items() if v is not None}
    cfg = DemoConfig.full(**overrides) if args.full else DemoConfig(**overrides)
    run_demo(cfg, args.out, overwrite=args.overwrite)
    return 0
