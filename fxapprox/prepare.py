"""Model + calibration loader (or one example batch) → the traced graph every pipeline starts from.

`trace()` captures the model on an example batch, cleans the graph (`fxapprox.passes.cleanup`:
all-true attention masks, eval-mode dropout, no-op copies, export's dtype assertions go, so the
capture does what the eager model does and accepts the dtypes it accepts), finds its boundary
nodes `H_-1 .. H_{L-1}` (with `units="half"` also the middles `M_k`) and their widths;
`prepare()` does the same from the first batch of a calibration loader and hands back the
batches to calibrate on. `compress`, `load`,
`analyze` and `span_features` all begin here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fxapprox.blocks import BlockStack, find_block_stack
from fxapprox.boundaries import UNITS, Boundaries, find_boundaries
from fxapprox.calibrate import iter_batches
from fxapprox.capture import capture, flat_graph_inputs
from fxapprox.inputs import ModelInputs
from fxapprox.passes.cleanup import cleanup

__all__ = ["Traced", "Prepared", "trace", "prepare", "example_batch", "model_device"]

log = logging.getLogger(__name__)


@dataclass
class Traced:
    """A captured graph with its block stack, boundary nodes and boundary widths."""

    module: torch.fx.GraphModule
    capture_path: str
    stack: BlockStack
    boundaries: Boundaries
    widths: list[int]  # widths[k + 1] is the width of boundary k
    example: ModelInputs

    @property
    def units(self) -> str:
        """"block" or "half" (boundaries `-1 .. 2L-1`)."""
        return self.boundaries.units

    @property
    def num_units(self) -> int:
        """Number of units spans are counted in: blocks, or half blocks."""
        return self.boundaries.num_units


@dataclass
class Prepared:
    """`Traced` plus the calibration batches (the first one included) and the model's device."""

    traced: Traced
    batches: Iterator[ModelInputs]
    device: torch.device


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first floating-point parameter, else of its first buffer, else CPU."""
    tensor = next((p for p in model.parameters() if p.is_floating_point()), None)
    tensor = tensor if tensor is not None else next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def example_batch(first: ModelInputs) -> ModelInputs:
    """Two samples of a batch (one sample is repeated: torch.export specialises batch size 1)."""
    if first.batch_size >= 2:
        return first.take(2)
    return first.map_tensors(lambda t: torch.cat([t, t]))


def _propagate_shapes(gm: torch.fx.GraphModule, example: ModelInputs) -> None:
    """Give a symbolic trace's nodes `tensor_meta` (export graphs carry `val` already)."""
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(gm).propagate(*flat_graph_inputs(gm, example))


def _widths(gm: torch.fx.GraphModule, boundaries: Boundaries, example: ModelInputs) -> list[int]:
    if not all(isinstance(n.meta.get("val"), torch.Tensor) for n in boundaries.nodes):
        if not all("tensor_meta" in n.meta for n in boundaries.nodes):
            _propagate_shapes(gm, example)
        return [n.meta["tensor_meta"].shape[-1] for n in boundaries.nodes]
    return [n.meta["val"].shape[-1] for n in boundaries.nodes]


def trace(model: nn.Module, example: ModelInputs, stack: BlockStack, units: str = "block", *,
          inline_blocks: bool = False) -> Traced:
    """Capture `model` on `example` (moved to the model's device) and locate its boundaries in
    `units` ("block", or "half": the blocks' insides are traced and the middles `M_k` found too).
    `inline_blocks=True` traces the blocks' insides for block units too (folding needs their Linears)."""
    if units not in UNITS:
        raise ValueError(f"units={units!r} is not one of {UNITS}")
    inline_blocks = inline_blocks or units == "half"
    example = example_batch(example).to(model_device(model))
    captured = capture(model, example, stack, inline_blocks=inline_blocks)
    record = cleanup(captured.module)
    log.info("cleanup of the captured graph: %d dtype assertions, %d attention masks, %d dropouts, %d copies, "
             "%d dead nodes removed", len(record.guards.removed), len(record.masks.dropped),
             len(record.dropout.removed), len(record.copies.removed), record.pruned.nodes_removed)
    if inline_blocks and captured.path == "symbolic_trace":
        _propagate_shapes(captured.module, example)  # middles are found on tensor-valued nodes
    boundaries = find_boundaries(captured.module, stack, units)
    return Traced(captured.module, captured.path, stack, boundaries,
                  _widths(captured.module, boundaries, example), example)


def prepare(model: nn.Module, calib_loader: Iterable[Any], blocks: str | None = None,
            units: str = "block") -> Prepared:
    """Find the block stack, trace on the loader's first batch, keep the batches for calibration."""
    stack = find_block_stack(model, blocks)
    first, batches = iter_batches(calib_loader, model)
    return Prepared(trace(model, first, stack, units), batches, model_device(model))
