"""Captured graph + block stack → the boundary nodes `H_-1, H_0, ..., H_{L-1}`.

`H_k` is the node carrying block k's output to the rest of the model and `H_-1` the input of
block 0. On leaf-traced graphs a block is one `call_module` node; on export graphs a block's
output is the last node (graph order) whose `nn_module_stack` holds the block's path, and its
input is the node from outside the block that has the block output's shape.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx

from fxapprox.blocks import BlockStack
from fxapprox.errors import BlockDiscoveryError

__all__ = ["Boundaries", "find_boundaries", "block_of_node"]


@dataclass
class Boundaries:
    """Boundary nodes by index: `nodes[k + 1]` is `H_k`, so `nodes[0]` is `H_-1`."""

    nodes: list[torch.fx.Node]

    def __getitem__(self, k: int) -> torch.fx.Node:
        return self.nodes[k + 1]

    @property
    def num_blocks(self) -> int:
        return len(self.nodes) - 1


def _stack_paths(node: torch.fx.Node) -> list[str]:
    return [path for path, _ in node.meta.get("nn_module_stack", {}).values()]


def _normalise(path: str) -> str:
    """`L['self'].encoder.layer[3]` / `encoder.layer.3` → `encoder.layer.3`."""
    path = path.replace("L['self'].", "").replace("L['self']", "")
    return path.replace("[", ".").replace("]", "").replace("'", "").strip(".")


def block_of_node(node: torch.fx.Node, stack: BlockStack) -> int | None:
    """Index of the block of `stack` whose code produced `node`, or None."""
    prefix = stack.path + "." if stack.path else ""
    index = {name: i for i, name in enumerate(stack.names)}
    for path in _stack_paths(node):
        path = _normalise(path)
        if path.startswith(prefix):
            head = path[len(prefix):].split(".", 1)[0]
            if head in index:
                return index[head]
    return None


def _leaf_boundaries(gm: torch.fx.GraphModule, stack: BlockStack) -> list[torch.fx.Node]:
    by_target = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    outputs = []
    for i in range(stack.num_blocks):
        node = by_target.get(stack.block_path(i))
        if node is None:
            raise BlockDiscoveryError(f"block {stack.block_path(i)} is not called in the traced graph")
        users = list(node.users)
        # Blocks that return a tuple are read through getitem(…, 0).
        if users and all(u.target is operator.getitem for u in users):
            firsts = [u for u in users if u.args[1] == 0]
            if len(firsts) != 1 or len(users) != 1:
                raise BlockDiscoveryError(
                    f"block {stack.block_path(i)} returns a tuple used in several places; its "
                    "output cannot be identified as one tensor"
                )
            node = firsts[0]
        outputs.append(node)
    first = by_target[stack.block_path(0)]
    if not first.args or not isinstance(first.args[0], torch.fx.Node):
        raise BlockDiscoveryError("block 0 is called without a tensor as its first argument")
    return [first.args[0], *outputs]


def _val_shape(node: torch.fx.Node):
    val = node.meta.get("val")
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _export_boundaries(gm: torch.fx.GraphModule, stack: BlockStack) -> list[torch.fx.Node]:
    last: dict[int, torch.fx.Node] = {}
    members: dict[int, list[torch.fx.Node]] = {}
    for node in gm.graph.nodes:
        b = block_of_node(node, stack)
        if b is not None:
            last[b] = node
            members.setdefault(b, []).append(node)
    missing = [i for i in range(stack.num_blocks) if i not in last]
    if missing:
        raise BlockDiscoveryError(
            f"blocks {missing} of {stack.path!r} have no node in the exported graph (they may be "
            "skipped by the forward); pass blocks= naming the stack that runs"
        )
    outputs = [last[i] for i in range(stack.num_blocks)]
    for i, node in enumerate(outputs):
        if _val_shape(node) is None:
            raise BlockDiscoveryError(
                f"the last node of block {stack.block_path(i)} ({node.name}) is not a tensor; "
                "its output cannot be identified"
            )
    shape0 = _val_shape(outputs[0])
    inside = set(members[0])
    external = {
        arg for n in members[0] for arg in n.all_input_nodes
        if arg not in inside and _val_shape(arg) == shape0
    }
    if len(external) != 1:
        raise BlockDiscoveryError(
            f"block {stack.block_path(0)} reads {len(external)} outside tensors shaped like its "
            f"output {shape0}; its input H_-1 cannot be identified"
        )
    return [external.pop(), *outputs]


def find_boundaries(gm: torch.fx.GraphModule, stack: BlockStack) -> Boundaries:
    """The boundary nodes of `stack` in `gm` (leaf-traced or exported)."""
    leaf = any(n.op == "call_module" and n.target == stack.block_path(0) for n in gm.graph.nodes)
    nodes = _leaf_boundaries(gm, stack) if leaf else _export_boundaries(gm, stack)
    return Boundaries(nodes)
