"""Stage 1, capture: model + calibration loader + config → `Captured` (FX graph, its boundaries, the batches).

Finds the block stack, checks what the config asks to remove against it (spans in range and not
overlapping, `num_blocks` at most the units there are) before any work, traces the model on the
first batch (`fxapprox.prepare.trace`) and keeps the batches for calibration (`refit="sequential"`
keeps the calibration samples in memory: they are run again for every later span, as they are for
the training of `refine` and `transform="mlp"`, which a process group refuses).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fxapprox import distributed
from fxapprox.blocks import find_block_stack
from fxapprox.calibrate import iter_batches, split_samples
from fxapprox.config import CompressConfig
from fxapprox.errors import FoldError, RefineError, SpanError
from fxapprox.inputs import ModelInputs
from fxapprox.prepare import Traced, model_device, trace
from fxapprox.spans import validate_spans

__all__ = ["Captured", "run"]

Span = tuple[int, int]


@dataclass
class Captured:
    """The traced graph and what the later stages need of the model and the loader."""

    traced: Traced
    first: ModelInputs                                # the loader's first batch (on the model's device)
    batches: Iterator[ModelInputs] | list[ModelInputs]  # every batch, the first included
    device: torch.device
    model_class: str
    params_before: int
    like: torch.Tensor                                # a parameter whose dtype and device new maps take


def check_folds(spans: Iterable[Span], fold: bool) -> None:
    """With `fold`, no span may start where another ends (that block is gone: nothing to fold into)."""
    if not fold:
        return
    spans = list(spans)
    ends = {e for _, e in spans}
    for s, e in spans:
        if s in ends:
            raise FoldError(f"span ({s}, {e}) starts where another span ends: block {s} is removed, so there is "
                            "no down projection to fold into; merge the spans or use fold=False")


def check_widths(spans: Iterable[Span], transform: str, widths: list[int]) -> None:
    """Identity spans need the same width at both ends."""
    if transform != "identity":
        return
    for s, e in spans:
        if widths[s + 1] != widths[e + 1]:
            raise SpanError(
                f"identity span ({s}, {e}) maps width {widths[s + 1]} to width {widths[e + 1]}; "
                "use transform='linear' for spans between boundaries of different widths"
            )


def reference_param(model: nn.Module) -> torch.Tensor:
    """A floating-point parameter of `model` (new maps take its dtype and device)."""
    floats = [p for p in model.parameters() if p.is_floating_point()]
    return floats[0] if floats else torch.empty(0)


def run(model: nn.Module, calib_loader: Iterable[Any], config: CompressConfig) -> Captured:
    """Trace `model` on the first batch of `calib_loader` as `config` says (`blocks`, `units`), after
    checking what it asks to remove against the model's units."""
    stack = find_block_stack(model, config.blocks)
    num_units = stack.num_blocks * (2 if config.units == "half" else 1)
    if config.spans is not None:
        check_folds(validate_spans(config.spans, num_units, config.units), config.fold)
    elif config.num_blocks is not None and not config.num_blocks <= num_units:
        raise SpanError(
            f"num_blocks={config.num_blocks} cannot be removed from a model with {num_units} "
            f"{'half-block units' if config.units == 'half' else 'blocks'}: choose 1 <= num_blocks <= {num_units}"
        )
    if config.block_latency is not None and len(config.block_latency.block_ms) != stack.num_blocks:
        raise SpanError(f"the block latencies are for {len(config.block_latency.block_ms)} blocks, the model has "
                        f"{stack.num_blocks}: measure them on this model")
    if config.trains and distributed.world_size() > 1:
        raise RefineError(f"refine= and transform='mlp' train in one process, not in a group of "
                          f"{distributed.world_size()}: run compress without torchrun")
    options = {k: v for k, v in config.to_dict().items() if k not in ("blocks", "progress")}
    distributed.check_same(model, blocks=stack.num_blocks, **options)
    first, batches = iter_batches(calib_loader, model)
    if config.refit == "sequential" or config.trains:  # the samples again: later spans, training
        batches = list(split_samples(batches, config.num_samples)[0])
    traced = trace(model, first, stack, config.units, inline_blocks=config.fold)
    if config.spans is not None:
        check_widths(config.spans, config.transform, traced.widths)
    device = model_device(model)
    return Captured(traced, first.to(device), batches, device, type(model).__name__,
                    sum(p.numel() for p in model.parameters()), reference_param(model))
