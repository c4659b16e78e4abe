"""Calibration batches → boundary moments, by running the captured graph in an FX interpreter.

`CalibrationInterpreter` hands each watched boundary tensor to a callback as it is computed and
stops as soon as the last watched boundary is known (the rest of the model is not run).
`calibrate()` streams batches through it into `BoundaryMoments` (`calibrate_runs()`: through several
graphs fed the same batches): padding tokens (from an `attention_mask`) are dropped, non-finite
activations are an error, and it stops after `num_samples` samples. `split_samples` cuts a batch
stream after exactly n samples (for held-out samples after the calibration ones).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import torch
import torch.fx
from tqdm.auto import tqdm

from fxapprox import distributed
from fxapprox.blocks import BlockStack
from fxapprox.boundaries import Boundaries
from fxapprox.capture import flat_graph_inputs
from fxapprox.errors import (
    CalibrationError,
    EmptyCalibrationError,
    FewerSamplesWarning,
    FxApproxError,
    NonFiniteActivationError,
    UnsupportedBatchError,
    one_line,
)
from fxapprox.inputs import ModelInputs, as_model_inputs, check_like_first, token_mask
from fxapprox.stats import BoundaryMoments, FoldedMoments

__all__ = ["CalibrationInterpreter", "EagerBlockHooks", "calibrate", "calibrate_runs", "calibrate_eager", "token_rows",
           "iter_batches", "check_first_batch", "split_samples", "Tokens"]

log = logging.getLogger(__name__)

Tokens = Literal["all", "cls", "mean"]


class _Done(Exception):
    """Raised inside the interpreter once every watched node has been seen."""


class CalibrationInterpreter(torch.fx.Interpreter):
    """Runs `gm`, calling `observe(k, tensor)` for each watched boundary node `H_k`."""

    def __init__(self, gm: torch.fx.GraphModule, watched: dict[torch.fx.Node, int],
                 observe: Callable[[int, torch.Tensor], None]):
        super().__init__(gm, garbage_collect_values=True)
        self.watched = watched
        self.observe = observe
        self._last = max(watched, key=lambda n: self._order[n]) if watched else None

    @property
    def _order(self) -> dict[torch.fx.Node, int]:
        if not hasattr(self, "_order_cache"):
            self._order_cache = {n: i for i, n in enumerate(self.module.graph.nodes)}
        return self._order_cache

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if n in self.watched:
            self.observe(self.watched[n], result)
            if n is self._last:
                raise _Done
        return result

    def observe_batch(self, inputs: ModelInputs) -> None:
        """Run one batch up to the last watched boundary."""
        try:
            with torch.no_grad():
                self.run(*flat_graph_inputs(self.module, inputs))
        except _Done:
            pass


def token_rows(h: torch.Tensor, mask: torch.Tensor | None, tokens: Tokens = "all") -> torch.Tensor:
    """Boundary tensor `(batch, tokens, d)` (or `(batch, d)`) → rows `(n, d)` of unpadded tokens.

    `all`: every unmasked token; `cls`: the first token; `mean`: the mean over unmasked tokens.
    """
    if h.ndim == 2:
        return h
    h = h.reshape(h.shape[0], -1, h.shape[-1]) if h.ndim > 3 else h
    if mask is not None and tuple(mask.shape) != tuple(h.shape[:2]):
        mask = None
    elif mask is not None:
        mask = mask.to(h.device)  # a block dispatched to another device than the inputs (accelerate device_map)
    if tokens == "cls":
        return h[:, 0]
    if tokens == "mean":
        if mask is None:
            return h.mean(dim=1)
        w = mask.to(h.dtype).unsqueeze(-1)
        return (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)
    if mask is None:
        return h.reshape(-1, h.shape[-1])
    return h[mask]


def iter_batches(loader: Iterable[Any], model: torch.nn.Module | None = None) -> tuple[ModelInputs,
                                                                                      Iterator[ModelInputs]]:
    """Loader → (first batch, iterator over all batches including the first), each checked as it comes:
    batch 0 against `model` (`check_first_batch`, when given), later ones to have batch 0's structure."""
    it = iter(loader)
    try:
        first = as_model_inputs(next(it), 0)
    except StopIteration:
        raise EmptyCalibrationError(
            "the calibration loader yielded no batch: pass an iterable of batches (e.g. a "
            "torch DataLoader over a few hundred training samples)"
        ) from None
    if model is not None:
        check_first_batch(model, first)

    def later() -> Iterator[ModelInputs]:
        for i, batch in enumerate(it, 1):
            inputs = as_model_inputs(batch, i)
            check_like_first(first, inputs, i)
            yield inputs

    return first, itertools.chain([first], later())


