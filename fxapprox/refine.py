"""A compressed model + the original + calibration batches → replacements trained at the model's real output.

Two stages run after the closed-form fit (`compress(..., transform="mlp", refine="output")`):

* `add_mlps` (`transform="mlp"`): each linear span's `nn.Linear` becomes a `ResidualMLP` (the
  closed-form map plus a bottleneck MLP whose output layer starts at zero, so it starts equal to
  the closed form; hidden width such that its FLOPs per token are `mlp_fraction` of the span's,
  measured on the model), and the MLP is fitted locally: Adam on the normalised error
  `||M(H_s) - H_e||² / ||H_e||²` over the calibration tokens of the original model's boundaries.
* `refine_output` (`refine="output"`): the replacement parameters (`params="maps"`), and with
  `"maps+norms"` every one-dimensional parameter after the first span too (LayerNorm scales and
  shifts, biases, layer scales), are trained with Adam to minimise the damage at the model's real
  output, the targets the `output` score uses: the mean KL divergence of the predictions for a
  model with a head, the normalised error `||F' - F||² / ||F||²` of the final hidden states of
  every unpadded token for a backbone (the original model's outputs are the targets). The graph is
  cut after the boundary where the first span starts (`suffix.GraphCut`): the part before runs
  once per batch under `no_grad` and its values are cached; gradients flow through the rest only.

Both keep a seeded, held-out share of the calibration batches (`holdout`) and the parameters of
the best held-out loss (evaluated after every pass over the training batches; `patience` passes
without improvement stop early). Training is deterministic for a seed (no time budget). The
trained values go into the plan (map weights as the span's weights, anything else as
`refined.<path>`, see `fxapprox.span_modules`), so `load` rebuilds the trained module bit for bit;
`plan.refinement` records what was trained, the steps and the held-out loss before and after.
The original model is never written to: every trained parameter is a copy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
from torch import nn
from tqdm.auto import tqdm

from fxapprox.blocks import find_block_stack
from fxapprox.boundaries import Boundaries
from fxapprox.calibrate import EagerBlockHooks, token_rows
from fxapprox.capture import flat_graph_inputs
from fxapprox.config import REFINE_PARAMS, REFINES, RefineOptions
from fxapprox.costs import UnitCosts, unit_costs
from fxapprox.errors import RefineError
from fxapprox.features import last_hidden_state, pool_features
from fxapprox.inputs import ModelInputs, as_model_inputs, token_mask
from fxapprox.output_score import final_logits, output_target
from fxapprox.passes.fold_span import fold_param_name
from fxapprox.passes.replace_span import span_module_name
from fxapprox.prepare import model_device, trace
from fxapprox.span_modules import REFINED_PREFIX, ResidualMLP, mlp_weights, set_parameter
from fxapprox.suffix import GraphCut

if TYPE_CHECKING:
    from fxapprox.compression import CompressionResult

__all__ = ["RefineOptions", "RefineReport", "MlpFit", "REFINES", "REFINE_PARAMS", "refine_output", "add_mlps",
           "refine_stage", "split_batches"]

log = logging.getLogger(__name__)

_ROWS_PER_STEP = 256  # tokens per step of the local MLP fit


@dataclass
class MlpFit:
    """One span's `ResidualMLP`: its width, FLOPs per token against the span's, and the normalised
    error of its local fit on the held-out tokens before (the closed form) and after."""

    s: int
    e: int
    hidden: int
    flops_per_token: float
    span_flops_per_token: float
    heldout_before: float
    heldout_after: float
    seconds: float


@dataclass
class RefineReport:
    """What `refine_output` trained and what it reached (`target`: what the loss compares;
    held-out losses are the mean KL for logits, the relative error `||F' - F|| / ||F||` for features)."""

    target: str
    params: str
    trained: list[str]
    num_trained: int
    steps: int
    best_step: int
    heldout_before: float
    heldout_after: float
    seconds: float
    train_batches: int  # pieces of `batch_size` samples: optimiser steps per pass
    heldout_batches: int
    stopped: str  # "steps", "patience" or "time"
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss) per evaluation
    # (step, loss on the pass's training pieces, measured as they were trained) per evaluation: beside the
    # held-out loss it tells overfitting (data-limited) from a plateau of both (capacity- or objective-limited)
    train_history: list[tuple[int, float]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_batches(batches: Sequence[ModelInputs], holdout: float, seed: int
                  ) -> tuple[list[ModelInputs], list[ModelInputs]]:
    """A seeded split of the batches → (training batches, held-out batches); each at least one."""
    if len(batches) < 2:
        raise RefineError(f"refinement needs at least 2 calibration batches (one held out), got {len(batches)}: "
                          "pass more samples or a smaller batch size")
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed)).tolist()
    held = min(len(batches) - 1, max(1, round(holdout * len(batches))))
    return [batches[i] for i in sorted(order[held:])], [batches[i] for i in sorted(order[:held])]


# --- the mlp transform ---------------------------------------------------------------------------

def _observed(model: nn.Module, stack, indices: list[int], inputs: ModelInputs) -> dict[int, torch.Tensor]:
    """The original model's boundary tensors `H_k` (k in `indices`) on one batch."""
    seen: dict[int, torch.Tensor] = {}
    EagerBlockHooks(model, stack, indices, seen.__setitem__).observe_batch(inputs)
    return seen


