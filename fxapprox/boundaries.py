"""Captured graph + block stack → the boundary nodes `H_-1, H_0, ..., H_{L-1}` (or, in half units,
`H_-1, M_0, H_0, M_1, ..., H_{L-1}`).

`H_k` is the node carrying block k's output to the rest of the model and `H_-1` the input of
block 0. On leaf-traced graphs a block is one `call_module` node; on graphs with the blocks'
insides (export, or a symbolic trace without block leaves) a block's output is the last node
(graph order) whose `nn_module_stack` holds the block's path, and its input is the node from
outside the block that has the block output's shape.

`M_k` (half units) is where block k's attention branch rejoins the residual stream: among the
nodes every path from `H_{k-1}` to `H_k` passes through (size computations aside), the first one
that merges two paths (the residual add), followed forward while the next such node only
transforms it (the LayerNorm after the add in post-norm blocks). A block without one (attention
and MLP both reading the block input, as in GPT-J/Falcon/Phi) raises `NoMiddleBoundaryError`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx

from fxapprox.blocks import BlockStack
from fxapprox.errors import BlockDiscoveryError, NoMiddleBoundaryError

__all__ = ["Boundaries", "find_boundaries", "block_of_node", "unit_nodes", "UNITS"]

UNITS = ("block", "half")


@dataclass
class Boundaries:
    """Boundary nodes by unit index: `nodes[k + 1]` is boundary k, so `nodes[0]` is `H_-1`.

    `units="block"`: boundary k is `H_k`. `units="half"`: boundary `2k` is `M_k` (block k's stream
    after its attention branch) and `2k + 1` is `H_k`. A span `(s, e)` replaces units s+1..e.
    """

    nodes: list[torch.fx.Node]
    units: str = "block"

    def __getitem__(self, k: int) -> torch.fx.Node:
        return self.nodes[k + 1]

    @property
    def num_units(self) -> int:
        """Number of units: blocks, or twice the blocks in half units."""
        return len(self.nodes) - 1

    @property
    def num_blocks(self) -> int:
        """The number of units (the name iterating callers use: `range(-1, num_blocks)`)."""
        return self.num_units


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
    if isinstance(val, torch.Tensor):
        return tuple(val.shape)
    meta = node.meta.get("tensor_meta")  # symbolic traces, after ShapeProp
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def _carries_values(node: torch.fx.Node) -> bool:
    """Whether `node` computes tensors (not sizes/shapes, which do not carry the stream)."""
    if "val" in node.meta:
        val = node.meta["val"]
        vals = val if isinstance(val, (tuple, list)) else (val,)
        return any(isinstance(v, torch.Tensor) for v in vals)
    return "tensor_meta" in node.meta


def _reaches(start: torch.fx.Node, goal: torch.fx.Node, allowed: set[torch.fx.Node],
             avoid: torch.fx.Node | None = None) -> bool:
    seen, todo = {start}, [start]
    while todo:
        node = todo.pop()
        if node is goal:
            return True
        for user in node.users:
            if user in allowed and user is not avoid and user not in seen:
                seen.add(user)
                todo.append(user)
    return False


def _middle(block: str, x: torch.fx.Node, h: torch.fx.Node) -> torch.fx.Node:
    """`M_k` of the block with input `x` and output `h` (see the module docstring)."""
    forward, todo = {x}, [x]
    while todo:
        for user in todo.pop().users:
            if user not in forward and _carries_values(user):
                forward.add(user)
                todo.append(user)
    backward, todo = {h}, [h]
    while todo:
        for arg in todo.pop().all_input_nodes:
            if arg not in backward and arg in forward:
                backward.add(arg)
                todo.append(arg)
    region = forward & backward
    order = {n: i for i, n in enumerate(x.graph.nodes)}
    inner = sorted(region - {x, h}, key=order.__getitem__)
    cuts = [n for n in inner if not _reaches(x, h, region, avoid=n)]

    def merges(node: torch.fx.Node) -> bool:
        return len([a for a in node.all_input_nodes if a in region]) >= 2

    first = next((i for i, n in enumerate(cuts) if merges(n)), None)
    if first is None:
        raise NoMiddleBoundaryError(
            f"block {block} has no middle boundary: no node inside it where one branch rejoins the "
            "residual stream before the other branch reads it (its attention and MLP branches both "
            "read the block input, as in GPT-J/Falcon/Phi parallel blocks); half units are not "
            "defined for it, use units='block'"
        )
    middle = cuts[first]
    for node in cuts[first + 1:]:  # post-norm: the LayerNorm right after the residual add
        if merges(node) or middle not in node.all_input_nodes:
            break
        middle = node
    return middle


def _module_stack_boundaries(gm: torch.fx.GraphModule, stack: BlockStack) -> list[torch.fx.Node]:
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


def _is_leaf_traced(gm: torch.fx.GraphModule, stack: BlockStack) -> bool:
    return any(n.op == "call_module" and n.target == stack.block_path(0) for n in gm.graph.nodes)


def find_boundaries(gm: torch.fx.GraphModule, stack: BlockStack, units: str = "block") -> Boundaries:
    """The boundary nodes of `stack` in `gm` (leaf-traced or with the blocks' insides), in `units`.

    Half units need the blocks' insides (`capture(..., inline_blocks=True)` or an export graph).
    """
    if units not in UNITS:
        raise ValueError(f"units={units!r} is not one of {UNITS}")
    leaf = _is_leaf_traced(gm, stack)
    outer = _leaf_boundaries(gm, stack) if leaf else _module_stack_boundaries(gm, stack)
    if units == "block":
        return Boundaries(outer)
    if leaf:
        raise BlockDiscoveryError(
            "half units need the blocks' insides in the graph, but this graph calls each block as one "
            "module; capture it with inline_blocks=True (prepare.trace(..., units='half') does)"
        )
    nodes = [outer[0]]
    for k in range(stack.num_blocks):
        nodes += [_middle(stack.block_path(k), outer[k], outer[k + 1]), outer[k + 1]]
    return Boundaries(nodes, "half")


def unit_nodes(gm: torch.fx.GraphModule, stack: BlockStack, boundaries: Boundaries) -> list[set[torch.fx.Node]]:
    """The graph nodes of each unit (graphs with the blocks' insides): block k's nodes, or in half
    units its nodes that `M_k` depends on (unit 2k) and the rest (unit 2k + 1). Parameters read
    through `get_attr` belong to the unit of their users."""
    members: dict[int, set[torch.fx.Node]] = {}
    for node in gm.graph.nodes:
        b = block_of_node(node, stack)
        if b is not None:
            members.setdefault(b, set()).add(node)
    units: list[set[torch.fx.Node]] = []
    for k in range(stack.num_blocks):
        block = members.get(k, set())
        if boundaries.units == "block":
            units.append(block)
            continue
        middle, first = boundaries[2 * k], set()
        todo = [middle]
        while todo:
            node = todo.pop()
            if node in block and node not in first:
                first.add(node)
                todo.extend(node.all_input_nodes)
        units += [first, block - first]
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.users:
            owner = next((u for u in units if all(user in u for user in node.users)), None)
            if owner is not None:
                owner.add(node)
    return units
