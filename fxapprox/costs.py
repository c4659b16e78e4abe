"""Traced graph (or measured latencies) → what each unit costs and what replacing a span saves.

Budgets are counted here, on the graph: `unit_costs` charges every node's FLOPs (on the example
batch, under `FlopCounterMode`) and every parameter to the unit (block or half block) it belongs
to; a span's saving is the sum over its units minus the map that replaces it (`replacement_flops`,
`replacement_params`: nothing for the identity or a folded map, `d_s × d_e` weights + bias and
`2 · tokens · d_s · d_e` FLOPs per sample for a Linear, and for `transform="mlp"` the Linear plus its
bottleneck MLP of `MlpSize.width` units: `2 · tokens · h · (d_s + d_e)` FLOPs, matmuls counted as
the graph's are). `BlockLatency` holds measured per-block latencies (measured by
`fxapprox.study.latency.block_latencies`) for latency budgets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.fx

from fxapprox.boundaries import unit_nodes
from fxapprox.capture import flat_graph_inputs
from fxapprox.prepare import Traced
from fxapprox.select import span_savings

__all__ = ["UnitCosts", "BlockLatency", "MlpSize", "unit_costs", "replacement_params", "replacement_flops", "tokens_of"]

Span = tuple[int, int]


def tokens_of(t: torch.Tensor) -> int:
    """Tokens per sample of an activation `(batch, *tokens, d)` (1 for `(batch, d)`)."""
    return int(math.prod(t.shape[1:-1])) if t.ndim > 2 else 1


@dataclass(frozen=True)
class MlpSize:
    """How `transform="mlp"` sizes a span's bottleneck: `hidden` units, or (when None) the width whose
    matmuls (`2 h (d_in + d_out)` FLOPs per token) are `fraction` of the span's FLOPs per token."""

    fraction: float = 0.1
    hidden: int | None = None

    def width(self, span_flops_per_token: float, in_features: int, out_features: int) -> int:
        """The bottleneck width for a span of these FLOPs per token and boundary widths."""
        if self.hidden is not None:
            return self.hidden
        return max(1, int(self.fraction * span_flops_per_token / (2 * (in_features + out_features))))


def _linear_params(d_in: int, d_out: int) -> int:
    return d_in * d_out + d_out


def replacement_params(widths: Sequence[int], transform: str, unit_flops: Sequence[float] = (),
                       tokens: Sequence[int] = (), mlp: MlpSize | None = None) -> Callable[[int, int], float]:
    """Parameters of the map replacing span `(s, e)`: 0 for the identity, `d_s · d_e + d_e` for a Linear,
    and for `"mlp"` also its MLP's (LayerNorm `2 d_s`, down `d_s h + h`, up `h d_e + d_e`; `unit_flops`,
    `tokens` and `mlp` size it)."""
    def params(s: int, e: int) -> float:
        d_in, d_out = widths[s + 1], widths[e + 1]
        if transform == "identity":
            return 0.0
        if transform != "mlp":
            return float(_linear_params(d_in, d_out))
        h = _mlp_width(unit_flops, tokens, widths, mlp, s, e)
        return float(_linear_params(d_in, d_out) + 2 * d_in + _linear_params(d_in, h) + _linear_params(h, d_out))
    return params


def replacement_flops(widths: Sequence[int], tokens: Sequence[int], transform: str, unit_flops: Sequence[float] = (),
                      mlp: MlpSize | None = None) -> Callable[[int, int], float]:
    """FLOPs per sample of the map replacing span `(s, e)`: 0 for the identity, `2 · tokens · d_s · d_e` for a
    Linear, and for `"mlp"` also `2 · tokens · h · (d_s + d_e)` (`unit_flops` and `mlp` size `h`)."""
    def flops(s: int, e: int) -> float:
        d_in, d_out = widths[s + 1], widths[e + 1]
        if transform == "identity":
            return 0.0
        extra = 0 if transform != "mlp" else _mlp_width(unit_flops, tokens, widths, mlp, s, e) * (d_in + d_out)
        return 2.0 * tokens[s + 1] * (d_in * d_out + extra)
    return flops


