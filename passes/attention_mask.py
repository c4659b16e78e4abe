"""SDPA call with an attention mask proven all-true → the same call without a mask (as the eager model makes it).

`torch.export` of a Hugging Face model (transformers 5.x) builds the mask its attention interface
asks for even where the model has none: a ViT or DINOv2 graph computes
`expand(ge(arange(N) + 0, 0), [B, -1, N, N])` once and passes it to every
`aten.scaled_dot_product_attention`, while the eager model calls SDPA with `attn_mask=None`. A mask
keeps SDPA off its fused (flash / cuDNN) kernels. Here each mask is evaluated by interval
arithmetic over the nodes that build it (`arange`, `add`/`sub`, comparisons, `ones`/`full`,
logical ops, views and expands, casts); placeholders and anything else are unknown. A boolean mask
whose interval is `[1, 1]` (true for every shape the graph accepts, not just the example's) or a
float mask whose interval is `[0, 0]` is dropped from the call. A mask that reads an input (BERT's
`attention_mask`), or whose value depends on the sizes (a causal or sliding-window mask), is kept.
The nodes that built a dropped mask are left for `prune_dead_code`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from fxapprox.passes.record_pass import RecordPass

__all__ = ["DropTrueMasksPass", "drop_true_masks", "MaskRecord", "SDPA_TARGETS", "sdpa_mask"]

aten = torch.ops.aten
SDPA_TARGETS = {aten.scaled_dot_product_attention.default, torch.nn.functional.scaled_dot_product_attention}

Interval = tuple[float, float]
_UNKNOWN: Interval = (-math.inf, math.inf)

# Ops whose output takes its values from their first argument (views, expands, copies, selections).
_SAME_VALUES = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.unsqueeze.default,
    aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.expand.default, aten.expand_copy.default,
    aten.slice.Tensor, aten.select.int, aten.permute.default, aten.transpose.int, aten.t.default,
    aten.flatten.using_ints, aten.repeat.default, aten.clone.default, aten.contiguous.default,
    aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default, aten.index_select.default,
}
_CASTS = {aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten._to_copy.default}
_COMPARE: dict[Any, Callable[[Interval, Interval], Interval]] = {}


def _cmp(always: Callable[[Interval, Interval], bool], never: Callable[[Interval, Interval], bool]):
    return lambda a, b: (1.0, 1.0) if always(a, b) else (0.0, 0.0) if never(a, b) else (0.0, 1.0)


for _op, _fn in (
    ("ge", _cmp(lambda a, b: a[0] >= b[1], lambda a, b: a[1] < b[0])),
    ("gt", _cmp(lambda a, b: a[0] > b[1], lambda a, b: a[1] <= b[0])),
    ("le", _cmp(lambda a, b: a[1] <= b[0], lambda a, b: a[0] > b[1])),
    ("lt", _cmp(lambda a, b: a[1] < b[0], lambda a, b: a[0] >= b[1])),
    ("eq", _cmp(lambda a, b: a[0] == a[1] == b[0] == b[1], lambda a, b: a[1] < b[0] or b[1] < a[0])),
    ("ne", _cmp(lambda a, b: a[1] < b[0] or b[1] < a[0], lambda a, b: a[0] == a[1] == b[0] == b[1])),
):
    _COMPARE[getattr(aten, _op).Tensor] = _COMPARE[getattr(aten, _op).Scalar] = _fn


@dataclass
class MaskRecord:
    """What `drop_true_masks` changed: the SDPA nodes whose mask was dropped, and those that keep one."""

    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def sdpa_mask(node: torch.fx.Node) -> Any:
    """The `attn_mask` argument of an SDPA node (None when it has none)."""
    return node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")


def _scalar(value: Any) -> Interval:
    if isinstance(value, bool | int | float):
        return float(value), float(value)
    if isinstance(value, torch.fx.Node) and not isinstance(value.meta.get("val"), torch.Tensor) \
            and value.op == "call_function" and "sym_size" in str(value.target):
        return 0.0, math.inf  # a size
    return _UNKNOWN


def _add(a: Interval, b: Interval, alpha: float = 1.0) -> Interval:
    lo, hi = (b[0] * alpha, b[1] * alpha) if alpha >= 0 else (b[1] * alpha, b[0] * alpha)
    return a[0] + lo, a[1] + hi


def _mul(a: Interval, b: Interval) -> Interval:
    corners = [x * y for x in a for y in b]
    return _UNKNOWN if any(math.isnan(c) for c in corners) else (min(corners), max(corners))


def _arange(node: torch.fx.Node) -> Interval:
    args = list(node.args)
    start, end, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) > 2 else 1)
    lo, (_, end_hi), (step_lo, _) = _scalar(start), _scalar(end), _scalar(step)
    if step_lo <= 0:
        return _UNKNOWN
    return lo[0], end_hi - 1 if math.isfinite(end_hi) else math.inf


def _cast(value: Interval, dtype: Any) -> Interval:
    if dtype is torch.bool:
        return (1.0, 1.0) if value[0] > 0 or value[1] < 0 else (0.0, 0.0) if value == (0.0, 0.0) else (0.0, 1.0)
    if dtype is None or dtype.is_floating_point:
        return value
    return tuple(float(math.trunc(v)) if math.isfinite(v) else v for v in value)  # type: ignore[return-value]


def _get_attr_range(gm: torch.fx.GraphModule, node: torch.fx.Node) -> Interval:
    owner, _, name = node.target.rpartition(".")
    value = getattr(gm.get_submodule(owner) if owner else gm, name, None)
    if not isinstance(value, torch.Tensor) or value.numel() == 0 or value.is_complex():
        return _UNKNOWN
    flat = value.detach().double()
    return float(flat.min()), float(flat.max())


def _interval(gm: torch.fx.GraphModule, node: Any, memo: dict[torch.fx.Node, Interval]) -> Interval:
    """Sound bounds on every element of `node`'s value, over every input the graph accepts."""
    if not isinstance(node, torch.fx.Node):
        return _scalar(node)
    if node in memo:
        return memo[node]
    memo[node] = _evaluate(gm, node, lambda n: _interval(gm, n, memo))
    return memo[node]


