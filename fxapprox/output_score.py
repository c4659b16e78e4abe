"""Traced graph + boundary moments + input batches → the `output` score of candidate spans.

Each span `(s, e)` is replaced by its map fitted from the moments (`fitted_maps`); per batch,
`SuffixRunner` runs the model once and then, per span, only the part after `H_e`. What is
compared depends on the model's real output (`target`):

* `"features"` (a backbone: the output has final hidden states): the score is
  `||F_span - F||_F / ||F||_F` of the pooled final features `F`, both squared norms summed over
  the batches (the relative error on all samples together); for a model with a head, the pooled
  last block output `H_{L-1}`.
* `"logits"` (a model with a head: the output has `logits`, e.g. `*ForImageClassification`,
  `*ForSequenceClassification`): the score is the mean KL divergence `KL(p || p_span)` of the
  predicted distributions (nats per sample, or per unpadded token for per-token logits), and
  the top-1 agreement of the predictions is reported beside it.

`"auto"` takes `logits` when the output has them, else `features`. Cost: one full pass per batch
plus one suffix (the blocks after `e` and the head) per span per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from fxapprox import distributed
from fxapprox.calibrate import token_rows
from fxapprox.errors import UnsupportedOutputError
from fxapprox.features import last_hidden_state, pool_features
from fxapprox.fit import DEFAULT_RIDGE, fit_affine
from fxapprox.inputs import ModelInputs, token_mask
from fxapprox.prepare import Traced, model_device
from fxapprox.stats import BoundaryMoments
from fxapprox.suffix import PrefixCache, SuffixRunner

__all__ = ["OUTPUT_TARGETS", "OutputDamage", "output_damage", "output_scores", "output_target", "check_output_target",
           "final_logits",
           "fitted_maps", "batch_features", "relative_error"]

Span = tuple[int, int]
OUTPUT_TARGETS = ("auto", "logits", "features")


@dataclass
class OutputDamage:
    """Per span: `scores` (KL for `target="logits"`, relative feature error for `"features"`) and,
    for logits, the top-1 `agreement` with the original predictions."""

    target: str
    scores: dict[Span, float]
    agreement: dict[Span, float] | None = None


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


def final_logits(output: Any) -> torch.Tensor | None:
    """The `logits` tensor of a model's output (ModelOutput or mapping), or None."""
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    return logits if isinstance(logits, torch.Tensor) else None


def _has_hidden_state(output: Any) -> bool:
    try:
        last_hidden_state(output)
    except TypeError:
        return False
    return True


def check_output_target(target: str) -> str:
    """`target` if it is one of `OUTPUT_TARGETS`, else `ValueError` naming them."""
    if target not in OUTPUT_TARGETS:
        raise ValueError(f"output target {target!r} is not one of {OUTPUT_TARGETS}")
    return target


def output_target(output: Any, target: str = "auto") -> str:
    """`"logits"` or `"features"`: what the `output` score compares on a model returning `output`."""
    logits = final_logits(output)
    if check_output_target(target) == "auto":
        target = "logits" if logits is not None else "features"
    if target == "logits" and logits is None:
        raise UnsupportedOutputError(
            f"the model returns a {type(output).__name__} without logits: the 'output' score can compare "
            "logits only for a model with a head; use output_target='features' (or 'auto')")
    if target == "features" and logits is None and not _has_hidden_state(output):
        raise UnsupportedOutputError(
            f"the model returns a {type(output).__name__} with neither final hidden states nor logits: the "
            "'output' score needs a tensor, a tuple whose first item is it, an output with "
            "last_hidden_state, or one with logits")
    return target


def _batch_outputs(runner: SuffixRunner, maps: Mapping[Span, Any], cache: PrefixCache,
                   read: Callable[[Any], torch.Tensor], until: int | None = None
                   ) -> tuple[torch.Tensor, dict[Span, torch.Tensor]]:
    """`read` of the original output and of each span's (or `H_until` with `until`) → CPU tensors."""
    original = read(cache.output if until is None else cache.boundaries[until]).cpu()
    replaced = {}
    for (s, e), fitted in maps.items():
        h = cache.boundaries[s]
        if fitted is not None:
            w, b = fitted
            h = h @ w.to(h.dtype) + b.to(h.dtype)
        out = h if until == e else runner.run_from(e, h, cache, until=until)
        replaced[(s, e)] = read(out).cpu()
    return original, replaced


