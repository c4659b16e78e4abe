"""Traced graph + boundary moments + input batches → the `output` score of candidate spans.

Each span `(s, e)` is replaced by its map fitted from the moments (`span_features.fitted_maps`);
per batch, `SuffixRunner` runs the model once and then, per span, only the part after `H_e`
(`span_features.batch_features`). The score is `||F_span - F||_F / ||F||_F` of the pooled final
features `F`, with both squared norms summed over the batches: the relative error on all samples
together. Cost: one full pass per batch plus one suffix (the blocks after `e` and the head) per
span per batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from tqdm.auto import tqdm

from fxapprox.fit import DEFAULT_RIDGE
from fxapprox.inputs import ModelInputs
from fxapprox.prepare import Traced, model_device
from fxapprox.span_features import batch_features, fitted_maps
from fxapprox.stats import BoundaryMoments
from fxapprox.suffix import SuffixRunner

__all__ = ["output_scores"]

Span = tuple[int, int]


def output_scores(traced: Traced, moments: BoundaryMoments, batches: Iterable[ModelInputs], spans: list[Span], *,
                  transform: str = "linear", ridge: float = DEFAULT_RIDGE, progress: bool = False) -> dict[Span, float]:
    """`{span: relative error of the pooled final features over all samples of batches}`, each span
    replaced by its `transform` fitted on `moments` (all-token rows, as `compress` fits)."""
    device = model_device(traced.module)
    maps, _ = fitted_maps(moments, spans, transform=transform, ridge=ridge, device=device)
    runner = SuffixRunner(traced.module, traced.boundaries)
    squared = dict.fromkeys(maps, 0.0)
    total = 0.0
    for inputs in tqdm(batches, desc=f"output score × {len(spans)} spans", unit="batch", leave=False,
                       disable=not progress):
        original, replaced = batch_features(runner, maps, inputs.to(device))
        original = original.double()
        total += float(original.square().sum())
        for span, features in replaced.items():
            squared[span] += float((features.double() - original).square().sum())
    if total == 0.0:
        raise ValueError("the final features are all zero on these batches (or there are none): "
                         "the output score's relative error is undefined")
    return {span: math.sqrt(sq / total) for span, sq in squared.items()}