def check_first_batch(model: torch.nn.Module, first: ModelInputs) -> None:
    """Batch 0 against `model` before any capture: its keywords are ones `model.forward` takes, and two of its
    samples run through the eager model (`CalibrationError` with the model's own error in one line)."""
    name = type(model).__name__
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a builtin or C forward: nothing to check the names against
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params):
        names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(first.kwargs) - set(names))
        if unknown:
            raise UnsupportedBatchError(f"calibration batch 0 has key(s) {unknown} that {name}.forward does not "
                                        f"take (it takes {', '.join(names) or 'no keywords'})")
    tensor = next((t for t in itertools.chain(model.parameters(), model.buffers())), None)
    sample = first.take(2) if tensor is None else first.take(2).to(tensor.device)
    model.eval()  # as capture and calibration run it (no batch-norm statistics updated)
    try:
        with torch.no_grad():
            sample.call(model)
    except Exception as err:  # the model's own error, whatever it is: the batch does not fit the model
        raise CalibrationError(
            f"calibration batch 0 ({first.describe()}) does not run through {name}: {one_line(err)}; give "
            "batches the model's forward takes (the dtype, shape and keys of its usual inputs)"
        ) from None


def split_samples(batches: Iterator[ModelInputs], n: int) -> tuple[Iterator[ModelInputs], Iterator[ModelInputs]]:
    """Batches → (the first `n` samples, the samples after them), splitting the batch that straddles `n`.

    Both are lazy views of `batches`: read the first to its end before the second.
    """
    straddled: list[ModelInputs] = []

    def head() -> Iterator[ModelInputs]:
        left = n
        while left > 0:
            batch = next(batches, None)
            if batch is None:
                return
            if batch.batch_size > left:
                straddled.append(batch.map_tensors(lambda t, k=left: t[k:]))
                batch = batch.take(left)
            left -= batch.batch_size
            yield batch

    def tail() -> Iterator[ModelInputs]:
        yield from straddled
        yield from batches

    return head(), tail()


class EagerBlockHooks:
    """Runs the eager model with hooks on the blocks of `stack`: `observe(k, H_k)` for each watched
    boundary (the input of block 0 for `H_-1`), stopping after the last one. No capture needed."""

    def __init__(self, model: torch.nn.Module, stack: BlockStack, indices: list[int],
                 observe: Callable[[int, torch.Tensor], None]):
        self.model, self.stack, self.indices, self.observe = model, stack, sorted(indices), observe

    def _hooks(self) -> list[Any]:
        last = self.indices[-1]

        def output_hook(k: int):
            def hook(_module, _args, output):
                self.observe(k, output[0] if isinstance(output, (tuple, list)) else output)
                if k == last:
                    raise _Done
            return hook

        def input_hook(_module, args, kwargs):
            self.observe(-1, args[0] if args else kwargs["hidden_states"])
            if last == -1:
                raise _Done

        handles = []
        for k in self.indices:
            block = self.model.get_submodule(self.stack.block_path(max(k, 0)))
            handles.append(block.register_forward_pre_hook(input_hook, with_kwargs=True) if k < 0
                           else block.register_forward_hook(output_hook(k)))
        return handles

    def observe_batch(self, inputs: ModelInputs) -> None:
        """Run one batch eagerly up to the last watched boundary."""
        handles = self._hooks()
        try:
            with torch.no_grad():
                inputs.call(self.model)
        except _Done:
            pass
        finally:
            for h in handles:
                h.remove()


def calibrate(gm: torch.fx.GraphModule, boundaries: Boundaries, indices: list[int],
              batches: Iterable[ModelInputs], num_samples: int, *, tokens: Tokens = "all",
              device: torch.device | None = None, progress: bool = True,
              moments: BoundaryMoments | FoldedMoments | None = None) -> BoundaryMoments | FoldedMoments:
    """Stream `batches` through `gm` and accumulate the moments of boundaries `indices`.

    `moments`: an empty accumulator to fill instead of a new `BoundaryMoments(indices)` (e.g.
    `FoldedMoments` for held-out scores); it is returned.
    """
    moments = BoundaryMoments(indices) if moments is None else moments
    watched = {boundaries[k]: k for k in moments.indices}
    return _stream(lambda observe: CalibrationInterpreter(gm, watched, observe), moments, batches, num_samples,
                   tokens=tokens, device=device, progress=progress)


