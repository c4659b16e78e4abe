"""`fxapprox export PLAN_DIR_OR_MODEL --onnx out.onnx` → a checked ONNX file and a parity table.

A plan directory (written by `fxapprox compress`) is re-applied to `--model`; anything else is
a model name (built-in, Hugging Face directory or hub id) exported as it is. Example inputs come
from the plan, from `--inputs FILE.safetensors`, or are made from the model's config.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from fxapprox.cli.common import output_parent, positive_int, stage, write_json
from fxapprox.errors import AssetError, ExportError
from fxapprox.inputs import ModelInputs
from fxapprox.plan import Plan

__all__ = ["add_parser", "run", "load_source", "config_inputs"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `fxapprox export`."""
    p = subparsers.add_parser(
        "export", help="plan directory or model → ONNX file checked against PyTorch in onnxruntime",
        description="Export a compressed (plan directory + --model) or original model to ONNX with "
        "dynamic batch (and sequence) axes, check it with onnx.checker and compare onnxruntime "
        "with PyTorch at two batch sizes.",
    )
    p.add_argument("source", metavar="PLAN_DIR_OR_MODEL",
                   help="a plan directory written by `fxapprox compress`, or a model name/directory")
    p.add_argument("--onnx", required=True, type=Path, metavar="OUT.onnx", help="ONNX file to write")
    add_model_arguments(p)
    p.add_argument("--opset", type=positive_int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch axis to the example's")
    p.add_argument("--static-seq", action="store_true", help="fix the sequence axis of token inputs")
    p.add_argument("--external-data", action="store_true", help="store the weights in OUT.onnx.data")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    p.add_argument("--optimize", action="store_true",
                   help="fuse Attention, SkipLayerNormalization and BiasGelu for onnxruntime; the JSON reports "
                   "the fused-operator counts of the original and the compressed model")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="fp16 (GPU) or int8 dynamic quantization (CPU) after export (default fp32)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the export record as JSON")
    p.set_defaults(func=run)
    return p


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by `export` and `bench` to load a model and make example inputs."""
    p.add_argument("--model", help="the model a plan directory was computed on (default: the one `fxapprox "
                   "compress` recorded in the plan; built-in name such as "
                   "dinov2-small, a Hugging Face directory or hub id)")
    p.add_argument("--inputs", type=Path, metavar="FILE.safetensors",
                   help="example inputs: a safetensors file whose keys are the model's keyword arguments")
    p.add_argument("--batch-size", type=positive_int, default=2, help="example batch size (default 2)")
    p.add_argument("--image-size", type=positive_int,
                   help="image side for made-up vision inputs (default: the config's)")
    p.add_argument("--seq-len", type=positive_int, help="sequence length for made-up token inputs (default 16)")


def _is_plan_dir(source: str) -> bool:
    return (Path(source) / "plan.json").is_file()


def _check_source(source: str) -> None:
    """A path that is neither a plan directory nor a model directory → an error that says what is expected."""
    path = Path(os.path.expanduser(source))  # unlike Path.expanduser, keeps an unknown ~user
    if not path.exists() or _is_plan_dir(source) or (path / "config.json").is_file():
        return
    what = "an ONNX file" if path.suffix == ".onnx" else "a directory" if path.is_dir() else "a file"
    raise ExportError(
        f"{source} is {what}, not a plan directory (with plan.json) or a Hugging Face model directory (with "
        "config.json): pass a plan directory written by `fxapprox compress`, a model name or directory, or to "
        "`fxapprox bench` an .onnx file written by `fxapprox export`"
    )


def config_inputs(model: torch.nn.Module, batch_size: int, *, image_size: int | None = None,
                  seq_len: int = 16) -> ModelInputs:
    """A model's config → random example inputs (`pixel_values`, or `input_ids` + `attention_mask`)."""
    from fxapprox.study.data import check_image_size

    config = getattr(model, "config", None)
    if image_size is not None:
        check_image_size(model, image_size, "--image-size")
    gen = torch.Generator().manual_seed(0)
    if config is not None and hasattr(config, "image_size"):
        side = image_size or config.image_size
        hw = tuple(side) if isinstance(side, (list, tuple)) else (side, side)
        channels = getattr(config, "num_channels", 3)
        return ModelInputs((), {"pixel_values": torch.randn(batch_size, channels, *hw, generator=gen)})
    if config is not None and hasattr(config, "vocab_size"):
        ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=gen)
        return ModelInputs((), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    raise ExportError(
        f"cannot make example inputs for {type(model).__name__} (its config has neither image_size nor "
        "vocab_size); pass --inputs FILE.safetensors with the model's keyword arguments"
    )


def load_source(source: str, args: argparse.Namespace) -> tuple[Any, ModelInputs, torch.nn.Module]:
    """PLAN_DIR (+ --model) or model name → (compression result or model, example inputs, original model)."""
    from fxapprox.export.onnx import resize_inputs
    from fxapprox.study.assets import load_model

    _check_source(source)
    stage(getattr(args, "command", "export"), f"loading {source}")
    if _is_plan_dir(source):
        from fxapprox.compression import apply_plan

        plan = Plan.read(source)  # checked before the model loads, and read once
        model_name = args.model or plan.source
        if not model_name:
            raise ExportError(f"{source} is a plan directory that does not name its model: pass --model with "
                              "the model it was computed on")
        original = load_model(model_name)
        target = apply_plan(original, plan, source=f"the plan in {source}")
        example = target.plan.example
    else:
        try:
            original = target = load_model(source)
        except AssetError as err:
            if Path(os.path.expanduser(source)).exists():
                raise
            raise AssetError(f"{source} is neither a plan directory (no such directory) nor a model: {err}; or "
                             "pass a plan directory written by `fxapprox compress --out DIR`") from err
        example = None
    if args.inputs is not None:
        from safetensors.torch import load_file

        example = ModelInputs((), load_file(str(args.inputs)))
    elif example is None or args.image_size or args.seq_len:
        example = config_inputs(original, args.batch_size, image_size=args.image_size, seq_len=args.seq_len or 16)
    if example.batch_size != args.batch_size:
        example = resize_inputs(example, args.batch_size)
    return target, example, original


def run(args: argparse.Namespace) -> int:
    """Export, check, print the parity table; `--json` writes the record."""
    from fxapprox.export import count_flops, to_onnx

    target, example, original = load_source(args.source, args)
    stage("export", "counting FLOPs")
    flops = count_flops(target, example.take(1))
    metadata = {"fxapprox.flops": {"per_item": flops.per_item, "params": flops.params,
                                   "input_shapes": {k: list(v.shape[1:]) for k, v in example.kwargs.items()
                                                    if isinstance(v, torch.Tensor)}}}
    stage("export", f"exporting to {args.onnx}" + ("" if args.no_check else " and checking parity in onnxruntime"))
    with output_parent(args.onnx):
        record = to_onnx(target, example, args.onnx, dynamic_batch=not args.static_batch,
                         dynamic_seq=False if args.static_seq else None, opset=args.opset, metadata=metadata,
                         external_data=True if args.external_data else None, validate=not args.no_check,
                         optimize=args.optimize, precision=args.precision)
    print(format_export(record, flops.per_item, flops.params))
    extra: dict[str, Any] = {}
    if record.optimization:
        from fxapprox.export.optimize import original_fused_ops

        extra["fused_ops"] = {"exported": record.optimization["fused_ops"],
                              "original": original_fused_ops(original, example) if target is not original
                              else record.optimization["fused_ops"]}
        print(f"  fused ops: {extra['fused_ops']}")
    if args.json:
        write_json(args.json, {**record.as_dict(), "flops_per_item": flops.per_item, "params": flops.params, **extra})
    return 0


def format_export(record: Any, flops_per_item: float | None = None, params: int | None = None) -> str:
    """An `OnnxExport` → a few lines and a parity table for the terminal."""
    lines = [
        f"wrote {record.path} ({record.size_bytes / 1e6:.2f} MB{', external data' if record.external_data else ''}, "
        f"opset {record.opset})",
        f"  inputs:  {', '.join(record.input_names)}   dynamic axes: "
        + (", ".join(f"{k}[{','.join(f'{i}={n}' for i, n in v.items())}]" for k, v in record.dynamic_axes.items())
           or "none"),
        f"  outputs: {', '.join(record.output_names)}",
    ]
    if "fxapprox.spans" in record.metadata:
        units = json.loads(record.metadata.get("fxapprox.plan", "{}")).get("units", "block")
        lines.append(f"  plan:    {record.metadata['fxapprox.spans']} (s->e replaces "
                     f"{'half-block units' if units == 'half' else 'blocks'} s+1..e)")
    if flops_per_item is not None:
        lines.append(f"  FLOPs per item {flops_per_item / 1e9:.3f} G, parameters {params:,}")
    if record.checks:
        lines.append("parity, onnxruntime (optimisations off) vs PyTorch:")
        lines.append(f"  {'batch':>5} {'seq':>5}  {'output':<24} {'max |diff|':>11}  ok")
        for c in record.checks:
            for name, diff in c.max_abs_diff.items():
                lines.append(f"  {c.batch_size:>5} {c.seq_len if c.seq_len else '-':>5}  {name:<24} {diff:>11.3g}  "
                             f"{'yes' if c.ok else 'NO'}")
    return "\n".join(lines)
