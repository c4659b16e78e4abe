"""Original vs compressed in PyTorch (no export): speed-up vs FLOP-ratio speed-up per precision, mode, batch (JSON).

Default model: the random-initialised ViT-S/16-sized ViTModel of `bench_export.py` at 112 px
(50 tokens); `--real`: the real DINOv2-small (ASSETS.md) at `--image-size` px. Spans 3→5 and
8→10 (blocks 4, 5, 9, 10 replaced by two Linears). Both run through
`fxapprox.export.torch_compare`: interleaved, warm (CUDA: synchronised, first calls
discarded), CUDA where present, fp32 / bf16 autocast / bf16 weights / fp16, eager and (with
`--compile`) `torch.compile`. `--captured` also times the eager original against its cleaned,
uncompressed capture (the cost of running a captured graph at all: ideally 1.0×). `--profile`
counts the operators each module dispatches per call (`torch.profiler`, batch 1, fp32 and bf16
autocast). Goals: speed-up ≥ 0.9 × the FLOP ratio at the larger batch, ≥ 1.0× at batch 1.

    python benchmarks/bench_torch.py [--batch-sizes 1,8,64] [--precisions fp32,bf16-autocast,bf16,fp16]
        [--compile] [--captured] [--profile] [--real --image-size 112] [--iters 30] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export import IMAGE, SPANS, vit_small  # noqa: E402

from fxapprox.cli.common import write_json  # noqa: E402

log = logging.getLogger("bench_torch")


def _summary(report: dict) -> dict:
    """Per case: the rows reduced to milliseconds, speed-up and efficiency (or the skip reason)."""
    cases = []
    for case in report["cases"]:
        entry = {"precision": case["precision"], "mode": case["mode"]}
        if "skipped" in case:
            cases.append(entry | {"skipped": case["skipped"]})
            continue
        entry["rows"] = [{"batch_size": r["batch_size"], "original_ms": round(r["original"]["median_ms"], 3),
                          "compressed_ms": round(r["compressed"]["median_ms"], 3),
                          "speedup": round(r["speedup"], 3),
                          "efficiency": round(r["efficiency"], 3) if r["efficiency"] else None}
                         for r in case["rows"]]
        entry["first_call_s"] = case["first_call_s"]
        cases.append(entry)
    return {k: v for k, v in report.items() if k != "cases"} | {"cases": cases}


def op_counts(module: torch.nn.Module, inputs: dict, autocast: bool) -> dict[str, int]:
    """Operators one call dispatches (CPU side, `torch.profiler`), most frequent first."""
    from torch.profiler import ProfilerActivity, profile

    device = next(module.parameters()).device
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        module(**inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            module(**inputs)
    counts = Counter({e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")})
    return dict(counts.most_common(25)) | {"total_aten_calls": sum(counts.values())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="1,8,64")
    p.add_argument("--precisions", default="fp32,bf16-autocast,bf16,fp16")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of both")
    p.add_argument("--captured", action="store_true", help="also time the eager original vs its uncompressed capture")
    p.add_argument("--profile", action="store_true", help="operator counts per call of both modules")
    p.add_argument("--device", help="cuda or cpu (default: cuda where present)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: all cores)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--warmup-s", type=float, default=2.0, help="warm-up seconds per case and batch (default 2)")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--real", action="store_true", help="the real DINOv2-small instead of a random-weight ViT-S")
    p.add_argument("--image-size", type=int, default=IMAGE)
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--json", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import fxapprox
    from fxapprox.blocks import find_block_stack
    from fxapprox.export.torch_bench import torch_compare
    from fxapprox.inputs import as_model_inputs
    from fxapprox.prepare import trace

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.real:
        from fxapprox.study.assets import load_model

        model = load_model("dinov2-small").eval()
        info = {"kind": "DINOv2-small (real weights)", "image": args.image_size}
    else:
        model = vit_small()
        info = {"kind": "ViTModel (random init), ViT-S/16 sizes", "image": args.image_size}
    model.to(device)
    gen = torch.Generator().manual_seed(0)
    calib = [{"pixel_values": torch.randn(32, 3, args.image_size, args.image_size, generator=gen).to(device)}
             for _ in range(max(1, args.calib_samples // 32))]
    example = {"pixel_values": torch.randn(2, 3, args.image_size, args.image_size, generator=gen).to(device)}
    t0 = time.perf_counter()
    res = fxapprox.compress(model, calib, spans=SPANS, num_samples=args.calib_samples, progress=False)
    common = dict(batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                  precisions=[x for x in args.precisions.split(",") if x],
                  modes=("eager", "compile") if args.compile else ("eager",), device=device,
                  warmup=args.warmup, warmup_s=args.warmup_s, iters=args.iters, threads=args.threads)
    out: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/bench_torch.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "model": info,
        "spans": res.spans,
        "compress_s": round(time.perf_counter() - t0, 2),
        "compressed_vs_eager": _summary(torch_compare(model, res, example, **common)),
    }
    if args.json:  # a partial report survives a failure in a later stage
        write_json(args.json, out)
    if args.captured:
        captured = trace(model, as_model_inputs(example), find_block_stack(model)).module
        out["captured_vs_eager"] = _summary(torch_compare(model, captured, example, flop_speedup=1.0, **common))
    if args.profile:
        one = {"pixel_values": example["pixel_values"][:1]}
        out["op_counts"] = {f"{name}{'_bf16_autocast' if ac else ''}": op_counts(m, one, ac)
                            for ac in (False, True) for name, m in (("original", model), ("compressed", res.module))}
    print(json.dumps(out, indent=2))
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
