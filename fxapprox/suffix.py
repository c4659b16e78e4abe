"""Captured graph + boundaries → run the model from any boundary `H_e` on, with `H_e` replaced.

One full pass over a batch caches, for every boundary, the values the rest of the graph reads
from before it (`H_e` itself, the attention mask, position tables, ...). `run_from(e, h)` then
evaluates only the nodes after `H_e`, with `h` standing in for `H_e`: the model's output as if
blocks s+1..e had been replaced by a map giving `h`. This makes "what does this span do to the
final output" cost one suffix per span instead of a re-capture and a full forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

from fxapprox.boundaries import Boundaries
from fxapprox.capture import flat_graph_inputs
from fxapprox.inputs import ModelInputs

__all__ = ["SuffixRunner", "PrefixCache"]


class _Keeper(torch.fx.Interpreter):
    """Interpreter that frees values as usual but keeps those of the nodes in `keep`."""

    def __init__(self, gm: torch.fx.GraphModule, keep: set[torch.fx.Node]):
        super().__init__(gm, garbage_collect_values=True)
        self.keep = keep
        self.kept: dict[torch.fx.Node, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if n in self.keep:
            self.kept[n] = result
        return result


class PrefixCache:
    """The values one batch produced that suffixes need, keyed by node, plus the boundary tensors."""

    def __init__(self, values: dict[torch.fx.Node, Any], boundaries: dict[int, torch.Tensor], output: Any):
        self.values = values
        self.boundaries = boundaries
        self.output = output


class SuffixRunner:
    """Runs `gm` once per batch (`prefix`), then from any boundary on (`run_from`)."""

    def __init__(self, gm: torch.fx.GraphModule, boundaries: Boundaries):
        self.gm = gm
        self.boundaries = boundaries
        nodes = list(gm.graph.nodes)
        order = {n: i for i, n in enumerate(nodes)}
        self._before: dict[int, list[torch.fx.Node]] = {}
        self._live_in: dict[int, set[torch.fx.Node]] = {}
        needed: set[torch.fx.Node] = set()
        for k in range(-1, boundaries.num_blocks):
            cut = order[boundaries[k]]
            before = nodes[: cut + 1]
            live = {n for n in before if any(order[u] > cut for u in n.users)}
            self._before[k] = before
            self._live_in[k] = live
            needed |= live
        self._needed = needed

    def prefix(self, inputs: ModelInputs) -> PrefixCache:
        """Run the whole graph on `inputs`; keep what any suffix needs and every boundary tensor."""
        bounds = set(self.boundaries.nodes)
        interp = _Keeper(self.gm, self._needed | bounds)
        with torch.no_grad():
            output = interp.run(*flat_graph_inputs(self.gm, inputs))
        values = {n: interp.kept[n] for n in self._needed}
        tensors = {k: interp.kept[self.boundaries[k]] for k in range(-1, self.boundaries.num_blocks)}
        return PrefixCache(values, tensors, output)

    def run_from(self, e: int, h: torch.Tensor, cache: PrefixCache) -> Any:
        """The model's output when `H_e` is replaced by `h` (everything before it as cached)."""
        live = self._live_in[e]
        env = {n: (cache.values[n] if n in live else None) for n in self._before[e]}
        env[self.boundaries[e]] = h
        with torch.no_grad():
            flat = torch.fx.Interpreter(self.gm).run(initial_env=env, enable_io_processing=False)
        return self.gm.graph._codegen.process_outputs(flat)
