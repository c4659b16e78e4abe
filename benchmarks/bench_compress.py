"""Benchmark: compress() on a 12-block ViT-S-sized random model at 112 px → JSON (time, peak memory).

Each case runs in its own process so that peak RSS belongs to that case alone:
* `forward`: a plain forward pass over the calibration samples (the floor for any calibration);
* `compress-span`: `compress(spans=[(7, 10)])` (two watched boundaries);
* `compress-select`: `compress(num_blocks=2)` (all 13 boundaries watched, every span scored);
each at 256 samples, and `compress-span` also at 1024 samples (memory must not grow).

    python benchmarks/bench_compress.py [--samples 256] [--batch 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch

from fxapprox.cli.common import write_json


def _model(width: int = 384):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=width, num_hidden_layers=12, num_attention_heads=width // 64,
                    intermediate_size=4 * width, image_size=112, patch_size=16)
    return ViTModel(cfg).eval()


def _batches(samples: int, batch: int):
    g = torch.Generator().manual_seed(1)
    for start in range(0, samples, batch):
        yield {"pixel_values": torch.randn(min(batch, samples - start), 3, 112, 112, generator=g)}


def run_case(case: str, samples: int, batch: int) -> dict:
    import fxapprox

    model = _model()
    t0 = time.perf_counter()
    if case == "forward":
        with torch.no_grad():
            for b in _batches(samples, batch):
                model(**b)
        out = {}
    else:
        kw = {"spans": [(7, 10)]} if case == "compress-span" else {"num_blocks": 2}
        res = fxapprox.compress(model, _batches(samples, batch), num_samples=samples, progress=False, **kw)
        out = {"spans": res.spans, "residuals": {f"{s}-{e}": r for (s, e), r in res.residuals.items()},
               "params_before": res.num_params_before, "params_after": res.num_params_after,
               "capture_path": res.capture_path}
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": case, "samples": samples, "batch": batch, "seconds": round(seconds, 2),
            "peak_rss_mib": round(peak_mib, 1), **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.samples, args.batch)))
        return
    plan = [("forward", args.samples), ("compress-span", args.samples), ("compress-select", args.samples),
            ("compress-span", 4 * args.samples)]
    results = []
    for case, samples in plan:
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--samples", str(samples),
                               "--batch", str(args.batch)], capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    forward = results[0]["seconds"]
    report = {
        "model": "ViT-S-sized random ViTModel (12 blocks, d=384), 112 px",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "results": results,
        "compress_span_vs_forward": round(results[1]["seconds"] / forward, 3),
        "compress_select_vs_forward": round(results[2]["seconds"] / forward, 3),
        "peak_rss_ratio_4x_samples": round(results[3]["peak_rss_mib"] / results[1]["peak_rss_mib"], 3),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
