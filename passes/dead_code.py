"""GraphModule with dead nodes → the same module without them, their submodules, parameters and buffers.

`Graph.eliminate_dead_code` treats dropout and scaled-dot-product attention (tagged
nondeterministic) and `_assert_tensor_metadata` (side effect) as impure, so removed blocks keep
running. Here a node is kept only if the output, a placeholder or a genuinely mutating op needs
it. An in-place op on an intermediate tensor (MPNet's `scores += position_bias`) is not a root:
it lives only while some live node reads the tensor it writes (through its views), so a removed
block's query, key and score nodes go with the block. Assertion-like side-effect nodes survive
only while they check live graph inputs or symbolic sizes; checks of intermediate tensors
(export's dtype asserts inside a removed block) go.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

__all__ = ["PruneDeadCodePass", "prune_dead_code", "PruneRecord", "mutates"]


@dataclass
class PruneRecord:
    """What `prune_dead_code` removed."""

    nodes_removed: int
    submodules_removed: list[str]
    tensors_removed: list[str]


def mutates(node: torch.fx.Node) -> bool:
    """True for a call of an op whose schema mutates an argument."""
    schema = getattr(node.target, "_schema", None)
    return node.op == "call_function" and schema is not None and schema.is_mutable


def _is_input_or_size(node: torch.fx.Node) -> bool:
    return node.op == "placeholder" or not isinstance(node.meta.get("val"), torch.Tensor)


def _alias_base(node: torch.fx.Node) -> torch.fx.Node:
    """The node whose storage `node` shares: views and in-place ops (results aliasing their first
    argument) followed back."""
    while node.op == "call_function":
        schema = getattr(node.target, "_schema", None)
        if (schema is None or not schema.returns or schema.returns[0].alias_info is None or not node.args
                or not isinstance(node.args[0], torch.fx.Node)):
            break
        node = node.args[0]
    return node


def _local_writes(node: torch.fx.Node) -> list[torch.fx.Node] | None:
    """The intermediate tensors a mutating op writes (their alias bases), or None when it writes a
    graph input, a parameter or buffer, or something it does not name (a root, then)."""
    bases = []
    for i, arg in enumerate(node.target._schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
        base = _alias_base(value) if isinstance(value, torch.fx.Node) else None
        if base is None or base.op not in ("call_function", "call_module"):
            return None
        bases.append(base)
    return bases or None


def _mark(stack: list[torch.fx.Node], live: set[torch.fx.Node]) -> None:
    while stack:
        node = stack.pop()
        if node not in live:
            live.add(node)
            stack.extend(node.all_input_nodes)


def _live_nodes(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    local = {n: bases for n in graph.nodes if mutates(n) and (bases := _local_writes(n)) is not None}
    live: set[torch.fx.Node] = set()
    _mark([n for n in graph.nodes if n.op in ("output", "placeholder") or (mutates(n) and n not in local)], live)
    while True:  # an in-place write matters once a live node reads the tensor it writes
        read = {_alias_base(n) for n in live}
        pending = [n for n, bases in local.items() if n not in live and any(b in read for b in bases)]
        if not pending:
            break
        _mark(pending, live)
    for node in graph.nodes:
        if node not in live and not node.users and node.is_impure() and node.all_input_nodes \
                and all(arg in live and _is_input_or_size(arg) for arg in node.all_input_nodes):
            live.add(node)
    return live


def _referenced_tensors(gm: torch.fx.GraphModule) -> set[str]:
    names = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            names.add(node.target)
        elif node.op == "call_module":
            mod = gm.get_submodule(node.target)
            names.update(f"{node.target}.{n}" for n, _ in mod.named_parameters(remove_duplicate=False))
            names.update(f"{node.target}.{n}" for n, _ in mod.named_buffers(remove_duplicate=False))
    return names


def _delete_tensor(gm: torch.fx.GraphModule, name: str) -> None:
    owner_path, _, attr = name.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    for table in (owner._parameters, owner._buffers):
        table.pop(attr, None)
    if attr in owner.__dict__:
        delattr(owner, attr)


def prune_dead_code(gm: torch.fx.GraphModule) -> PruneRecord:
    """Erase dead nodes, then the submodules, parameters and buffers no node uses any more."""
    live = _live_nodes(gm.graph)
    dead = [n for n in reversed(list(gm.graph.nodes)) if n not in live]
    for node in dead:
        gm.graph.erase_node(node)
    modules_before = {name for name, _ in gm.named_modules()}
    gm.delete_all_unused_submodules()
    modules_removed = sorted(modules_before - {name for name, _ in gm.named_modules()})
    referenced = _referenced_tensors(gm)
    tensors = [n for n, _ in gm.named_parameters(remove_duplicate=False)]
    tensors += [n for n, _ in gm.named_buffers(remove_duplicate=False)]
    unused = sorted(n for n in set(tensors) if n not in referenced)
    for name in unused:
        _delete_tensor(gm, name)
    gm.graph.lint()
    gm.recompile()
    return PruneRecord(len(dead), modules_removed, unused)


class PruneDeadCodePass(PassBase):
    """`PassBase` form of `prune_dead_code`."""

    def call(self, graph_module: torch.fx.GraphModule) -> PassResult:
        record = prune_dead_code(graph_module)
        return PassResult(graph_module, bool(record.nodes_removed or record.tensors_removed))
