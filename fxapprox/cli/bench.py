"""`fxapprox bench TARGET [TARGET2]` → latency table (onnxruntime for .onnx files, PyTorch eager otherwise).

`--torch PLAN_DIR` (or `--torch MODEL PLAN_DIR`): original vs compressed in PyTorch per precision
(fp32, bf16 autocast, bf16, fp16), eager and with `--compile` `torch.compile` (`torch_compare`).

One target: latency per batch size. Two targets (original, then compressed): both timed
interleaved in one run, with the measured speed-up next to the FLOP speed-up. A target is an
ONNX file, a plan directory (with `--model`) or a model name.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from fxapprox.cli.common import nonnegative_int, positive_int, positive_ints, stage, write_json
from fxapprox.cli.export import add_model_arguments, load_source
from fxapprox.errors import ExportError
from fxapprox.export.torch_bench import TORCH_PRECISIONS

__all__ = ["add_parser", "run", "format_benchmark", "format_comparison", "format_torch_comparison"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `fxapprox bench`."""
    p = subparsers.add_parser(
        "bench", help="time an ONNX file or model (or original vs compressed, interleaved)",
        description="Time ONNX files in onnxruntime (CUDA provider with IO binding when available, "
        "else CPU) or models in PyTorch eager. With two targets, time original and compressed "
        "interleaved and report the speed-up next to the FLOP ratio.",
    )
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help="an .onnx file, a plan directory (with --model) or a model name; two for a comparison")
    add_model_arguments(p)
    p.add_argument("--batch-sizes", type=positive_ints, default="1,8,32",
                   help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--providers",
                   help="onnxruntime providers in order, e.g. cuda,cpu (default: CUDA if available, else CPU)")
    p.add_argument("--device", help="PyTorch device for model targets (default: cuda if available)")
    p.add_argument("--threads", type=positive_int, help="intra-op threads (onnxruntime and PyTorch)")
    p.add_argument("--warmup", type=nonnegative_int, default=5, help="untimed calls per batch size (default 5)")
    p.add_argument("--iters", type=positive_int, default=30, help="timed calls per batch size (default 30)")
    p.add_argument("--baseline", choices=("as-given", "optimized"), default="as-given",
                   help="optimized: export (models, plan directories) and fuse both targets for onnxruntime the "
                   "same way (to_onnx(optimize=True)) before timing, the deployment Hugging Face users run; "
                   "as-given (default): time the files as they are, models in PyTorch eager")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="with --baseline optimized: convert both to this precision (default fp32)")
    p.add_argument("--torch", action="store_true",
                   help="PyTorch benchmark of original vs compressed (no export): a plan directory (its model "
                   "is the original), or a model and a plan directory; interleaved, per precision and batch size")
    p.add_argument("--torch-precisions", type=_torch_precisions, default=",".join(TORCH_PRECISIONS),
                   help=f"with --torch: comma-separated, of {', '.join(TORCH_PRECISIONS)} (default all)")
    p.add_argument("--compile", action="store_true", help="with --torch: also time torch.compile of both")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    p.set_defaults(func=run)
    return p


def _torch_precisions(text: str) -> str:
    """argparse type: a comma-separated list of `TORCH_PRECISIONS`."""
    unknown = [x.strip() for x in text.split(",") if x.strip() and x.strip() not in TORCH_PRECISIONS]
    if unknown or not text.strip(","):
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list of {', '.join(TORCH_PRECISIONS)}")
    return text


def _providers(text: str) -> list[str]:
    """`--providers cuda,cpu` → provider names this onnxruntime has, or an error listing those it has."""
    from fxapprox.errors import ProviderUnavailableError
    from fxapprox.export.benchmark import resolve_providers

    names = [name.strip() for name in text.split(",") if name.strip()]
    try:
        if names:
            resolve_providers(names)
            return names
    except ProviderUnavailableError:
        pass
    import onnxruntime

    have = onnxruntime.get_available_providers()
    short = [alias for alias, full in (("cuda", "CUDAExecutionProvider"), ("cpu", "CPUExecutionProvider"))
             if full in have]
    raise ProviderUnavailableError(
        f"--providers {text!r} is not available here: onnxruntime here has {', '.join(short + have)}; give a "
        "comma-separated subset of those (cuda/cpu or onnxruntime's names), or leave --providers out to use the "
        "best available one")


