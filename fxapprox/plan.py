"""Compression plan (spans, transforms, fitted weights, example inputs) ↔ a directory of JSON + safetensors.

`plan.json` holds everything but tensors; `weights.safetensors` holds each linear span's
`weight`/`bias` and the example inputs the graph is re-captured with. Nothing is pickled.
A folded span (`fold=True`) stores its map `T, c` the same way; `load` folds it into the model's
own Linear again. Format 2 adds `units`, `fold`, `unfolded_residual`, `prior`, `refit`;
format-1 plans (whole-block spans) still load (without them: blocks, no fold, zero prior,
independent fits). `config` records how the plan was made (`CompressConfig.to_dict()`) and, for
a budget, `reached` what it saves (fractions of the FLOPs and parameters, or of the latency);
plans written without them load with None. `refinement` (optional) records what
`refine="output"` and `transform="mlp"` trained; their values are plan weights (`span.s.e.mlp.*`,
`refined.<parameter path>`).

`save` writes the directory atomically (complete or absent, `fxapprox.atomic.atomic_dir`) and
records in `plan.json` the sha256 of the span weights and of the example inputs (`"sha256"`).
`read` checks everything before it returns: the JSON, its format, every key and its type, the
spans (in range, non-empty, non-overlapping for `num_blocks` and `units`), each linear span's
weight and bias shapes, and the checksums where recorded (plans saved before them load
unchecked). Any damage is a `CorruptPlanError` naming the file and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fxapprox.atomic import atomic_dir
from fxapprox.boundaries import UNITS
from fxapprox.errors import CorruptPlanError, OutputExistsError, PlanMismatchError, SpanError, one_line
from fxapprox.fit import PRIORS
from fxapprox.inputs import ModelInputs
from fxapprox.span_modules import REFINED_PREFIX
from fxapprox.spans import validate_spans

__all__ = ["SpanPlan", "Plan", "PLAN_FORMAT", "tensor_sha256", "check_plan_target"]

PLAN_FORMAT = "fxapprox-plan/2"
_READABLE = ("fxapprox-plan/1", PLAN_FORMAT)  # version 1: whole-block spans, no units/fold/prior/refit
_JSON, _WEIGHTS = "plan.json", "weights.safetensors"
_CHECKSUM = "sha256"  # plan.json key: {"weights": hex digest, "example": hex digest}
_WHAT = {"weights": "span weights (or the spans they are applied as)", "example": "example inputs"}
_TRANSFORMS = ("linear", "identity", "mlp")  # what a saved span holds ("auto" resolves to linear or identity)


def tensor_sha256(tensors: dict[str, torch.Tensor], context: str = "") -> str:
    """sha256 over `context`, then the tensors in key order: each key, dtype, shape and raw bytes (independent
    of the file's layout, so it says whether the numbers are the ones saved)."""
    digest = hashlib.sha256(context.encode())
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_plan_target(path: str | Path, overwrite: bool) -> Path:
    """A directory `Plan.save` may write (new, empty, or holding only a plan it may replace) → `path`;
    a plan there without `overwrite`, or any other file, → an error (checked before any work, too)."""
    path = Path(path)
    if (path / _JSON).exists() and not overwrite:
        raise FileExistsError(f"{path / _JSON} exists; pass overwrite=True to replace it")
    others = sorted(p.name for p in path.iterdir() if p.name not in (_JSON, _WEIGHTS)) if path.is_dir() else []
    if others:
        raise OutputExistsError(f"{path} holds files other than a plan ({', '.join(others[:3])}"
                                f"{', ...' if len(others) > 3 else ''}); a plan is saved into a new or empty "
                                "directory of its own (or one holding only an older plan)")
    return path


@dataclass
class SpanPlan:
    """One replaced span: units s+1..e (blocks, or half blocks), its transform and its residual on the
    calibration data."""

    s: int
    e: int
    transform: str
    residual: float
    in_features: int
    out_features: int
    fold: bool = False  # the map is folded into the Linear ending block s (no module added)
    unfolded_residual: float | None = None  # for a folded span: the plain affine map's residual

    @property
    def key(self) -> str:
        return f"span.{self.s}.{self.e}"


@dataclass
class Plan:
    """Everything needed to re-apply a compression to the same model without calibration data."""

    model_class: str
    blocks: str
    num_blocks: int
    spans: list[SpanPlan]
    num_samples: int
    ridge: float
    source: str | None = None  # how to load the model again (asset name, directory or hub id)
    units: str = "block"  # what span indices count: "block", or "half" (boundaries -1 .. 2L-1)
    prior: str = "zero"  # ridge prior of the fitted maps: "zero" or "identity"
    refit: str = "independent"  # "independent" (original activations) or "sequential"
    config: dict[str, Any] | None = None  # the CompressConfig it was made with (to_dict)
    reached: dict[str, float] | None = None  # for a budget: fractions saved ("flops", "params", "latency")
    refinement: dict[str, Any] | None = None  # refine="output" / transform="mlp": what was trained (refine.py)
    weights: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    example: ModelInputs = field(default_factory=ModelInputs, repr=False)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write `plan.json` and `weights.safetensors` into directory `path`, atomically: the directory is
        the complete new plan or (killed part-way) as it was. `overwrite=True` replaces a plan there; a
        directory holding other files is refused, it would be replaced whole."""
        path = check_plan_target(path, overwrite)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.weights.items()}
        example = {f"example.arg.{i}": a.detach().cpu().contiguous() for i, a in enumerate(self.example.args)}
        example.update({f"example.kwarg.{k}": v.detach().cpu().contiguous() for k, v in self.example.kwargs.items()})
        meta = {k: v for k, v in asdict(self).items() if k not in ("weights", "example")}
        meta["format"] = PLAN_FORMAT
        meta[_CHECKSUM] = {"weights": tensor_sha256(weights, _roles(self)), "example": tensor_sha256(example)}

        def fill(tmp: Path) -> None:
            save_file({**weights, **example}, str(tmp / _WEIGHTS), metadata={"format": PLAN_FORMAT})
            (tmp / _JSON).write_text(json.dumps(meta, indent=2) + "\n")

        return atomic_dir(path, fill, overwrite=True)

    @classmethod
    def read(cls, path: str | Path) -> Plan:
        """Read a plan directory written by `save`, checked whole before it is returned (`CorruptPlanError`
        naming the file and what was expected; `PlanMismatchError` for a directory that is no plan)."""
        path = Path(path)
        missing = [name for name in (_JSON, _WEIGHTS) if not (path / name).is_file()]
        if len(missing) == 2:
            raise PlanMismatchError(
                f"{path} is not an fxapprox plan directory (expected {_JSON} and {_WEIGHTS} "
                "written by CompressionResult.save)"
            )
        if missing:
            raise CorruptPlanError(f"the plan directory {path} has no {missing[0]}: it is damaged or was not "
                                   "written whole; save the plan again")
        meta = _read_json(path / _JSON)
        tensors = _read_weights(path / _WEIGHTS)
        meta.pop("format")
        checksums = meta.pop(_CHECKSUM, None)
        args = [tensors[k] for k in sorted((k for k in tensors if _arg_index(k) is not None), key=_arg_index)]
        kwargs = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith("example.kwarg.")}
        weights = {k: v for k, v in tensors.items() if not k.startswith("example.")}
        spans = [SpanPlan(**sp) for sp in meta.pop("spans")]
        plan = cls(spans=spans, weights=weights, example=ModelInputs(tuple(args), kwargs), **meta)
        _check_tensors(plan, tensors, path / _WEIGHTS)
        if checksums is not None:
            example = {k: v for k, v in tensors.items() if k.startswith("example.")}
            for what, got in (("weights", tensor_sha256(weights, _roles(plan))), ("example", tensor_sha256(example))):
                if checksums[what] != got:
                    raise CorruptPlanError(
                        f"{path / _WEIGHTS}: the {_WHAT[what]} differ from those {path / _JSON} was saved with "
                        f"(sha256 {got[:12]}…, expected {checksums[what][:12]}…): the file is damaged or was "
                        "changed; save the plan again"
                    )
        return plan


def _roles(plan: Plan) -> str:
    """What the weights are applied as (units, and each span's indices, transform and fold): part of their
    checksum, so that a plan.json edited to apply them otherwise does not load."""
    return json.dumps([plan.units, sorted((sp.s, sp.e, sp.transform, sp.fold) for sp in plan.spans)])


# --- checks of a plan directory ------------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _one_of(allowed: tuple[str, ...]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in allowed), f"one of {allowed}"


_INT, _COUNT = (_is_int, "an integer"), (lambda v: _is_int(v) and v >= 1, "an integer >= 1")
_STR, _BOOL = (lambda v: isinstance(v, str) and bool(v), "a non-empty string"), (lambda v: isinstance(v, bool),
                                                                                   "true or false")
_NUMBER = (_is_number, "a number")
# key → (check, what was expected, needed since format); keys a format lacks take the dataclass defaults.
_OPTIONAL = 1 << 30  # "needed since": never
_PLAN_KEYS: dict[str, tuple[Callable[[Any], bool], str, int]] = {
    "model_class": (*_STR, 1), "blocks": (*_STR, 1), "num_blocks": (*_COUNT, 1),
    "spans": (lambda v: isinstance(v, list) and bool(v), "a non-empty list of spans", 1),
    "num_samples": (*_COUNT, 1),
    "ridge": (lambda v: _is_number(v) and math.isfinite(v) and v >= 0, "a finite number >= 0", 1),
    "source": (lambda v: v is None or isinstance(v, str), "a string or null", _OPTIONAL),
    "units": (*_one_of(UNITS), 2), "prior": (*_one_of(PRIORS), 2), "refit": (*_STR, 2),
    "config": (lambda v: v is None or isinstance(v, dict), "a JSON object of options or null", _OPTIONAL),
    "refinement": (lambda v: v is None or isinstance(v, dict), "a JSON object or null", _OPTIONAL),
    "reached": (lambda v: v is None or (isinstance(v, dict) and all(_is_number(x) for x in v.values())),
                "an object of fractions or null", _OPTIONAL),
}
_SPAN_KEYS: dict[str, tuple[Callable[[Any], bool], str, int]] = {
    "s": (*_INT, 1), "e": (*_INT, 1), "transform": (*_one_of(_TRANSFORMS), 1), "residual": (*_NUMBER, 1),
    "in_features": (*_COUNT, 1), "out_features": (*_COUNT, 1), "fold": (*_BOOL, 2),
    "unfolded_residual": (lambda v: v is None or _is_number(v), "a number or null", 2),
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_keys(where: str, obj: Any, schema: dict, version: int, known: set[str]) -> None:
    if not isinstance(obj, dict):
        raise CorruptPlanError(f"{where} is a {type(obj).__name__}, expected a JSON object")
    unknown = sorted(set(obj) - known)
    if unknown:
        raise CorruptPlanError(f"{where} has unknown key(s) {unknown}; expected only {sorted(known)}")
    for key, (ok, expected, since) in schema.items():
        if key not in obj:
            if since <= version:
                raise CorruptPlanError(f"{where} has no key {key!r} (expected {expected})")
        elif not ok(obj[key]):
            raise CorruptPlanError(f"{where}: {key!r} is {_short(obj[key])}, expected {expected}")


def _read_json(path: Path) -> dict[str, Any]:
    """plan.json → its checked contents (format, keys, types, spans); `CorruptPlanError` otherwise."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise CorruptPlanError(f"{path} is not valid JSON ({one_line(err)}); the plan is damaged, "
                               "save it again") from None
    if not isinstance(meta, dict):
        raise CorruptPlanError(f"{path} holds a JSON {type(meta).__name__}, expected the object CompressionResult"
                               ".save writes")
    version = meta.get("format")
    if version not in _READABLE:
        raise CorruptPlanError(f"{path} is in format {version!r}, not one of {_READABLE}")
    number = int(version.rsplit("/", 1)[1])
    known = {f.name for f in fields(Plan)} - {"weights", "example"} | {"format", _CHECKSUM}
    _check_keys(str(path), meta, _PLAN_KEYS, number, known)
    sums = meta.get(_CHECKSUM)
    if sums is not None and not (isinstance(sums, dict) and set(sums) == {"weights", "example"}
                                 and all(isinstance(v, str) and len(v) == 64 for v in sums.values())):
        raise CorruptPlanError(f"{path}: {_CHECKSUM!r} is {_short(sums)}, expected {{'weights': <sha256 hex>, "
                               "'example': <sha256 hex>}")
    for i, sp in enumerate(meta["spans"]):
        _check_keys(f"{path}: span {i}", sp, _SPAN_KEYS, number, {f.name for f in fields(SpanPlan)})
        if sp.get("fold") and sp["transform"] != "linear":
            raise CorruptPlanError(f"{path}: span {i} is folded but its transform is {sp['transform']!r}, "
                                   "expected 'linear'")
    units = meta.get("units", "block")
    num_units = meta["num_blocks"] * (2 if units == "half" else 1)
    try:
        validate_spans([(sp["s"], sp["e"]) for sp in meta["spans"]], num_units, units)
    except SpanError as err:
        raise CorruptPlanError(f"{path}: {err}") from None
    return meta


def _arg_index(key: str) -> int | None:
    """`example.arg.<i>` → i; None for any other key."""
    index = key.removeprefix("example.arg.")
    return int(index) if index != key and index.isdigit() else None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types (and OSError, ValueError) on damage
        raise CorruptPlanError(f"{path} cannot be read as safetensors ({one_line(err)}); the file is damaged or "
                               "truncated, save the plan again") from None


def _check_tensors(plan: Plan, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Each linear (or mlp) span has a floating `weight (in, out)` and `bias (out,)` (an mlp span also its
    bottleneck's tensors); nothing else but refined parameters (`refined.<path>`, shapes checked when
    applied) and example inputs."""
    expected: dict[str, tuple[int, ...]] = {}
    for sp in plan.spans:
        if sp.transform in ("linear", "mlp"):
            expected[f"{sp.key}.weight"] = (sp.in_features, sp.out_features)
            expected[f"{sp.key}.bias"] = (sp.out_features,)
        if sp.transform == "mlp":  # the bottleneck of `span_modules.ResidualMLP`, hidden width as saved
            down = plan.weights.get(f"{sp.key}.mlp.down.weight")
            hidden = down.shape[0] if down is not None and down.ndim == 2 else 0
            shapes = {"norm.weight": (sp.in_features,), "norm.bias": (sp.in_features,),
                      "down.weight": (hidden, sp.in_features), "down.bias": (hidden,),
                      "up.weight": (sp.out_features, hidden), "up.bias": (sp.out_features,)}
            expected.update({f"{sp.key}.mlp.{name}": shape for name, shape in shapes.items()})
    for key, shape in expected.items():
        t = plan.weights.get(key)
        if t is None:
            raise CorruptPlanError(f"{path} has no tensor {key!r} (expected shape {shape} for the span's map)")
        if tuple(t.shape) != shape or not t.is_floating_point():
            raise CorruptPlanError(f"{path}: {key!r} is {t.dtype} of shape {tuple(t.shape)}, expected a floating "
                                   f"tensor of shape {shape} (the span's in/out features)")
    extra = sorted(k for k in set(plan.weights) - set(expected) if not k.startswith(REFINED_PREFIX))
    if extra:
        raise CorruptPlanError(f"{path} holds tensor(s) {extra[:3]} that no span of the plan uses")
    args = sorted(i for i in map(_arg_index, tensors) if i is not None)
    odd = [k for k in tensors if k.startswith("example.") and not k.startswith("example.kwarg.")
           and _arg_index(k) is None]
    if odd or args != list(range(len(args))) or not plan.example.tensors():
        raise CorruptPlanError(f"{path} does not hold the example inputs as saved (expected example.arg.0.. "
                               "and/or example.kwarg.<name> tensors, at least one)")
    if any(t.ndim == 0 for t in plan.example.tensors()):
        raise CorruptPlanError(f"{path}: an example input is a scalar, expected batched tensors")
