"""Model + calibration + many candidate spans → final features of the original and of each
single-span replacement, from one pass over the data.

Each span's map is fitted from one calibration pass (all needed boundaries watched). Then, per
data batch, `SuffixRunner` runs the model once and, for every span (s, e), only the part after
`H_e` with `T(H_s)` in its place: the features the compressed model would produce, at the cost
of one suffix per span instead of a full model per span. Features are pooled like
`fxapprox.features` does ([CLS] for vision, masked mean with an attention mask).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from fxapprox.calibrate import calibrate
from fxapprox.fit import DEFAULT_RIDGE
from fxapprox.inputs import as_model_inputs
from fxapprox.output_score import batch_features, fitted_maps, relative_error
from fxapprox.prepare import prepare
from fxapprox.spans import validate_spans
from fxapprox.suffix import SuffixRunner

__all__ = ["SpanFeatures", "span_features", "output_errors"]

Span = tuple[int, int]


@dataclass
class SpanFeatures:
    """`original[split]` and `replaced[(s, e)][split]`: `(N, d)` float32 features; `labels[split]`."""

    original: dict[str, torch.Tensor] = field(default_factory=dict)
    replaced: dict[Span, dict[str, torch.Tensor]] = field(default_factory=dict)
    labels: dict[str, torch.Tensor | None] = field(default_factory=dict)
    residuals: dict[Span, float] = field(default_factory=dict)


def span_features(model: torch.nn.Module, calib_loader: Iterable[Any], spans: list[Span],
                  loaders: Mapping[str, Iterable[Any]], *, transform: str = "linear", num_samples: int = 500,
                  ridge: float = DEFAULT_RIDGE, pooling: str = "auto", blocks: str | None = None,
                  progress: bool = True, units: str = "block") -> SpanFeatures:
    """Features of the original model and of each single-span replacement on every loader (spans in
    `units`: blocks, or half blocks as in `compress(units="half")`)."""
    prepared = prepare(model, calib_loader, blocks, units)
    traced, device = prepared.traced, prepared.device
    for span in spans:
        validate_spans([span], traced.num_units, units)
    boundaries = traced.boundaries
    moments = calibrate(traced.module, boundaries, sorted({k for sp in spans for k in sp}), prepared.batches,
                        num_samples, device=device, progress=progress)
    maps, residuals = fitted_maps(moments, spans, transform=transform, ridge=ridge, device=device)
    out = SpanFeatures(residuals=residuals)
    runner = SuffixRunner(traced.module, boundaries)
    for split, loader in loaders.items():
        feats: dict[Any, list[torch.Tensor]] = {"original": [], **{sp: [] for sp in spans}}
        labels = []
        for batch in tqdm(loader, desc=f"{split} features × {len(spans) + 1}", unit="batch", leave=False,
                          disable=not progress):
            if isinstance(batch, Mapping) and "labels" in batch:
                labels.append(torch.as_tensor(batch["labels"]).cpu())
            original, replaced = batch_features(runner, maps, as_model_inputs(batch).to(device), pooling)
            feats["original"].append(original)
            for sp, f in replaced.items():
                feats[sp].append(f)
        out.original[split] = torch.cat(feats["original"])
        for sp in spans:
            out.replaced.setdefault(sp, {})[split] = torch.cat(feats[sp])
        out.labels[split] = torch.cat(labels) if labels else None
    return out


def output_errors(feats: SpanFeatures, split: str) -> dict[Span, float]:
    """The `output` score: `||F_span - F||_F / ||F||_F` of the final pooled features on `split`."""
    return {sp: relative_error(feats.original[split], f[split]) for sp, f in feats.replaced.items()}
