"""Model + calibration batches → `Analysis`: every span `(s, e)` scored by every metric in one pass.

`analyze()` runs the eager model with hooks on its blocks (no graph capture: scoring needs no
rewrite; with `units="half"` it captures the graph, whose middle boundaries `M_k` hooks cannot
see, and runs that), watches every boundary `H_-1 .. H_{L-1}`, streams the batches into `BoundaryMoments`
(no activation is kept; the pass stops after the last block) and turns them into one score matrix per metric
(see `fxapprox.metrics`). With `output_samples=N` it also traces the model and scores each span
by the error of the final features on the next N samples (`fxapprox.output_score`). The
`Analysis` ranks spans (TOAST Algorithm 1, `top_k`), chooses
budgeted span sets by dynamic programming (`select`), and renders itself as JSON, a markdown
table or heatmaps like the papers' Figure 2.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fxapprox import distributed
from fxapprox.atomic import atomic_write_text, save_figure
from fxapprox.blocks import BlockStack, find_block_stack
from fxapprox.boundaries import UNITS
from fxapprox.calibrate import Tokens, calibrate, calibrate_eager, iter_batches, split_samples
from fxapprox.costs import MlpSize, replacement_flops, replacement_params, tokens_of, unit_costs
from fxapprox.errors import MissingScoreError, SpanError
from fxapprox.fit import DEFAULT_RIDGE
from fxapprox.inputs import ModelInputs
from fxapprox.metrics import METRIC_INFO, METRICS, check_metric, cost, heldout_matrix, score_matrix
from fxapprox.output_score import check_output_target, output_damage
from fxapprox.prepare import Traced, model_device, trace
from fxapprox.select import best_spans, best_spans_for_saving, candidate_costs, span_savings
from fxapprox.spans import all_spans
from fxapprox.stats import BoundaryMoments, FoldedMoments

__all__ = ["Analysis", "analyze", "UnderdeterminedScoreWarning"]

log = logging.getLogger(__name__)

Span = tuple[int, int]
_TOKENS = ("cls", "mean", "all")


class UnderdeterminedScoreWarning(UserWarning):
    """Fewer calibration rows than boundary width: the least-squares fit interpolates."""


@dataclass
class Analysis:
    """Scores of every span `(s, e)` under every metric; `scores[m][s + 1, e + 1]`, NaN where undefined.

    Spans count `units`: blocks, or with `units="half"` half blocks (`num_blocks` is then the number
    of units, 2L: unit 2k is block k's attention branch, 2k+1 its MLP). `block_params[u]` /
    `block_flops[u]` (per sample) are unit u's cost; `tokens_per_sample[k + 1]` the tokens per
    sample at boundary k (FLOPs of a replacing Linear); `output_samples` the held-out samples of
    the `output` score (0: not computed), `output_target` what it compared (`"logits"`: KL
    divergence of the head's predictions, `"features"`: relative error of the pooled final
    features) and, for logits, `output_agreement[s + 1, e + 1]` the top-1 agreement with the
    original predictions.
    """

    model: str
    num_blocks: int
    tokens: str
    samples: int
    rows: int
    widths: list[int]
    ridge: float
    scores: dict[str, np.ndarray]
    block_params: list[int] = field(default_factory=list)
    total_params: int = 0
    block_flops: list[float] | None = None
    total_flops: float | None = None
    tokens_per_sample: list[int] | None = None
    capture_path: str = ""
    output_samples: int = 0
    notes: list[str] = field(default_factory=list)
    output_target: str = ""
    output_agreement: np.ndarray | None = None
    units: str = "block"

    # --- reading scores -------------------------------------------------------------------

    def _check(self, metric: str) -> np.ndarray:
        check_metric(metric)
        if metric not in self.scores:
            raise MissingScoreError(f"this analysis has no {metric!r} scores (analyze(..., holdout_folds=2) adds "
                             "'heldout', analyze(..., output_samples=128) adds 'output')")
        return self.scores[metric]

    def matrix(self, metric: str = "linear") -> np.ndarray:
        """`(L+1, L+1)` score matrix of `metric`, indexed `[s + 1, e + 1]` (NaN where undefined)."""
        return self._check(metric).copy()

    def score(self, s: int, e: int, metric: str = "linear") -> float:
        """Score of span `(s, e)` (blocks s+1..e) under `metric`."""
        scores = self._check(metric)
        if not -1 <= s < e <= self.num_blocks - 1:
            raise SpanError(f"span ({s}, {e}) is out of range: need -1 <= s < e <= {self.num_blocks - 1}")
        value = float(scores[s + 1, e + 1])
        if math.isnan(value):
            info = METRIC_INFO[metric]
            why = ("single blocks (e = s + 1) only" if info.consecutive_only else
                   "boundaries of equal width only" if info.equal_widths else "spans up to analyze's output_max_len")
            raise SpanError(f"metric {metric!r} is not defined for span ({s}, {e}): it scores {why}")
        return value

    def spans(self, metric: str = "linear") -> list[Span]:
        """Every span `metric` defines, in Algorithm 1's enumeration order (s, then e)."""
        m = self._check(metric)
        return [(s, e) for s in range(-1, self.num_blocks - 1) for e in range(s + 1, self.num_blocks)
                if not math.isnan(m[s + 1, e + 1])]

    def top_k(self, k: int, *, span_len: int | None = None, metric: str = "linear") -> list[tuple[int, int, float]]:
        """TOAST Algorithm 1: spans (optionally only those of `span_len` blocks), most redundant first.

        Sorted by ascending error (for the similarities `br` and `cka`, descending score); ties keep
        the enumeration order.
        """
        self._check(metric)
        candidates = [(s, e, self.score(s, e, metric)) for s, e in self.spans(metric)
                      if span_len is None or e - s == span_len]
        candidates.sort(key=lambda c: cost(metric, c[2]))
        return candidates[:k]

    # --- budgeted selection ---------------------------------------------------------------

    def _replacement_params(self, transform: str, mlp: MlpSize | None = None):
        return replacement_params(self.widths, transform, self.block_flops or (), self.tokens_per_sample or (), mlp)

    def _replacement_flops(self, transform: str, mlp: MlpSize | None = None):
        return replacement_flops(self.widths, self.tokens_per_sample, transform, self.block_flops or (), mlp)

    def savings(self, s: int, e: int, transform: str = "linear", mlp: MlpSize | None = None
                ) -> tuple[float, float | None]:
        """Parameters and FLOPs per sample (None without FLOP counts) that replacing span `(s, e)`
        by `transform` removes, net of the replacement (`"mlp"`: the Linear and its MLP, sized by `mlp`)."""
        params = span_savings(self.block_params, self._replacement_params(transform, mlp), [(s, e)])[(s, e)]
        if self.block_flops is None or self.tokens_per_sample is None:
            return params, None
        return params, span_savings(self.block_flops, self._replacement_flops(transform, mlp), [(s, e)])[(s, e)]

    def select(self, num_blocks: int | None = None, *, param_budget: float | None = None,
               flops_budget: float | None = None, metric: str | None = None, transform: str = "linear",
               max_span_len: int | None = None, mlp: MlpSize | None = None) -> list[Span]:
        """Non-overlapping spans at least total `metric` cost (dynamic programming) that remove
        exactly `num_blocks` blocks, or save at least the fraction `param_budget` of the model's
        parameters / `flops_budget` of its FLOPs (net of the replacements: Linear layers, or with
        `transform="mlp"` Linear layers and MLPs sized by `mlp`).

        `metric=None` (the default) is `"output"`, the score that best predicts which spans keep the
        model's predictions; an analysis without it (made without `output_samples=`) raises
        `MissingScoreError` rather than choosing by a weaker score silently: pass
        `analyze(..., output_samples=128)`, or name another metric (e.g. `"cosine"`).
        """
        if metric is None:
            if "output" not in self.scores:
                raise MissingScoreError(
                    "select() chooses by the 'output' score by default, and this analysis has none: pass "
                    "analyze(..., output_samples=128) to add it, or select(..., metric=...) with one of "
                    f"{tuple(self.scores)}")
            metric = "output"
        if sum(x is not None for x in (num_blocks, param_budget, flops_budget)) != 1:
            raise SpanError("pass exactly one of num_blocks=, param_budget= or flops_budget=")
        scores = self._check(metric)
        costs = candidate_costs(lambda s, e: float(scores[s + 1, e + 1]), self.num_blocks, metric=metric,
                                transform="linear" if transform == "mlp" else transform, widths=self.widths,
                                max_span_len=max_span_len)
        if num_blocks is not None:
            return best_spans(costs, self.num_blocks, num_blocks)
        if param_budget is not None:
            values, total, budget = self.block_params, self.total_params, param_budget
            repl = self._replacement_params(transform, mlp)
        else:
            if self.block_flops is None or self.total_flops is None or self.tokens_per_sample is None:
                raise SpanError("this analysis has no FLOP counts (analyze(..., flops=True) records them)")
            values, total, budget = self.block_flops, self.total_flops, flops_budget
            repl = self._replacement_flops(transform, mlp)
        if not 0 < budget <= 1:
            raise SpanError(f"budget {budget} must be a fraction in (0, 1]")
        savings = span_savings(values, repl, list(costs))
        return best_spans_for_saving(costs, savings, self.num_blocks, budget * total)

    # --- rendering --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (NaN → None)."""
        def clean(m: np.ndarray) -> list[list[float | None]]:
            return [[None if math.isnan(v) else float(v) for v in row] for row in m]

        return {
            "model": self.model, "num_blocks": self.num_blocks, "tokens": self.tokens, "samples": self.samples,
            "rows": self.rows, "widths": self.widths, "ridge": self.ridge, "capture_path": self.capture_path,
            "block_params": self.block_params, "total_params": self.total_params,
            "block_flops": self.block_flops, "total_flops": self.total_flops,
            "tokens_per_sample": self.tokens_per_sample, "output_samples": self.output_samples, "notes": self.notes,
            "output_target": self.output_target,
            "output_agreement": None if self.output_agreement is None else clean(self.output_agreement),
            "units": self.units,
            "index": f"scores[metric][s + 1][e + 1] scores span (s, e): {self.units}s s+1..e replaced",
            "scores": {m: clean(v) for m, v in self.scores.items()},
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text of `to_dict()`; also written to `path` when given (under a process group: by rank 0)."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None and distributed.is_main():
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_json(cls, source: str | Path | dict[str, Any]) -> Analysis:
        """`to_json()` text, a path to it, or its dict → `Analysis`."""
        if isinstance(source, dict):
            data = source
        elif isinstance(source, Path) or not str(source).lstrip().startswith("{"):
            data = json.loads(Path(source).read_text())
        else:
            data = json.loads(source)
        scores = {m: np.array([[math.nan if v is None else v for v in row] for row in rows], dtype=np.float64)
                  for m, rows in data["scores"].items()}
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "scores"}
        if fields.get("output_agreement") is not None:
            fields["output_agreement"] = np.array([[math.nan if v is None else v for v in row]
                                                   for row in fields["output_agreement"]], dtype=np.float64)
        return cls(scores=scores, **fields)

    def to_markdown(self, metric: str = "linear", top: int | None = None) -> str:
        """A markdown table of the spans (most redundant under `metric` first) with every metric."""
        self._check(metric)
        output = f", output on {self.output_samples} held-out samples" if self.output_samples else ""
        lines = [f"## Span analysis: {self.model}", "",
                 f"{self.num_blocks} blocks, {self.samples} samples, tokens={self.tokens} ({self.rows} rows), "
                 f"ridge={self.ridge:g}{output}; span s → e replaces blocks s+1..e; sorted by {metric} "
                 f"({'higher' if METRIC_INFO[metric].higher_is_redundant else 'lower'} = more redundant).", ""]
        lines += [f"> **note:** {n}" for n in self.notes]
        if self.notes:
            lines.append("")
        cols = list(self.scores)
        lines.append("| rank | span | blocks | " + " | ".join(cols) + " |")
        lines.append("|---:|:---|---:|" + "---:|" * len(cols))
        ranked = self.top_k(top if top is not None else 10**9, metric=metric)
        for rank, (s, e, _) in enumerate(ranked, 1):
            vals = [self.scores[m][s + 1, e + 1] for m in cols]
            cells = ["–" if math.isnan(v) else f"{v + 0.0:.4g}" for v in vals]
            lines.append(f"| {rank} | {s} → {e} | {e - s} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path, metric: str | Sequence[str] | None = None, *,
             mark: Sequence[Span] = ()) -> Path:
        """Heatmap(s) of the score matrices (rows: source s, columns: target e) → PNG at `path`.

        `metric=None` draws every metric, one panel each; the spans in `mark` (e.g. the chosen
        ones) are outlined in red (under a process group: rank 0 draws).
        """
        if not distributed.is_main():
            return Path(path)
        try:
            import matplotlib
        except ImportError:
            raise ImportError("Analysis.plot needs matplotlib: pip install 'fxapprox[plots]'") from None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        metrics = list(self.scores) if metric is None else [metric] if isinstance(metric, str) else list(metric)
        for m in metrics:
            self._check(m)
        ncols = min(3, len(metrics))
        nrows = math.ceil(len(metrics) / ncols)
        cell = 0.6 * (self.num_blocks + 1) + 2.2
        fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows), squeeze=False)
        for ax, m in zip(axes.flat, metrics):
            self._heatmap(ax, fig, m, short=len(metrics) > 1, mark=mark)
        for ax in list(axes.flat)[len(metrics):]:
            ax.axis("off")
        if len(metrics) > 1:
            fig.suptitle(f"{self.model}: span scores ({self.tokens} tokens, {self.samples} samples)")
        fig.tight_layout()
        path = save_figure(fig, path, dpi=120)
        plt.close(fig)
        return path

    def _label(self, k: int) -> str:
        """Boundary k as a tick label: the block index, or in half units `3a` (M_3) / `3m` (H_3)."""
        if self.units != "half" or k < 0:
            return str(k)
        return f"{k // 2}{'am'[k % 2]}"

    def _heatmap(self, ax, fig, metric: str, short: bool = False, mark: Sequence[Span] = ()) -> None:
        info = METRIC_INFO[metric]
        mat = self.scores[metric][:-1, 1:]  # rows s = -1..L-2, columns e = 0..L-1
        masked = np.ma.masked_invalid(mat)
        cmap = "viridis" if info.higher_is_redundant else "viridis_r"
        im = ax.imshow(masked, cmap=cmap, interpolation="nearest")
        n = self.num_blocks
        ax.set_xticks(range(n), [self._label(e) for e in range(n)])
        ax.set_yticks(range(n), [self._label(s) for s in range(-1, n - 1)])
        unit = "boundary: ka = block k after attention, km = block k output" if self.units == "half" else "block output"
        ax.set_xlabel(f"e (target {unit})")
        ax.set_ylabel(f"s (source {'boundary' if self.units == 'half' else 'block output'}, -1 = embeddings)")
        held = f", {self.output_samples} held out" if metric == "output" and self.output_samples else ""
        ax.set_title(metric if short else f"{self.model}\n{metric}, {self.tokens} tokens, {self.samples} samples{held}",
                     fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=info.description)
        if n <= 16:
            finite = mat[np.isfinite(mat)]
            mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
            for i in range(n):
                for j in range(n):
                    if np.isfinite(mat[i, j]):
                        dark = (mat[i, j] > mid) != info.higher_is_redundant
                        ax.text(j, i, f"{mat[i, j] + 0.0:.2g}", ha="center", va="center", fontsize=7.5,
                                color="white" if dark else "black")
        if mark:
            from matplotlib.patches import Rectangle

            for k, (s, e) in enumerate(mark):  # row s + 1, column e
                ax.add_patch(Rectangle((e - 0.5, s + 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5,
                                       label="chosen" if k == 0 else None))
            ax.legend(loc="lower left", fontsize=8, framealpha=0.8)


# --- analyze() ----------------------------------------------------------------------------------

def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") if config is not None else ""
    return str(name) or type(model).__name__


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _count_flops(model: nn.Module, stack: BlockStack, sample: ModelInputs) -> tuple[list[float], float, list[int]]:
    """Per-sample FLOPs of each block and of the model, and tokens at each boundary, on one sample."""
    from torch.utils.flop_counter import FlopCounterMode

    tokens: dict[int, int] = {}
    hooks = []
    for i in range(stack.num_blocks):
        block = model.get_submodule(stack.block_path(i))

        def hook(mod, args, kwargs, out, i=i):
            h = _first_tensor(out)
            if h is not None:
                tokens[i] = tokens_of(h)
            if i == 0:
                x = _first_tensor(args) if args else _first_tensor(next(iter(kwargs.values()), None))
                if x is not None:
                    tokens[-1] = tokens_of(x)

        hooks.append(block.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            sample.call(model)
    finally:
        for h in hooks:
            h.remove()
    counts = counter.get_flop_counts()
    prefix = type(model).__name__
    per_block = [float(sum(counts.get(f"{prefix}.{stack.block_path(i)}", {}).values()))
                 for i in range(stack.num_blocks)]
    if not any(per_block):
        raise LookupError(f"no FLOPs were attributed to the blocks of {stack.path!r}")
    per_tokens = [tokens.get(k, tokens.get(0, 1)) for k in range(-1, stack.num_blocks)]
    return per_block, float(counter.get_total_flops()), per_tokens


def _output_matrix(model: nn.Module, stack: BlockStack, first: ModelInputs, moments: BoundaryMoments,
                   calib: Iterable[ModelInputs], rest: Iterator[ModelInputs], *, tokens: Tokens, num_samples: int,
                   output_samples: int, max_len: int | None, ridge: float, device: torch.device,
                   target: str, progress: bool, traced: Traced | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None, str, str]:
    """The `output` score matrix (maps fitted on the calibration samples' tokens, damage on the next
    `output_samples` samples of `rest`), the agreement matrix (logits only), what was compared and
    the capture path of the graph it ran."""
    held_out = list(split_samples(rest, output_samples)[0])
    seen = sum(b.batch_size for b in held_out)
    if seen < output_samples:
        raise ValueError(
            f"the calibration loader gave {moments.samples + seen} samples, but num_samples={num_samples} "
            f"plus output_samples={output_samples} needs {num_samples + output_samples} (the output score is "
            f"measured on the samples after the calibration ones): pass a loader with at least "
            f"{num_samples + output_samples} samples, or lower num_samples or output_samples")
    if tokens != "all":  # the maps are fitted on every token, as compress fits them
        moments = _calibrate(model, stack, traced, moments.indices, calib, num_samples, tokens="all", device=device,
                             progress=progress)
    traced = traced or trace(model, first, stack)
    damage = output_damage(traced, moments, held_out, all_spans(traced.num_units, max_len), ridge=ridge,
                           target=target, progress=progress)

    def matrix(values: dict[Span, float]) -> np.ndarray:
        out = np.full((traced.num_units + 1, traced.num_units + 1), np.nan)
        for (s, e), value in values.items():
            out[s + 1, e + 1] = value
        return out

    agreement = None if damage.agreement is None else matrix(damage.agreement)
    return matrix(damage.scores), agreement, damage.target, traced.capture_path


def _calibrate(model: nn.Module, stack: BlockStack, traced: Traced | None, indices: list[int],
               batches: Iterable[ModelInputs], num_samples: int, **kwargs: Any):
    """Calibrate through block hooks, or through the captured graph when `traced` is given."""
    if traced is None:
        return calibrate_eager(model, stack, indices, batches, num_samples, **kwargs)
    return calibrate(traced.module, traced.boundaries, indices, batches, num_samples, **kwargs)


def analyze(model: nn.Module, calib_loader: Iterable[Any], *, num_samples: int = 50, tokens: Tokens = "cls",
            blocks: str | None = None, ridge: float = DEFAULT_RIDGE, flops: bool = False,
            holdout_folds: int = 0, output_samples: int = 0, output_max_len: int | None = None,
            output_target: str = "auto", product_dtype: torch.dtype | str | None = "auto",
            progress: bool = True, units: str = "block") -> Analysis:
    """Score every span `(s, e)` of `model`'s block stack with every metric, from one calibration pass.

    `tokens`: `"cls"` (first token, the papers' choice), `"mean"` (mean of unmasked tokens) or
    `"all"` (every unmasked token). `flops=True` also counts per-block FLOPs on one sample (for
    `Analysis.select(flops_budget=...)`; one more forward under a FLOP counter). `holdout_folds=k`
    (k >= 2) splits the batches into k folds (batch i → fold i mod k; statistics memory × (k + 1))
    and adds the `heldout` score: the affine residual on rows the fit did not see.
    `output_samples=N` (N >= 1) adds the `output` score: each span of up to `output_max_len` blocks
    (None: all) is replaced by its affine map, fitted on every token of the `num_samples`
    calibration samples, and scored by the relative error of the pooled final features on the next
    N samples of the loader (held out and kept in memory; the loader needs `num_samples + N`).
    What it compares is the model's real output (`output_target="auto"`): for a model with a head
    (output with `logits`: `*ForImageClassification`, `*ForSequenceClassification`) the mean KL
    divergence of the predicted distributions, with the top-1 agreement in
    `Analysis.output_agreement`; for a backbone the relative error of the pooled final features.
    `output_target="features"` compares pooled features on a model with a head too (its last
    block's output), `"logits"` insists on logits.
    Cost: a graph capture, then per held-out batch one full pass plus one suffix (the blocks after
    the span and the head) per span; with `tokens` other than "all" also a second calibration pass
    on all tokens (the calibration inputs are then kept in memory for it).
    `product_dtype`: dtype of the per-batch cross-products; `"auto"` is float64 for `"cls"` /
    `"mean"` (few rows, exact) and the activations' dtype for `"all"` (float32 for float32
    models: about half the time of float64, scores within ~1e-5 relative); None: always the
    activations' dtype.
    `units="half"` scores spans of half blocks (boundaries -1 .. 2L-1, see `compress`): the model is
    captured with the blocks' insides and calibrated through the graph; parameters and FLOPs are
    counted per unit on the graph.
    """
    if tokens not in _TOKENS:
        raise ValueError(f"tokens={tokens!r} is not one of {_TOKENS}")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be at least 1")
    check_output_target(output_target)
    if output_samples < 0 or (output_max_len is not None and output_max_len < 1):
        raise ValueError(f"output_samples={output_samples} must be >= 0 and output_max_len={output_max_len} "
                         "None or >= 1")
    if units not in UNITS:
        raise ValueError(f"units={units!r} is not one of {UNITS}")
    stack = find_block_stack(model, blocks)
    distributed.check_same(model, blocks=stack.num_blocks, num_samples=num_samples,
                           tokens=tokens, holdout_folds=holdout_folds, output_samples=output_samples,
                           output_max_len=output_max_len, ridge=ridge, units=units)
    device = model_device(model)
    first, batches = iter_batches(calib_loader, model)
    traced = trace(model, first, stack, units) if units == "half" else None
    if output_samples:  # the calibration samples, then the held-out ones
        batches, rest = split_samples(batches, num_samples)
        if tokens != "all":
            batches = list(batches)  # calibrated again on all tokens for the output score's maps
    indices = list(range(-1, traced.num_units if traced is not None else stack.num_blocks))
    if product_dtype == "auto":
        product_dtype = None if tokens == "all" else torch.float64
    folded = FoldedMoments(indices, holdout_folds, product_dtype=product_dtype) if holdout_folds else None
    model.eval()
    moments = _calibrate(model, stack, traced, indices, batches, num_samples, tokens=tokens, device=device,
                         progress=progress, moments=folded or BoundaryMoments(indices, product_dtype=product_dtype))
    if folded is not None:
        moments = folded.total()
    widths = [moments.dims[k] for k in indices]
    scores = {m: score_matrix(moments, m, ridge=ridge) for m in METRICS}
    if folded is not None:
        scores["heldout"] = heldout_matrix(folded, moments, ridge=ridge)
    agreement, target = None, ""
    capture_path = "eager block hooks" if traced is None else f"{traced.capture_path} (blocks' insides)"
    if output_samples:
        scores["output"], agreement, target, path = _output_matrix(
            model, stack, first, moments, batches, rest, tokens=tokens, num_samples=num_samples,
            output_samples=output_samples, max_len=output_max_len, ridge=ridge, device=device,
            target=output_target, progress=progress, traced=traced)
        capture_path += f"; output score: {path}"
    an = Analysis(
        model=_model_name(model), num_blocks=len(indices) - 1, tokens=tokens, samples=moments.samples,
        rows=moments.rows, widths=list(widths), ridge=ridge, scores=scores, capture_path=capture_path,
        output_samples=output_samples, units=units,
        output_target=target, output_agreement=agreement,
        block_params=[sum(p.numel() for p in model.get_submodule(stack.block_path(i)).parameters())
                      for i in range(stack.num_blocks)],
        total_params=sum(p.numel() for p in model.parameters()),
    )
    if traced is not None:
        costs = unit_costs(traced, device)
        an.block_params = costs.params
        if flops:
            an.block_flops, an.total_flops, an.tokens_per_sample = costs.flops, costs.total_flops, costs.tokens
    elif flops:
        try:
            sample = first.take(1).to(device)
            an.block_flops, an.total_flops, an.tokens_per_sample = _count_flops(model, stack, sample)
        except Exception as err:  # FLOP counting is a convenience; the scores stand without it
            log.warning("could not count FLOPs per block (%s); flops_budget selection is unavailable", err)
    if moments.rows <= max(widths):
        note = (f"only {moments.rows} calibration rows for boundaries of width {max(widths)}: the "
                "least-squares fit interpolates, so the 'linear' score measures the ridge term, not the "
                "span; use more samples than the width, tokens='all', or rank by the 'heldout' score "
                "(holdout_folds=2)")
        an.notes.append(note)
        warnings.warn(note, UnderdeterminedScoreWarning, stacklevel=2)
    log.info("analysed %s: %d %ss, %d samples, %d rows", an.model, an.num_blocks, units, an.samples, an.rows)
    return an
