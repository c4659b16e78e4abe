"""ViT-S-sized model, 4 blocks replaced by 2 linear spans → measured onnxruntime speed-up vs FLOP-ratio speed-up (JSON).

A random-initialised Hugging Face ViT with ViT-S/16 sizes (12 blocks, hidden 384, 6 heads,
MLP 1536) at 112 px (50 tokens) is compressed with spans 3→5 and 8→10 (blocks 4, 5, 9, 10
removed), both models are exported to ONNX with `fxapprox.export.to_onnx`, then timed
interleaved in one onnxruntime run (`fxapprox.export.compare`). The target is a measured
speed-up of at least 0.9 × the FLOP-ratio speed-up. `--torch` also times PyTorch eager (CUDA
where present), against the original model and against its uncompressed torch.export capture.
Prints one JSON document (and writes it to `--json`).

    python benchmarks/bench_export.py [--batch-sizes 1,8,32] [--iters 50] [--providers cpu] [--torch]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from fxapprox.cli.common import write_json

log = logging.getLogger("bench_export")

SPANS = [(3, 5), (8, 10)]
IMAGE = 112


def vit_small(seed: int = 0) -> torch.nn.Module:
    """ViT-S/16 sizes, random weights (a speed benchmark: the fit's quality does not matter here)."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    cfg = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                    image_size=IMAGE, patch_size=16)
    return ViTModel(cfg, add_pooling_layer=True).eval()


def _summary(report: dict) -> dict:
    rows = [{k: r[k] for k in ("batch_size", "speedup", "flop_speedup", "efficiency")}
            | {"original_ms": r["original"]["median_ms"], "compressed_ms": r["compressed"]["median_ms"],
               "original_p10_p90_ms": [r["original"]["p10_ms"], r["original"]["p90_ms"]],
               "compressed_p10_p90_ms": [r["compressed"]["p10_ms"], r["compressed"]["p90_ms"]],
               "original_items_per_s": r["original"]["items_per_s"],
               "compressed_items_per_s": r["compressed"]["items_per_s"],
               "meets_0_9": bool(r["efficiency"] is not None and r["efficiency"] >= 0.9)}
            for r in report["rows"]]
    return {k: report[k] for k in ("backend", "provider", "device", "flop_speedup", "warmup", "iters")} | {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--providers", help="onnxruntime providers, e.g. cpu or cuda,cpu (default: best available)")
    p.add_argument("--threads", type=int, help="onnxruntime / torch intra-op threads (default: all cores)")
    p.add_argument("--torch", action="store_true", help="also time PyTorch eager (CUDA where present)")
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--json", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import onnxruntime as ort

    import fxapprox
    from fxapprox.export import compare, compare_flops, to_onnx

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    providers = args.providers.split(",") if args.providers else None
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(64, 3, IMAGE, IMAGE, generator=gen) for _ in range(max(1, args.calib_samples // 64))]
    example = torch.randn(2, 3, IMAGE, IMAGE, generator=gen)

    model = vit_small()
    t0 = time.perf_counter()
    res = fxapprox.compress(model, calib, spans=SPANS, transform="linear", num_samples=args.calib_samples,
                            progress=False)
    compress_s = time.perf_counter() - t0
    flops = compare_flops(model, res, example[:1])
    out: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "onnxruntime": ort.__version__,
                    "ort_available_providers": ort.get_available_providers(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "model": {"kind": "ViTModel (random init)", "blocks": 12, "hidden": 384, "heads": 6, "mlp": 1536,
                  "image": IMAGE, "tokens": (IMAGE // 16) ** 2 + 1},
        "spans": res.spans,
        "removed_blocks": [b for s, e in res.spans for b in range(s + 1, e + 1)],
        "compress_s": compress_s,
        "params_before": res.num_params_before,
        "params_after": res.num_params_after,
        "flops_per_item_before": flops["before"]["per_item"],
        "flops_per_item_after": flops["after"]["per_item"],
        "flop_speedup": flops["flop_ratio"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        a = to_onnx(model, example, Path(tmp) / "original.onnx")
        b = to_onnx(res, example, Path(tmp) / "compressed.onnx")
        out["onnx_bytes_before"], out["onnx_bytes_after"] = a.size_bytes, b.size_bytes
        out["parity_max_abs_diff"] = max(max(c.max_abs_diff.values()) for c in a.checks + b.checks)
        report = compare(a.path, b.path, example, providers=providers, batch_sizes=sizes, warmup=args.warmup,
                         iters=args.iters, threads=args.threads, flop_speedup=flops["flop_ratio"])
        out["onnxruntime"] = _summary(report)
    if args.torch:
        # A torch.export graph holds device constants: on CUDA, compress a CUDA copy of the model.
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            model = vit_small().to(device)
            res = fxapprox.compress(model, [c.to(device) for c in calib], spans=SPANS, transform="linear",
                                    num_samples=args.calib_samples, progress=False)
        report = compare(model, res, example.to(device), batch_sizes=sizes, warmup=args.warmup,
                         iters=args.iters, threads=args.threads, device=device, modules=(model, res))
        out["torch"] = _summary(report)
        # The compressed module is a torch.export graph; the same capture of the original model,
        # uncompressed, separates the effect of the compression from that of the capture.
        captured = torch.export.export(model, (example.to(device),), strict=False,
                                       dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()
        report = compare(captured, res, example.to(device), batch_sizes=sizes, warmup=args.warmup,
                         iters=args.iters, threads=args.threads, device=device, flop_speedup=flops["flop_ratio"])
        out["torch_captured_baseline"] = _summary(report)
    print(json.dumps(out, indent=2))
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