class _Together:
    """Several runners fed the same batch, one after the other."""

    def __init__(self, runners: list[CalibrationInterpreter]):
        self.runners = runners

    def observe_batch(self, inputs: ModelInputs) -> None:
        for runner in self.runners:
            runner.observe_batch(inputs)


def calibrate_runs(runs: Sequence[tuple[torch.fx.GraphModule, dict[torch.fx.Node, int]]],
                   batches: Iterable[ModelInputs], num_samples: int, *, tokens: Tokens = "all",
                   device: torch.device | None = None, progress: bool = True,
                   moments: BoundaryMoments | FoldedMoments | None = None) -> BoundaryMoments | FoldedMoments:
    """`calibrate` through several graphs at once: every `(graph, {node: key})` of `runs` is fed the same
    batches (each up to its last watched node) and the watched nodes' moments are accumulated together,
    under their keys (e.g. `H_s` of the graph with earlier spans replaced next to `H_e` of the original:
    the sequential refit)."""
    if moments is None:
        moments = BoundaryMoments(sorted(k for _, watched in runs for k in watched.values()))
    return _stream(lambda observe: _Together([CalibrationInterpreter(gm, watched, observe) for gm, watched in runs]),
                   moments, batches, num_samples, tokens=tokens, device=device, progress=progress)


def calibrate_eager(model: torch.nn.Module, stack: BlockStack, indices: list[int], batches: Iterable[ModelInputs],
                    num_samples: int, *, tokens: Tokens = "all", device: torch.device | None = None,
                    progress: bool = True,
                    moments: BoundaryMoments | FoldedMoments | None = None) -> BoundaryMoments | FoldedMoments:
    """`calibrate` on the eager model through block hooks (no graph capture: scoring only)."""
    moments = BoundaryMoments(indices) if moments is None else moments
    return _stream(lambda observe: EagerBlockHooks(model, stack, moments.indices, observe), moments, batches,
                   num_samples, tokens=tokens, device=device, progress=progress)


@distributed.lockstep()
def _stream(make_runner, moments, batches: Iterable[ModelInputs], num_samples: int, *, tokens: Tokens,
            device: torch.device | None, progress: bool):
    """The calibration loop shared by the graph and the eager runners (under a process group: this
    rank's share of the batches, then the moments summed over the ranks)."""
    current: dict[int, torch.Tensor] = {}

    def observe(k: int, h: torch.Tensor) -> None:
        if not torch.isfinite(h).all():
            raise NonFiniteActivationError(
                f"boundary H_{k} (output of {'the embeddings' if k < 0 else f'block {k}'}) holds "
                "NaN or Inf on a calibration batch: check the inputs' preprocessing and the "
                "model's dtype (float16 overflow?) before calibrating"
            )
        current[k] = h.detach()

    runner = make_runner(observe)
    bar = tqdm(total=num_samples, unit="sample", desc="calibrating", disable=not (progress and distributed.is_main()),
               leave=False)
    for index, inputs in enumerate(distributed.shard_batches(batches, num_samples, moments)):
        remaining = num_samples - moments.samples
        if remaining <= 0:
            break
        if inputs.batch_size > remaining:
            inputs = inputs.take(remaining)
        if device is not None:
            inputs = inputs.to(device)
        current.clear()
        try:
            runner.observe_batch(inputs)
        except FxApproxError:
            raise
        except Exception as err:  # raised inside the captured graph or the model: name the batch, in one line
            raise CalibrationError(f"calibration batch {index} ({inputs.describe()}) failed inside the model: "
                                   f"{one_line(err)}") from None
        mask = token_mask(inputs)
        moments.update({k: token_rows(current[k], mask, tokens) for k in moments.indices}, inputs.batch_size)
        bar.update(inputs.batch_size)
    bar.close()
    current.clear()
    distributed.reduce_moments(moments)
    if moments.samples == 0:
        raise EmptyCalibrationError("no calibration sample was seen: the loader's batches are empty")
    if moments.samples < num_samples:
        warnings.warn(
            f"the calibration loader gave {moments.samples} samples, fewer than num_samples="
            f"{num_samples}; continuing with {moments.samples}",
            FewerSamplesWarning,
            stacklevel=5,
        )
    log.info("calibrated on %d samples (%d rows)", moments.samples, moments.rows)
    return moments
