"""`fxapprox compress MODEL --data DATA (--spans 9-11 | --num-blocks K | --budget F | --config RECIPE) --out
PLAN_DIR` → a saved plan (its `plan.json` records the config, so `--config PLAN_DIR` makes it again)."""

from __future__ import annotations

import argparse

from fxapprox.cli.common import add_model_data_args, check_out_dir, load_model_and_calibration, write_json
from fxapprox.cli.config_args import add_config_args, config_from_args
from fxapprox.plan import check_plan_target

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `compress` on the `fxapprox` subparsers."""
    p = subparsers.add_parser(
        "compress", help="replace spans of blocks by fitted linear maps and save the plan",
        description="Calibrate MODEL on a random subset of DATA, replace the chosen spans of blocks "
        "by closed-form linear maps (or the identity) and save the plan (JSON + safetensors), which "
        "`fxapprox.load(model, PLAN_DIR)` and `fxapprox export PLAN_DIR` re-apply without data. The options "
        "are grouped by the stage that reads them; --config RECIPE gives them from a file.",
    )
    add_model_data_args(p, samples=500)
    add_config_args(p)
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="directory to write the plan into (new or empty)")
    out.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing a plan there")
    out.add_argument("--json", metavar="PATH", help="write a summary as JSON")
    p.set_defaults(func=run)
    return p


def _measure_latencies(model, loader, args: argparse.Namespace):
    """Per-block onnxruntime CPU latencies (`fxapprox.study.latency.block_latencies`) on the calibration data."""
    from fxapprox.cli.common import stage
    from fxapprox.study.latency import block_latencies

    batches = list(loader)
    stage("compress", f"measuring the latency of each block of {args.model} (onnxruntime CPU)")
    return block_latencies(model, batches, batches[0], batch_size=args.batch_size,
                           num_samples=min(64, args.samples))


def run(args: argparse.Namespace) -> int:
    """Build the config, load, compress, save, print a summary."""
    import fxapprox
    from fxapprox import distributed

    config, latency_budget = config_from_args(args, **({"progress": False} if args.no_progress else {}))
    check_plan_target(check_out_dir(args.out, args.overwrite), args.overwrite)
    model, _, loader = load_model_and_calibration(args)
    if latency_budget is not None:
        config = config.replace(latency_budget=latency_budget, block_latency=_measure_latencies(model, loader, args))
    res = fxapprox.compress(model, loader, **config.kwargs())
    if not distributed.is_main():  # under torchrun rank 0 alone prints and writes
        return 0
    res.plan.source = args.model
    res.save(args.out, overwrite=args.overwrite)
    summary = {
        "model": args.model, "data": args.data, "samples": res.plan.num_samples,
        "capture_path": res.capture_path, "transform": config.transform, "units": config.units,
        "prior": config.prior, "refit": config.refit, "selection": config.selection,
        "spans": [{"s": sp.s, "e": sp.e, "transform": sp.transform, "residual": sp.residual, "fold": sp.fold,
                   "unfolded_residual": sp.unfolded_residual} for sp in res.plan.spans],
        "params_before": res.num_params_before, "params_after": res.num_params_after, "plan": str(args.out),
        "reached": res.reached, "config": res.plan.config, "refinement": res.plan.refinement,
    }
    removed = res.num_params_before - res.num_params_after
    print(f"{args.model}: replaced {', '.join(f'{s} -> {e}' for s, e in res.spans)} ({config.transform}); "
          f"parameters {res.num_params_before:,} -> {res.num_params_after:,} "
          f"(-{100 * removed / res.num_params_before:.1f}%)")
    if res.reached:
        print("budget reached: " + ", ".join(f"{100 * v:.1f}% of the {k}" for k, v in res.reached.items()))
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
