"""Benchmark: analyze() on a 12-block ViT-S-sized random model at 112 px → JSON (time vs forward, peak memory).

Timing, side by side in one process (each case `--repeats` times, interleaved, best kept; wall
seconds and this process's CPU seconds, the latter less disturbed by other load on the machine):
* `forward`: a plain eager forward pass over the samples (the floor for any calibration);
* `analyze-cls` / `analyze-all`: `analyze(tokens="cls" | "all")` over the same samples, every span
  scored by every metric (analyze runs the eager model with block hooks: no graph capture).
Memory: `analyze(tokens="all")` in a fresh process at `--memory-samples` (default 128 and 1024),
peak RSS; batches are generated on the fly so the data does not grow the process either.
`--width 768` makes the model ViT-B-sized (12 heads, MLP 3072); `--no-timing` measures memory only.

    python benchmarks/bench_analyze.py [--samples 128] [--batch 32] [--repeats 2] [--memory-samples 128 1024]
                                       [--width 384] [--no-timing] [--json out.json] [--heatmap out.png]
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
from bench_compress import _batches, _model

from fxapprox.cli.common import write_json


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _analyze(model, samples: int, batch: int, tokens: str):
    import fxapprox

    return fxapprox.analyze(model, _batches(samples, batch), num_samples=samples, tokens=tokens, progress=False)


def timing(samples: int, batch: int, repeats: int, heatmap: str | None = None, width: int = 384) -> dict:
    """Best-of-`repeats` seconds of forward / analyze(cls) / analyze(all), interleaved."""
    model = _model(width)
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    runs: dict[str, list[float]] = {}
    an = {}
    for _ in range(repeats):
        for case in ("forward", "analyze-cls", "analyze-all"):
            t0, c0 = time.perf_counter(), time.process_time()
            if case == "forward":
                with torch.no_grad():
                    for b in _batches(samples, batch):
                        model(**b)
            else:
                an[case] = _analyze(model, samples, batch, case.split("-")[1])
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs.setdefault(case, []).append(round(seconds, 2))
            best[case] = min(best.get(case, float("inf")), seconds)
            best_cpu[case] = min(best_cpu.get(case, float("inf")), cpu)
    fwd, cfwd = best["forward"], best_cpu["forward"]
    if heatmap:
        an["analyze-all"].plot(heatmap, metric=["linear", "cka", "cosine"])
    return {
        "samples": samples, "batch": batch, "runs_seconds": runs,
        "forward_s": round(fwd, 2),
        "analyze_cls_s": round(best["analyze-cls"], 2), "analyze_all_s": round(best["analyze-all"], 2),
        "cls_vs_forward": round(best["analyze-cls"] / fwd, 3),
        "all_vs_forward": round(best["analyze-all"] / fwd, 3),
        "cpu_s": {k: round(v, 2) for k, v in best_cpu.items()},
        "cpu_cls_vs_forward": round(best_cpu["analyze-cls"] / cfwd, 3),
        "cpu_all_vs_forward": round(best_cpu["analyze-all"] / cfwd, 3),
        "top3_linear_all_tokens": an["analyze-all"].top_k(3),
        "top3_linear_cls": an["analyze-cls"].top_k(3),
    }


def memory_case(samples: int, batch: int, tokens: str, width: int) -> dict:
    """Peak RSS of one analyze() in this (fresh) process."""
    model = _model(width)
    before = _rss_mib()
    t0 = time.perf_counter()
    an = _analyze(model, samples, batch, tokens)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stored = samples * (an.num_blocks + 1) * (an.rows // an.samples) * max(an.widths) * 4 / 2**20
    return {"samples": samples, "tokens": tokens, "seconds": round(seconds, 2), "rss_before_mib": round(before, 1),
            "peak_rss_mib": round(peak, 1), "peak_minus_before_mib": round(peak - before, 1),
            "stored_activations_would_be_mib": round(stored, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=128, help="samples for the timing (default 128)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-samples", type=int, nargs="*", default=[128, 1024])
    parser.add_argument("--memory-tokens", default="all", choices=("cls", "mean", "all"))
    parser.add_argument("--width", type=int, default=384, help="hidden width of the 12-block model (default 384)")
    parser.add_argument("--no-timing", action="store_true", help="measure memory only")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--heatmap", help="write heatmaps of the tokens='all' analysis here (PNG)")
    parser.add_argument("--memory-case", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case is not None:
        print(json.dumps(memory_case(args.memory_case, args.batch, args.memory_tokens, args.width)))
        return
    w = args.width
    report = {
        "model": f"random ViTModel (12 blocks, d={w}, {w // 64} heads, MLP {4 * w}), 112 px (50 tokens)",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
    }
    if not args.no_timing:
        report["timing"] = timing(args.samples, args.batch, args.repeats, args.heatmap, w)
        print(json.dumps(report["timing"]), file=sys.stderr)
    memory = []
    for samples in args.memory_samples:
        proc = subprocess.run([sys.executable, __file__, "--memory-case", str(samples), "--batch", str(args.batch),
                               "--memory-tokens", args.memory_tokens, "--width", str(w)],
                              capture_output=True, text=True, check=True)
        memory.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(memory[-1]), file=sys.stderr)
    report["memory"] = memory
    if len(memory) >= 2:
        report["peak_rss_ratio"] = round(memory[-1]["peak_rss_mib"] / memory[0]["peak_rss_mib"], 3)
    print(json.dumps(report, indent=2))
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
