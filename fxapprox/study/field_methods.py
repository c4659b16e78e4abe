"""The field's training-free depth-compression rules + a FLOP budget → the `fxapprox.compress` call each makes.

Each method is a re-implementation of its paper's published rule on this project's scores and
graph machinery (no code of theirs; shared/DESIGN.md, "The field's rules"):

* `papers` (TBA/TOAST): whole blocks; TOAST Algorithm 1's top-1 span of length k on the `linear`
  score ([CLS] token, 50 samples: `Analysis.top_k(1, span_len=k)`); one linear map.
* `shortgpt` (Men et al. 2024): whole blocks with the lowest Block Influence
  `BI_k = 1 - mean_tokens cos(H_{k-1}, H_k)` (the `cosine` score of span `(k-1, k)` on all tokens),
  not necessarily contiguous; identity.
* `blockpruner` (Zhong et al. 2025): attention/MLP half units, identity, iterative removal of the
  unit with the least `output` damage given those removed until the FLOP budget is met: one
  `compress(units="half", transform="identity", selection="iterative", ...)` call.
* `replaceme` (Shopkhoev et al. 2025): the contiguous window of n blocks (after block 0's input,
  so that a block precedes it) whose input and output are closest in angular distance (the
  `angular` score on all tokens); least-squares linear map, folded into the preceding block's
  down projection (`fold=True`).
* `fxapprox`: this library's best rule: the dynamic program over the `output` score (final-feature
  error of each span's fitted map on held-out samples) with linear maps, at least total error
  for the FLOP budget (`Analysis.select(flops_budget=...)`), on mixed units when given a half-unit
  analysis (spans of half blocks: whole blocks, attention or MLP branches, each with its map),
  each map refitted in sequence.
* `fxapprox-refined`: the `fxapprox` plan, its maps (and the 1-D parameters after the first span)
  then trained at the model's output (`refine="output"`, `params="maps+norms"`).
* `fxapprox-tuned`: the same with every parameter after the first span trained (`params="all"`,
  lr 1e-5 reached over the first 50 steps): a light fine-tune of the suffix on the calibration data.
* `fxapprox-mlp`: the dynamic program on whole blocks with every span priced as its map plus a
  residual MLP of 10 % of the span's FLOPs (`transform="mlp"`, the budget pays for the MLPs), each
  MLP fitted locally, then refined at the output (`params="maps+norms"`).
* `llm-streamline-style` (Chen et al., ICLR 2025): the contiguous window of n blocks whose input
  and output hidden states are most alike by cosine (the `cosine` score on all tokens), replaced
  by one FFN of the model's FFN width (4 d) trained on the window's boundary tensors (MSE): here
  `transform="mlp"` with `mlp_hidden=4 d`, fitted locally and not refined at the output (our FFN
  sits on top of the least-squares map and starts equal to it); the FFN's FLOPs are paid from
  the budget.

A budget is the fraction of the whole model's FLOPs to save, net of added maps. A method whose
plans come in steps takes the smallest plan that saves at least the budget; when none does, its
largest plan, marked as not reaching it (`fxapprox.select.first_reaching`). Each method is a
`CompressConfig` plus a selection rule of the library (`fxapprox.select.RULES`: `topk` for the
papers and ReplaceMe, `lowest` for ShortGPT, `dp` for fxapprox; BlockPruner is `selection="iterative"`),
applied here to the scores of an `Analysis` made as the method's paper says.
`rule_plan(method, budget, ...)` returns a `MethodPlan`: the config for `fxapprox.compress` (spans
fixed) and the saving the rule predicts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fxapprox.analysis import Analysis
from fxapprox.config import CompressConfig, RefineOptions
from fxapprox.costs import MlpSize
from fxapprox.errors import SpanError
from fxapprox.select import RULES, candidate_costs, first_reaching

__all__ = ["METHODS", "DEFAULT_METHODS", "METHOD_RULES", "MethodPlan", "rule_plan", "block_budgets",
           "budget_fraction", "block_influence", "PruningOrder", "pruning_order"]

Span = tuple[int, int]

METHODS = ("papers", "shortgpt", "blockpruner", "replaceme", "fxapprox", "fxapprox-refined", "fxapprox-tuned",
           "fxapprox-mlp", "llm-streamline-style")
DEFAULT_METHODS = METHODS[:5]  # the training-free rules; the trained rows take minutes per plan on a CPU
# fxapprox's plan trained at the output: each trained fxapprox row's compress options
TRAINED = {"fxapprox-refined": {"refine": "output", "refine_options": {"params": "maps+norms"}},
           "fxapprox-tuned": {"refine": "output", "refine_options": {"params": "all", "lr": 1e-5, "warmup": 50}},
           "fxapprox-mlp": {"transform": "mlp", "refine": "output",
                            "refine_options": {"params": "maps+norms", "mlp_fraction": 0.1}}}
REFINED = TRAINED["fxapprox-refined"]
FFN_RATIO = 4  # llm-streamline-style: the replacing FFN's width / the model's (both real models' MLP ratio)

_TOLERANCE = 1e-9  # relative slack when comparing a saving with its budget
# The rule of `fxapprox.select.RULES` (or "iterative") each method selects with.
METHOD_RULES = {"papers": "topk", "shortgpt": "lowest", "blockpruner": "iterative", "replaceme": "topk",
                "fxapprox": "dp", "fxapprox-refined": "dp", "fxapprox-tuned": "dp", "fxapprox-mlp": "dp",
                "llm-streamline-style": "topk"}


@dataclass
class MethodPlan:
    """One method's plan for one budget: the `CompressConfig` that builds it (spans fixed), the rule
    that chose the spans, and what the rule predicts it saves (fraction of the model's FLOPs)."""

    method: str
    budget: float
    config: CompressConfig
    predicted_flops_removed: float | None
    reaches_budget: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def rule(self) -> str:
        """The selection rule that chose the spans."""
        return METHOD_RULES[self.method]

    @property
    def compress_kwargs(self) -> dict[str, Any]:
        """The config as `fxapprox.compress` keyword arguments: the spans, the transform and the
        options that differ from the defaults."""
        return {"spans": list(self.config.spans), "transform": self.config.transform, **self.config.changes()}


def budget_fraction(an: Analysis, saving: float | None) -> float:
    """A per-sample FLOP saving → its fraction of the model's FLOPs."""
    if saving is None or not an.total_flops:
        raise ValueError("the analysis has no FLOP counts: analyze(..., flops=True) records them")
    return saving / an.total_flops


def block_budgets(an: Analysis, max_blocks: int = 6) -> list[float]:
    """The default budgets: what removing k = 1 .. `max_blocks` (at most L - 1) whole blocks saves,
    net of the one linear map that replaces them (the mean over the k-block spans), as fractions of
    the model's FLOPs; so the papers' k-block span meets budget k, and an identity plan of k blocks
    saves a map's FLOPs more."""
    if not an.block_flops or not an.total_flops:
        raise ValueError("the analysis has no FLOP counts: analyze(..., flops=True) records them")
    out = []
    for k in range(1, min(max_blocks, an.num_blocks - 1) + 1):
        spans = [(s, s + k) for s in range(-1, an.num_blocks - k)]
        out.append(sum(_span_saving(an, [sp], "linear") for sp in spans) / len(spans))
    return out


def _meets(saved: float, budget: float) -> bool:
    return saved >= budget * (1 - _TOLERANCE)


def _first_reaching(method: str, budget: float, candidates: Iterator[tuple[CompressConfig, float]]) -> MethodPlan:
    """The first candidate (config, saved fraction), in the rule's order of growing plans, that
    saves at least `budget`; else the largest, marked as not reaching it."""
    try:
        config, saved, reached = first_reaching(candidates, budget)
    except SpanError:
        raise ValueError(f"{method}: no candidate plan") from None
    if reached:
        return MethodPlan(method, budget, config, saved)
    return MethodPlan(method, budget, config, saved, reaches_budget=False,
                      notes=[f"no {method} plan saves {budget:.3f} of the FLOPs; its largest saves {saved:.3f}"])


def _costs(an: Analysis, metric: str, transform: str = "linear", min_start: int = -1) -> dict[Span, float]:
    """Cost of every span `an` scores by `metric` (starting at `min_start` or later)."""
    scores = an.matrix(metric)
    costs = candidate_costs(lambda s, e: float(scores[s + 1, e + 1]), an.num_blocks, metric=metric,
                            transform=transform, widths=an.widths)
    return {sp: c for sp, c in costs.items() if sp[0] >= min_start}


def _rule_plans(method: str, an: Analysis, costs: dict[Span, float], sizes: range, **options: Any
                ) -> Iterator[tuple[CompressConfig, float]]:
    """The method's rule for each size k in `sizes` (skipping sizes it has no spans for) → (config, saved)."""
    transform = options.get("transform", "linear")
    saves_as = "identity" if options.get("fold") else transform  # a folded map adds no FLOPs
    for k in sizes:
        try:
            spans = RULES[METHOD_RULES[method]](costs, an.num_blocks, k)
        except SpanError:
            continue
        yield CompressConfig(spans=spans, **options), _span_saving(an, spans, saves_as)


def _span_saving(an: Analysis, spans: list[Span], transform: str, mlp: MlpSize | None = None) -> float:
    return budget_fraction(an, sum(an.savings(s, e, transform, mlp)[1] for s, e in spans))


def papers_plan(an: Analysis, budget: float) -> MethodPlan:
    """TOAST Algorithm 1 (`topk`): the top-1 span of length k by the `linear` score of `an` (the papers'
    [CLS] on 50 samples), for the least k whose linear span saves the budget."""
    plans = _rule_plans("papers", an, _costs(an, "linear"), range(1, an.num_blocks + 1), transform="linear")
    return _first_reaching("papers", budget, plans)


def block_influence(an: Analysis) -> list[float]:
    """ShortGPT's Block Influence of every block: `1 - mean cos(H_{k-1}, H_k)` over `an`'s rows."""
    return [an.score(k - 1, k, "cosine") for k in range(an.num_blocks)]


def shortgpt_plan(an: Analysis, budget: float) -> MethodPlan:
    """The blocks with the lowest Block Influence (`lowest` on the `cosine` score; ties: earlier
    first), as few as save the budget, each replaced by the identity."""
    plans = _rule_plans("shortgpt", an, _costs(an, "cosine", "identity"), range(1, an.num_blocks + 1),
                        transform="identity")
    return _first_reaching("shortgpt", budget, plans)


def replaceme_plan(an: Analysis, budget: float, *, fold: bool) -> MethodPlan:
    """For the least n that saves the budget, the window of n blocks after block 0 with the
    smallest angular distance between its input and output (`topk` on the `angular` score of the
    spans after block 0); a linear map, folded when `fold`."""
    options: dict[str, Any] = {"transform": "linear", **({"fold": True} if fold else {})}
    plans = _rule_plans("replaceme", an, _costs(an, "angular", min_start=0), range(1, an.num_blocks), **options)
    plan = _first_reaching("replaceme", budget, plans)
    if not fold:
        plan.notes.append("map not folded: fxapprox.compress has no fold=True yet (issue 13), so the "
                          "plan keeps a d×d Linear")
    return plan


def fxapprox_plan(an: Analysis, budget: float, transform: str = "linear", mlp: MlpSize | None = None) -> MethodPlan:
    """The dynamic program over the `output` score with linear maps: the span set of least total
    final-feature error that saves the budget (when none does, the most units it can remove), each
    map refitted on the model with the earlier spans replaced (`refit="sequential"`); in `an`'s units
    (a half-unit analysis: mixed units). `transform="mlp"`: every span priced as its map plus an MLP
    sized by `mlp`, and replaced so."""
    try:
        spans = an.select(flops_budget=budget, metric="output", transform=transform, mlp=mlp)
    except SpanError:  # beyond every span set the output score rates (analyze's output_max_len)
        spans = _most_blocks(an)
    saved = _span_saving(an, spans, transform, mlp)
    config = CompressConfig(spans=spans, units=an.units, transform=transform, refit="sequential")
    plan = MethodPlan("fxapprox", budget, config, saved, reaches_budget=_meets(saved, budget))
    if not plan.reaches_budget:
        plan.notes.append(f"no span set the output score rates saves {budget:.3f}; the plan that removes the "
                          f"most blocks saves {saved:.3f}")
    return plan


def fxapprox_trained_plan(an: Analysis, budget: float, method: str = "fxapprox-refined") -> MethodPlan:
    """`fxapprox_plan`'s spans and maps, then trained at the model's output as `method` says (`TRAINED`;
    `fxapprox-mlp`: spans chosen with each MLP's FLOPs paid from the budget)."""
    options = TRAINED[method]
    transform = options.get("transform", "linear")
    mlp = RefineOptions(**options["refine_options"]).mlp_size if transform == "mlp" else None
    plan = fxapprox_plan(an, budget, transform, mlp)
    plan.method = method
    plan.config = plan.config.replace(**options)
    return plan


def streamline_plan(an: Analysis, budget: float) -> MethodPlan:
    """For the least n that saves the budget net of the FFN, the window of n blocks whose input and
    output have the highest mean token cosine, replaced by `transform="mlp"` of width `FFN_RATIO` d."""
    candidates = []
    for n in range(1, an.num_blocks + 1):
        windows = [(s, s + n) for s in range(-1, an.num_blocks - n)]
        s, e = min(windows, key=lambda w: (an.score(*w, "cosine"), w))
        hidden = FFN_RATIO * an.widths[e + 1]
        saved = _span_saving(an, [(s, e)], "mlp", MlpSize(hidden=hidden))
        candidates.append((CompressConfig(spans=[(s, e)], transform="mlp", refine_options={"mlp_hidden": hidden}),
                           saved))
    return _first_reaching("llm-streamline-style", budget, candidates)


def _most_blocks(an: Analysis) -> list[Span]:
    for k in range(an.num_blocks, 0, -1):
        try:
            return an.select(num_blocks=k, metric="output", transform="linear")
        except SpanError:
            continue
    raise SpanError("the output score rates no span: analyze(..., output_samples=N) computes it")


@dataclass
class PruningOrder:
    """BlockPruner's greedy order: the half units removed one at a time (`compress(units="half",
    transform="identity", selection="iterative")`'s `selection_steps`), each unit's FLOPs per sample
    (`analyze(units="half", flops=True)`) and the model's."""

    units: list[int]
    spans_after: list[list[Span]]
    unit_flops: list[float]
    total_flops: float


def pruning_order(model: Any, calib: Any, *, num_samples: int, max_units: int) -> PruningOrder:
    """Run BlockPruner's rule once, up to `max_units` half units: every budget's plan is a prefix."""
    import fxapprox

    half = fxapprox.analyze(model, calib, num_samples=num_samples, tokens="all", flops=True, units="half",
                            progress=False)
    res = fxapprox.compress(model, calib, num_blocks=min(max_units, half.num_blocks), units="half",
                            transform="identity", selection="iterative", num_samples=num_samples, progress=False)
    steps = res.selection_steps or []
    return PruningOrder([st.block for st in steps], [st.spans for st in steps], list(half.block_flops),
                        float(half.total_flops))


def blockpruner_plan(order: PruningOrder, budget: float) -> MethodPlan:
    """BlockPruner's rule (attention/MLP half units, identity, iterative removal of the unit with the
    least `output` damage given those removed): the shortest prefix of the greedy order that saves
    the budget; else the whole order, marked as not reaching it."""
    def candidates() -> Iterator[tuple[CompressConfig, float]]:
        saved = 0.0
        for unit, spans in zip(order.units, order.spans_after):
            saved += order.unit_flops[unit] / order.total_flops
            yield CompressConfig(spans=spans, units="half", transform="identity"), saved

    return _first_reaching("blockpruner", budget, candidates())


def rule_plan(method: str, budget: float, *, paper: Analysis, scores: Analysis,
              order: PruningOrder | None = None, mixed: Analysis | None = None) -> MethodPlan:
    """`method`'s plan for `budget` (a fraction of the FLOPs): `paper` is the papers' analysis
    ([CLS], 50 samples), `scores` the all-token analysis with FLOP counts and the `output` score,
    `order` BlockPruner's greedy order (`pruning_order`), `mixed` the same as `scores` in half units
    (`analyze(units="half", ...)`): fxapprox's rows then choose on mixed units."""
    if not 0 < budget < 1 or math.isnan(budget):
        raise ValueError(f"budget {budget} must be a fraction of the FLOPs in (0, 1)")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    if method == "papers":
        return papers_plan(paper, budget)
    if method == "shortgpt":
        return shortgpt_plan(scores, budget)
    if method == "replaceme":
        return replaceme_plan(scores, budget, fold=True)
    if method == "fxapprox":
        return fxapprox_plan(mixed or scores, budget)
    if method == "fxapprox-mlp":  # the MLP's local fit reads block outputs: whole blocks
        return fxapprox_trained_plan(scores, budget, method)
    if method in TRAINED:
        return fxapprox_trained_plan(mixed or scores, budget, method)
    if method == "llm-streamline-style":
        return streamline_plan(scores, budget)
    if order is None:
        raise ValueError("blockpruner needs its greedy order: pass order=pruning_order(...)")
    return blockpruner_plan(order, budget)

