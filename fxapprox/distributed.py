"""A `torch.distributed` process group → data-parallel calibration and scoring with single-process results.

Every rank iterates the same loader. `shard_batches` cuts the global batch stream after exactly
`num_samples` samples (as one process does: the straddling batch is cut) and hands global batch i
to rank `i mod world`; `reduce_moments` sums the float64 moments of all ranks with `all_reduce`,
so every rank fits and scores from the same totals and gets the same plan. `share` splits a list
of work items (spans) across ranks and `gather_dict` joins the per-rank results; `on_main` runs
what the others must not disturb or repeat (a latency measurement, a file) on rank 0 alone.

Errors are collective: code wrapped in `lockstep()` that fails on one rank makes every rank raise
the same typed error at its next `check()` (each collective here starts with one, and
`shard_batches` checks after every round of batches), instead of leaving the others waiting in a
collective. `check_same` makes ranks that disagree on the model or the request fail fast.
Without an initialised group of more than one process everything here is a no-op.
Backends: whichever the group has (gloo: CPU tensors; NCCL: tensors are moved to the current CUDA
device for the collective and back).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from fxapprox import errors
from fxapprox.errors import FxApproxError, RankFailedError, RankMismatchError
from fxapprox.inputs import ModelInputs
from fxapprox.stats import BoundaryMoments, FoldedMoments

__all__ = ["is_distributed", "rank", "world_size", "is_main", "init_from_env", "close", "lockstep", "check",
           "shard_batches", "reduce_moments", "share", "gather_dict", "on_main", "check_same", "model_facts"]

T = TypeVar("T")
_COLLECTIVE = "_fxapprox_collective"  # marks an exception every rank already knows about


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the rank that prints and writes files (rank 0, or the only process)."""
    return rank() == 0


def init_from_env(timeout_s: float = 1800.0) -> bool:
    """Under `torchrun` (WORLD_SIZE > 1 in the environment) with no group yet: initialise one, NCCL
    when CUDA is available (device LOCAL_RANK) else gloo. Returns whether a group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return True


def close() -> None:
    """Leave the process group (if one is initialised)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _device() -> torch.device:
    """Where the group's collectives take tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce_(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place `all_reduce` of `t` through the group's device."""
    buf = t if t.device == _device() else t.to(_device())
    dist.all_reduce(buf, op=op)
    if buf is not t:
        t.copy_(buf)
    return t


def _gather_object(obj: Any) -> list[Any]:
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


# --- collective errors ----------------------------------------------------------------------------

def _status(failed: bool) -> bool:
    """One round of the error protocol: True when any rank reports a failure."""
    flag = torch.tensor([int(failed)], dtype=torch.int32)
    return bool(_all_reduce_(flag, dist.ReduceOp.MAX).item())


def _raise_everywhere(own: BaseException | None) -> None:
    """Every rank learns the lowest failing rank's error and raises the same type: the error's own
    class when it is an fxapprox error, else `RankFailedError` (chained to the original there)."""
    reports = _gather_object(None if own is None else (type(own).__name__, str(own)))
    failed, (name, message) = next((r, rep) for r, rep in enumerate(reports) if rep is not None)
    cls = getattr(errors, name, None)
    typed = isinstance(cls, type) and issubclass(cls, FxApproxError)
    if failed == rank() and typed:
        setattr(own, _COLLECTIVE, True)
        raise own
    err = (cls if typed else RankFailedError)(
        f"this rank failed ({name}): {message}; every rank stopped" if failed == rank() else
        f"rank {failed} of {world_size()} failed ({name}): {message}")
    setattr(err, _COLLECTIVE, True)
    raise err from own


def check() -> None:
    """A point every rank reaches equally often inside `lockstep()`: raises there if a rank failed."""
    if is_distributed() and _status(False):
        _raise_everywhere(None)


@contextmanager
def lockstep() -> Iterator[None]:
    """Make failures collective: an exception on one rank is reported to the others at their next
    `check()` and every rank raises the same typed error (also usable as a decorator)."""
    try:
        yield
    except Exception as err:
        if not is_distributed() or getattr(err, _COLLECTIVE, False):
            raise
        _status(True)
        _raise_everywhere(err)


# --- data-parallel calibration --------------------------------------------------------------------

