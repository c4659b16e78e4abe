"""Model + onnxruntime provider → measured latency each block costs → span selection under a latency budget.

FLOPs are a proxy; what a user buys is latency on the provider that will run the model. For each
block `k`, the model with block `k` replaced by the identity is exported and timed interleaved
with the original (`fxapprox.export.compare`): the difference of the medians is what removing the
block saves. One more plan, the last block replaced by a linear map, gives the cost of a map.
`select_by_latency` then runs the same dynamic program as FLOP budgets
(`fxapprox.select.best_spans_for_saving`) with these savings: the span set of least total score
that saves at least `latency_budget` (a fraction of the original latency). Savings are taken as
additive over blocks (true when the blocks run one after another, as they do). `BlockLatency`
lives in the library (`fxapprox.costs`): `compress(..., latency_budget=f, block_latency=...)` takes it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from fxapprox.analysis import Analysis
from fxapprox.costs import BlockLatency
from fxapprox.errors import SpanError
from fxapprox.select import best_spans_for_saving, candidate_costs

__all__ = ["BlockLatency", "block_latencies", "plan_latency", "select_by_latency"]

log = logging.getLogger(__name__)

Span = tuple[int, int]


def plan_latency(model: torch.nn.Module, result: Any, example: Any, *, batch_size: int = 32,
                 providers: Sequence[str] | str | None = None, iters: int = 20, warmup: int = 3,
                 workdir: Path | None = None, original_onnx: Path | None = None) -> tuple[float, float, str]:
    """A compression result → (original ms, plan ms, provider), both exported to ONNX and timed
    interleaved in one run."""
    from fxapprox.export import compare, to_onnx

    with tempfile.TemporaryDirectory(prefix="fxapprox-latency-") as tmp:
        where = Path(workdir or tmp)
        if original_onnx is None:
            original_onnx = where / "original.onnx"
            to_onnx(model, example, original_onnx, validate=False)
        path = where / "plan.onnx"
        to_onnx(result, example, path, validate=False)
        bench = compare(str(original_onnx), str(path), example, batch_sizes=(batch_size,), iters=iters,
                        warmup=warmup, providers=providers, flop_speedup=1.0)
        path.unlink(missing_ok=True)
    row = bench["rows"][0]
    return row["original"]["median_ms"], row["compressed"]["median_ms"], bench["provider"]


def block_latencies(model: torch.nn.Module, calib: Iterable[Any], example: Any, *, batch_size: int = 32,
                    providers: Sequence[str] | str | None = None, iters: int = 20, warmup: int = 3,
                    num_samples: int = 64) -> BlockLatency:
    """Measure what removing each block saves, and what a linear map costs, in onnxruntime (see the
    module docstring); `example` is one input batch, repeated to `batch_size` rows."""
    import fxapprox
    from fxapprox.blocks import find_block_stack
    from fxapprox.export import to_onnx

    num_blocks = find_block_stack(model).num_blocks
    kw = dict(batch_size=batch_size, providers=providers, iters=iters, warmup=warmup)
    with tempfile.TemporaryDirectory(prefix="fxapprox-latency-") as tmp:
        original = Path(tmp) / "original.onnx"
        to_onnx(model, example, original, validate=False)
        originals, saved, provider = [], [], ""
        for k in range(num_blocks):
            res = fxapprox.compress(model, calib, spans=[(k - 1, k)], transform="identity", num_samples=num_samples,
                                    progress=False)
            base, plan, provider = plan_latency(model, res, example, workdir=Path(tmp), original_onnx=original, **kw)
            originals.append(base)
            saved.append(base - plan)
            log.info("block %d: %.3f ms of %.3f ms", k, base - plan, base)
        last = num_blocks - 1
        res = fxapprox.compress(model, calib, spans=[(last - 1, last)], num_samples=num_samples, progress=False)
        base, plan, _ = plan_latency(model, res, example, workdir=Path(tmp), original_onnx=original, **kw)
    map_ms = max(saved[last] - (base - plan), 0.0)
    return BlockLatency(float(sum(originals) / len(originals)), saved, map_ms, provider, batch_size)


def select_by_latency(an: Analysis, latency: BlockLatency, latency_budget: float, *, metric: str = "output",
                      transform: str = "linear", max_span_len: int | None = None) -> list[Span]:
    """The span set of least total `metric` cost whose measured latency saving is at least
    `latency_budget` (a fraction of the original latency), by the same dynamic program as FLOP budgets."""
    if not 0 < latency_budget < 1:
        raise SpanError(f"latency_budget={latency_budget} must be a fraction of the latency in (0, 1)")
    if len(latency.block_ms) != an.num_blocks:
        raise SpanError(f"the latencies are for {len(latency.block_ms)} blocks, the analysis has {an.num_blocks}")
    scores = an.matrix(metric)
    costs = candidate_costs(lambda s, e: float(scores[s + 1, e + 1]), an.num_blocks, metric=metric,
                            transform=transform, widths=an.widths, max_span_len=max_span_len)
    savings = {sp: latency.saving(*sp, transform) for sp in costs}
    return best_spans_for_saving(costs, savings, an.num_blocks, latency_budget * latency.original_ms)
