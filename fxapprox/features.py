"""Model output → final hidden states → pooled `(B, d)` features ([CLS] or masked mean).

What the `output` score compares and what the study tools' probes read: one definition of "the
model's final features" for the library and the study tools alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fxapprox.calibrate import token_rows

__all__ = ["last_hidden_state", "pool_features"]


def last_hidden_state(output: Any) -> torch.Tensor:
    """A model's output (ModelOutput, mapping, tuple or tensor) → its final hidden states."""
    if isinstance(output, torch.Tensor):
        return output
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None and isinstance(output, Mapping):
        hidden = output.get("last_hidden_state")
    if hidden is None and isinstance(output, (tuple, list)) and output:
        hidden = output[0]
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(
            f"cannot find the final hidden states in a {type(output).__name__}: the model must "
            "return a tensor, a tuple whose first item is it, or an output with last_hidden_state"
        )
    return hidden


def pool_features(hidden: torch.Tensor, mask: torch.Tensor | None, pooling: str = "auto") -> torch.Tensor:
    """`(B, T, d)` hidden states → `(B, d)`: `cls` (token 0), `mean` (under `mask`), or `auto`.

    `auto` is the papers' choice: masked mean when there is an attention mask (sentence
    encoders), [CLS] otherwise (vision transformers). 2-D inputs are returned unchanged.
    """
    if pooling == "auto":
        pooling = "mean" if mask is not None else "cls"
    if pooling not in ("cls", "mean"):
        raise ValueError(f"unknown pooling {pooling!r}: use 'auto', 'cls' or 'mean'")
    return token_rows(hidden, mask, pooling)