def _is_onnx(target: str) -> bool:
    return target.endswith(".onnx") or (Path(target).is_file() and Path(target).suffix == ".onnx")


def _check_onnx(path: str) -> None:
    """An .onnx target that is missing or not an ONNX model → an error that says what to pass."""
    import onnx
    from google.protobuf.message import DecodeError

    if not Path(path).is_file():
        raise ExportError(f"{path} does not exist; write it with `fxapprox export ... --onnx {path}`")
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, ValueError, OSError) as err:
        raise ExportError(f"{path} is not an ONNX model ({type(err).__name__}: {err}); pass an .onnx file written by "
                          "`fxapprox export`, a plan directory or a model name") from None
    if not model.graph.node or not model.graph.input:
        size = Path(path).stat().st_size
        raise ExportError(f"{path} is not an ONNX model ({'an empty file' if not size else 'it has no graph'}); "
                          "pass an .onnx file written by `fxapprox export`, a plan directory or a model name")


def _flops_from_metadata(paths: list[str]) -> float | None:
    """Per-item FLOPs stored by `fxapprox export` in both files → original / compressed."""
    from fxapprox.export import read_metadata

    per_item = []
    for path in paths:
        raw = read_metadata(path).get("fxapprox.flops")
        if raw is None:
            return None
        per_item.append(json.loads(raw)["per_item"])
    return per_item[0] / per_item[1] if per_item[1] else None


def run(args: argparse.Namespace) -> int:
    """Benchmark the target(s), print a table; `--json` writes the results."""
    from fxapprox.export import benchmark, compare
    from fxapprox.export.benchmark import onnx_example_inputs

    if len(args.targets) > 2:
        raise ExportError("bench takes one target, or two (original, compressed) to compare")
    sizes = list(args.batch_sizes)
    if args.torch:
        return _run_torch(args, sizes)
    providers = _providers(args.providers) if args.providers is not None else None
    onnx = [_is_onnx(t) for t in args.targets]
    if len(set(onnx)) != 1:
        raise ExportError("compare two .onnx files or two models/plan directories, not one of each")
    if onnx[0]:  # before any work, --baseline optimized too
        for t in args.targets:
            _check_onnx(t)
    common = dict(batch_sizes=sizes, warmup=args.warmup, iters=args.iters, threads=args.threads)
    if args.baseline == "optimized":
        from fxapprox.export.optimize import optimized_pair

        with tempfile.TemporaryDirectory() as tmp:
            loaded = None if onnx[0] else [load_source(t, args) for t in args.targets]
            sources = args.targets if onnx[0] else [target for target, _, _ in loaded]
            example = None if onnx[0] else loaded[0][1]
            files = optimized_pair(sources, Path(tmp), example, precision=args.precision)
            # Time the fused files as given; the report still says which baseline they are.
            return run(argparse.Namespace(**{**vars(args), "targets": [str(f) for f in files],
                                             "baseline": "as-given", "baseline_of_record": "optimized"}))
    if onnx[0]:
        inputs = onnx_example_inputs(args.targets[0], seq_len=args.seq_len or 128)
        targets = args.targets
        extra: dict[str, Any] = {"providers": providers}
    else:
        loaded = [load_source(t, args) for t in args.targets]
        targets = [target for target, _, _ in loaded]
        inputs = loaded[0][1].take(1)
        extra = {"device": args.device}
    stage("bench", f"timing {' vs '.join(args.targets)} at batch sizes {','.join(map(str, sizes))}, "
          f"{args.iters} calls each")
    if len(targets) == 1:
        result = benchmark(targets[0], inputs, **common, **extra).as_dict()
        print(format_benchmark(result, args.targets[0]))
    else:
        flop_speedup = _flops_from_metadata(targets) if onnx[0] else None
        result = compare(targets[0], targets[1], inputs, **common, **extra, flop_speedup=flop_speedup)
        print(format_comparison(result, args.targets))
    result["baseline"] = getattr(args, "baseline_of_record", args.baseline)
    result["precision"] = args.precision if result["baseline"] == "optimized" else None
    if args.json:
        write_json(args.json, result)
    return 0


