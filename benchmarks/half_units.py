"""Damage of every half-block unit (attention branch, MLP branch) replaced alone, identity vs linear.

A linear probe is trained once on the original model's pooled train features and kept frozen; each
unit `(u-1, u)` (`units="half"`) is replaced by its affine map, then by the identity, and the
probe's test predictions on the replaced features give the agreement with the original model's
predictions and the accuracy (± binomial SE); FLOPs removed are net of the replacing Linear,
counted per unit on the graph (`analyze(units="half", flops=True)`). Prints a markdown table and
writes JSON.

    python benchmarks/half_units.py --model dinov2-small --data mnist-5k --size 56 --samples 256 \
        --train 1000 --test 500 --json half_units.json
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

from fxapprox.cli.common import write_json


def main() -> None:
    import fxapprox
    from fxapprox.study import assets, data
    from fxapprox.study.evaluate import extract_features, train_probe
    from fxapprox.study.span_features import span_features

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="dinov2-small")
    p.add_argument("--data", default="mnist-5k")
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--samples", type=int, default=256, help="calibration samples for the maps")
    p.add_argument("--train", type=int, default=1000, help="probe training samples")
    p.add_argument("--test", type=int, default=500, help="test samples")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--json", help="write the figures as JSON")
    args = p.parse_args()

    start = time.time()
    model = assets.load_model(args.model)
    dataset = assets.load_dataset(args.data)
    kw = dict(batch_size=args.batch_size, size=args.size)
    calib = data.calibration_loader(args.model, dataset, num_samples=args.samples, seed=0, **kw)
    train = list(data.data_loader(args.model, dataset, split="train", num_samples=args.train, seed=2,
                                  with_labels=True, **kw))
    test = list(data.data_loader(args.model, dataset, split="test", num_samples=args.test, seed=3,
                                 with_labels=True, **kw))
    an = fxapprox.analyze(model, calib, num_samples=args.samples, tokens="all", flops=True, units="half")
    units = [(u - 1, u) for u in range(an.num_blocks)]
    train_x, train_y = extract_features(model, train, desc="train features")
    test_x, test_y = extract_features(model, test, desc="test features")
    probe = train_probe(train_x, train_y, epochs=args.epochs, seed=0)
    with torch.no_grad():
        reference = probe(test_x).argmax(1)
    n = len(test_y)

    def measure(features: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            pred = probe(features).argmax(1)
        acc = float((pred == test_y).float().mean())
        return {"agreement": float((pred == reference).float().mean()), "accuracy": acc,
                "stderr": math.sqrt(acc * (1 - acc) / n)}

    rows = {sp: {"span": list(sp), "unit": f"block {(sp[1]) // 2} {'attention' if sp[1] % 2 == 0 else 'MLP'}"}
            for sp in units}
    for transform in ("linear", "identity"):
        feats = span_features(model, calib, units, {"test": test}, transform=transform, num_samples=args.samples,
                              units="half")
        for sp in units:
            rows[sp][transform] = measure(feats.replaced[sp]["test"])
            rows[sp][f"flops_removed_{transform}"] = an.savings(*sp, transform)[1] / an.total_flops
    original = measure(test_x)
    result = {"model": args.model, "data": args.data, "size": args.size, "samples": args.samples,
              "train": len(train_y), "test": n, "epochs": args.epochs, "original": original,
              "units": list(rows.values()), "seconds": time.time() - start,
              "host": f"{platform.node()}, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    print(f"original accuracy {100 * original['accuracy']:.2f} ± {100 * original['stderr']:.2f}")
    print("| unit | span | identity agreement | identity acc. (%) | identity FLOPs removed | linear agreement | "
          "linear acc. (%) | linear FLOPs removed |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows.values():
        cells = []
        for t in ("identity", "linear"):
            m = r[t]
            cells += [f"{m['agreement']:.3f}", f"{100 * m['accuracy']:.1f} ± {100 * m['stderr']:.1f}",
                      f"{100 * r[f'flops_removed_{t}']:.1f} %"]
        print(f"| {r['unit']} | {r['span'][0]} → {r['span'][1]} | " + " | ".join(cells) + " |")
    print(f"{result['seconds']:.0f} s")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
