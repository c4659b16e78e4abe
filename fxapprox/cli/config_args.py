"""Command-line options of `compress`, grouped by stage, + an optional recipe file → one `CompressConfig`.

`add_config_args(p)` registers every option of `fxapprox.CompressConfig` in argument groups named
after the stage that reads it (what to remove, capture, calibrate, select, fit, rewrite) and
`--config RECIPE` (a JSON object of options: a recipe, a plan's `plan.json`, or a plan directory).
Options default to "not given" (`argparse.SUPPRESS`), so `config_from_args(args)` can tell a flag
typed beside `--config` (it overrides the recipe's field) from one left out (the recipe's value,
else the config's default). The model/data options `--samples` and `--blocks` of
`common.add_model_data_args` are the config's `num_samples` and `blocks`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from fxapprox.cli.common import (
    SPANS_HELP,
    add_units_arg,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    spans_arg,
)
from fxapprox.config import REFINE_PARAMS, REFINE_ROWS, REFINES, SELECTIONS, TARGETS, TRANSFORMS, CompressConfig
from fxapprox.errors import ConfigError
from fxapprox.metrics import METRIC_INFO
from fxapprox.output_score import OUTPUT_TARGETS

__all__ = ["add_config_args", "config_from_args", "read_recipe"]

_S = argparse.SUPPRESS
# argparse dest → CompressConfig field, where they differ
_FIELDS = {"samples": "num_samples"}
# argparse dest → field of `RefineOptions` (the config's `refine_options`)
_REFINE_OPTIONS = {"refine_params": "params", "refine_rows": "rows", "refine_steps": "steps",
                   "refine_time": "time_budget_s", "refine_lr": "lr", "refine_warmup": "warmup",
                   "mlp_fraction": "mlp_fraction"}


def add_config_args(p: argparse.ArgumentParser) -> None:
    """Register `--config` and every option of `CompressConfig`, one argument group per stage.

    Call after `common.add_model_data_args(p, ...)`: `--samples` and `--blocks` become "not given"
    by default too (their help keeps the default that applies without a recipe)."""
    p.add_argument("--config", metavar="RECIPE", default=_S,
                   help="JSON file of CompressConfig options (a recipe; a plan.json or a plan directory reuses "
                   "the options the plan was made with); options given beside it override its fields")
    what = p.add_argument_group("what to remove (exactly one, here or in --config)").add_mutually_exclusive_group()
    what.add_argument("--spans", type=spans_arg, default=_S, help=SPANS_HELP)
    what.add_argument("--num-blocks", type=positive_int, default=_S,
                      help="remove this many blocks (units with --units half), spans chosen by --selection/--metric")
    what.add_argument("--budget", type=fraction, default=_S, metavar="FRACTION",
                      help="remove at least this fraction of the model's FLOPs (counted on the graph, net of the "
                      "added maps) at the least damage by --metric, e.g. 0.25")
    what.add_argument("--param-budget", type=fraction, default=_S, metavar="FRACTION",
                      help="remove at least this fraction of the model's parameters (net of the added maps)")
    what.add_argument("--latency-budget", type=fraction, default=_S, metavar="FRACTION",
                      help="remove at least this fraction of the onnxruntime CPU latency, from per-block "
                      "latencies measured first (one ONNX export and timing per block)")
    capture = p.add_argument_group("capture")
    add_units_arg(capture)
    select = p.add_argument_group("select (with --num-blocks or a budget)")
    select.add_argument("--selection", choices=SELECTIONS, default=_S,
                        help="dp: the best set by --metric (dynamic program); iterative: replace one unit at a "
                        "time, the least output damage given those already replaced; topk: the one span of k "
                        "units with the least score (TOAST Algorithm 1); lowest: the k single units with the least "
                        "score (ShortGPT) (default: dp)")
    select.add_argument("--metric", choices=tuple(METRIC_INFO), default=_S,
                        help="score that chooses spans (default: output, the damage to the model's output on the "
                        "first calibration batch: KL of a head's predictions, else the relative error of the final "
                        "features; README Results: it predicts damage best)")
    select.add_argument("--output-target", choices=OUTPUT_TARGETS, default=_S,
                        help="what --metric output compares: logits when the model has a head, else pooled final "
                        "features (default: auto)")
    fit = p.add_argument_group("fit")
    fit.add_argument("--transform", choices=TRANSFORMS, default=_S,
                     help="what replaces each span: a least-squares linear map, nothing (identity; needs equal "
                     "widths), or auto: the identity where its residual is within --auto-tolerance of the linear "
                     "map's, else linear (default: linear)")
    fit.add_argument("--auto-tolerance", type=nonnegative_float, default=_S, metavar="TOL",
                     help="with --transform auto: largest excess of the identity's normalised residual over the "
                     "linear map's at which the identity is taken (default: 0.01)")
    fit.add_argument("--ridge", type=nonnegative_float, default=_S,
                     help="ridge regularisation of the maps (default: 1e-6)")
    fit.add_argument("--prior", choices=("zero", "identity"), default=_S, help="ridge prior of the maps: "
                     "zero, or identity (shrink towards W = I; helps with few samples)")
    fit.add_argument("--refit", choices=("independent", "sequential"), default=_S,
                     help="sequential: fit each span on the model with the earlier spans already replaced")
    rewrite = p.add_argument_group("rewrite")
    rewrite.add_argument("--fold", action="store_const", const=True, default=_S,
                         help="fold each map into the down projection of the block before it (no module added)")
    refine = p.add_argument_group("refine (after the rewrite: replacements trained at the model's output)")
    refine.add_argument("--refine", choices=REFINES, default=_S,
                        help="output: train the replacements to minimise the damage at the model's output on the "
                        "calibration data (Adam, a held-out quarter for early stopping)")
    refine.add_argument("--refine-params", choices=REFINE_PARAMS, default=_S,
                        help="with --refine: train the maps only (default), also every 1-D parameter after the "
                        "first span (maps+norms: norm scales and shifts, biases), or every parameter after it (all: "
                        "the kept blocks' weights too, a light fine-tune of the suffix)")
    refine.add_argument("--refine-rows", choices=REFINE_ROWS, default=_S,
                        help="with --refine on a backbone: the loss compares every unpadded token's final hidden "
                        "state (tokens, default), the pooled features a probe reads ([CLS], or the masked mean with "
                        "an attention mask: pooled), or both (tokens+pooled)")
    refine.add_argument("--refine-steps", type=positive_int, default=_S, metavar="N",
                        help="with --refine: optimiser steps (default: 3 passes over the calibration samples)")
    refine.add_argument("--refine-time", type=positive_float, default=_S, metavar="SECONDS",
                        help="with --refine: stop training after this many seconds (not reproducible)")
    refine.add_argument("--refine-lr", type=positive_float, default=_S, metavar="LR",
                        help="with --refine: Adam's learning rate (default 1e-4; 1e-5 suits --refine-params all)")
    refine.add_argument("--refine-warmup", type=nonnegative_int, default=_S, metavar="N",
                        help="with --refine: optimiser steps over which the learning rate rises linearly to "
                        "--refine-lr (default 0: none)")
    refine.add_argument("--mlp-fraction", type=positive_float, default=_S, metavar="F",
                        help="with --transform mlp: the MLP's FLOPs per token as a fraction of the span's "
                        "(default: 0.1)")
    for action in p._actions:  # options registered by shared helpers with real defaults: "not given" too
        if action.dest in ("samples", "blocks", "units"):
            action.default = _S


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file → its options: a JSON object of `CompressConfig` fields, or a plan (its
    `plan.json`, or the directory holding it) → the config it was made with."""
    path = Path(path)
    if path.is_dir():
        path = path / "plan.json"
    if not path.is_file():
        raise ConfigError("config", f"--config {path}: no such file; give a JSON recipe or a plan directory")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError("config", f"--config {path} is not JSON ({err}); give a JSON object of options") from None
    if isinstance(data, dict) and str(data.get("format", "")).startswith("fxapprox-plan/"):
        if not data.get("config"):
            raise ConfigError("config", f"{path} is a plan written without its config (before it was recorded); "
                              "give the options as flags or in a recipe")
        data = data["config"]
    if not isinstance(data, dict):
        raise ConfigError("config", f"--config {path} holds a JSON {type(data).__name__}, not an object of options")
    return data


