"""Original and replaced-span features → measured damage per span, with low-noise measures.

For each span: linear-probe accuracy over seeds (mean ± standard error, the papers' protocol),
and three measures far less noisy than an accuracy difference: agreement of the probe
predictions with the original model's (same seed, same training data; per test sample, so it
can be bootstrapped), agreement of the original's probe applied to the replaced features (no
retraining), and CKA / mean cosine of the final test features.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from fxapprox.study.evaluate import PAPER_SEEDS, ProbeResult, linear_cka, mean_cosine, train_probes
from fxapprox.study.span_features import SpanFeatures

__all__ = ["Damage", "measure_damage", "probe_predictions", "probe_accuracy"]

log = logging.getLogger(__name__)

Span = tuple[int, int]


@dataclass
class Damage:
    """Measured effect of replacing one span (or the original model when `span` is None)."""

    span: Span | None
    probe: ProbeResult
    agreement: float = 1.0
    frozen_agreement: float = 1.0
    cka: float = 1.0
    cosine: float = 1.0
    disagreement: torch.Tensor | None = field(default=None, repr=False)  # (N,) per test sample, mean over seeds
    errors: torch.Tensor | None = field(default=None, repr=False)  # (N,) per test sample, mean over seeds

    def to_dict(self) -> dict[str, Any]:
        return {"span": list(self.span) if self.span else None, "probe": self.probe.to_dict(),
                "agreement": self.agreement, "frozen_agreement": self.frozen_agreement,
                "cka": self.cka, "cosine": self.cosine}


def probe_predictions(feature_sets: Sequence[tuple[torch.Tensor, torch.Tensor]], train_y: torch.Tensor, seeds,
                      num_classes: int, device=None, **kw) -> tuple[torch.Tensor, list[torch.nn.Linear]]:
    """P `(train, test)` feature sets → `(P, seeds, N_test)` predictions of one probe per set and seed
    (all sets of one seed trained at once, see `train_probes`), and the first seed's P probes."""
    preds, first = [], []
    for seed in seeds:
        probes = train_probes([tr for tr, _ in feature_sets], train_y, num_classes=num_classes, seed=seed,
                              device=device, **kw)
        first = first or probes
        with torch.no_grad():
            preds.append(torch.stack([p(te.float()).argmax(dim=1) for p, (_, te) in zip(probes, feature_sets)]))
    return torch.stack(preds, dim=1), first


def probe_accuracy(preds: torch.Tensor, labels: torch.Tensor, seeds, n_train: int) -> ProbeResult:
    """`(seeds, N)` predictions → accuracy per seed."""
    accs = (preds == labels.unsqueeze(0)).float().mean(dim=1).tolist()
    return ProbeResult(accs, [int(s) for s in seeds], n_train, int(labels.numel()))


def measure_damage(feats: SpanFeatures, *, seeds: Sequence[int] = PAPER_SEEDS, train: str = "train",
                   test: str = "test", epochs: int = 5, lr: float = 1e-3, batch_size: int = 256,
                   device=None, progress: bool = True) -> tuple[Damage, dict[Span, Damage]]:
    """Probe every feature set with the same seeds → (original, {span: damage})."""
    ytr, yte = feats.labels[train], feats.labels[test]
    if ytr is None or yte is None:
        raise ValueError("measuring damage needs labelled train and test loaders (with_labels=True)")
    num_classes = int(max(ytr.max(), yte.max())) + 1
    kw = dict(epochs=epochs, lr=lr, batch_size=batch_size)
    ref_train, ref_test = feats.original[train], feats.original[test]
    spans = list(feats.replaced)
    sets = [(ref_train, ref_test)] + [(feats.replaced[sp][train], feats.replaced[sp][test]) for sp in spans]
    log.info("probing %d feature sets × %d seeds", len(sets), len(seeds))
    preds, first_probes = probe_predictions(sets, ytr, seeds, num_classes, device=device, **kw)
    ref_preds, ref_probe = preds[0], first_probes[0]
    original = Damage(None, probe_accuracy(ref_preds, yte, seeds, len(ytr)),
                      errors=(ref_preds != yte).float().mean(dim=0))
    out = {}
    for span, p in zip(tqdm(spans, desc="span damage", unit="span", leave=False, disable=not progress), preds[1:]):
        f = feats.replaced[span]
        disagree = (p != ref_preds).float().mean(dim=0)
        with torch.no_grad():
            frozen = (ref_probe(f[test].float()).argmax(1) == ref_preds[0]).float().mean()
        out[span] = Damage(span, probe_accuracy(p, yte, seeds, len(ytr)), float(1 - disagree.mean()), float(frozen),
                           linear_cka(ref_test, f[test]), mean_cosine(ref_test, f[test]), disagree,
                           (p != yte).float().mean(dim=0))
    return original, out
