"""Streams of boundary activations → float64 moments (`ZᵀZ`, `ΣZ`, row count) of their concatenation.

`Z = [H_a | H_b | ...]` stacks the watched boundaries side by side, one row per token, so one
matrix product per batch yields `XᵀX`, `XᵀY` and `YᵀY` for every pair of watched boundaries.
Memory is `O((Σ d)²)` whatever the number of samples; no activation outlives its batch.
"""

from __future__ import annotations

import torch

__all__ = ["BoundaryMoments"]


class BoundaryMoments:
    """Running moments of the watched boundaries `indices` (block indices, -1 = embeddings)."""

    def __init__(self, indices: list[int]):
        self.indices = sorted(set(indices))
        self.dims: dict[int, int] = {}
        self.gram: torch.Tensor | None = None
        self.sums: torch.Tensor | None = None
        self.rows = 0
        self.samples = 0

    def _offsets(self, k: int) -> slice:
        start = 0
        for i in self.indices:
            if i == k:
                return slice(start, start + self.dims[i])
            start += self.dims[i]
        raise KeyError(f"boundary {k} is not watched (watched: {self.indices})")

    def update(self, features: dict[int, torch.Tensor], samples: int) -> None:
        """Add one batch: `features[k]` is `(rows, d_k)` for every watched boundary k."""
        z = torch.cat([features[k].reshape(-1, features[k].shape[-1]) for k in self.indices], dim=1)
        z = z.to(torch.float64)
        if self.gram is None:
            self.dims = {k: features[k].shape[-1] for k in self.indices}
            self.gram = torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64, device=z.device)
            self.sums = torch.zeros(z.shape[1], dtype=torch.float64, device=z.device)
        self.gram.addmm_(z.T, z)
        self.sums += z.sum(dim=0)
        self.rows += z.shape[0]
        self.samples += samples

    def merge(self, other: BoundaryMoments) -> None:
        """Add the moments of `other` (same boundaries), e.g. from another process."""
        if other.indices != self.indices or other.dims != self.dims:
            raise ValueError("cannot merge moments of different boundaries")
        self.gram += other.gram
        self.sums += other.sums
        self.rows += other.rows
        self.samples += other.samples

    def cross(self, a: int, b: int) -> torch.Tensor:
        """`H_aᵀ H_b` summed over all rows, `(d_a, d_b)`."""
        return self.gram[self._offsets(a), self._offsets(b)]

    def sum(self, k: int) -> torch.Tensor:
        """`Σ_rows H_k`, `(d_k,)`."""
        return self.sums[self._offsets(k)]

    def centred_cross(self, a: int, b: int) -> torch.Tensor:
        """`(H_a - mean)ᵀ (H_b - mean)`, `(d_a, d_b)`."""
        return self.cross(a, b) - torch.outer(self.sum(a), self.sum(b)) / self.rows
