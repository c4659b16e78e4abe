"""Benchmark: cost of the `heldout` and `output` scores relative to one plain forward → JSON.

12-block ViT-S-sized random ViT at 112 px, side by side in one process (best of `--repeats`):
* `forward`: eager forward over the calibration samples;
* `analyze-all`: `analyze(tokens="all")` (every metric but `heldout`);
* `analyze-all-heldout`: the same with `holdout_folds=2` (adds the k-fold `heldout` score);
* `output`: `span_features` for every span of up to `--max-len` blocks, on `--samples` held-out
  samples (one calibration pass for the fits, then one prefix + one suffix per span per batch, each
  the generated code of the graph cut at the boundary);
* `analyze-all-output`: `analyze(tokens="all", output_samples=--samples, output_max_len=--max-len)`
  (the moments' fits reused; a capture, then one prefix + one suffix per span per held-out batch).

`output_floor_vs_forward` is the work `output` cannot avoid, in forwards: the calibration pass, the
prefix, and per span the blocks after it (`sum over spans (L - 1 - e) / L`); the measured ratio
above it is the overhead (capture, fits, interpretation).

    python benchmarks/bench_scores.py [--samples 128] [--batch 32] [--max-len 4] [--repeats 2] [--device cpu]
                                      [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_compress import _batches, _model

from fxapprox.cli.common import write_json


def _best(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where the model runs (e.g. cuda)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import fxapprox
    from fxapprox.spans import all_spans
    from fxapprox.study.span_features import span_features

    device = torch.device(args.device)
    model, n, b = _model().to(device), args.samples, args.batch
    num_blocks = 12
    spans = all_spans(num_blocks, args.max_len)

    def forward():
        with torch.no_grad():
            for batch in _batches(n, b):
                model(pixel_values=batch["pixel_values"].to(device))

    cases = {
        "forward": forward,
        "analyze-all": lambda: fxapprox.analyze(model, _batches(n, b), num_samples=n, tokens="all", progress=False),
        "analyze-all-heldout": lambda: fxapprox.analyze(model, _batches(n, b), num_samples=n, tokens="all",
                                                        holdout_folds=2, progress=False),
        "analyze-all-output": lambda: fxapprox.analyze(model, _batches(2 * n, b), num_samples=n, tokens="all",
                                                       output_samples=n, output_max_len=args.max_len, progress=False),
        "output": lambda: span_features(model, _batches(n, b), spans, {"heldout": list(_batches(n, b))},
                                        num_samples=n, progress=False),
    }
    seconds = {name: _best(fn, args.repeats, device) for name, fn in cases.items()}
    report = {
        "model": "ViT-S-sized random ViTModel (12 blocks, d=384), 112 px", "samples": n, "batch": b,
        "spans_for_output": len(spans), "threads": torch.get_num_threads(), "device": str(device),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "relative_to_forward": {k: round(v / seconds["forward"], 2) for k, v in seconds.items()},
        "output_floor_vs_forward": round(2 + sum(num_blocks - 1 - e for _, e in spans) / num_blocks, 2),
        **{f"{score}_extra_vs_forward": round((seconds[f"analyze-all-{score}"] - seconds["analyze-all"])
                                              / seconds["forward"], 2) for score in ("heldout", "output")},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
