"""Model → its stack of repeated blocks (module path + modules).

The stack is the longest `ModuleList`/`Sequential` whose children all share one class (at least
two of them), or the path the caller names with `blocks=`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fxapprox.errors import AmbiguousBlockStackError, NoBlockStackError

__all__ = ["BlockStack", "find_block_stack"]


@dataclass(frozen=True)
class BlockStack:
    """The block container's dotted path, its children's names in order, and their class name."""

    path: str
    names: tuple[str, ...]
    block_class: str

    @property
    def num_blocks(self) -> int:
        return len(self.names)

    def block_path(self, index: int) -> str:
        """Dotted path of block `index` (e.g. `encoder.layer.3`, `encoder.layers.encoder_layer_3`)."""
        return f"{self.path}.{self.names[index]}" if self.path else self.names[index]


def _same_class_children(module: nn.Module) -> int:
    children = list(module.children())
    if len(children) < 2 or len({type(c) for c in children}) != 1:
        return 0
    return len(children)


def find_block_stack(model: nn.Module, blocks: str | None = None) -> BlockStack:
    """Locate the block stack of `model`, or check the one `blocks` names."""
    if blocks is not None:
        try:
            container = model.get_submodule(blocks)
        except AttributeError:
            raise NoBlockStackError(
                f"blocks={blocks!r} names no submodule of {type(model).__name__}; pass the dotted "
                "path of the ModuleList holding the blocks (e.g. 'encoder.layer')"
            ) from None
        count = _same_class_children(container)
        if not isinstance(container, (nn.ModuleList, nn.Sequential)) or count == 0:
            raise NoBlockStackError(
                f"blocks={blocks!r} is a {type(container).__name__}, not a ModuleList/Sequential "
                "of at least two blocks of one class"
            )
        return _stack(blocks, container)

    candidates = [
        (name, _same_class_children(mod))
        for name, mod in model.named_modules()
        if isinstance(mod, (nn.ModuleList, nn.Sequential))
    ]
    candidates = [(name, n) for name, n in candidates if n > 0]
    if not candidates:
        raise NoBlockStackError(
            f"{type(model).__name__} has no ModuleList/Sequential of two or more blocks of one "
            "class; name the block container with blocks='path.to.blocks'"
        )
    longest = max(n for _, n in candidates)
    best = [name for name, n in candidates if n == longest]
    # A stack nested inside another candidate of the same length (Sequential wrapping a
    # ModuleList) is the same stack seen twice: keep the outermost.
    best = [b for b in best if not any(b != o and b.startswith(o + ".") for o in best)]
    if len(best) > 1:
        raise AmbiguousBlockStackError(
            f"{len(best)} block stacks of {longest} blocks each: {', '.join(repr(b) for b in best)}; "
            "choose one with blocks='...'"
        )
    return _stack(best[0], model.get_submodule(best[0]))


def _stack(path: str, container: nn.Module) -> BlockStack:
    names = tuple(name for name, _ in container.named_children())
    return BlockStack(path, names, type(next(container.children())).__name__)