def batch_features(runner: SuffixRunner, maps: Mapping[Span, Any], inputs: ModelInputs,
                   pooling: str = "auto") -> tuple[torch.Tensor, dict[Span, torch.Tensor]]:
    """One batch → pooled final features of the original and of every span's replacement (CPU)."""
    mask = token_mask(inputs)
    return _batch_outputs(runner, maps, runner.prefix(inputs),
                          lambda out: pool_features(last_hidden_state(out), mask, pooling).float())


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """`||other - reference||_F / ||reference||_F`."""
    return float((other.double() - reference.double()).norm() / reference.double().norm())


def _reader(target: str, head: bool, mask: torch.Tensor | None,
            last: int) -> tuple[Callable[[Any], torch.Tensor], int | None]:
    """What to read of an output (float64 rows) and where (`until`: a boundary instead of the output)."""
    if target == "logits":
        return lambda out: token_rows(final_logits(out), mask).double(), None
    if head:  # a model with a head: the pooled last block output
        return lambda h: pool_features(h, mask).double(), last
    return lambda out: pool_features(last_hidden_state(out), mask).float().double(), None


@distributed.lockstep()
def output_damage(traced: Traced, moments: BoundaryMoments, batches: Iterable[ModelInputs], spans: list[Span], *,
                  transform: str = "linear", ridge: float = DEFAULT_RIDGE, target: str = "auto",
                  progress: bool = False) -> OutputDamage:
    """Each span replaced by its `transform` fitted on `moments` (all-token rows, as `compress`
    fits) → its damage to the model's real output on `batches` (see the module docstring). Under a
    process group each rank scores its share of the spans on every batch; the results are gathered."""
    check_output_target(target)
    device = model_device(traced.module)
    maps, _ = fitted_maps(moments, distributed.share(spans), transform=transform, ridge=ridge, device=device)
    runner = SuffixRunner(traced.module, traced.boundaries)
    last, resolved, head = traced.boundaries.num_blocks - 1, None, False
    squared, disagree = dict.fromkeys(maps, 0.0), dict.fromkeys(maps, 0)
    total, rows = 0.0, 0
    for inputs in tqdm(batches, desc=f"output score × {len(spans)} spans", unit="batch", leave=False,
                       disable=not (progress and distributed.is_main())):
        inputs = inputs.to(device)
        mask = token_mask(inputs)
        cache = runner.prefix(inputs)
        if resolved is None:  # on the first batch
            resolved, head = output_target(cache.output, target), final_logits(cache.output) is not None
        read, until = _reader(resolved, head, mask, last)
        original, replaced = _batch_outputs(runner, maps, cache, read, until)
        if resolved == "logits":
            log_p = torch.log_softmax(original, dim=-1)
            rows += original.shape[0]
            for span, logits in replaced.items():
                log_q = torch.log_softmax(logits, dim=-1)
                squared[span] += float((log_p.exp() * (log_p - log_q)).sum())
                disagree[span] += int((logits.argmax(-1) != original.argmax(-1)).sum())
            continue
        total += float(original.square().sum())
        for span, features in replaced.items():
            squared[span] += float((features - original).square().sum())
    squared, disagree = distributed.gather_dict(squared), distributed.gather_dict(disagree)
    if resolved == "logits":
        if rows == 0:
            raise ValueError("no samples to measure the output score on: pass at least one batch")
        return OutputDamage("logits", {sp: v / rows for sp, v in squared.items()},
                            {sp: 1.0 - d / rows for sp, d in disagree.items()})
    if total == 0.0:
        raise ValueError("the final features are all zero on these batches (or there are none): "
                         "the output score's relative error is undefined")
    return OutputDamage("features", {span: math.sqrt(sq / total) for span, sq in squared.items()})


def output_scores(traced: Traced, moments: BoundaryMoments, batches: Iterable[ModelInputs], spans: list[Span], *,
                  transform: str = "linear", ridge: float = DEFAULT_RIDGE, target: str = "auto",
                  progress: bool = False) -> dict[Span, float]:
    """`{span: output score}` of `output_damage` (KL for logits, relative feature error otherwise)."""
    return output_damage(traced, moments, batches, spans, transform=transform, ridge=ridge, target=target,
                         progress=progress).scores
