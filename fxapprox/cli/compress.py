"""`fxapprox compress MODEL --data DATA (--spans 9-11 | --num-blocks K) --out PLAN_DIR` → a saved plan."""

from __future__ import annotations

import argparse

from fxapprox.cli.common import (
    SPANS_HELP,
    add_model_data_args,
    add_units_arg,
    check_out_dir,
    load_model_and_calibration,
    positive_int,
    spans_arg,
    write_json,
)
from fxapprox.metrics import METRIC_INFO
from fxapprox.output_score import OUTPUT_TARGETS

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
    which.add_argument("--num-blocks", type=positive_int, help="remove this many blocks (units with --units half), "
                       "spans chosen by --metric")
    p.add_argument("--transform", choices=("linear", "identity", "auto", "mlp"), default="linear",
                   help="what replaces each span: a least-squares linear map, nothing (identity; needs equal "
                   "widths), or auto: the identity where its residual is within --auto-tolerance of the linear "
                   "map's, else linear; mlp: the linear map plus a bottleneck MLP fitted on the span's "
                   "boundaries (default: linear)")
    p.add_argument("--mlp-fraction", type=float, default=None, metavar="F",
                   help="with --transform mlp: the MLP's FLOPs per token as a fraction of the span's (default: 0.1)")
    p.add_argument("--refine", choices=("output",), default=None,
                   help="output: after the fit, train the replacements to minimise the damage at the model's "
                   "output on the calibration data (Adam, a held-out quarter for early stopping)")
    p.add_argument("--refine-params", choices=("maps", "maps+norms"), default=None,
                   help="with --refine: train the maps only (default), or also every 1-D parameter after the "
                   "first span (norm scales and shifts, biases)")
    p.add_argument("--refine-time", type=float, default=None, metavar="SECONDS",
                   help="with --refine: stop training after this many seconds (default: 3 passes)")
    p.add_argument("--auto-tolerance", type=float, default=None, metavar="TOL",
                   help="with --transform auto: largest excess of the identity's normalised residual over the "
                   "linear map's at which the identity is taken (default: 0.01)")
    add_units_arg(p)
    p.add_argument("--metric", choices=tuple(METRIC_INFO), default="output",
                   help="score that chooses spans with --num-blocks (default: output, the damage to the model's "
                   "output on the first calibration batch: KL of a head's predictions, else the relative error "
                   "of the final features; README Results: it predicts damage best)")
    p.add_argument("--output-target", choices=OUTPUT_TARGETS, default="auto",
                   help="what --metric output compares: logits when the model has a head, else pooled final "
                   "features (default: auto)")
    p.add_argument("--selection", choices=("dp", "iterative"), default="dp", help="with --num-blocks: dp "
                   "(best set by --metric, dynamic program) or iterative (replace one unit at a time, the "
                   "least output damage given those already replaced)")
    p.add_argument("--prior", choices=("zero", "identity"), default="zero", help="ridge prior of the maps: "
                   "zero, or identity (shrink towards W = I; helps with few samples)")
    p.add_argument("--refit", choices=("independent", "sequential"), default="independent",
                   help="sequential: fit each span on the model with the earlier spans already replaced")
    p.add_argument("--fold", action="store_true", help="fold each map into the down projection of the "
                   "block before it (no module added)")
    p.add_argument("--out", required=True, help="directory to write the plan into (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing a plan there")
    p.add_argument("--json", metavar="PATH", help="write a summary as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Load, compress, save, print a summary."""
    import fxapprox
    from fxapprox import distributed

    check_out_dir(args.out, args.overwrite)
    model, _, loader = load_model_and_calibration(args)
    tolerance = {} if args.auto_tolerance is None else {"auto_tolerance": args.auto_tolerance}
    given = {"mlp_fraction": args.mlp_fraction, "params": args.refine_params, "time_budget_s": args.refine_time}
    refine_options = {k: v for k, v in given.items() if v is not None}
    res = fxapprox.compress(model, loader, spans=args.spans, num_blocks=args.num_blocks,
                            transform=args.transform, metric=args.metric, num_samples=args.samples,
                            blocks=args.blocks, output_target=args.output_target, progress=not args.no_progress,
                            units=args.units, prior=args.prior, refit=args.refit, fold=args.fold,
                            selection=args.selection, refine=args.refine, refine_options=refine_options, **tolerance)
    if not distributed.is_main():  # under torchrun rank 0 alone prints and writes
        return 0
    res.plan.source = args.model
    res.save(args.out, overwrite=args.overwrite)
    summary = {
        "model": args.model, "data": args.data, "samples": res.plan.num_samples,
        "capture_path": res.capture_path, "transform": args.transform, "units": args.units,
        "prior": args.prior, "refit": args.refit, "selection": args.selection, "refinement": res.plan.refinement,
        "spans": [{"s": sp.s, "e": sp.e, "transform": sp.transform, "residual": sp.residual, "fold": sp.fold,
                   "unfolded_residual": sp.unfolded_residual} for sp in res.plan.spans],
        "params_before": res.num_params_before, "params_after": res.num_params_after, "plan": str(args.out),
    }
    removed = res.num_params_before - res.num_params_after
    print(f"{args.model}: replaced {', '.join(f'{s} -> {e}' for s, e in res.spans)} ({args.transform}); "
          f"parameters {res.num_params_before:,} -> {res.num_params_after:,} "
          f"(-{100 * removed / res.num_params_before:.1f}%)")
    for sp in res.plan.spans:
        folded = f" (folded; unfolded map {sp.unfolded_residual:.4f})" if sp.fold else ""
        print(f"  {sp.s:3d} -> {sp.e:<3d} {sp.transform:<8} residual {sp.residual:.4f}{folded}")
    ref = res.plan.refinement or {}
    if "heldout_before" in ref:
        print(f"  refined {ref['num_trained']:,} parameters ({ref['params']}) at the {ref['target']}: held-out loss "
              f"{ref['heldout_before']:.4f} -> {ref['heldout_after']:.4f}, {ref['steps']} steps, "
              f"{ref['seconds']:.0f} s")
    print(f"plan written to {args.out}")
    if args.json:
        write_json(args.json, summary)
    return 0