def _evaluate(gm: torch.fx.GraphModule, node: torch.fx.Node, of: Callable[[Any], Interval]) -> Interval:
    target, args, kwargs = node.target, node.args, node.kwargs
    if node.op == "get_attr":
        return _get_attr_range(gm, node)
    if node.op != "call_function":
        return _UNKNOWN
    if target in _SAME_VALUES:
        return of(args[0])
    if target in _CASTS:
        dtype = kwargs.get("dtype", next((a for a in args[1:] if isinstance(a, torch.dtype)), None))
        return _cast(of(args[0]), dtype)
    if target in _COMPARE:
        return _COMPARE[target](of(args[0]), of(args[1]))
    if target in (aten.add.Tensor, aten.add.Scalar, operator.add):
        return _add(of(args[0]), of(args[1]), kwargs.get("alpha", 1))
    if target in (aten.sub.Tensor, aten.sub.Scalar, operator.sub):
        b = of(args[1])
        return _add(of(args[0]), (-b[1], -b[0]), kwargs.get("alpha", 1))
    if target in (aten.mul.Tensor, aten.mul.Scalar, aten.logical_and.default, aten.bitwise_and.Tensor,
                  aten.__and__.Tensor):
        return _mul(of(args[0]), of(args[1]))
    if target in (aten.logical_or.default, aten.bitwise_or.Tensor, aten.__or__.Tensor):
        a, b = of(args[0]), of(args[1])
        return (max(a[0], b[0]), max(a[1], b[1])) if min(a[0], b[0]) >= 0 and max(a[1], b[1]) <= 1 else _UNKNOWN
    if target in (aten.logical_not.default, aten.bitwise_not.default):
        a = of(args[0])
        return (1 - a[1], 1 - a[0]) if a[0] >= 0 and a[1] <= 1 else _UNKNOWN
    if target is aten.where.self:
        cond = of(args[0])
        if cond == (1.0, 1.0):
            return of(args[1])
        if cond == (0.0, 0.0):
            return of(args[2])
        a, b = of(args[1]), of(args[2])
        return min(a[0], b[0]), max(a[1], b[1])
    if target in (aten.arange.default, aten.arange.start, aten.arange.start_step):
        return _arange(node)
    if target in (aten.ones.default, aten.ones_like.default, aten.new_ones.default):
        return 1.0, 1.0
    if target in (aten.zeros.default, aten.zeros_like.default, aten.new_zeros.default):
        return 0.0, 0.0
    if target in (aten.full.default, aten.full_like.default, aten.new_full.default, aten.scalar_tensor.default):
        return _scalar(args[0] if target is aten.scalar_tensor.default else args[1])
    return _UNKNOWN


def _is_neutral(mask: torch.fx.Node, bounds: Interval) -> bool:
    """True for a boolean mask that is all true or a float mask that is all zero."""
    val = mask.meta.get("val")
    meta = mask.meta.get("tensor_meta")
    dtype = val.dtype if isinstance(val, torch.Tensor) else getattr(meta, "dtype", None)
    if dtype is torch.bool:
        return bounds == (1.0, 1.0)
    return dtype is not None and dtype.is_floating_point and bounds == (0.0, 0.0)


def _drop_mask(node: torch.fx.Node) -> None:
    if len(node.args) > 3:
        node.args = node.args[:3] if len(node.args) == 4 else (*node.args[:3], None, *node.args[4:])
    node.kwargs = {k: v for k, v in node.kwargs.items() if k != "attn_mask"}


def drop_true_masks(gm: torch.fx.GraphModule) -> MaskRecord:
    """Drop every SDPA mask proven all-true (or all-zero additive) from its call; recompile if any went."""
    record, memo = MaskRecord(), {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in SDPA_TARGETS:
            continue
        mask = sdpa_mask(node)
        if not isinstance(mask, torch.fx.Node):
            continue
        if _is_neutral(mask, _interval(gm, mask, memo)):
            _drop_mask(node)
            record.dropped.append(node.name)
        else:
            record.kept.append(node.name)
    if record.dropped:
        gm.recompile()
    return record


class DropTrueMasksPass(RecordPass):
    """`PassBase` form of `drop_true_masks` (its record in `.record`)."""

    function = staticmethod(drop_true_masks)

    @staticmethod
    def changed(record: MaskRecord) -> bool:
        return bool(record.dropped)
