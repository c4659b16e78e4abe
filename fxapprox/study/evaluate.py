"""Frozen backbone + labelled data → linear-probe accuracy (the papers' protocol) and fidelity.

Features are the [CLS] token of `last_hidden_state` for vision models and the attention-masked
mean of the token states for sentence encoders. One linear classifier is trained on the frozen
train features with Adam (lr 1e-3, batch 256, 5 epochs) for each seed (0, 1, 2) → mean ± std
(and standard error) of test accuracy. Fidelity compares the final features of an original and
a compressed model on the same inputs: linear CKA, mean cosine, and agreement of the original's
probe predictions. Any module called like the original works, a compressed
`torch.fx.GraphModule` included; features are extracted once per model and reused for all seeds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from fxapprox import distributed
from fxapprox.features import last_hidden_state, pool_features
from fxapprox.inputs import as_model_inputs, token_mask
from fxapprox.prepare import model_device

__all__ = [
    "ProbeResult",
    "Fidelity",
    "FeatureSet",
    "extract_features",
    "feature_set",
    "train_probe",
    "train_probes",
    "linear_probe",
    "linear_cka",
    "mean_cosine",
    "fidelity",
    "ModelReport",
    "compare_models",
]

log = logging.getLogger(__name__)

PAPER_SEEDS = (0, 1, 2)


@dataclass
class ProbeResult:
    """Test accuracies of one linear probe per seed, with their mean, std and standard error."""

    accuracies: list[float]
    seeds: list[int]
    num_train: int
    num_test: int

    @property
    def mean(self) -> float:
        return float(sum(self.accuracies) / len(self.accuracies))

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        n = len(self.accuracies)
        if n < 2:
            return 0.0
        return math.sqrt(sum((a - self.mean) ** 2 for a in self.accuracies) / (n - 1))

    @property
    def stderr(self) -> float:
        """Binomial standard error of the mean accuracy on `num_test` test samples."""
        return math.sqrt(max(self.mean * (1 - self.mean), 0.0) / max(self.num_test, 1))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": self.mean, "std": self.std, "stderr": self.stderr}

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f} (s.e. {100 * self.stderr:.2f})"


@dataclass
class Fidelity:
    """Agreement of two models' final features on the same inputs."""

    cka: float
    cosine: float
    min_cosine: float
    agreement: float | None = None  # same probe prediction on both feature sets

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FeatureSet:
    """Frozen features and labels of a train and a test split."""

    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


def _set_training(model: torch.nn.Module, mode: bool) -> bool:
    """`model.train(mode)` where allowed (exported GraphModules refuse it); the previous mode."""
    before = bool(getattr(model, "training", False))
    if before != mode:
        try:
            model.train(mode)
        except NotImplementedError:  # torch.export's module(): dropout is already baked in
            pass
    return before


