"""`fxapprox eval MODEL --data DATA (--spans 9-11 | --num-blocks K | --plan DIR)` → probe accuracy and fidelity.

Compresses MODEL on a random calibration subset of DATA (or applies a plan saved by `fxapprox
compress --out DIR`, whatever its options: half units, folding, sequential refit), then runs the
papers' protocol on the original and the compressed model: frozen features, a linear probe per
seed (Adam lr 1e-3, batch 256, 30 epochs by default, seeds 0,1,2) → mean ± std test accuracy, plus
linear CKA, mean cosine and prediction agreement between the original's and the compressed
model's final features.
"""

from __future__ import annotations

import argparse
import time

from fxapprox.cli.common import (
    SPANS_HELP,
    add_model_data_args,
    check_split,
    ints,
    load_model_and_calibration,
    nonnegative_int,
    positive_int,
    spans_arg,
    write_json,
)

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `eval` on the `fxapprox` subparsers."""
    p = subparsers.add_parser(
        "eval", help="linear-probe accuracy and feature fidelity of the original vs compressed model",
        description="Compress MODEL (spans given or chosen) on a calibration subset of DATA's train "
        "split, then train a linear probe on frozen features of the original and the compressed "
        "model (Adam lr 1e-3, batch 256, --epochs, one probe per seed) and report test accuracy "
        "mean ± std, linear CKA, mean cosine and prediction agreement. --plan DIR evaluates a plan saved by "
        "`fxapprox compress --out DIR` instead. Without --spans, --num-blocks or --plan only the original is "
        "evaluated.",
    )
    add_model_data_args(p, samples=256)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--spans", type=spans_arg, help=SPANS_HELP)
    which.add_argument("--num-blocks", type=positive_int, help="remove this many blocks, spans chosen by --metric")
    which.add_argument("--plan", metavar="DIR", help="evaluate the plan `fxapprox compress --out DIR` saved for MODEL "
                       "(with every compress option it was made with) instead of compressing here")
    p.add_argument("--transform", choices=("linear", "identity"), default="linear",
                   help="what replaces each span: a least-squares linear map, or nothing (identity)")
    p.add_argument("--metric", default="output", help="score that chooses spans with --num-blocks (default: output)")
    p.add_argument("--train-samples", type=nonnegative_int, default=2000,
                   help="random train rows for the probe (default: 2000; 0 = the whole split)")
    p.add_argument("--test-samples", type=nonnegative_int, default=1000,
                   help="random test rows (default: 1000; 0 = the whole split)")
    p.add_argument("--test-split", default="test", help="split the probe is tested on (default: test)")
    p.add_argument("--probe-seeds", type=ints, default="0,1,2", help="probe seeds, comma-separated (default: 0,1,2)")
    p.add_argument("--epochs", type=positive_int, default=30, help="probe epochs (default: 30; the papers' 5 "
                   "assume whole splits and underfit on a few thousand samples)")
    p.add_argument("--eval-batch-size", type=positive_int, default=64, help="feature extraction batch size")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Load, compress, extract features, probe, print a table."""
    import fxapprox
    from fxapprox.compression import apply_plan
    from fxapprox.plan import Plan
    from fxapprox.study import data, evaluate

    start = time.perf_counter()
    plan = Plan.read(args.plan) if args.plan is not None else None  # answered before the model and data load
    model, dataset, calib = load_model_and_calibration(args)
    check_split(dataset, args.test_split, "--test-split")
    models = {"original": model}
    compressed, label = None, args.transform
    if plan is not None:
        compressed, label = apply_plan(model, plan, source=f"the plan in {args.plan}"), "plan"
    elif args.spans is not None or args.num_blocks is not None:
        compressed = fxapprox.compress(model, calib, spans=args.spans, num_blocks=args.num_blocks,
                                       transform=args.transform, metric=args.metric,
                                       num_samples=args.samples, blocks=args.blocks,
                                       progress=not args.no_progress)
    if compressed is not None:
        models[label] = compressed.module
    transforms = [sp.transform for sp in compressed.plan.spans] if compressed else []
    common = dict(batch_size=args.eval_batch_size, size=args.image_size, seed=args.seed, with_labels=True)
    train = data.data_loader(args.model, dataset, split="train", num_samples=args.train_samples or None, **common)
    test = data.data_loader(args.model, dataset, split=args.test_split,
                            num_samples=args.test_samples or None, **common)
    reports = evaluate.compare_models(models, train, test, seeds=args.probe_seeds, epochs=args.epochs,
                                      progress=not args.no_progress)

    print(f"{args.model} on {args.data}: linear probe, {len(train.dataset)} train / "
          f"{len(test.dataset)} test, seeds {','.join(map(str, args.probe_seeds))}, {args.epochs} epochs")
    if compressed is not None:
        removed = compressed.num_params_before - compressed.num_params_after
        source = f"plan {args.plan}, {compressed.plan.units} units" if args.plan else args.transform
        print(f"compressed: {', '.join(f'{s} -> {e}' for s, e in compressed.spans)} ({source}); "
              f"parameters {compressed.num_params_before:,} -> {compressed.num_params_after:,} "
              f"(-{100 * removed / compressed.num_params_before:.1f}%)")
    print(f"{'model':<10} {'accuracy %':>22} {'CKA':>7} {'cosine':>7} {'agree %':>8}")
    for rep in reports:
        fid = rep.fidelity
        tail = (f"{fid.cka:7.4f} {fid.cosine:7.4f} {100 * fid.agreement:8.2f}" if fid
                else f"{'-':>7} {'-':>7} {'-':>8}")
        print(f"{rep.name:<10} {str(rep.probe):>22} {tail}")
    if args.json:
        write_json(args.json, {
            "model": args.model, "data": args.data, "image_size": args.image_size,
            "calibration": {"split": args.split, "samples": args.samples, "seed": args.seed},
            "plan": args.plan, "units": compressed.plan.units if compressed else None,
            "transform": args.transform if compressed and not args.plan else None, "transforms": transforms,
            "spans": [list(sp) for sp in compressed.spans] if compressed else [],
            "params_before": compressed.num_params_before if compressed else None,
            "params_after": compressed.num_params_after if compressed else None,
            "probe": {"train": len(train.dataset), "test": len(test.dataset), "test_split": args.test_split,
                      "seeds": args.probe_seeds, "epochs": args.epochs, "optimizer": "adam",
                      "lr": 1e-3, "batch_size": 256},
            "results": [rep.to_dict() for rep in reports],
            "seconds": time.perf_counter() - start,
        })
    return 0