def config_from_args(args: argparse.Namespace, **fixed: Any) -> tuple[CompressConfig, float | None]:
    """The recipe of `--config` (if any) with the options given on the command line over it (a target
    given, e.g. `--budget`, replaces the recipe's), and `fixed` (e.g. progress) over both; also sets
    `args.samples` / `args.blocks` to the config's.

    A latency budget without measured latencies comes back apart, `(config with num_blocks=1,
    latency_budget)`: the caller measures them (`fxapprox.study.latency.block_latencies`) and
    replaces the target; every other option is checked before that work."""
    given = {_FIELDS.get(dest, dest): v for dest, v in vars(args).items() if _FIELDS.get(dest, dest) in _NAMES}
    recipe = read_recipe(args.config) if hasattr(args, "config") else {}
    refine_given = {field: getattr(args, dest) for dest, field in _REFINE_OPTIONS.items() if hasattr(args, dest)}
    if refine_given:  # flags over the recipe's refine_options
        base = recipe.get("refine_options") or {}
        given["refine_options"] = {**(base if isinstance(base, dict) else {}), **refine_given}
    if any(k in given for k in TARGETS):
        recipe = {k: v for k, v in recipe.items() if k not in TARGETS}
    options = {**recipe, **given, **fixed}
    latency = None
    if options.get("latency_budget") is not None and options.get("block_latency") is None:
        latency, options["latency_budget"], options["num_blocks"] = options["latency_budget"], None, 1
    config = CompressConfig.from_dict(options)
    args.samples, args.blocks = config.num_samples, config.blocks
    return config, latency


_NAMES = {f.name for f in fields(CompressConfig)}
