"""Calibration batches (tensor / tuple / mapping) → model call arguments, sample counts, masks.

A batch is a tensor (the model's first positional input), a tuple/list whose first item is the
input (labels after it are ignored), or a mapping of model keyword arguments (`pixel_values`,
`input_ids` + `attention_mask`, ...; a `labels`/`label` key is ignored).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fxapprox.errors import UnsupportedBatchError

__all__ = ["ModelInputs", "as_model_inputs", "check_like_first", "token_mask"]

_IGNORED_KEYS = frozenset({"labels", "label", "targets", "target"})


@dataclass
class ModelInputs:
    """The positional and keyword arguments of one model call."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor argument, positional first."""
        return [v for v in (*self.args, *self.kwargs.values()) if isinstance(v, torch.Tensor)]

    @property
    def batch_size(self) -> int:
        """Leading dimension shared by the tensor arguments."""
        return self.tensors()[0].shape[0]

    def map_tensors(self, fn) -> ModelInputs:
        """A copy with `fn` applied to each tensor argument."""
        conv = lambda v: fn(v) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return ModelInputs(tuple(conv(a) for a in self.args), {k: conv(v) for k, v in self.kwargs.items()})

    def take(self, n: int) -> ModelInputs:
        """The first `n` samples."""
        return self.map_tensors(lambda t: t[:n])

    def to(self, device: torch.device | str) -> ModelInputs:
        """The same inputs on `device`."""
        return self.map_tensors(lambda t: t.to(device))

    def call(self, model) -> Any:
        """`model(*args, **kwargs)`."""
        return model(*self.args, **self.kwargs)

    def describe(self) -> str:
        """One line naming each argument: `x: float32 (8, 5, 12)`, `attention_mask: int64 (4, 9)`."""
        def one(v: Any) -> str:
            if isinstance(v, torch.Tensor):
                return f"{str(v.dtype).removeprefix('torch.')} {tuple(v.shape)}"
            return type(v).__name__
        named = [(f"arg {i}", v) for i, v in enumerate(self.args)] + list(self.kwargs.items())
        return ", ".join(f"{k}: {one(v)}" for k, v in named) or "no arguments"


def _batch_name(index: int | None, what: str = "calibration batch") -> str:
    return what if index is None else f"{what} {index}"


def as_model_inputs(batch: Any, index: int | None = None, *, what: str = "calibration batch") -> ModelInputs:
    """One calibration batch → `ModelInputs`; anything else → `UnsupportedBatchError` (naming it `what`, and
    batch `index`)."""
    name = _batch_name(index, what)
    if isinstance(batch, ModelInputs):
        inputs = batch
    elif isinstance(batch, torch.Tensor):
        inputs = ModelInputs((batch,))
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        inputs = ModelInputs((batch[0],))
    elif isinstance(batch, Mapping) and batch:
        kwargs = {str(k): v for k, v in batch.items() if k not in _IGNORED_KEYS}
        inputs = ModelInputs((), kwargs)
    else:
        raise UnsupportedBatchError(
            f"{name} of type {type(batch).__name__} is not supported: yield a tensor, "
            "a tuple/list whose first item is the input tensor, or a dict of model keyword "
            "arguments (e.g. {'pixel_values': ...} or {'input_ids': ..., 'attention_mask': ...})"
        )
    odd = {k: type(v).__name__ for k, v in inputs.kwargs.items()
           if not isinstance(v, (torch.Tensor, bool, int, float, type(None)))}
    if odd:
        raise UnsupportedBatchError(
            f"{name} holds {', '.join(f'{k!r}: a {t}' for k, t in odd.items())}; expected tensors (or plain "
            "bool/int/float/None options) as the values of a batch dict"
        )
    tensors = inputs.tensors()
    if not tensors or any(t.ndim == 0 for t in tensors):
        raise UnsupportedBatchError(
            f"{name} holds no batched tensor or a scalar one: every tensor argument needs the batch as its "
            "first dimension"
        )
    sizes = {t.shape[0] for t in tensors}
    if len(sizes) != 1:
        raise UnsupportedBatchError(
            f"tensors in {name} disagree on the batch size ({sorted(sizes)}); "
            "every tensor argument must have the batch as its first dimension"
        )
    if not sizes.pop():
        raise UnsupportedBatchError(f"{name} has 0 samples (its tensors are {inputs.describe()}); yield batches "
                                    "of at least one sample")
    return inputs


def _free_dims(t: torch.Tensor) -> set[int]:
    """Dimensions that may differ between batches: the batch, and the tokens of a token (integer) or
    sequence (rank >= 3) input."""
    return {0, 1} if t.ndim >= 3 or (t.ndim == 2 and not t.is_floating_point()) else {0}


def check_like_first(first: ModelInputs, inputs: ModelInputs, index: int) -> None:
    """`UnsupportedBatchError` unless batch `index` has the structure of batch 0: the same positional count and
    keyword names, and per tensor the same dtype, rank and sizes (but the batch and token dimensions)."""
    name = _batch_name(index)
    if len(inputs.args) != len(first.args) or set(inputs.kwargs) != set(first.kwargs):
        raise UnsupportedBatchError(f"{name} is {inputs.describe()}, expected {first.describe()} as batch 0 "
                                    "(the same positional arguments and keys)")
    pairs = [*zip(first.args, inputs.args), *((first.kwargs[k], inputs.kwargs[k]) for k in first.kwargs)]
    for a, b in pairs:
        if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
            raise UnsupportedBatchError(f"{name} is {inputs.describe()}, expected {first.describe()} as batch 0 "
                                        "(tensors where it has tensors)")
        if not isinstance(a, torch.Tensor):
            continue
        fixed = [d for d in range(a.ndim) if d not in _free_dims(a)]
        if a.dtype != b.dtype or a.ndim != b.ndim or any(a.shape[d] != b.shape[d] for d in fixed):
            raise UnsupportedBatchError(
                f"{name} is {inputs.describe()}, expected {first.describe()} as batch 0 (the same dtypes, "
                f"ranks and sizes; only the batch{' and token' if len(_free_dims(a)) > 1 else ''} dimension "
                "may differ)"
            )


def token_mask(inputs: ModelInputs) -> torch.Tensor | None:
    """The `(batch, tokens)` boolean mask of real (unpadded) tokens, or None when unmasked."""
    mask = inputs.kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        return mask.bool()
    return None