def _run_torch(args: argparse.Namespace, sizes: list[int]) -> int:
    """`--torch`: original and compressed modules from the targets, timed by `torch_compare`."""
    from fxapprox.export.torch_bench import torch_compare

    if any(_is_onnx(t) for t in args.targets):
        raise ExportError("--torch times PyTorch modules: pass a plan directory (or a model and a plan directory), "
                          "not .onnx files")
    if args.providers is not None:
        raise ExportError("--providers chooses onnxruntime's execution providers, and --torch times PyTorch: drop "
                          "--providers (PyTorch runs where --device says)")
    loaded = [load_source(t, args) for t in args.targets]
    if len(loaded) == 1:
        target, inputs, original = loaded[0]
        if target is original:
            raise ExportError(f"{args.targets[0]} is a model, not a compressed one: pass the plan directory "
                              "`fxapprox compress` wrote (with --model if it does not name its model)")
        pair = (original, target)
    else:
        pair, inputs = (loaded[0][0], loaded[1][0]), loaded[0][1]
    precisions = [x.strip() for x in args.torch_precisions.split(",") if x.strip()]
    stage("bench", f"timing {' vs '.join(args.targets)} in PyTorch at batch sizes {args.batch_sizes}, "
          f"{args.iters} calls each")
    result = torch_compare(*pair, inputs.take(1), batch_sizes=sizes, precisions=precisions,
                           modes=("eager", "compile") if args.compile else ("eager",), device=args.device,
                           warmup=args.warmup, iters=args.iters, threads=args.threads)
    print(format_torch_comparison(result))
    if args.json:
        write_json(args.json, result)
    return 0


def format_torch_comparison(result: dict[str, Any]) -> str:
    """`torch_compare(...)` → a terminal table: one line per precision, mode and batch size."""
    fs = result["flop_speedup"]
    lines = [f"[torch · {result['device_name']}, interleaved, {result['iters']} calls each]   "
             f"FLOP speed-up: {fs:.2f}×",
             f"  {'precision':<14} {'mode':<8} {'batch':>5} {'orig ms':>9} {'comp ms':>9} {'speed-up':>9} "
             f"{'efficiency':>10}"]
    for case in result["cases"]:
        if "skipped" in case:
            lines.append(f"  {case['precision']:<14} {case['mode']:<8} skipped: {case['skipped']}")
            continue
        for r in case["rows"]:
            lines.append(f"  {case['precision']:<14} {case['mode']:<8} {r['batch_size']:>5} "
                         f"{r['original']['median_ms']:>9.3f} {r['compressed']['median_ms']:>9.3f} "
                         f"{r['speedup']:>8.2f}× {r['efficiency']:>10.2f}")
    return "\n".join(lines)


def format_benchmark(result: dict[str, Any], name: str = "") -> str:
    """`benchmark(...).as_dict()` → a terminal table."""
    lines = [f"{name}  [{result['backend']} · {result['provider']} · {result['device']}]",
             f"  {'batch':>5} {'median ms':>10} {'p10–p90 ms':>17} {'items/s':>10}"]
    for t in result["timings"]:
        lines.append(f"  {t['batch_size']:>5} {t['median_ms']:>10.3f} {t['p10_ms']:>8.3f}–{t['p90_ms']:<8.3f} "
                     f"{t['items_per_s']:>10.1f}")
    return "\n".join(lines)


def format_comparison(result: dict[str, Any], names: list[str]) -> str:
    """`compare(...)` → a terminal table of original vs compressed."""
    fs = result["flop_speedup"]
    lines = [f"original: {names[0]}   compressed: {names[1]}",
             f"[{result['backend']} · {result['provider']} · {result['device']}, interleaved, "
             f"{result['iters']} calls each]   FLOP speed-up: {f'{fs:.2f}×' if fs else 'n/a'}",
             f"  {'batch':>5} {'orig ms':>9} {'comp ms':>9} {'speed-up':>9} {'FLOP ×':>7} {'efficiency':>10}"]
    for r in result["rows"]:
        eff = f"{r['efficiency']:.2f}" if r["efficiency"] else "n/a"
        lines.append(f"  {r['batch_size']:>5} {r['original']['median_ms']:>9.3f} {r['compressed']['median_ms']:>9.3f} "
                     f"{r['speedup']:>8.2f}× {f'{fs:.2f}×' if fs else 'n/a':>7} {eff:>10}")
    return "\n".join(lines)
