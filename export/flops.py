"""Module + example inputs → FLOPs and parameter counts, in total and per block, before/after compression.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (no hand formulas). On an eager
model the counter's own module hierarchy gives the per-block split; on a GraphModule (whose
blocks are flattened into one graph by torch.export) a `torch.fx.Interpreter` charges each
node's FLOPs to the block in its `nn_module_stack`, and a `call_module` node to its target
(e.g. the `fxapprox_blocks_{s+1}_to_{e}` Linear that replaced a span).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from fxapprox.capture import flat_graph_inputs
from fxapprox.inputs import as_model_inputs

__all__ = ["FlopCount", "count_flops", "compare_flops"]

def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """torch's SDPA formula for the CPU kernel, which FlopCounterMode does not register."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}
_SPAN_MODULE = re.compile(r"^fxapprox_blocks_\d+_to_\d+$")
OTHER = "other"


@dataclass
class FlopCount:
    """FLOPs of one forward call at `batch_size` and parameter counts, split by block.

    `per_block` maps a block index (`"0"`, `"1"`, ...) or a span module name
    (`fxapprox_blocks_1_to_2`) to its FLOPs; `other` is everything outside the blocks
    (embeddings, final norm, head). `params_per_block` splits the parameters the same way.
    """

    total: int
    per_block: dict[str, int]
    other: int
    params: int
    params_per_block: dict[str, int]
    batch_size: int
    blocks: str | None

    @property
    def per_item(self) -> float:
        """FLOPs per sample."""
        return self.total / self.batch_size

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "per_item": self.per_item}


def _blocks_path(module: nn.Module, blocks: str | None, plan: Any) -> str | None:
    if blocks is not None:
        return blocks
    if plan is not None:
        return plan.blocks
    from fxapprox.blocks import find_block_stack
    from fxapprox.errors import BlockDiscoveryError

    try:
        return find_block_stack(module).path
    except BlockDiscoveryError:
        return None


def _block_key(path: str, blocks: str | None) -> str | None:
    """Dotted module path → the block (`"3"`) or span module it belongs to, or None."""
    head = path.split(".", 1)[0]
    if _SPAN_MODULE.match(head):
        return head
    if blocks is not None:
        prefix = f"{blocks}." if blocks else ""
        if path.startswith(prefix):
            rest = path[len(prefix):].split(".", 1)[0]
            if rest:
                return rest
    return None


def _param_counts(module: nn.Module, blocks: str | None) -> tuple[int, dict[str, int]]:
    per: dict[str, int] = defaultdict(int)
    total, seen = 0, set()
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        key = _block_key(name.rsplit(".", 1)[0] if "." in name else "", blocks)
        if key is not None:
            per[key] += p.numel()
    return total, dict(per)


class _NodeFlops(torch.fx.Interpreter):
    """Runs a GraphModule under a FlopCounterMode and charges each node's FLOPs to its block."""

    def __init__(self, gm: torch.fx.GraphModule, counter: FlopCounterMode, blocks: str | None):
        super().__init__(gm)
        self.counter, self.blocks = counter, blocks
        self.per: dict[str, int] = defaultdict(int)

    def _key(self, n: torch.fx.Node) -> str | None:
        if n.op == "call_module":
            key = _block_key(str(n.target), self.blocks)
            if key is not None:
                return key
        for path, _ in reversed(list(n.meta.get("nn_module_stack", {}).values())):
            key = _block_key(path, self.blocks)
            if key is not None:
                return key
        return None

    def run_node(self, n: torch.fx.Node) -> Any:
        before = self.counter.get_total_flops()
        out = super().run_node(n)
        spent = self.counter.get_total_flops() - before
        if spent:
            self.per[self._key(n) or OTHER] += spent
        return out



def _sort_key(k: str) -> tuple[int, str]:
    m = re.search(r"\d+", k)
    return (int(m.group()) if m else 1 << 30, k)


def count_flops(module_or_result: Any, inputs: Any, *, blocks: str | None = None) -> FlopCount:
    """FLOPs and parameters of `module(inputs)` (a module or a compression result), split by block.

    `blocks` is the dotted path of the block stack (found automatically on eager models; taken
    from the plan of a compression result).
    """
    from fxapprox.capture import conform_inputs
    from fxapprox.export.onnx import _unwrap, run_module

    module, plan = _unwrap(module_or_result)
    inputs = as_model_inputs(inputs, what="example inputs")
    blocks = _blocks_path(module, blocks, plan)
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    with torch.no_grad():
        if isinstance(module, torch.fx.GraphModule):
            run_module(module, conform_inputs(module, inputs))  # a clear error if the shapes do not fit
            interp = _NodeFlops(module, counter, blocks)
            with counter:
                interp.run(*flat_graph_inputs(module, inputs))
            per = dict(interp.per)
        else:
            with counter:
                run_module(module, inputs)
            per = _eager_split(counter, type(module).__name__, blocks)
    total = int(counter.get_total_flops())
    other = per.pop(OTHER, 0)
    per_block = {k: int(per[k]) for k in sorted(per, key=_sort_key)}
    params, params_per_block = _param_counts(module, blocks)
    return FlopCount(total, per_block, int(other), params,
                     {k: params_per_block[k] for k in sorted(params_per_block, key=_sort_key)},
                     inputs.batch_size, blocks)


def _eager_split(counter: FlopCounterMode, root: str, blocks: str | None) -> dict[str, int]:
    """FlopCounterMode's module hierarchy (`Root.layers.3`) → FLOPs per block."""
    per: dict[str, int] = defaultdict(int)
    total = counter.get_total_flops()
    for name, ops in counter.get_flop_counts().items():
        if not name.startswith(root + "."):
            continue
        path = name[len(root) + 1:]
        key = _block_key(path, blocks)
        # only the block's own entry (`layers.3`), not its children, to count each FLOP once
        if key is not None and path in (f"{blocks}.{key}" if blocks else key, key):
            per[key] += sum(ops.values())
    per[OTHER] = total - sum(per.values())
    return dict(per)


def compare_flops(before: Any, after: Any, inputs: Any, *, blocks: str | None = None) -> dict[str, Any]:
    """FLOPs and parameters of the original and the compressed model on the same inputs, and their ratios."""
    a = count_flops(before, inputs, blocks=blocks)
    b = count_flops(after, inputs, blocks=blocks if blocks is not None else a.blocks)
    return {
        "before": a.as_dict(),
        "after": b.as_dict(),
        "flop_ratio": a.total / b.total if b.total else float("inf"),
        "param_ratio": a.params / b.params if b.params else float("inf"),
        "flops_removed": a.total - b.total,
        "params_removed": a.params - b.params,
    }
