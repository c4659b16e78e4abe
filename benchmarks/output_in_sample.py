"""Does `compress`'s in-sample `output` score pick what a held-out one picks? Real models → JSON.

For each built-in model and k blocks to remove: the spans `compress(num_blocks=k)` chooses (the
`output` score on the first calibration batch, samples the maps were also fitted on) and the spans
`analyze(..., output_samples=N).select(k)` chooses (the same score on the N samples after the
calibration ones), side by side.

    python benchmarks/output_in_sample.py [--samples 256] [--heldout 128] [--batch 32] [--size 56]
                                          [--max-blocks 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import fxapprox
from fxapprox.cli.common import write_json
from fxapprox.study import assets, data

PAIRS = (("dinov2-small", "mnist-5k"), ("minilm-l6", "rotten-tomatoes"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=256, help="calibration samples")
    p.add_argument("--heldout", type=int, default=128, help="held-out samples of the analysis's output score")
    p.add_argument("--batch", type=int, default=32, help="batch size (compress scores on the first batch)")
    p.add_argument("--size", type=int, default=56, help="image side in pixels")
    p.add_argument("--max-blocks", type=int, default=3, help="k = 1 .. this")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args()
    rows = []
    for name, ds in PAIRS:
        model = assets.load_model(name).eval()
        calib = data.calibration_loader(name, assets.load_dataset(ds), num_samples=args.samples + args.heldout,
                                        batch_size=args.batch, size=args.size, seed=0)
        an = fxapprox.analyze(model, calib, num_samples=args.samples, tokens="all", output_samples=args.heldout,
                              progress=False)
        for k in range(1, args.max_blocks + 1):
            res = fxapprox.compress(model, calib, num_blocks=k, num_samples=args.samples, progress=False)
            first, heldout = [list(s) for s in res.spans], [list(s) for s in an.select(k)]
            rows.append({"model": name, "data": ds, "num_blocks": k, "compress_first_batch": first,
                         "analyze_heldout": heldout, "same": first == heldout})
    result = {"config": vars(args), "rows": rows, "same": sum(r["same"] for r in rows), "cases": len(rows)}
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
