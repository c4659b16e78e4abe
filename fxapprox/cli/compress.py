"""`fxapprox compress MODEL --data DATA (--spans 9-11 | --num-blocks K) --out PLAN_DIR` → a saved plan."""

from __future__ import annotations

import argparse

from fxapprox.cli.common import (
    SPANS_HELP,
    add_model_data_args,
    check_out_dir,
    load_model_and_calibration,
    positive_int,
    spans_arg,
    write_json,
)

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `compress` on the `fxapprox` subparsers."""
    p = subparsers.add_parser(
        "compress", help="replace spans of blocks by fitted linear maps and save the plan",
        description="Calibrate MODEL on a random subset of DATA, replace the chosen spans of blocks "
        "by closed-form linear maps (or the identity) and save the plan (JSON + safetensors), which "
        "`fxapprox.load(model, PLAN_DIR)` and `fxapprox export PLAN_DIR` re-apply without data.",
    )
    add_model_data_args(p, samples=500)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--spans", type=spans_arg, help=SPANS_HELP)
    which.add_argument("--num-blocks", type=positive_int, help="remove this many blocks, spans chosen by --metric")
    p.add_argument("--transform", choices=("linear", "identity"), default="linear",
                   help="what replaces each span: a least-squares linear map, or nothing (identity; needs equal "
                   "widths)")
    p.add_argument("--metric", default="linear", help="score that chooses spans with --num-blocks: linear, "
                   "mse, br, cosine, angular, cka, identity, or output (error of the final features)")
    p.add_argument("--out", required=True, help="directory to write the plan into (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing a plan there")
    p.add_argument("--json", metavar="PATH", help="write a summary as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Load, compress, save, print a summary."""
    import fxapprox

    check_out_dir(args.out, args.overwrite)
    model, _, loader = load_model_and_calibration(args)
    res = fxapprox.compress(model, loader, spans=args.spans, num_blocks=args.num_blocks,
                            transform=args.transform, metric=args.metric, num_samples=args.samples,
                            blocks=args.blocks, progress=not args.no_progress)
    res.plan.source = args.model
    res.save(args.out, overwrite=args.overwrite)
    summary = {
        "model": args.model, "data": args.data, "samples": res.plan.num_samples,
        "capture_path": res.capture_path, "transform": args.transform,
        "spans": [{"s": sp.s, "e": sp.e, "residual": sp.residual} for sp in res.plan.spans],
        "params_before": res.num_params_before, "params_after": res.num_params_after, "plan": str(args.out),
    }
    removed = res.num_params_before - res.num_params_after
    print(f"{args.model}: replaced {', '.join(f'{s} -> {e}' for s, e in res.spans)} ({args.transform}); "
          f"parameters {res.num_params_before:,} -> {res.num_params_after:,} "
          f"(-{100 * removed / res.num_params_before:.1f}%)")
    for sp in res.plan.spans:
        print(f"  {sp.s:3d} -> {sp.e:<3d} residual {sp.residual:.4f}")
    print(f"plan written to {args.out}")
    if args.json:
        write_json(args.json, summary)
    return 0