@torch.no_grad()
def extract_features(model: torch.nn.Module, loader: Iterable[Any], *, pooling: str = "auto",
                     desc: str = "features", progress: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batches of model kwargs (optionally with `labels`) → float32 `(N, d)` features, labels.

    The model is called as `model(**kwargs)` (or positionally for tensor batches) and its final
    hidden states pooled with `pool_features`.
    """
    device = model_device(model)
    was_training = _set_training(model, False)
    feats, labels = [], []
    try:
        for batch in tqdm(loader, desc=desc, unit="batch", leave=False,
                          disable=not (progress and distributed.is_main())):
            if isinstance(batch, Mapping) and "labels" in batch:
                labels.append(torch.as_tensor(batch["labels"]).cpu())
            inputs = as_model_inputs(batch).to(device)
            hidden = last_hidden_state(inputs.call(model))
            feats.append(pool_features(hidden, token_mask(inputs), pooling).float().cpu())
    finally:
        if was_training:
            _set_training(model, True)
    if not feats:
        raise ValueError("the loader yielded no batch; nothing to extract features from")
    return torch.cat(feats), (torch.cat(labels) if labels else None)


def feature_set(model: torch.nn.Module, train_loader: Iterable[Any], test_loader: Iterable[Any],
                *, pooling: str = "auto", progress: bool = True) -> FeatureSet:
    """Train and test loaders (batches with `labels`) → a `FeatureSet`, extracted once."""
    train, train_y = extract_features(model, train_loader, pooling=pooling, desc="train features", progress=progress)
    test, test_y = extract_features(model, test_loader, pooling=pooling, desc="test features", progress=progress)
    if train_y is None or test_y is None:
        raise ValueError("the loaders must yield a 'labels' tensor with each batch "
                         "(fxapprox.study.data.data_loader(..., with_labels=True))")
    return FeatureSet(train, train_y, test, test_y)


def train_probe(train_x: torch.Tensor, train_y: torch.Tensor, *, num_classes: int | None = None,
                seed: int = 0, epochs: int = 5, lr: float = 1e-3, batch_size: int = 256) -> torch.nn.Linear:
    """Frozen features + labels → one `nn.Linear` classifier (Adam, cross-entropy, seeded)."""
    return train_probes([train_x], train_y, num_classes=num_classes, seed=seed, epochs=epochs, lr=lr,
                        batch_size=batch_size)[0]


def train_probes(train_xs: Sequence[torch.Tensor], train_y: torch.Tensor, *, num_classes: int | None = None,
                 seed: int = 0, epochs: int = 5, lr: float = 1e-3, batch_size: int = 256,
                 device: torch.device | str | None = None) -> list[torch.nn.Linear]:
    """P feature sets `(N, d_p)` of the same samples + labels → P `nn.Linear` probes (CPU), trained at once.

    Each probe is the one `train_probe` trains alone with the same seed (same initialisation, same
    mini-batch order; Adam is elementwise, so stacking the weights and summing the losses changes
    nothing but the speed). Feature sets of different widths are zero-padded (zero columns get
    zero gradients). `device`: where to train (e.g. "cuda"); default CPU.
    """
    num_classes = int(num_classes or int(train_y.max()) + 1)
    device = torch.device(device or "cpu")
    gen = torch.Generator().manual_seed(seed)
    width = max(x.shape[1] for x in train_xs)
    inits = []
    for x in train_xs:
        torch.manual_seed(seed)
        inits.append(torch.nn.Linear(x.shape[1], num_classes))
    weight = torch.zeros(len(train_xs), width, num_classes)
    for w, init in zip(weight, inits):
        w[:init.in_features] = init.weight.detach().T
    weight = weight.to(device).requires_grad_()
    bias = torch.stack([init.bias.detach() for init in inits]).unsqueeze(1).to(device).requires_grad_()
    x = torch.stack([torch.nn.functional.pad(t.float(), (0, width - t.shape[1])) for t in train_xs]).to(device)
    y = train_y.long().to(device)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    threads = torch.get_num_threads()
    # one probe's steps are tiny: one thread is fastest, and far faster on a busy machine (no spin-waits)
    if len(train_xs) == 1:
        torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            order = torch.randperm(x.shape[1], generator=gen).to(device)
            for start in range(0, x.shape[1], batch_size):
                idx = order[start:start + batch_size]
                logits = torch.baddbmm(bias, x[:, idx], weight)  # (P, B, C)
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[idx].repeat(len(train_xs)),
                                                         reduction="sum") / len(idx)
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    probes = []
    for w, b, init in zip(weight.detach().cpu(), bias.detach().cpu(), inits):
        with torch.no_grad():
            init.weight.copy_(w[:init.in_features].T)
            init.bias.copy_(b[0])
        probes.append(init.eval())
    return probes


def linear_probe(features: FeatureSet, *, seeds: Sequence[int] = PAPER_SEEDS, epochs: int = 5,
                 lr: float = 1e-3, batch_size: int = 256, progress: bool = True) -> ProbeResult:
    """Features → test accuracy of a linear probe per seed (the papers' protocol by default)."""
    num_classes = int(max(features.train_labels.max(), features.test_labels.max())) + 1
    accs = []
    for seed in tqdm(list(seeds), desc="linear probe", unit="seed", leave=False, disable=not progress):
        probe = train_probe(features.train, features.train_labels, num_classes=num_classes,
                            seed=seed, epochs=epochs, lr=lr, batch_size=batch_size)
        with torch.no_grad():
            pred = probe(features.test.float().cpu()).argmax(dim=1)
        accs.append(float((pred == features.test_labels.cpu()).float().mean()))
    return ProbeResult(accs, [int(s) for s in seeds], len(features.train), len(features.test))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two `(N, d1)`, `(N, d2)` feature matrices (1 = same up to rotation/scale)."""
    x = x.double() - x.double().mean(dim=0)
    y = y.double() - y.double().mean(dim=0)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    denom = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / denom) if denom > 0 else float("nan")


def mean_cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over rows of cos(x_i, y_i)."""
    return float(torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=1).mean())


def fidelity(reference: torch.Tensor, other: torch.Tensor, *,
             probe: torch.nn.Module | None = None) -> Fidelity:
    """Original vs compressed features of the same samples → CKA, cosine, probe agreement."""
    if reference.shape[0] != other.shape[0]:
        raise ValueError(f"feature sets differ in sample count ({reference.shape[0]} vs {other.shape[0]})")
    cos = torch.nn.functional.cosine_similarity(reference.double(), other.double(), dim=1)
    agreement = None
    if probe is not None:
        with torch.no_grad():
            same = probe(reference.float()).argmax(1) == probe(other.float()).argmax(1)
            agreement = float(same.float().mean())
    return Fidelity(linear_cka(reference, other), float(cos.mean()), float(cos.min()), agreement)


@dataclass
class ModelReport:
    """One model's probe accuracy and, for all but the reference, its fidelity to the reference."""

    name: str
    probe: ProbeResult
    fidelity: Fidelity | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "probe": self.probe.to_dict(),
                "fidelity": self.fidelity.to_dict() if self.fidelity else None}


def compare_models(models: Mapping[str, torch.nn.Module], train_loader: Iterable[Any],
                   test_loader: Iterable[Any], *, reference: str | None = None,
                   seeds: Sequence[int] = PAPER_SEEDS, epochs: int = 5, lr: float = 1e-3,
                   batch_size: int = 256, pooling: str = "auto", progress: bool = True) -> list[ModelReport]:
    """Named models (the first, or `reference`, is the original) → probe accuracy and fidelity each.

    Features are extracted once per model; fidelity is measured on the test features, with
    agreement judged by the reference's seed-0 probe.
    """
    if not models:
        raise ValueError("no model to evaluate")
    reference = reference or next(iter(models))
    feats = {}
    for name, model in models.items():
        log.info("extracting features of %s", name)
        feats[name] = feature_set(model, train_loader, test_loader, pooling=pooling, progress=progress)
    ref = feats[reference]
    ref_probe = train_probe(ref.train, ref.train_labels, seed=seeds[0] if seeds else 0, epochs=epochs,
                            lr=lr, batch_size=batch_size,
                            num_classes=int(max(ref.train_labels.max(), ref.test_labels.max())) + 1)
    reports = []
    for name, fs in feats.items():
        probe = linear_probe(fs, seeds=seeds, epochs=epochs, lr=lr, batch_size=batch_size, progress=progress)
        fid = None if name == reference else fidelity(ref.test, fs.test, probe=ref_probe)
        reports.append(ModelReport(name, probe, fid))
    return reports