def _boundary_rows(model: nn.Module, stack, s: int, e: int, batches: Sequence[ModelInputs]
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The original model's `H_s`, `H_e` on each batch → rows of every unpadded token."""
    out = []
    for inputs in batches:
        seen = _observed(model, stack, [s, e], inputs)
        mask = token_mask(inputs)
        out.append((token_rows(seen[s], mask).detach(), token_rows(seen[e], mask).detach()))
    return out


def _joined(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x for x, _ in rows]), torch.cat([y for _, y in rows])


def _relative(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((module(x) - y).double().square().sum() / y.double().square().sum()).sqrt())


def _keep_best(params: Sequence[torch.Tensor], best: Sequence[torch.Tensor]) -> None:
    """Write the best values seen back into the trained tensors and freeze them."""
    with torch.no_grad():
        for p, v in zip(params, best):
            p.copy_(v)
            p.requires_grad_(False)


def _fit_local(mlp: ResidualMLP, train: tuple[torch.Tensor, torch.Tensor], held: tuple[torch.Tensor, torch.Tensor],
               opts: RefineOptions, generator: torch.Generator, progress: bool, desc: str) -> tuple[float, float]:
    """Adam on the MLP's parameters (the affine map fixed) → held-out relative error before, after (best kept)."""
    params = [p for n, p in mlp.named_parameters() if not n.startswith("linear.")]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=opts.mlp_lr)
    before = best = _relative(mlp, *held)
    best_state = [p.detach().clone() for p in params]
    x, y = train
    for _ in tqdm(range(opts.mlp_epochs), desc=desc, unit="epoch", leave=False, disable=not progress):
        for idx in torch.randperm(len(x), generator=generator).split(_ROWS_PER_STEP):
            yb = y[idx]
            loss = (mlp(x[idx]) - yb).square().sum() / yb.square().sum()
            grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
        current = _relative(mlp, *held)
        if current < best:
            best, best_state = current, [p.detach().clone() for p in params]
    _keep_best(params, best_state)
    return before, best


def add_mlps(result: CompressionResult, model: nn.Module, batches: Sequence[ModelInputs],
             options: RefineOptions | None = None, *, costs: UnitCosts | None = None,
             progress: bool = True) -> list[MlpFit]:
    """Every linear span of `result` → a `ResidualMLP` fitted locally (see the module docstring),
    sized by `options.mlp_size` on `costs` (the original graph's unit costs, as budgets price the
    MLPs; counted on a fresh capture of `model` when None); `result`'s module and plan are updated in place."""
    opts = options if options is not None else RefineOptions()
    plan, gm = result.plan, result.module
    device = model_device(model)
    batches = [as_model_inputs(b).to(device) for b in batches]
    train, held = split_batches(batches, opts.holdout, opts.seed)
    stack = find_block_stack(model, plan.blocks)
    if costs is None:
        costs = unit_costs(trace(model, plan.example, stack, plan.units), device)
    generator = torch.Generator().manual_seed(opts.seed)
    fits = []
    for sp in plan.spans:
        if sp.transform != "linear" or sp.fold:
            continue
        name = span_module_name(sp.s, sp.e)
        span_flops = sum(costs.flops[sp.s + 1:sp.e + 1]) / costs.tokens[sp.s + 1]
        hidden = opts.mlp_size.width(span_flops, sp.in_features, sp.out_features)
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(opts.seed)
            mlp = ResidualMLP(gm.get_submodule(name), hidden)
        rows = dict(zip(map(id, batches), _boundary_rows(model, stack, sp.s, sp.e, batches)))
        before, after = _fit_local(mlp, _joined([rows[id(b)] for b in train]), _joined([rows[id(b)] for b in held]),
                                   opts, generator, progress, f"mlp {sp.s} → {sp.e}")
        gm.add_submodule(name, mlp)
        sp.transform = "mlp"
        sp.residual = _relative(mlp, *_joined(list(rows.values())))
        plan.weights.update(mlp_weights(mlp, sp.key))
        fits.append(MlpFit(sp.s, sp.e, hidden, 2.0 * hidden * (sp.in_features + sp.out_features), span_flops,
                           before, after, round(time.perf_counter() - started, 2)))
        log.info("span %d → %d: mlp of width %d (%.3f of the span's FLOPs), held-out local error %.4f → %.4f",
                 sp.s, sp.e, hidden, fits[-1].flops_per_token / max(span_flops, 1.0), before, after)
    return fits


