"""Original model + compressed module → PyTorch latency of both, interleaved, per precision, mode and batch size.

The PyTorch counterpart of `compare` for the deployment most users have: the module itself,
no export. Precisions: `fp32`; `bf16-autocast` (fp32 weights under `torch.autocast`); `bf16` and
`fp16` (both modules converted with `.to(dtype)`, float inputs cast). Modes: `eager`, and
`compile` (`torch.compile` of each; its first calls, which compile, are part of the warm-up and
their time is reported). Both modules run on one device (CUDA where present), each call waits
for the GPU (`torch.cuda.synchronize`), warm-up calls are discarded until both are warm (at
least `warmup` calls and `warmup_s` seconds), then timed alternately. A precision a device or a
module cannot run (fp16 on a CPU without fp16 kernels, a graph that fixed its dtype) is
reported as skipped with the reason, not raised.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fxapprox.errors import ExportError, FxApproxError
from fxapprox.export.benchmark import _batch, _on_device, _time, comparison_row, interleaved, torch_device, torch_runner
from fxapprox.export.onnx import _set_eval, _unwrap
from fxapprox.inputs import ModelInputs, as_model_inputs

__all__ = ["TORCH_PRECISIONS", "TORCH_MODES", "torch_compare"]

log = logging.getLogger(__name__)

TORCH_PRECISIONS = ("fp32", "bf16-autocast", "bf16", "fp16")
TORCH_MODES = ("eager", "compile")
_WEIGHTS = {"fp32": torch.float32, "bf16-autocast": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _converted(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    return module if dtype == torch.float32 else copy.deepcopy(module).to(dtype)


def _cast_inputs(inputs: ModelInputs, dtype: torch.dtype) -> ModelInputs:
    return inputs.map_tensors(lambda t: t.to(dtype) if t.is_floating_point() else t)


def _prepare(modules: tuple[nn.Module, nn.Module], precision: str, mode: str) -> tuple[nn.Module, nn.Module]:
    dtype = _WEIGHTS[precision]
    pair = tuple(_converted(m, dtype) for m in modules)
    if mode == "compile":
        pair = tuple(torch.compile(m) for m in pair)
    return pair  # type: ignore[return-value]


def _case(modules: tuple[nn.Module, nn.Module], inputs: ModelInputs, device: torch.device, precision: str,
          mode: str, batch_sizes: Sequence[int], warmup: int, warmup_s: float, iters: int,
          flop_speedup: float | None) -> dict[str, Any]:
    """One precision × mode: a row per batch size, or the reason it could not run."""
    entry: dict[str, Any] = {"precision": precision, "mode": mode}
    try:
        pair = _prepare(modules, precision, mode)
        autocast = torch.bfloat16 if precision == "bf16-autocast" else None
        cast = _cast_inputs(inputs, _WEIGHTS[precision])
        rows, first_call_s = [], []
        for bs in batch_sizes:
            sized = _batch(cast, bs)
            runs = [torch_runner(m, sized, device, autocast) for m in pair]
            first_call_s.append([_time(r) for r in runs])  # compiles under mode="compile"
            rows.append(comparison_row(bs, *interleaved(*runs, warmup, iters, warmup_s), flop_speedup))
        entry |= {"rows": rows, "first_call_s": first_call_s}
    except (RuntimeError, TypeError, NotImplementedError, FxApproxError) as err:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:400]
        log.warning("torch benchmark %s/%s skipped: %s", precision, mode, reason)
        entry["skipped"] = reason
    return entry


def torch_compare(original: Any, compressed: Any, inputs: Any, *, batch_sizes: Sequence[int] = (1, 8, 64),
                  precisions: Sequence[str] = TORCH_PRECISIONS, modes: Sequence[str] = ("eager",),
                  device: str | torch.device | None = None, warmup: int = 10, warmup_s: float = 1.0,
                  iters: int = 30, threads: int | None = None, flop_speedup: float | None = None,
                  blocks: str | None = None) -> dict[str, Any]:
    """Time `original` and `compressed` (modules or compression results) in PyTorch, interleaved.

    Returns the FLOP ratio (from the modules, or `flop_speedup=`) and one entry per precision ×
    mode with a `comparison_row` per batch size (`speedup` = original / compressed median
    latency, `efficiency` = speedup / FLOP ratio), or `skipped` with the reason.
    """
    from fxapprox.export.flops import compare_flops

    unknown = [p for p in precisions if p not in TORCH_PRECISIONS] + [m for m in modes if m not in TORCH_MODES]
    if unknown:
        raise ExportError(f"unknown precision or mode {unknown}: precisions are {TORCH_PRECISIONS}, "
                          f"modes {TORCH_MODES}")
    inputs = as_model_inputs(inputs)
    dev = torch_device(device)
    if threads:
        torch.set_num_threads(threads)
    modules = tuple(_unwrap(t)[0] for t in (original, compressed))
    for m in modules:
        _set_eval(m)
    modules = tuple(_on_device(m, dev) for m in modules)
    flops = None
    if flop_speedup is None:
        flops = compare_flops(modules[0], modules[1], inputs.take(1).to(dev), blocks=blocks)
        flop_speedup = flops["flop_ratio"]
    cases = [_case(modules, inputs, dev, p, m, batch_sizes, warmup, warmup_s, iters, flop_speedup)
             for m in modes for p in precisions]
    return {
        "backend": "torch",
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "flop_speedup": flop_speedup,
        "param_ratio": flops["param_ratio"] if flops else None,
        "warmup": warmup,
        "warmup_s": warmup_s,
        "iters": iters,
        "cases": cases,
    }
