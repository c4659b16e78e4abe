"""Every option of `compress` → one frozen, validated `CompressConfig` (and back to JSON).

A config says what to remove (exactly one of `spans`, `num_blocks`, `budget` (fraction of the
FLOPs), `param_budget`, `latency_budget`) and how each stage works: capture (`blocks`, `units`),
calibrate (`num_samples`), select (`selection` rule, `metric`, `output_target`), fit (`transform`,
`auto_tolerance`, `ridge`, `prior`, `refit`), rewrite (`fold`) and refine (`refine`,
`refine_options`: training the replacements at the model's output, `fxapprox.refine`). It is validated once, in its
constructor: a bad value raises a `ConfigError` whose `field` (and message) names the option.
`to_dict()` / `CompressConfig.from_dict(d)` round-trip through JSON (a recipe file, or the
`"config"` of a saved plan); `changes()` lists the options that differ from the defaults.

Adding an option is one field below plus its check in `_check`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fxapprox.boundaries import UNITS
from fxapprox.costs import BlockLatency, MlpSize
from fxapprox.errors import ConfigError, MetricConfigError, RefineError, SpanConfigError
from fxapprox.fit import DEFAULT_RIDGE, PRIORS
from fxapprox.metrics import METRIC_INFO
from fxapprox.output_score import OUTPUT_TARGETS

__all__ = ["CompressConfig", "RefineOptions", "TRANSFORMS", "REFITS", "SELECTIONS", "TARGETS", "REFINES",
           "REFINE_PARAMS", "REFINE_ROWS", "DEFAULT_AUTO_TOLERANCE", "OUTPUT_METRIC"]

TRANSFORMS = ("linear", "identity", "auto", "mlp")
REFITS = ("independent", "sequential")
# Selection rules (fxapprox.select.RULES, plus the greedy "iterative" one of fxapprox.sequential).
SELECTIONS = ("dp", "iterative", "topk", "lowest")
OUTPUT_METRIC = "output"
# transform="auto": identity when its normalised residual exceeds the affine map's by at most this.
DEFAULT_AUTO_TOLERANCE = 0.01
# What to remove: exactly one of these is set.
TARGETS = ("spans", "num_blocks", "budget", "param_budget", "latency_budget")

Span = tuple[int, int]

REFINES = ("output",)
REFINE_PARAMS = ("maps", "maps+norms", "all")
REFINE_ROWS = ("tokens", "pooled", "tokens+pooled")


@dataclass(frozen=True)
class RefineOptions:
    """Settings of the refinement and of the `mlp` transform's local fit."""

    params: str = "maps"  # "maps+norms": also every 1-D parameter after the first span; "all": every parameter after it
    rows: str = "tokens"  # a backbone's loss: every unpadded token, the "pooled" features, or "tokens+pooled"
    steps: int | None = None  # optimiser steps (one per `batch_size` samples); None: `epochs` passes
    epochs: int = 3
    time_budget_s: float | None = None  # stop after this many seconds (then not deterministic)
    lr: float = 1e-4
    warmup: int = 0  # optimiser steps over which the learning rate rises linearly to `lr` (0: none)
    batch_size: int = 8  # samples per optimiser step (calibration batches are cut into pieces this size)
    holdout: float = 0.25  # share of the calibration batches kept for early stopping
    patience: int = 2  # evaluations without a better held-out loss before stopping
    seed: int = 0
    mlp_fraction: float = 0.1  # transform="mlp": the MLP's FLOPs per token / the span's
    mlp_hidden: int | None = None  # transform="mlp": this hidden width instead of mlp_fraction's
    mlp_epochs: int = 20  # passes of the local MLP fit over the calibration tokens
    mlp_lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.params not in REFINE_PARAMS:
            raise RefineError(f"params={self.params!r} is not one of {REFINE_PARAMS}")
        if self.rows not in REFINE_ROWS:
            raise RefineError(f"rows={self.rows!r} is not one of {REFINE_ROWS}")
        for name in ("epochs", "batch_size", "patience", "mlp_epochs"):
            if getattr(self, name) < 1:
                raise RefineError(f"{name}={getattr(self, name)} must be at least 1")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise RefineError(f"warmup={self.warmup!r} must be a whole number of steps >= 0")
        for name in ("steps", "mlp_hidden"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RefineError(f"{name}={getattr(self, name)} must be at least 1 (or None)")
        for name in ("lr", "mlp_lr", "mlp_fraction"):
            if not getattr(self, name) > 0:
                raise RefineError(f"{name}={getattr(self, name)} must be positive")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise RefineError(f"time_budget_s={self.time_budget_s} must be positive (or None)")
        if not 0 < self.holdout < 1:
            raise RefineError(f"holdout={self.holdout} must be a fraction in (0, 1)")

    @property
    def mlp_size(self) -> MlpSize:
        """How `transform="mlp"` sizes each span's bottleneck (what selection and budgets price)."""
        return MlpSize(self.mlp_fraction, self.mlp_hidden)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _refine_options(value: Any) -> RefineOptions | None:
    """None, a `RefineOptions` or a dict of its fields → `RefineOptions` (or None); else `ConfigError`."""
    if value is None or isinstance(value, RefineOptions):
        return value
    if not isinstance(value, dict):
        raise ConfigError("refine_options", f"refine_options={value!r} must be a RefineOptions or a dict of its "
                          "fields")
    unknown = sorted(set(value) - {f.name for f in fields(RefineOptions)})
    if unknown:
        raise ConfigError("refine_options", f"refine_options has unknown field(s) {unknown}; choose from "
                          f"{[f.name for f in fields(RefineOptions)]}")
    try:
        return RefineOptions(**value)
    except (RefineError, TypeError) as err:
        raise ConfigError("refine_options", f"refine_options: {err}") from None


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(name, f"{name}={value!r} is not one of {allowed}")


def _fraction(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        what = {"param_budget": "parameters", "latency_budget": "latency"}.get(name, "FLOPs")
        raise SpanConfigError(name, f"{name}={value!r} must be a fraction in (0, 1) of the model's {what} to "
                              "remove, e.g. 0.25")


def _spans(value: Any) -> tuple[Span, ...] | None:
    if value is None:
        return None
    try:
        pairs = tuple((int(s), int(e)) for s, e in value)
    except (TypeError, ValueError):
        raise SpanConfigError("spans", f"spans={value!r} is not a list of pairs (s, e) of block indices") from None
    if not pairs:
        raise SpanConfigError("spans", "spans=[] gives no span: pass spans=[(s, e), ...] or num_blocks=k")
    return pairs


@dataclass(frozen=True)
class CompressConfig:
    """All options of `fxapprox.compress`, grouped by the stage that reads them (see the module docstring)."""

    # what to remove: exactly one
    spans: tuple[Span, ...] | None = None
    num_blocks: int | None = None
    budget: float | None = None            # fraction of the model's FLOPs, net of the added maps
    param_budget: float | None = None      # fraction of the model's parameters, net of the added maps
    latency_budget: float | None = None    # fraction of the measured latency (needs `block_latency`)
    block_latency: BlockLatency | None = None
    # capture
    blocks: str | None = None
    units: str = "block"
    # calibrate
    num_samples: int = 500
    # select
    selection: str = "dp"
    metric: str = OUTPUT_METRIC
    output_target: str = "auto"
    # fit
    transform: str = "linear"
    auto_tolerance: float = DEFAULT_AUTO_TOLERANCE
    ridge: float = DEFAULT_RIDGE
    prior: str = "zero"
    refit: str = "independent"
    # rewrite
    fold: bool = False
    # refine (after the rewrite): train the replacements at the model's output
    refine: str | None = None              # None, or "output"
    refine_options: RefineOptions | None = None  # also the `mlp` transform's local fit; None: the defaults
    # reporting
    progress: bool = field(default=True, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spans", _spans(self.spans))
        object.__setattr__(self, "refine_options", _refine_options(self.refine_options))
        if isinstance(self.block_latency, dict):
            try:
                object.__setattr__(self, "block_latency", BlockLatency(**self.block_latency))
            except TypeError as err:
                raise ConfigError("block_latency", f"block_latency={self.block_latency!r} is not a BlockLatency "
                                  f"(original_ms, block_ms, map_ms, provider, batch_size): {err}") from None
        self._check()

    def _check(self) -> None:
        given = [name for name in TARGETS if getattr(self, name) is not None]
        if len(given) != 1:
            raise SpanConfigError(
                "spans" if not given else given[1],
                "pass exactly one of spans=[(s, e), ...], num_blocks=k, budget= (fraction of the FLOPs), "
                f"param_budget= or latency_budget=; got {', '.join(given) if given else 'none'}")
        if self.num_blocks is not None and (isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int)
                                            or self.num_blocks < 1):
            raise SpanConfigError("num_blocks", f"num_blocks={self.num_blocks!r} must be a whole number >= 1")
        for name in ("budget", "param_budget", "latency_budget"):
            _fraction(name, getattr(self, name))
        if self.latency_budget is not None and self.block_latency is None:
            raise ConfigError("block_latency", "latency_budget needs block_latency= (the measured per-block "
                              "latencies: fxapprox.study.latency.block_latencies(model, calib, example))")
        if self.block_latency is not None and self.units != "block":
            raise ConfigError("units", "block latencies are per whole block: latency_budget needs units='block'")
        if self.blocks is not None and not isinstance(self.blocks, str):
            raise ConfigError("blocks", f"blocks={self.blocks!r} must be the dotted path of the block stack or None")
        _choice("units", self.units, UNITS)
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ConfigError("num_samples", f"num_samples={self.num_samples!r} must be at least 1")
        _choice("selection", self.selection, SELECTIONS)
        if self.metric not in METRIC_INFO:
            raise MetricConfigError("metric", f"compress takes metric= one of {tuple(METRIC_INFO)}, "
                                    f"not {self.metric!r}")
        _choice("output_target", self.output_target, OUTPUT_TARGETS)
        _choice("transform", self.transform, TRANSFORMS)
        for name, least in (("auto_tolerance", -math.inf), ("ridge", 0.0)):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < least:
                raise ConfigError(name, f"{name}={value!r} must be a finite number"
                                  + ("" if least == -math.inf else f" >= {least:g}"))
        _choice("prior", self.prior, PRIORS)
        _choice("refit", self.refit, REFITS)
        for name in ("fold", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"{name}={getattr(self, name)!r} must be True or False")
        if self.refine is not None:
            _choice("refine", self.refine, REFINES)
        if self.transform == "mlp" and self.fold:
            raise ConfigError("fold", "transform='mlp' inserts a module per span; fold=True adds none: use one or "
                              "the other")
        if self.transform == "mlp" and self.latency_budget is not None:
            raise ConfigError("latency_budget", "a latency budget prices each span's replacement by a linear map's "
                              "measured time, and an MLP's is not measured: use budget= (FLOPs) or "
                              "param_budget= with transform='mlp'")
        if self.transform == "mlp" and self.units != "block":
            raise ConfigError("units", "transform='mlp' fits each MLP on its span's boundaries as block outputs, which "
                              "a half unit's middle is not: use units='block'")
        if self.fold and self.transform != "linear":
            raise ConfigError("fold", f"fold=True folds a fitted map; transform={self.transform!r} has none (an "
                              "identity span adds no module anyway): use transform='linear'")

    @property
    def trains(self) -> bool:
        """Whether the replacements are trained after the rewrite (`refine`, or `transform="mlp"`)."""
        return self.refine is not None or self.transform == "mlp"

    # --- construction and JSON -----------------------------------------------------------------

    def replace(self, **changes: Any) -> CompressConfig:
        """A copy with `changes` (validated again); unknown names raise `ConfigError`."""
        _check_names(changes, "CompressConfig.replace")
        if any(name in TARGETS for name in changes):  # a new target replaces the old one
            changes = {**{name: None for name in TARGETS}, **changes}
        return dataclasses.replace(self, **changes)

    def kwargs(self) -> dict[str, Any]:
        """Every option as `compress` keyword arguments (spans as a list of pairs)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.spans is not None:
            out["spans"] = list(self.spans)
        return out

    def changes(self) -> dict[str, Any]:
        """The options that differ from the defaults, as `compress` keyword arguments (`refine_options`
        as a dict of its fields, so the result is JSON-ready for a report)."""
        default = {f.name: f.default for f in fields(self)}
        out = {k: v for k, v in self.kwargs().items() if v != default[k]}
        if "refine_options" in out:
            out["refine_options"] = self.refine_options.to_dict()
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every option (spans as lists, block latencies as a dict)."""
        out = self.kwargs()
        if self.spans is not None:
            out["spans"] = [list(sp) for sp in self.spans]
        if self.block_latency is not None:
            out["block_latency"] = self.block_latency.to_dict()
        if self.refine_options is not None:
            out["refine_options"] = self.refine_options.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressConfig:
        """The config `to_dict` wrote (or a recipe naming some of the options); unknown keys raise
        `ConfigError` naming them."""
        if not isinstance(data, dict):
            raise ConfigError("config", f"a config is a JSON object of options, not {type(data).__name__}")
        _check_names(data, "the config")
        return cls(**data)


def _check_names(names: dict[str, Any], where: str) -> None:
    known = {f.name for f in fields(CompressConfig)}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ConfigError(unknown[0], f"{where} has unknown option(s) {', '.join(unknown)}: the options are "
                          f"{', '.join(sorted(known))}")
