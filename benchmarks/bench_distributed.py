"""Benchmark: analyze() on 1 process vs N gloo processes (127.0.0.1) → JSON of wall seconds.

The ViT-S-sized random model of `bench_compress` (12 blocks, d=384, 112 px); `analyze(tokens="all",
output_samples=...)`: calibration (split by batch across ranks, moments summed) and the `output`
score (split by span across ranks, every rank runs the full pass on every held-out batch).
Cases: one process with `--threads` threads, and `--world` processes with `--threads // world`
threads each (the same cores shared out). Each case runs in fresh processes; the time is rank 0's
wall time of the analyze() call (after a barrier), best of `--repeats`, and the CPU seconds of all
ranks together (less disturbed by other load on a shared machine; the machine's load average is
recorded).

    python benchmarks/bench_distributed.py [--samples 256] [--output-samples 64] [--output-max-len 3]
                                           [--world 2] [--threads 2] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_compress import _batches, _model

from fxapprox.cli.common import write_json


def _worker(rank: int, world: int, port: int, threads: int, args: dict, out: str) -> None:
    import fxapprox

    torch.set_num_threads(threads)
    if world > 1:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=600))
        dist.barrier()
    model = _model()
    batches = list(_batches(args["samples"] + args["output_samples"], args["batch"]))
    t0, c0 = time.perf_counter(), time.process_time()
    an = fxapprox.analyze(model, batches, num_samples=args["samples"], tokens="all",
                          output_samples=args["output_samples"], output_max_len=args["output_max_len"],
                          progress=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    Path(f"{out}.{rank}").write_text(json.dumps({"seconds": seconds, "cpu_s": cpu,
                                                 "top3_output": an.top_k(3, metric="output")}))
    if world > 1:
        dist.destroy_process_group()


def run_case(world: int, threads: int, args: dict) -> dict:
    """One fresh run on `world` processes of `threads` threads each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank")
        mp.start_processes(_worker, args=(world, port, threads, args, out), nprocs=world, start_method="spawn")
        ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
    return {**ranks[0], "cpu_s": sum(r["cpu_s"] for r in ranks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--output-samples", type=int, default=64)
    parser.add_argument("--output-max-len", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores to share out")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    work = {"samples": args.samples, "output_samples": args.output_samples, "output_max_len": args.output_max_len,
            "batch": args.batch}
    cases = {"1 process": (1, args.threads),
             f"{args.world} processes": (args.world, max(1, args.threads // args.world))}
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    runs: dict[str, list[float]] = {}
    tops = {}
    for _ in range(args.repeats):
        for name, (world, threads) in cases.items():
            result = run_case(world, threads, work)
            runs.setdefault(name, []).append(round(result["seconds"], 2))
            best[name] = min(best.get(name, float("inf")), result["seconds"])
            best_cpu[name] = min(best_cpu.get(name, float("inf")), result["cpu_s"])
            tops[name] = result["top3_output"]
            print(name, runs[name][-1], file=sys.stderr)
    names = list(cases)
    report = {
        "model": "ViT-S-sized random ViTModel (12 blocks, d=384), 112 px (50 tokens)", "work": work,
        "cases": {name: {"processes": w, "threads_each": t} for name, (w, t) in cases.items()},
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "machine": platform.machine(),
        "load_average": os.getloadavg(),
        "runs_seconds": runs, "best_seconds": {k: round(v, 2) for k, v in best.items()},
        "best_cpu_seconds_all_ranks": {k: round(v, 2) for k, v in best_cpu.items()},
        "speedup": round(best[names[0]] / best[names[1]], 3),
        "top3_output": tops,  # equal up to float32 rounding: one thread vs two round the matmuls differently
    }
    print(json.dumps(report, indent=2))
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
