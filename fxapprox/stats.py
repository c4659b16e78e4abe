"""Streams of boundary activations → float64 moments (`ZᵀZ`, `ΣZ`, row count) of their concatenation.

`Z = [H_a | H_b | ...]` stacks the watched boundaries side by side, one row per token, so one
matrix product per batch yields `XᵀX`, `XᵀY` and `YᵀY` for every pair of watched boundaries.
Only the upper block triangle of `ZᵀZ` is computed (one product per boundary against itself and
every later boundary, half the work of the full product), on rows shifted by the batch mean, in
float64 or (`product_dtype=None`) the activations' dtype, always accumulated in float64;
`cross(a, b)` reads it either way.
Row-wise cosines between equal-width boundaries (which `ZᵀZ` cannot give: they need each row's
norm) are summed alongside, for the `cosine` and `angular` scores.
Memory is `O((Σ d)²)` whatever the number of samples; no activation outlives its batch.

Blocks dispatched across devices (an accelerate `device_map`): the triangle is stored as one row
block `(d_k, Σ_{j≥k} d_j)` per boundary k, on the device where boundary k's rows arrive; each
device builds once per batch the concatenation of its first boundary and every later one
(`device_starts`) and updates its row blocks from it. The small totals (`sums`, cosine and angle
sums) live on the first boundary's device, where every read (`cross`, `sum`, `gram`) returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["BoundaryMoments", "FoldedMoments", "device_starts"]


def device_starts(devices: Sequence[torch.device]) -> dict[torch.device, int]:
    """Boundary devices in watched order → each distinct device's first position.

    The device holding position `p`'s row block builds its concatenation from its first position
    onwards, so it can update every row block it holds (`[cuda:0, cpu, cuda:0]` → `{cuda:0: 0, cpu: 1}`).
    """
    starts: dict[torch.device, int] = {}
    for pos, device in enumerate(devices):
        starts.setdefault(torch.device(device), pos)
    return starts


class BoundaryMoments:
    """Running moments of the watched boundaries `indices` (block indices, -1 = embeddings).

    Per pair of watched boundaries `(a, b)`: `cross(a, b) = Σ_rows h_aᵀ h_b`; per boundary
    `sum(k) = Σ_rows h_k`; for equal widths `cos_sums[i, j] = Σ_rows cos(h_a, h_b)` and
    `angle_sums[i, j] = Σ_rows arccos(cos(h_a, h_b)) / π` (`i, j` positions in `indices`, NaN
    where the widths differ).
    `devices[k]` is where boundary k's row block of the upper triangle lives (its rows' device in
    the first batch); `sums`, `cos_sums`, `angle_sums` and every read are on the first boundary's.
    """

    def __init__(self, indices: list[int], *, product_dtype: torch.dtype | None = torch.float64):
        self.indices = sorted(set(indices))
        self.product_dtype = product_dtype
        self.dims: dict[int, int] = {}
        self.devices: dict[int, torch.device] = {}
        self._rows: list[torch.Tensor] = []  # position p: (d_p, Σ_{j≥p} d_j) on devices[indices[p]]
        self.sums: torch.Tensor | None = None
        self.cos_sums: torch.Tensor | None = None
        self.angle_sums: torch.Tensor | None = None
        self.rows = 0
        self.samples = 0

    def _start(self, k: int) -> int:
        start = 0
        for i in self.indices:
            if i == k:
                return start
            start += self.dims[i]
        raise KeyError(f"boundary {k} is not watched (watched: {self.indices})")

    def _offsets(self, k: int) -> slice:
        start = self._start(k)
        return slice(start, start + self.dims[k])

    def _position(self, k: int) -> int:
        try:
            return self.indices.index(k)
        except ValueError:
            raise KeyError(f"boundary {k} is not watched (watched: {self.indices})") from None

    def _width_groups(self) -> list[list[int]]:
        """Positions in `indices` grouped by boundary width."""
        groups: dict[int, list[int]] = {}
        for pos, k in enumerate(self.indices):
            groups.setdefault(self.dims[k], []).append(pos)
        return list(groups.values())

    def allocate(self, dims: dict[int, int], device: torch.device | dict[int, torch.device]) -> None:
        """Zero totals for boundaries of widths `dims` on `device` (one for all, or one per boundary:
        the first batch does this with each boundary's rows' device)."""
        self.dims = dict(dims)
        self.devices = {k: torch.device(device[k] if isinstance(device, dict) else device) for k in self.indices}
        n, width = len(self.indices), sum(self.dims.values())
        self._rows = []
        for k in self.indices:
            self._rows.append(torch.zeros(self.dims[k], width, dtype=torch.float64, device=self.devices[k]))
            width -= self.dims[k]
        device = self.devices[self.indices[0]]
        self.sums = torch.zeros(sum(self.dims.values()), dtype=torch.float64, device=device)
        self.cos_sums = torch.full((n, n), math.nan, dtype=torch.float64, device=device)
        self.angle_sums = torch.full((n, n), math.nan, dtype=torch.float64, device=device)
        for group in self._width_groups():
            idx = torch.tensor(group, device=device)
            self.cos_sums[idx.unsqueeze(1), idx] = 0.0
            self.angle_sums[idx.unsqueeze(1), idx] = 0.0

    def update(self, features: dict[int, torch.Tensor], samples: int) -> None:
        """Add one batch: `features[k]` is `(rows, d_k)` for every watched boundary k.

        The products run in `product_dtype` (float64 by default; None: the activations' dtype,
        at least float32, which halves the time for float32 models) on rows shifted by the batch
        mean, which keeps their rounding at the scale of the centred values; the shift is added
        back in float64 and every total accumulates in float64.
        """
        rows = [features[k].reshape(-1, features[k].shape[-1]) for k in self.indices]
        if self.sums is None:
            self.allocate({k: r.shape[-1] for k, r in zip(self.indices, rows)},
                          {k: r.device for k, r in zip(self.indices, rows)})
        placed = [self.devices[k] for k in self.indices]
        for device, first in device_starts(placed).items():  # the first boundary's device first: first == 0
            z = torch.cat([r.to(device) for r in rows[first:]], dim=1)
            if self.product_dtype is not None:
                z = z.to(self.product_dtype)
            elif z.dtype != torch.float64:
                z = z.to(torch.float32)
            self._add_rows(z, first, device)
        self.rows += rows[0].shape[0]
        self.samples += samples

    def _add_rows(self, z: torch.Tensor, first: int, device: torch.device) -> None:
        """Add `z` (the boundaries from position `first` on, side by side, on `device`) to the row blocks
        on `device`; from position 0 also to the sums and cosines."""
        n = z.shape[0]
        if first == 0:
            self._add_cosines(z)
        shift = z.mean(dim=0)
        zc = z.sub_(shift)  # z is this batch's own copy (cat / to)
        mu = shift.to(torch.float64)
        zc_sum = zc.sum(dim=0, dtype=torch.float64)
        if first == 0:
            self.sums += zc_sum + n * mu
        # Σ z zᵀ = Σ zc zcᵀ + μ aᵀ + a μᵀ with a = Σ zc + (n/2) μ (μ the shift as rounded).
        a = zc_sum + 0.5 * n * mu
        left, right = torch.stack([mu, a], dim=1), torch.stack([a, mu], dim=0)
        start = 0
        for pos in range(first, len(self.indices)):
            end = start + self.dims[self.indices[pos]]
            if self.devices[self.indices[pos]] == device:
                self._rows[pos] += zc[:, start:end].T @ zc[:, start:]
                self._rows[pos].addmm_(left[start:end], right[:, start:])
            start = end

    def _add_cosines(self, z: torch.Tensor) -> None:
        """Row-wise cosines of every equal-width pair, summed into `cos_sums` / `angle_sums`.

        Dot products in `z`'s dtype, normalisation and `arccos` in float64.
        """
        for group in self._width_groups():
            if len(group) < 2:
                continue
            width = self.dims[self.indices[group[0]]]
            if group == list(range(group[0], group[-1] + 1)):  # adjacent columns: a view, no copy
                start = self._start(self.indices[group[0]])
                h = z[:, start:start + width * len(group)].view(z.shape[0], len(group), width)
            else:
                h = torch.stack([z[:, self._offsets(self.indices[p])] for p in group], dim=1)
            dots = torch.einsum("rid,rjd->rij", h, h).to(torch.float64)
            norms = dots.diagonal(dim1=1, dim2=2).sqrt().clamp_min(torch.finfo(torch.float64).tiny)
            cos = (dots / (norms.unsqueeze(2) * norms.unsqueeze(1))).clamp_(-1.0, 1.0)
            idx = torch.tensor(group, device=z.device)
            self.cos_sums[idx.unsqueeze(1), idx] += cos.sum(dim=0)
            self.angle_sums[idx.unsqueeze(1), idx] += torch.arccos(cos).sum(dim=0) / math.pi

    def merge(self, other: BoundaryMoments) -> None:
        """Add the moments of `other` (same boundaries), e.g. from another process."""
        if other.indices != self.indices or other.dims != self.dims:
            raise ValueError("cannot merge moments of different boundaries")
        for mine, theirs in zip(self._rows, other._rows):
            mine += theirs.to(mine.device)
        self.sums += other.sums.to(self.sums.device)
        self.cos_sums += other.cos_sums.to(self.cos_sums.device)
        self.angle_sums += other.angle_sums.to(self.angle_sums.device)
        self.rows += other.rows
        self.samples += other.samples

    def totals(self) -> list[torch.Tensor]:
        """The float64 accumulators (the row blocks of the `ZᵀZ` upper triangle, sums, cosine and angle
        sums), e.g. to sum them in place across processes."""
        return [*self._rows, self.sums, self.cos_sums, self.angle_sums]

    @property
    def gram(self) -> torch.Tensor | None:
        """The full symmetric `ZᵀZ` (materialised from the stored row blocks on the first boundary's device)."""
        if self.sums is None:
            return None
        width = self.sums.shape[0]
        upper = torch.zeros(width, width, dtype=torch.float64, device=self.sums.device)
        for k, block in zip(self.indices, self._rows):
            upper[self._offsets(k), self._start(k):] = block
        return torch.triu(upper) + torch.triu(upper, diagonal=1).T

    def cross(self, a: int, b: int) -> torch.Tensor:
        """`H_aᵀ H_b` summed over all rows, `(d_a, d_b)`, on the first boundary's device."""
        if self._start(a) > self._start(b):
            return self.cross(b, a).T
        start = self._start(b) - self._start(a)
        return self._rows[self._position(a)][:, start:start + self.dims[b]].to(self.sums.device)

    def sum(self, k: int) -> torch.Tensor:
        """`Σ_rows H_k`, `(d_k,)`."""
        return self.sums[self._offsets(k)]

    def centred_cross(self, a: int, b: int) -> torch.Tensor:
        """`(H_a - mean)ᵀ (H_b - mean)`, `(d_a, d_b)`."""
        return self.cross(a, b) - torch.outer(self.sum(a), self.sum(b)) / self.rows

    def mean_cosine(self, a: int, b: int) -> float:
        """Mean over rows of `cos(h_a, h_b)` (NaN when the widths differ)."""
        return float(self.cos_sums[self._position(a), self._position(b)]) / self.rows

    def mean_angle(self, a: int, b: int) -> float:
        """Mean over rows of `arccos(cos(h_a, h_b)) / π` (NaN when the widths differ)."""
        return float(self.angle_sums[self._position(a), self._position(b)]) / self.rows

    @classmethod
    def sum_of(cls, parts: list[BoundaryMoments]) -> BoundaryMoments:
        """New moments holding the sum of `parts` (same boundaries; parts that saw no batch are skipped)."""
        seen = [p for p in parts if p.sums is not None]
        total = cls(parts[0].indices, product_dtype=parts[0].product_dtype)
        if not seen:
            return total
        total.dims, total.devices = dict(seen[0].dims), dict(seen[0].devices)
        total._rows = [block.clone() for block in seen[0]._rows]
        total.sums = seen[0].sums.clone()
        total.cos_sums, total.angle_sums = seen[0].cos_sums.clone(), seen[0].angle_sums.clone()
        total.rows, total.samples = seen[0].rows, seen[0].samples
        for p in seen[1:]:
            total.merge(p)
        return total


class FoldedMoments:
    """Moments split into `folds` parts by batch (batch i → fold i mod folds), for held-out scores.

    Same `update` / `indices` / `rows` / `samples` interface as `BoundaryMoments`, so
    `calibrate(..., moments=FoldedMoments(indices, 2))` fills it; `total()` is the plain sum.
    """

    def __init__(self, indices: list[int], folds: int = 2, *, product_dtype: torch.dtype | None = torch.float64):
        if folds < 2:
            raise ValueError(f"folds={folds} must be at least 2")
        self.parts = [BoundaryMoments(indices, product_dtype=product_dtype) for _ in range(folds)]
        self._batches, self._step = 0, 1

    @property
    def indices(self) -> list[int]:
        return self.parts[0].indices

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    @property
    def samples(self) -> int:
        return sum(p.samples for p in self.parts)

    def update(self, features: dict[int, torch.Tensor], samples: int) -> None:
        """Add one batch to the next fold in turn."""
        self.parts[self._batches % len(self.parts)].update(features, samples)
        self._batches += self._step

    def stride(self, first: int, step: int) -> None:
        """The batches to come are batches `first, first + step, ...` of a longer stream (one rank's
        share): fold them by their place in that stream."""
        self._batches, self._step = first, step

    def total(self) -> BoundaryMoments:
        """All folds together."""
        return BoundaryMoments.sum_of(self.parts)

