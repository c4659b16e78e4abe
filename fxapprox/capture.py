"""Model + example inputs → `torch.fx.GraphModule` (symbolic trace with leaf blocks, else torch.export).

`torch.fx.symbolic_trace` with the blocks as leaf modules gives clean graphs for hand-written,
torchvision and timm models; Hugging Face models (transformers 5.x) need
`torch.export.export(strict=False)` with a dynamic batch dimension (and a dynamic sequence
dimension for token inputs), then `.module()`. `Captured.path` records which one ran.

Either way the graph comes back as an `InferenceModule`: a plain `torch.fx.GraphModule` in eval
mode that behaves like the model's `nn.Module` for `.eval()`, `.to(device)`, `.to(dtype)` and
`.half()` (the module `torch.export` hands back refuses `.eval()`), and refuses training mode with
a typed error (eval-mode dropout is baked into, then removed from, the graph).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx
from torch import nn
from torch.export import Dim

from fxapprox.blocks import BlockStack
from fxapprox.errors import CaptureError, GraphDtypeError, InferenceOnlyError, UnsupportedBatchError
from fxapprox.inputs import ModelInputs

__all__ = ["Captured", "InferenceModule", "capture", "conform_inputs", "flat_graph_inputs"]

log = logging.getLogger(__name__)

CapturePath = Literal["symbolic_trace", "export"]


@dataclass
class Captured:
    """A captured graph and how it was made."""

    module: torch.fx.GraphModule
    path: CapturePath


class InferenceModule(torch.fx.GraphModule):
    """A captured graph as an inference-only `nn.Module`.

    Always in eval mode: `.train(False)`/`.eval()` work, `.train()` raises `InferenceOnlyError`.
    Moving it (`.to("cuda")`, `.cuda()`, `.cpu()`) also moves the devices written into the graph
    at capture (`arange(..., device="cpu")`, `to(device)`). An exported graph's module also takes
    its inputs positionally or by keyword alike.
    """

    def __init__(self, root: nn.Module | dict[str, Any], graph: torch.fx.Graph, class_name: str = "GraphModule"):
        super().__init__(root, graph, class_name)
        super().train(False)
        if getattr(self, "_in_spec", None) is not None:
            self.register_forward_pre_hook(_conform_call, with_kwargs=True, prepend=True)

    def _deepcopy_init(self):
        return InferenceModule.__init__

    def train(self, mode: bool = True) -> InferenceModule:
        if mode:
            raise InferenceOnlyError(
                "a captured or compressed module is inference-only: dropout and other training-mode "
                "behaviour were fixed to eval mode when the graph was captured, so .train() cannot "
                "restore them; fine-tune the original model and compress it again"
            )
        return super().train(False)

    def _apply(self, fn, recurse: bool = True):
        """`.to(...)`, `.half()`, `.cuda()`...: the tensors, and the devices and dtypes written into the graph."""
        reference = next((p for p in self.parameters() if p.is_floating_point()), None)
        if reference is None:
            return super()._apply(fn, recurse)
        probe = fn(torch.empty(0, dtype=reference.dtype, device=reference.device))
        casts = _input_casts(self.graph, reference.dtype) if probe.dtype != reference.dtype else []
        result = super()._apply(fn, recurse)
        _retarget(self, reference.device, probe.device, {id(n) for n in casts}, probe.dtype)
        return result


_CASTS = {torch.ops.aten.to.dtype, torch.ops.aten.to.dtype_layout, torch.ops.aten.to.device,
          torch.ops.aten._to_copy.default}


def _input_casts(graph: torch.fx.Graph, old: torch.dtype) -> list[torch.fx.Node]:
    """The casts to `old` (the weights' dtype) that a dtype conversion of the module must follow:
    those of graph inputs (a model casting its inputs to its weights' dtype). A cast to `old`
    anywhere else (an upcast inside a norm) cannot be told apart from one that follows the
    weights: `GraphDtypeError`."""
    casts = [n for n in graph.nodes if n.op == "call_function" and n.target in _CASTS
             and old in (*n.args[1:], *n.kwargs.values())]
    fixed = [n.name for n in casts if n.args[0].op != "placeholder"]
    if fixed:
        raise GraphDtypeError(
            f"the captured graph casts to {old} inside the model ({', '.join(fixed[:4])}"
            f"{', ...' if len(fixed) > 4 else ''}): converting the module to another dtype cannot tell which of "
            "these casts should follow; convert the original model to the dtype you want (model.to(dtype)) "
            "and compress or load the plan on it"
        )
    return casts


def _retarget(gm: torch.fx.GraphModule, old: torch.device, new: torch.device, casts: set[int],
              dtype: torch.dtype) -> None:
    """Devices in node arguments that name `old` (`cpu`, `cuda`, `cuda:0`) → `new`, and the floating
    dtype of the nodes in `casts` → `dtype`; recompile if anything changed."""
    if old == new and not casts:
        return

    def device(value: Any) -> Any:
        if isinstance(value, torch.device) and value.type == old.type \
                and (value.index is None or old.index is None or value.index == old.index):
            return new
        return value

    def cast(value: Any) -> Any:
        return dtype if isinstance(value, torch.dtype) and value.is_floating_point else device(value)

    for node in gm.graph.nodes:
        fn = cast if id(node) in casts else device
        node.args = torch.fx.node.map_aggregate(node.args, fn)
        node.kwargs = torch.fx.node.map_aggregate(node.kwargs, fn)
    gm.recompile()


class _LeafBlockTracer(torch.fx.Tracer):
    """Symbolic tracer that keeps each block of the stack as one `call_module` node, or (`inline=True`)
    traces through the blocks down to functions (a Linear inside a block becomes `F.linear` on its
    parameters, as torch.export gives it)."""

    def __init__(self, block_paths: set[str], inline: bool = False):
        super().__init__()
        self._block_paths = block_paths
        self._inline = inline

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._inline and any(module_qualified_name.startswith(p + ".") for p in self._block_paths):
            return False
        if not self._inline and module_qualified_name in self._block_paths:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _symbolic_trace(model: nn.Module, stack: BlockStack, inputs: ModelInputs,
                    inline_blocks: bool = False) -> torch.fx.GraphModule:
    tracer = _LeafBlockTracer({stack.block_path(i) for i in range(stack.num_blocks)}, inline_blocks)
    graph = tracer.trace(model)
    gm = InferenceModule(tracer.root, graph, type(model).__name__)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs.args) > len(placeholders) or any(k not in {p.target for p in placeholders} for k in inputs.kwargs):
        raise TypeError("traced graph does not take the calibration inputs")
    # The trace must reproduce eager on the example, or a later rewrite would be wrong.
    with torch.no_grad():
        expected, got = inputs.call(model), inputs.call(gm)
    if not _same_output(expected, got):
        raise RuntimeError("symbolic trace does not reproduce the eager output")
    return gm


def _same_output(a: Any, b: Any) -> bool:
    la, sa = torch.utils._pytree.tree_flatten(a)
    lb, sb = torch.utils._pytree.tree_flatten(b)
    if sa != sb or len(la) != len(lb):
        return False
    return all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) else type(x) is type(y)
        for x, y in zip(la, lb)
    )


def _dynamic_shapes(inputs: ModelInputs) -> tuple[Any, Any]:
    """Batch dim dynamic for every tensor; dim 1 dynamic for 2-D integer (token) inputs and
    the tensors that share their (batch, tokens) shape."""
    batch = Dim.AUTO
    token_shapes = {
        tuple(t.shape[:2]) for t in inputs.tensors() if t.ndim == 2 and not t.is_floating_point()
    }
    seq = Dim.AUTO if token_shapes else None

    def spec(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return None
        dims = {0: batch}
        if seq is not None and v.ndim >= 2 and tuple(v.shape[:2]) in token_shapes:
            dims[1] = seq
        return dims

    return tuple(spec(a) for a in inputs.args), {k: spec(v) for k, v in inputs.kwargs.items()}


def _export(model: nn.Module, inputs: ModelInputs) -> torch.fx.GraphModule:
    args_spec, kwargs_spec = _dynamic_shapes(inputs)
    dynamic_shapes = {**dict(zip(_positional_names(model, len(inputs.args)), args_spec)), **kwargs_spec}
    ep = torch.export.export(model, inputs.args, inputs.kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    exported = ep.module()
    return InferenceModule(exported, exported.graph, type(model).__name__)


def _positional_names(model: nn.Module, count: int) -> list[str]:
    params = [
        p.name for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return params[:count]


@contextlib.contextmanager
def _without_kv_cache(model: nn.Module):
    """Decoders return a key/value cache object by default; a compressed graph has no use for it."""
    config = getattr(model, "config", None)
    if not getattr(config, "use_cache", False):
        yield
        return
    config.use_cache = False
    log.info("capturing %s with config.use_cache=False (no key/value cache output)", type(model).__name__)
    try:
        yield
    finally:
        config.use_cache = True


def capture(model: nn.Module, inputs: ModelInputs, stack: BlockStack, *, inline_blocks: bool = False) -> Captured:
    """Trace `model` on `inputs` with the blocks of `stack` as leaves, else export it.

    `inline_blocks=True` traces the blocks' insides too (half units need them); their nodes carry
    `nn_module_stack` as export's do.
    """
    model.eval()
    with _without_kv_cache(model):
        return _capture(model, inputs, stack, inline_blocks)


def _capture(model: nn.Module, inputs: ModelInputs, stack: BlockStack, inline_blocks: bool) -> Captured:
    errors = []
    try:
        gm = _symbolic_trace(model, stack, inputs, inline_blocks)
        log.info("captured %s with torch.fx.symbolic_trace (%s)", type(model).__name__,
                 "blocks inlined" if inline_blocks else "blocks as leaves")
        return Captured(gm, "symbolic_trace")
    except Exception as err:  # any trace failure sends us to the export path
        errors.append(f"symbolic_trace: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    try:
        gm = _export(model, inputs)
        log.info("captured %s with torch.export (strict=False)", type(model).__name__)
        return Captured(gm, "export")
    except Exception as err:
        errors.append(f"torch.export: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    raise CaptureError(
        f"could not capture {type(model).__name__} as an FX graph ({'; '.join(errors)}). Make the "
        "forward traceable by torch.export.export(model, args, kwargs, strict=False) with the "
        "batch you calibrate with, or pass blocks= if the block stack was misidentified"
    )


def conform_inputs(gm: torch.nn.Module, inputs: ModelInputs) -> ModelInputs:
    """Call arguments → the positional/keyword split an exported graph was captured with.

    `torch.export`'s `module()` accepts only the call structure of its example (`gm(x)` or
    `gm(pixel_values=x)`, not both); arguments are re-bound through the forward's signature.
    Modules without an export input spec get the inputs unchanged.
    """
    spec = getattr(gm, "_in_spec", None)
    if spec is None or spec.num_children != 2:
        return inputs
    num_args, keys = spec.child(0).num_children, list(spec.child(1).context or [])
    if len(inputs.args) == num_args and set(inputs.kwargs) == set(keys):
        return inputs
    try:
        bound = inspect.signature(gm.forward).bind(*inputs.args, **inputs.kwargs)
    except TypeError as err:
        raise UnsupportedBatchError(
            f"the inputs {list(inputs.kwargs) or f'({len(inputs.args)} positional)'} do not fit the "
            f"captured module's signature {inspect.signature(gm.forward)}: {err}"
        ) from None
    values = list(bound.arguments.items())
    return ModelInputs(tuple(v for _, v in values[:num_args]), {k: v for k, v in values[num_args:]})


def _conform_call(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: lets an exported graph be called positionally or by keyword alike."""
    inputs = conform_inputs(module, ModelInputs(tuple(args), dict(kwargs)))
    return inputs.args, inputs.kwargs


def flat_graph_inputs(gm: torch.fx.GraphModule, inputs: ModelInputs) -> list[Any]:
    """Call arguments → the graph's placeholders, in order (for `torch.fx.Interpreter.run`)."""
    in_spec = getattr(gm, "_in_spec", None)
    if in_spec is not None:
        inputs = conform_inputs(gm, inputs)
        return torch.fx._pytree.tree_flatten_spec((inputs.args, inputs.kwargs), in_spec)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    values = list(inputs.args) + [None] * (len(placeholders) - len(inputs.args))
    for i, node in enumerate(placeholders):
        if node.target in inputs.kwargs:
            values[i] = inputs.kwargs[node.target]
        elif i >= len(inputs.args) and node.args:
            values[i] = node.args[0]  # the placeholder's default value
    return values
