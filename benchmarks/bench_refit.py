"""Benchmark: sequential refit, folding and iterative selection on real DINOv2-small / MNIST-5k → JSON.

For each multi-span plan, compress with independent fits, `refit="sequential"`, `fold=True` and both,
and measure on held-out test images the relative error of the final features against the original
model ([CLS] feature, and every token of the last hidden state), plus each span's fit residual
(folded beside unfolded). Then `num_blocks=k` chosen by the `output` score with the dynamic program
(`selection="dp"`) and with `selection="iterative"`, measured the same way.

    python benchmarks/bench_refit.py [--samples 256] [--test 500] [--image-size 56] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from fxapprox.cli.common import write_json
from fxapprox.spans import parse_spans

VARIANTS = {"independent": {}, "sequential": {"refit": "sequential"}, "fold": {"fold": True},
            "fold+sequential": {"fold": True, "refit": "sequential"}}


def _errors(module, model, test) -> dict[str, float]:
    """Relative error of the [CLS] features and of all tokens of the last hidden state, over all of `test`."""
    sq = {"cls": 0.0, "tokens": 0.0}
    ref = {"cls": 0.0, "tokens": 0.0}
    with torch.no_grad():
        for batch in test:
            want, got = model(**batch).last_hidden_state, module(**batch).last_hidden_state
            for key, sl in (("cls", (slice(None), 0)), ("tokens", (Ellipsis,))):
                sq[key] += float((got[sl] - want[sl]).double().square().sum())
                ref[key] += float(want[sl].double().square().sum())
    return {k: (sq[k] / ref[k]) ** 0.5 for k in sq}


def main() -> None:
    import fxapprox
    from fxapprox.study import assets, data

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=256, help="calibration samples (train split)")
    p.add_argument("--test", type=int, default=500, help="held-out test images the errors are measured on")
    p.add_argument("--data", default="mnist-5k", help="image data set: mnist-5k or fashion-mnist")
    p.add_argument("--image-size", type=int, default=56)
    p.add_argument("--plans", default="2-3,5-6,8-9;1-3,5-6;3-4,6-7,9-10",
                   help="';'-separated span lists (s-e replaces blocks s+1..e)")
    p.add_argument("--num-blocks", type=int, default=3, help="blocks removed by the selection comparison")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    torch.manual_seed(0)
    model = assets.load_model("dinov2-small").eval()
    dataset = assets.load_dataset(args.data)
    calib = data.calibration_loader("dinov2-small", dataset, num_samples=args.samples, size=args.image_size)
    test = list(data.data_loader("dinov2-small", dataset, split="test", num_samples=args.test, size=args.image_size))
    rows = []
    for text in args.plans.split(";"):
        spans = parse_spans(text)
        for name, kw in VARIANTS.items():
            t0 = time.perf_counter()
            res = fxapprox.compress(model, calib, spans=spans, num_samples=args.samples, progress=False, **kw)
            seconds = time.perf_counter() - t0
            rows.append({"plan": text, "variant": name, "seconds": round(seconds, 1),
                         "params_after": res.num_params_after, **_errors(res.module, model, test),
                         "residuals": [sp.residual for sp in res.plan.spans],
                         "unfolded_residuals": [sp.unfolded_residual for sp in res.plan.spans]})
            print(json.dumps(rows[-1]), flush=True)
    for selection in ("dp", "iterative"):
        t0 = time.perf_counter()
        res = fxapprox.compress(model, calib, num_blocks=args.num_blocks, metric="output", selection=selection,
                                num_samples=args.samples, progress=False)
        rows.append({"plan": f"num_blocks={args.num_blocks}", "variant": f"selection={selection}",
                     "spans": res.spans, "seconds": round(time.perf_counter() - t0, 1),
                     **_errors(res.module, model, test)})
        print(json.dumps(rows[-1]), flush=True)
    report = {"model": "dinov2-small", "data": args.data, "image_size": args.image_size,
              "samples": args.samples, "test": args.test, "torch": torch.__version__,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "rows": rows}
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
