"""Captured graph + boundaries → the model run from any boundary `H_e` on, with `H_e` replaced.

The graph is cut at each boundary into generated code (no node-by-node interpretation): a
*prefix* module, the whole graph returning its output and every value a later part reads from
before a cut (`H_e` itself, the attention mask, position tables, ...), and per boundary a
*suffix* module whose placeholders are those live values, `H_e` among them, and whose body is
the nodes after `H_e`. `prefix(inputs)` runs once per batch; `run_from(e, h, cache)` calls
boundary e's suffix with `h` standing in for `H_e`: the model's output as if blocks s+1..e had
been replaced by a map giving `h`. Suffix modules are built on first use and reused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

from fxapprox.boundaries import Boundaries
from fxapprox.capture import flat_graph_inputs
from fxapprox.inputs import ModelInputs

__all__ = ["SuffixRunner", "PrefixCache", "GraphCut"]


class PrefixCache:
    """The values one batch produced that suffixes need, keyed by node, plus the boundary tensors."""

    def __init__(self, values: dict[torch.fx.Node, Any], boundaries: dict[int, torch.Tensor], output: Any):
        self.values = values
        self.boundaries = boundaries
        self.output = output


def _output_node(graph: torch.fx.Graph) -> torch.fx.Node:
    return next(n for n in reversed(graph.nodes) if n.op == "output")


def _prefix_module(gm: torch.fx.GraphModule, keep: list[torch.fx.Node]) -> torch.fx.GraphModule:
    """The whole graph, flat inputs → `(flat output, values of keep)`."""
    graph, env = torch.fx.Graph(), {}
    out = _output_node(gm.graph)
    for node in gm.graph.nodes:
        if node is not out:
            env[node] = graph.node_copy(node, env.__getitem__)
    graph.output((torch.fx.map_arg(out.args[0], env.__getitem__), tuple(env[n] for n in keep)))
    return torch.fx.GraphModule(gm, graph, f"{type(gm).__name__}Prefix")


def _suffix_module(gm: torch.fx.GraphModule, live: list[torch.fx.Node], body: list[torch.fx.Node],
                   until: torch.fx.Node | None) -> torch.fx.GraphModule:
    """Nodes `body` with the values `live` as placeholders → the flat output, or the value of `until`
    (the nodes after it are left out)."""
    graph = torch.fx.Graph()
    env = {n: graph.placeholder(n.name) for n in live}
    out = _output_node(gm.graph)
    for node in body:
        if node is out:
            break
        env[node] = graph.node_copy(node, env.__getitem__)
        if node is until:
            break
    graph.output(torch.fx.map_arg(out.args[0] if until is None else until, env.__getitem__))
    return torch.fx.GraphModule(gm, graph, f"{type(gm).__name__}Suffix")


def _live_at(nodes: list[torch.fx.Node], order: dict[torch.fx.Node, int], cut: int) -> list[torch.fx.Node]:
    """The nodes up to position `cut` that a node after it reads."""
    return [n for n in nodes[: cut + 1] if any(order[u] > cut for u in n.users)]


class GraphCut:
    """`gm` cut after `node`: `head(*flat inputs)` → the live values (the nodes up to `node` that
    later ones read, `node` among them), `tail(*live values)` → the flat output. Both share `gm`'s
    parameters and submodules (built from `gm` as root), so training `tail` trains `gm`."""

    def __init__(self, gm: torch.fx.GraphModule, node: torch.fx.Node):
        nodes = list(gm.graph.nodes)
        order = {n: i for i, n in enumerate(nodes)}
        cut = order[node]
        self.gm = gm
        self.live = _live_at(nodes, order, cut)
        graph, env = torch.fx.Graph(), {}
        for n in nodes[: cut + 1]:
            env[n] = graph.node_copy(n, env.__getitem__)
        graph.output(tuple(env[n] for n in self.live))
        self.head = torch.fx.GraphModule(gm, graph, f"{type(gm).__name__}Head")
        self.tail = _suffix_module(gm, self.live, nodes[cut + 1:], None)

    def output(self, flat: Any) -> Any:
        """The tail's flat output in the structure the model returns."""
        return self.gm.graph._codegen.process_outputs(flat)


class SuffixRunner:
    """Runs `gm` once per batch (`prefix`), then from any boundary on (`run_from`)."""

    def __init__(self, gm: torch.fx.GraphModule, boundaries: Boundaries):
        self.gm = gm
        self.boundaries = boundaries
        self._nodes = list(gm.graph.nodes)
        order = {n: i for i, n in enumerate(self._nodes)}
        self._cut: dict[int, int] = {}
        self._live_in: dict[int, list[torch.fx.Node]] = {}
        needed: set[torch.fx.Node] = set(boundaries.nodes)
        for k in range(-1, boundaries.num_blocks):
            cut = order[boundaries[k]]
            self._cut[k] = cut
            self._live_in[k] = _live_at(self._nodes, order, cut)
            needed.update(self._live_in[k])
        self._needed = sorted(needed, key=order.__getitem__)
        self._prefix = _prefix_module(gm, self._needed)
        self._suffixes: dict[tuple[int, int | None], torch.fx.GraphModule] = {}

    def prefix(self, inputs: ModelInputs) -> PrefixCache:
        """Run the whole graph on `inputs`; keep what any suffix needs and every boundary tensor."""
        with torch.no_grad():
            flat, kept = self._prefix(*flat_graph_inputs(self.gm, inputs))
        values = dict(zip(self._needed, kept))
        tensors = {k: values[self.boundaries[k]] for k in range(-1, self.boundaries.num_blocks)}
        return PrefixCache(values, tensors, self.gm.graph._codegen.process_outputs(flat))

    def suffix(self, e: int, until: int | None = None) -> torch.fx.GraphModule:
        """The generated module of everything after `H_e` (up to `H_until` when given); its
        placeholders are the live values at the cut, in graph order (`H_e` among them)."""
        if until is not None and not e < until < self.boundaries.num_blocks:
            raise ValueError(f"until={until} must be a boundary after e={e}")
        if (e, until) not in self._suffixes:
            self._suffixes[(e, until)] = _suffix_module(
                self.gm, self._live_in[e], self._nodes[self._cut[e] + 1:],
                None if until is None else self.boundaries[until])
        return self._suffixes[(e, until)]

    def run_from(self, e: int, h: torch.Tensor, cache: PrefixCache, until: int | None = None) -> Any:
        """The model's output when `H_e` is replaced by `h` (everything before it as cached), or,
        with `until=k`, the boundary tensor `H_k` then."""
        target = self.boundaries[e]
        args = [h if n is target else cache.values[n] for n in self._live_in[e]]
        with torch.no_grad():
            flat = self.suffix(e, until)(*args)
        return flat if until is not None else self.gm.graph._codegen.process_outputs(flat)