def _cut(batches: Iterable[ModelInputs], num_samples: int) -> Iterator[ModelInputs]:
    """The global stream, cut after exactly `num_samples` samples (no batch after the cut is read)."""
    seen = 0
    for batch in batches:
        if batch.batch_size > num_samples - seen:
            batch = batch.take(num_samples - seen)
        seen += batch.batch_size
        yield batch
        if seen >= num_samples:
            return


def shard_batches(batches: Iterable[ModelInputs], num_samples: int,
                  moments: BoundaryMoments | FoldedMoments | None = None) -> Iterator[ModelInputs]:
    """This rank's share of the first `num_samples` samples of `batches`: global batch i goes to rank
    `i mod world`, after the global cut, so the ranks together see exactly the single-process
    samples. Every rank reads every batch (only the forward passes are split) and calls `check()`
    once per round of `world` batches. A `FoldedMoments` is told the global batch index of its
    batches, so the folds are the single-process ones."""
    if not is_distributed():
        yield from batches
        return
    r, w = rank(), world_size()
    if isinstance(moments, FoldedMoments):
        moments.stride(r, w)
    stream = _cut(batches, num_samples)
    while group := list(itertools.islice(stream, w)):
        if r < len(group):
            yield group[r]
        check()


def reduce_moments(moments: BoundaryMoments | FoldedMoments) -> BoundaryMoments | FoldedMoments:
    """Sum every rank's moments (float64 `all_reduce`, in place): afterwards each rank holds the totals
    over all ranks' samples. Ranks whose boundaries or widths differ raise `RankMismatchError`."""
    if not is_distributed():
        return moments
    check()
    for part in moments.parts if isinstance(moments, FoldedMoments) else [moments]:
        reports = _gather_object((part.indices, part.dims if part.sums is not None else None))
        check_same_values("the watched boundaries", [idx for idx, _ in reports])
        widths = [dims for _, dims in reports if dims is not None]
        check_same_values("the boundary widths", widths)
        if not widths:
            continue  # no rank saw a batch for this part
        if part.sums is None:
            part.allocate(widths[0], _device())
        for t in part.totals():
            _all_reduce_(t)
        counts = _all_reduce_(torch.tensor([part.rows, part.samples], dtype=torch.int64))
        part.rows, part.samples = int(counts[0]), int(counts[1])
    return moments


# --- distributed scoring ----------------------------------------------------------------------------

def share(items: list[T]) -> list[T]:
    """This rank's items of `items` (every `world`-th, starting at its rank)."""
    return items[rank()::world_size()]


def gather_dict(local: dict[Any, Any]) -> dict[Any, Any]:
    """Every rank's `local` results (picklable keys and values) → one dict on every rank."""
    if not is_distributed():
        return local
    check()
    merged: dict[Any, Any] = {}
    for part in _gather_object(local):
        merged.update(part)
    return merged


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0 alone (the others wait), its result (picklable) on every rank; failures are collective."""
    if not is_distributed():
        return fn()
    with lockstep():
        mine = {0: fn()} if is_main() else {}
    return gather_dict(mine)[0]


# --- consistency ------------------------------------------------------------------------------------

def model_facts(model: nn.Module) -> dict[str, Any]:
    """What ranks must agree on about `model`: class, parameter count and a float64 checksum."""
    params = [p.detach() for p in model.parameters()]
    checksum = sum(float(p.double().sum()) + float(p.double().square().sum()) for p in params)
    return {"model class": type(model).__name__, "parameters": sum(p.numel() for p in params),
            "weights checksum": checksum}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def check_same_values(what: str, values: list[Any]) -> None:
    """Raise `RankMismatchError` (on every rank: `values` is the same list everywhere) unless all equal."""
    if any(not _same(v, values[0]) for v in values[1:]):
        listed = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
        err = RankMismatchError(
            f"the ranks disagree on {what} ({listed}): every rank must load the same model and get the "
            "same arguments and the same loader (seed your data and model building identically)")
        setattr(err, _COLLECTIVE, True)  # every rank raises it
        raise err


def check_same(model: nn.Module | None = None, **facts: Any) -> None:
    """Fail fast on every rank if the ranks' `model_facts(model)` or `facts` (spans, samples, ...) differ."""
    if not is_distributed():
        return
    facts = {**(model_facts(model) if model is not None else {}), **facts}
    with lockstep():
        check()
        reports = _gather_object(facts)
    for key in facts:
        check_same_values(key, [rep.get(key) for rep in reports])
