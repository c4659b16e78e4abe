"""Traced graph + boundary moments + input batches → the `output` score of candidate spans.

Each span `(s, e)` is replaced by its map fitted from the moments (`fitted_maps`); per batch,
`SuffixRunner` runs the model once and then, per span, only the part after `H_e`
(`batch_features`). The score is `||F_span - F||_F / ||F||_F` of the pooled final
features `F`, with both squared norms summed over the batches: the relative error on all samples
together. Cost: one full pass per batch plus one suffix (the blocks after `e` and the head) per
span per batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from tqdm.auto import tqdm

from fxapprox import distributed
from fxapprox.features import last_hidden_state, pool_features
from fxapprox.fit import DEFAULT_RIDGE, fit_affine
from fxapprox.inputs import ModelInputs, token_mask
from fxapprox.prepare import Traced, model_device
from fxapprox.stats import BoundaryMoments
from fxapprox.suffix import SuffixRunner

__all__ = ["output_scores", "fitted_maps", "batch_features", "relative_error"]

Span = tuple[int, int]


def fitted_maps(moments: BoundaryMoments, spans: list[Span], *, transform: str, ridge: float,
                device: torch.device) -> tuple[dict[Span, tuple[torch.Tensor, torch.Tensor] | None], dict[Span, float]]:
    """Each span's map (`(W, b)` on `device`, None for the identity) and its fit residual."""
    maps, residuals = {}, {}
    for s, e in spans:
        if transform == "identity":
            maps[(s, e)] = None
            continue
        fit = fit_affine(moments, s, e, ridge)
        residuals[(s, e)] = fit.residual
        maps[(s, e)] = (fit.weight.to(device), fit.bias.to(device))
    return maps, residuals


def batch_features(runner: SuffixRunner, maps: Mapping[Span, Any], inputs: ModelInputs,
                   pooling: str = "auto") -> tuple[torch.Tensor, dict[Span, torch.Tensor]]:
    """One batch → pooled final features of the original and of every span's replacement (CPU)."""
    mask = token_mask(inputs)
    cache = runner.prefix(inputs)
    original = pool_features(last_hidden_state(cache.output), mask, pooling).float().cpu()
    replaced = {}
    for (s, e), fitted in maps.items():
        h = cache.boundaries[s]
        if fitted is not None:
            w, b = fitted
            h = h @ w.to(h.dtype) + b.to(h.dtype)
        hidden = last_hidden_state(runner.run_from(e, h, cache))
        replaced[(s, e)] = pool_features(hidden, mask, pooling).float().cpu()
    return original, replaced


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """`||other - reference||_F / ||reference||_F`."""
    return float((other.double() - reference.double()).norm() / reference.double().norm())


@distributed.lockstep()
def output_scores(traced: Traced, moments: BoundaryMoments, batches: Iterable[ModelInputs], spans: list[Span], *,
                  transform: str = "linear", ridge: float = DEFAULT_RIDGE, progress: bool = False) -> dict[Span, float]:
    """`{span: relative error of the pooled final features over all samples of batches}`, each span
    replaced by its `transform` fitted on `moments` (all-token rows, as `compress` fits). Under a
    process group each rank scores its share of the spans on every batch; the results are gathered."""
    device = model_device(traced.module)
    maps, _ = fitted_maps(moments, distributed.share(spans), transform=transform, ridge=ridge, device=device)
    runner = SuffixRunner(traced.module, traced.boundaries)
    squared = dict.fromkeys(maps, 0.0)
    total = 0.0
    for inputs in tqdm(batches, desc=f"output score × {len(spans)} spans", unit="batch", leave=False,
                       disable=not (progress and distributed.is_main())):
        original, replaced = batch_features(runner, maps, inputs.to(device))
        original = original.double()
        total += float(original.square().sum())
        for span, features in replaced.items():
            squared[span] += float((features.double() - original).square().sum())
    if total == 0.0:
        raise ValueError("the final features are all zero on these batches (or there are none): "
                         "the output score's relative error is undefined")
    squared = distributed.gather_dict(squared)
    return {span: math.sqrt(squared[span] / total) for span in spans}