def _mlp_width(unit_flops: Sequence[float], tokens: Sequence[int], widths: Sequence[int], mlp: MlpSize | None,
               s: int, e: int) -> int:
    if not unit_flops or not tokens:
        raise ValueError("pricing transform='mlp' needs the units' FLOPs and the tokens per boundary")
    span_per_token = sum(unit_flops[s + 1:e + 1]) / tokens[s + 1]
    return (mlp or MlpSize()).width(span_per_token, widths[s + 1], widths[e + 1])


@dataclass
class UnitCosts:
    """Parameters and FLOPs per sample of each unit, of the whole model, and tokens per sample at
    each boundary (`tokens[k + 1]` for boundary k)."""

    params: list[int]
    flops: list[float]
    total_params: int
    total_flops: float
    tokens: list[int]
    widths: list[int]

    def saving(self, s: int, e: int, transform: str, kind: str = "flops", mlp: MlpSize | None = None) -> float:
        """What replacing span `(s, e)` by `transform` (`"identity"`: no map; `"mlp"`: sized by `mlp`)
        saves, net of the replacement: FLOPs per sample (`kind="flops"`) or parameters (`"params"`)."""
        if kind == "flops":
            cost = replacement_flops(self.widths, self.tokens, transform, self.flops, mlp)
            return span_savings(self.flops, cost, [(s, e)])[(s, e)]
        cost = replacement_params(self.widths, transform, self.flops, self.tokens, mlp)
        return span_savings(self.params, cost, [(s, e)])[(s, e)]

    def fraction(self, spans: Sequence[Span], transforms: Sequence[str], kind: str = "flops",
                 mlp: MlpSize | None = None) -> float:
        """The fraction of the model's FLOPs (or parameters) that replacing `spans` saves."""
        total = self.total_flops if kind == "flops" else self.total_params
        return sum(self.saving(s, e, t, kind, mlp) for (s, e), t in zip(spans, transforms)) / total


@dataclass
class BlockLatency:
    """Milliseconds per call at `batch_size` on `provider`: the original's, what removing each block
    saves (`block_ms[k]`), and what one replacing linear map costs (`map_ms`)."""

    original_ms: float
    block_ms: list[float]
    map_ms: float
    provider: str
    batch_size: int

    def saving(self, s: int, e: int, transform: str = "linear") -> float:
        """Milliseconds that replacing span `(s, e)` by `transform` saves."""
        return span_savings(self.block_ms, lambda *_: 0.0 if transform == "identity" else self.map_ms, [(s, e)])[(s, e)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def unit_costs(traced: Traced, device: torch.device) -> UnitCosts:
    """Per unit of `traced`'s graph: parameters and FLOPs per sample (each node's FLOPs on the example
    batch), the model's totals, and tokens per sample at each boundary."""
    from torch.utils.flop_counter import FlopCounterMode

    gm, example = traced.module, traced.example.to(device)
    per_node: dict[torch.fx.Node, float] = {}
    tokens: dict[torch.fx.Node, int] = {}
    bounds = set(traced.boundaries.nodes)

    class Counting(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            before = counter.get_total_flops()
            result = super().run_node(n)
            per_node[n] = counter.get_total_flops() - before
            if n in bounds:
                tokens[n] = tokens_of(result)
            return result

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        Counting(gm).run(*flat_graph_inputs(gm, example))
    batch = example.batch_size
    units = unit_nodes(gm, traced.stack, traced.boundaries)
    named = dict(gm.named_parameters(remove_duplicate=False))
    params = []
    for nodes in units:
        seen: dict[int, int] = {}
        for n in nodes:
            if n.op == "get_attr":
                tensors = [named[n.target]] if n.target in named else []
            elif n.op == "call_module":
                tensors = list(gm.get_submodule(n.target).parameters())
            else:
                tensors = []
            seen.update({id(t): t.numel() for t in tensors})
        params.append(sum(seen.values()))
    unit_flops = [sum(per_node.get(n, 0.0) for n in nodes) / batch for nodes in units]
    per_tokens = [tokens[n] for n in traced.boundaries.nodes]
    return UnitCosts(params, unit_flops, sum(p.numel() for p in gm.parameters()),
                     float(counter.get_total_flops()) / batch, per_tokens, list(traced.widths))