# --- refinement at the output ----------------------------------------------------------------------

@dataclass
class _Batch:
    live: tuple[Any, ...]  # the head's values at the cut
    mask: torch.Tensor | None
    reference: tuple[torch.Tensor, ...]  # the original model's output rows (one tensor per part of `rows`)


def _pieces(inputs: ModelInputs, size: int) -> list[ModelInputs]:
    """One batch → consecutive pieces of at most `size` samples."""
    n = inputs.batch_size
    return [inputs.map_tensors(lambda t, i=i: t[i:i + size]) for i in range(0, n, size)]


def _reader(target: str, rows: str) -> Callable[[Any, torch.Tensor | None], tuple[torch.Tensor, ...]]:
    """Model output + token mask → the rows the loss compares: the logits' rows, or a backbone's final
    hidden states as every unpadded token and/or the pooled features (`pool_features`, as probes read them)."""
    if target == "logits":
        return lambda out, mask: (token_rows(final_logits(out), mask),)
    parts = rows.split("+")

    def read(out: Any, mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        hidden = last_hidden_state(out)
        return tuple(token_rows(hidden, mask) if part == "tokens" else pool_features(hidden, mask) for part in parts)
    return read


def _damage(pred: torch.Tensor, ref: torch.Tensor, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(numerator, denominator) of the loss: summed KL and rows, or squared error and squared norm."""
    if target == "logits":
        log_p, log_q = torch.log_softmax(ref, dim=-1), torch.log_softmax(pred, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(), torch.tensor(float(ref.shape[0]))
    return (pred - ref).square().sum(), ref.square().sum()


def _cut_node(gm: torch.fx.GraphModule, boundaries: Boundaries, plan) -> torch.fx.Node:
    """The boundary after which the first replaced unit starts (for a fold, the unit before, whose
    down projection holds the map)."""
    k = min(sp.s - (1 if sp.fold else 0) for sp in plan.spans)
    name = boundaries[k].name
    node = next((n for n in gm.graph.nodes if n.name == name), None)
    if node is None:
        raise RefineError(f"boundary {k} ({name}) is not in the compressed graph: refine the result compress "
                          "returned, with the model it was made from")
    return node


def _map_parameters(gm: torch.fx.GraphModule, plan) -> dict[str, nn.Parameter]:
    """The replacement parameters of every span, by path."""
    found: dict[str, nn.Parameter] = {}
    for sp in plan.spans:
        if sp.fold:
            for what in ("weight", "bias"):
                path = fold_param_name(sp.s, sp.e, what)
                found[path] = gm.get_parameter(path)
        elif sp.transform in ("linear", "mlp"):
            name = span_module_name(sp.s, sp.e)
            found.update({f"{name}.{n}": p for n, p in gm.get_submodule(name).named_parameters()})
    return found


def _tail_parameters(gm: torch.fx.GraphModule, cut: torch.fx.Node, exclude: set[str], vectors_only: bool
                     ) -> dict[str, nn.Parameter]:
    """Every floating parameter read only after `cut` (a `get_attr` whose users all come after it, as in
    an exported graph where every `get_attr` sits at the top; a module called after it), or with
    `vectors_only` the 1-D ones (norm scales and shifts, biases, layer scales)."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    found: dict[str, nn.Parameter] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.users and all(order[u] > order[cut] for u in node.users):
            candidates = {str(node.target): _attr_or_none(gm, str(node.target))}
        elif node.op == "call_module" and order[node] > order[cut]:
            candidates = {f"{node.target}.{n}": p for n, p in gm.get_submodule(str(node.target)).named_parameters()}
        else:
            continue
        for path, p in candidates.items():
            if (isinstance(p, nn.Parameter) and (p.ndim == 1 or not vectors_only) and p.is_floating_point()
                    and not any(path.startswith(x + ".") or path == x for x in exclude)):
                found[path] = p
    return found


def _attr_or_none(gm: nn.Module, path: str) -> Any:
    try:
        return gm.get_parameter(path)
    except AttributeError:
        return None


def refine_output(result: CompressionResult, model: nn.Module, batches: Sequence[Any], *,
                  options: RefineOptions | None = None, boundaries: Boundaries | None = None,
                  progress: bool = True, **overrides: Any) -> RefineReport:
    """Train `result`'s replacements (and with `params="maps+norms"` the 1-D parameters after the first
    span) to minimise the damage at the model's output on `batches` (see the module docstring).

    `model` is the original the result was compressed from (its outputs are the targets; it is not
    modified). `options` (a `RefineOptions`) or keyword overrides of its fields (`params=`,
    `steps=`, `time_budget_s=`, `lr=`, `holdout=`, `seed=`, ...). `boundaries`: the boundaries of
    the graph `compress` captured (found again from the model when not given). `result`'s module
    and plan are updated in place; the report is also recorded as `plan.refinement`.
    """
    unknown = set(overrides) - {f.name for f in fields(RefineOptions)}
    if unknown:
        raise RefineError(f"refine_output got unknown options {sorted(unknown)}; "
                          f"choose from {[f.name for f in fields(RefineOptions)]}")
    opts = replace(options if options is not None else RefineOptions(), **overrides)
    started = time.perf_counter()
    plan, gm = result.plan, result.module
    if not plan.spans:
        raise RefineError("the plan replaces no span: there is nothing to refine")
    device = model_device(model)
    batches = [as_model_inputs(b).to(device) for b in batches]
    train, held = split_batches(batches, opts.holdout, opts.seed)
    if boundaries is None:
        boundaries = trace(model, plan.example, find_block_stack(model, plan.blocks), plan.units).boundaries
    cut_node = _cut_node(gm, boundaries, plan)
    maps = _map_parameters(gm, plan)
    vectors = {} if opts.params == "maps" else _tail_parameters(gm, cut_node, set(maps) | _span_modules(plan),
                                                                 vectors_only=opts.params == "maps+norms")
    trainable = {path: set_parameter(gm, path, p.detach().clone(), requires_grad=True)
                 for path, p in {**maps, **vectors}.items()}
    cut = GraphCut(gm, cut_node)
    target, read = None, None

    def cached(inputs: ModelInputs) -> _Batch:
        nonlocal target, read
        with torch.no_grad():
            reference = inputs.call(model)
            live = cut.head(*flat_graph_inputs(gm, inputs))
        if target is None:
            target = output_target(reference, "auto")
            if target == "logits" and opts.rows != "tokens":
                raise RefineError(f"rows={opts.rows!r} chooses among a backbone's final features, but this model "
                                  "has a head: its loss compares the predictions (use rows='tokens')")
            read = _reader(target, opts.rows)
        mask = token_mask(inputs)
        return _Batch(tuple(live), mask, tuple(r.detach() for r in read(reference, mask)))

    pieces = [piece for b in train for piece in _pieces(b, opts.batch_size)]
    train_data = [cached(b) for b in tqdm(pieces, desc="refine: cache", unit="batch", leave=False,
                                          disable=not progress)]
    held_data = [cached(b) for b in held]
    tensors = list(trainable.values())

    def damage(batch: _Batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pred = read(cut.output(cut.tail(*batch.live)), batch.mask)
        return [_damage(p, r, target) for p, r in zip(pred, batch.reference)]

    def summed(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        return torch.tensor([[float(n.detach()), float(d.detach())] for n, d in parts], dtype=torch.float64)

    def loss_of(sums: torch.Tensor) -> float:
        """Summed (numerator, denominator) per part → the reported loss: mean KL, or relative error."""
        ratios = sums[:, 0] / sums[:, 1]
        return float(ratios.mean() if target == "logits" else ratios.sqrt().mean())

    def heldout() -> float:
        with torch.no_grad():
            return loss_of(sum(summed(damage(batch)) for batch in held_data))

    total = opts.steps or opts.epochs * len(train_data)
    generator = torch.Generator().manual_seed(opts.seed)
    opt = torch.optim.Adam(tensors, lr=opts.lr)
    warmup = (torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / opts.warmup, total_iters=opts.warmup)
              if opts.warmup else None)
    before = best = heldout()
    best_state, best_step, history = [t.detach().clone() for t in tensors], 0, [(0, before)]
    train_history: list[tuple[int, float]] = []
    step, worse, stopped, used = 0, 0, "steps", set()
    bar = tqdm(total=total, desc=f"refine {opts.params} ({len(tensors)} tensors)", unit="step", leave=False,
               disable=not progress)
    while step < total and stopped == "steps":
        seen = torch.zeros(len(held_data[0].reference), 2, dtype=torch.float64)
        for i in torch.randperm(len(train_data), generator=generator).tolist():
            parts = damage(train_data[i])
            seen = seen + summed(parts)
            loss = sum(n / d for n, d in parts) / len(parts)
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)  # e.g. a parameter a branch skips
            for j, (t, g) in enumerate(zip(tensors, grads)):
                t.grad = g
                used.update([j] if g is not None else [])
            opt.step()
            if warmup is not None:
                warmup.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4g}", heldout=f"{best:.4g}")
            if step >= total:
                break
            if opts.time_budget_s is not None and time.perf_counter() - started > opts.time_budget_s:
                stopped = "time"
                break
        current = heldout()
        history.append((step, current))
        train_history.append((step, loss_of(seen)))
        if current < best:
            best, best_state, best_step, worse = current, [t.detach().clone() for t in tensors], step, 0
        else:
            worse += 1
            if worse >= opts.patience and stopped == "steps":
                stopped = "patience"
    bar.close()
    _keep_best(tensors, best_state)
    trained = {path: t for j, (path, t) in enumerate(trainable.items()) if j in used}
    _store(plan, gm, trained)
    report = RefineReport(target, opts.params, sorted(trained), sum(t.numel() for t in trained.values()), step,
                          best_step,
                          before, best, round(time.perf_counter() - started, 2), len(train_data), len(held_data),
                          stopped, history, train_history, opts.to_dict())
    plan.refinement = report.to_dict()
    log.info("refined %d parameters (%s) at the %s: held-out %.4g → %.4g, %d steps (best %d), %.1f s",
             report.num_trained, opts.params, target, before, best, step, best_step, report.seconds)
    return report


def _span_modules(plan) -> set[str]:
    """Names of the modules the plan's spans inserted."""
    return {span_module_name(sp.s, sp.e) for sp in plan.spans if not sp.fold and sp.transform in ("linear", "mlp")}


def _store(plan, gm: torch.fx.GraphModule, trained: dict[str, Any]) -> None:
    """The trained values → plan weights: span modules as the span's weights, the rest (norms,
    biases, folded maps) as `refined.<path>`."""
    for sp in plan.spans:
        if sp.fold or sp.transform not in ("linear", "mlp"):
            continue
        module = gm.get_submodule(span_module_name(sp.s, sp.e))
        if sp.transform == "mlp":
            plan.weights.update(mlp_weights(module, sp.key))
        else:
            plan.weights[f"{sp.key}.weight"] = module.weight.detach().T.double().clone()
            plan.weights[f"{sp.key}.bias"] = module.bias.detach().double().clone()
    modules = _span_modules(plan)
    for path in trained:
        if path.split(".", 1)[0] not in modules:
            plan.weights[REFINED_PREFIX + path] = gm.get_parameter(path).detach().clone()


def refine_stage(result: CompressionResult, model: nn.Module, batches: Sequence[ModelInputs], *, mlp: bool,
                 refine: str | None, options: RefineOptions | None = None, boundaries: Boundaries | None = None,
                 costs: UnitCosts | None = None, progress: bool = True) -> CompressionResult:
    """The stages after the closed-form fit, as `compress` runs them: `add_mlps` when `mlp` (sized on
    `costs`), then `refine_output` when `refine="output"`; `result` is updated in place and returned."""
    opts = options if options is not None else RefineOptions()
    if mlp:
        fits = add_mlps(result, model, batches, opts, costs=costs, progress=progress)
        result.plan.refinement = {"mlp": [asdict(f) for f in fits]}
    if refine == "output":
        mlps = (result.plan.refinement or {}).get("mlp")
        refine_output(result, model, batches, options=opts, boundaries=boundaries, progress=progress)
        if mlps is not None:
            result.plan.refinement["mlp"] = mlps
    return result
