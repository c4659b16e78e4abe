"""Benchmark: refinement at the output and the `mlp` transform on a real model (DINOv2-small / MNIST-5k) → JSON lines.

For each plan (spans, in blocks or `--units half`), compress with the closed-form map, then with the
variants of `refine="output"` (what is trained: maps, maps + norms, all; what the loss compares:
tokens, pooled, both; learning rates) and `transform="mlp"` (+ refinement), and measure each through
a linear probe trained once on the original model's pooled final features ([CLS], or the masked mean)
and kept frozen: agreement with the original's predictions and accuracy on test samples, the relative error of the test
features, the FLOPs removed, the compress time, the refinement time and its held-out and training
losses per pass. `--noise 0.05,0.1` adds the agreement of the original's features plus random
errors of those relative sizes (how sensitive the probe is). One JSON object per row on stdout;
`--json PATH` writes them all.

    python benchmarks/bench_refine.py [--model dinov2-small --data mnist-5k] [--plans "0-3;0-5"] [--units block]
        [--samples 512] [--image-size 56]
        [--variants "closed-form,refine maps+norms"] [--noise 0.1,0.2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from fxapprox.cli.common import write_json
from fxapprox.export import count_flops
from fxapprox.refine import RefineOptions
from fxapprox.spans import parse_spans

VARIANTS = {
    "closed-form": {},
    "refine maps+norms": {"refine": "output", "refine_options": RefineOptions(params="maps+norms")},
    "refine maps+norms x10": {"refine": "output", "refine_options": RefineOptions(params="maps+norms", epochs=10)},
    "refine maps+norms x30": {"refine": "output", "refine_options": RefineOptions(params="maps+norms", epochs=30)},
    "refine maps": {"refine": "output", "refine_options": RefineOptions(params="maps")},
    "refine maps+norms pooled": {"refine": "output", "refine_options": RefineOptions(params="maps+norms",
                                                                                     rows="pooled")},
    "refine maps+norms tokens+pooled": {"refine": "output",
                                        "refine_options": RefineOptions(params="maps+norms", rows="tokens+pooled")},
    "refine all": {"refine": "output", "refine_options": RefineOptions(params="all")},
    "refine all lr 1e-5": {"refine": "output", "refine_options": RefineOptions(params="all", lr=1e-5)},
    "refine all tokens+pooled lr 1e-5": {"refine": "output", "refine_options": RefineOptions(
        params="all", rows="tokens+pooled", lr=1e-5)},
    "mlp + refine maps+norms": {"transform": "mlp", "refine": "output",
                                "refine_options": RefineOptions(params="maps+norms")},
    "mlp 0.3 + refine maps+norms": {"transform": "mlp", "refine": "output",
                                    "refine_options": RefineOptions(params="maps+norms", mlp_fraction=0.3)},
    "mlp 0.3 lr/10 + refine maps+norms lr/3": {"transform": "mlp", "refine": "output", "refine_options": RefineOptions(
        params="maps+norms", mlp_fraction=0.3, mlp_lr=1e-4, lr=3e-5)},
}


def main() -> None:
    import fxapprox
    from fxapprox.study import assets, data
    from fxapprox.study.evaluate import extract_features, train_probe

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=512, help="calibration samples (train split)")
    p.add_argument("--train", type=int, default=1000, help="probe training images (original features)")
    p.add_argument("--test", type=int, default=500, help="test images")
    p.add_argument("--model", default="dinov2-small", help="built-in model (dinov2-small, minilm-l6)")
    p.add_argument("--data", default="mnist-5k", help="built-in dataset (mnist-5k, rotten-tomatoes, ...)")
    p.add_argument("--image-size", type=int, default=56)
    p.add_argument("--plans", default="0-3;0-5", help="';'-separated span lists (s-e replaces units s+1..e)")
    p.add_argument("--units", choices=("block", "half"), default="block", help="what the plans' spans count")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    p.add_argument("--noise", type=lambda t: [float(x) for x in t.split(",") if x], default=[],
                   help="also the agreement of the original's features plus random errors of these relative sizes "
                   "(comma-separated, e.g. 0.05,0.1,0.2): how sensitive the probe is")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    torch.manual_seed(0)
    model = assets.load_model(args.model).eval()
    dataset = assets.load_dataset(args.data)
    calib = data.calibration_loader(args.model, dataset, num_samples=args.samples, size=args.image_size)

    def labelled(split, n, seed):
        return list(data.data_loader(args.model, dataset, split=split, num_samples=n, size=args.image_size,
                                     seed=seed, with_labels=True))

    train, test = labelled("train", args.train, 2), labelled("test", args.test, 3)
    train_x, train_y = extract_features(model, train, progress=False)
    test_x, test_y = extract_features(model, test, progress=False)
    probe = train_probe(train_x, train_y, num_classes=int(max(train_y.max(), test_y.max())) + 1, epochs=30)
    with torch.no_grad():
        original = probe(test_x).argmax(1)
    rows = [{"plan": "original", "accuracy": float((original == test_y).float().mean())}]
    sample = {k: v for k, v in test[0].items() if k != "labels"}
    flops_before = count_flops(model, sample).total
    print(json.dumps(rows[-1]), flush=True)
    noise = torch.randn(test_x.shape, generator=torch.Generator().manual_seed(0))
    for r in args.noise:  # the probe's sensitivity: agreement under random feature errors of relative size r
        x = test_x + r * noise * test_x.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True)
        with torch.no_grad():
            pred = probe(x).argmax(1)
        rows.append({"plan": f"random error {r}", "agreement": float((pred == original).float().mean()),
                     "accuracy": float((pred == test_y).float().mean())})
        print(json.dumps(rows[-1]), flush=True)
    for text in args.plans.split(";"):
        spans = parse_spans(text)
        for name in args.variants.split(","):
            t0 = time.perf_counter()
            res = fxapprox.compress(model, calib, spans=spans, units=args.units, num_samples=args.samples,
                                    progress=False, **VARIANTS[name])
            seconds = time.perf_counter() - t0
            x, _ = extract_features(res.module, test, progress=False)
            with torch.no_grad():
                pred = probe(x).argmax(1)
            ref = res.plan.refinement or {}
            rows.append({"plan": text, "units": args.units, "variant": name, "samples": args.samples,
                         "flops_removed": 1 - count_flops(res, sample).total / flops_before,
                         "feature_error": float((x - test_x).norm() / test_x.norm()),
                         "compress_s": round(seconds, 1),
                         "refine_s": ref.get("seconds"), "agreement": float((pred == original).float().mean()),
                         "accuracy": float((pred == test_y).float().mean()),
                         "heldout_before": ref.get("heldout_before"), "heldout_after": ref.get("heldout_after"),
                         "steps": ref.get("steps"), "best_step": ref.get("best_step"), "stopped": ref.get("stopped"),
                         "train_history": ref.get("train_history"), "history": ref.get("history"),
                         "num_trained": ref.get("num_trained"), "mlp": ref.get("mlp"),
                         "params_after": res.num_params_after})
            print(json.dumps(rows[-1]), flush=True)
    report = {"model": args.model, "data": args.data, "image_size": args.image_size, "samples": args.samples,
              "train": args.train, "test": args.test, "torch": torch.__version__,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "rows": rows}
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
