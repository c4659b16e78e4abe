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

__all__ = ["ModelInputs", "as_model_inputs", "token_mask"]

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


def as_model_inputs(batch: Any) -> ModelInputs:
    """One calibration batch → `ModelInputs`; anything else → `UnsupportedBatchError`."""
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
            f"calibration batch of type {type(batch).__name__} is not supported: yield a tensor, "
            "a tuple/list whose first item is the input tensor, or a dict of model keyword "
            "arguments (e.g. {'pixel_values': ...} or {'input_ids': ..., 'attention_mask': ...})"
        )
    tensors = inputs.tensors()
    if not tensors or tensors[0].ndim == 0:
        raise UnsupportedBatchError(
            "calibration batch holds no batched tensor: every batch needs at least one tensor "
            "argument whose first dimension is the batch"
        )
    sizes = {t.shape[0] for t in tensors}
    if len(sizes) != 1:
        raise UnsupportedBatchError(
            f"tensors in one calibration batch disagree on the batch size ({sorted(sizes)}); "
            "every tensor argument must have the batch as its first dimension"
        )
    return inputs


def token_mask(inputs: ModelInputs) -> torch.Tensor | None:
    """The `(batch, tokens)` boolean mask of real (unpadded) tokens, or None when unmasked."""
    mask = inputs.kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        return mask.bool()
    return None
