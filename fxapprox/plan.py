"""Compression plan (spans, transforms, fitted weights, example inputs) ↔ a directory of JSON + safetensors.

`plan.json` holds everything but tensors; `weights.safetensors` holds each linear span's
`weight`/`bias` and the example inputs the graph is re-captured with. Nothing is pickled.
A folded span (`fold=True`) stores its map `T, c` the same way; `load` folds it into the model's
own Linear again. Format 2 adds `units`, `fold`, `unfolded_residual`, `prior`, `refit`;
format-1 plans (whole-block spans) still load (without them: blocks, no fold, zero prior,
independent fits). `refinement` (optional) records what `refine="output"` and `transform="mlp"`
trained; their values are plan weights (`span.s.e.mlp.*`, `refined.<parameter path>`).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fxapprox.errors import PlanMismatchError
from fxapprox.inputs import ModelInputs

__all__ = ["SpanPlan", "Plan", "PLAN_FORMAT"]

PLAN_FORMAT = "fxapprox-plan/2"
_READABLE = ("fxapprox-plan/1", PLAN_FORMAT)  # version 1: whole-block spans, no units/fold/prior/refit
_JSON, _WEIGHTS = "plan.json", "weights.safetensors"


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
    refinement: dict[str, Any] | None = None  # refine="output" / transform="mlp": what was trained (refine.py)
    weights: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    example: ModelInputs = field(default_factory=ModelInputs, repr=False)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write `plan.json` and `weights.safetensors` into directory `path`."""
        path = Path(path)
        if (path / _JSON).exists() and not overwrite:
            raise FileExistsError(f"{path / _JSON} exists; pass overwrite=True to replace it")
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.weights.items()}
        tensors.update({f"example.arg.{i}": a.detach().cpu().contiguous() for i, a in enumerate(self.example.args)})
        tensors.update({f"example.kwarg.{k}": v.detach().cpu().contiguous() for k, v in self.example.kwargs.items()})
        save_file(tensors, str(path / _WEIGHTS), metadata={"format": PLAN_FORMAT})
        meta = {k: v for k, v in asdict(self).items() if k not in ("weights", "example")}
        meta["format"] = PLAN_FORMAT
        (path / _JSON).write_text(json.dumps(meta, indent=2) + "\n")
        # safetensors writes through a private temporary file (mode 0600): give it plan.json's mode
        os.chmod(path / _WEIGHTS, stat.S_IMODE((path / _JSON).stat().st_mode))
        return path

    @classmethod
    def read(cls, path: str | Path) -> Plan:
        """Read a plan directory written by `save`."""
        path = Path(path)
        if not (path / _JSON).is_file() or not (path / _WEIGHTS).is_file():
            raise PlanMismatchError(
                f"{path} is not an fxapprox plan directory (expected {_JSON} and {_WEIGHTS} "
                "written by CompressionResult.save)"
            )
        meta: dict[str, Any] = json.loads((path / _JSON).read_text())
        version = meta.pop("format", None)
        if version not in _READABLE:
            raise PlanMismatchError(f"{path / _JSON} is in format {version!r}, not one of {_READABLE}")
        tensors = load_file(str(path / _WEIGHTS))
        args = [tensors[k] for k in sorted((k for k in tensors if k.startswith("example.arg.")),
                                           key=lambda k: int(k.rsplit(".", 1)[1]))]
        kwargs = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith("example.kwarg.")}
        weights = {k: v for k, v in tensors.items() if not k.startswith("example.")}
        spans = [SpanPlan(**s) for s in meta.pop("spans")]
        return cls(spans=spans, weights=weights, example=ModelInputs(tuple(args), kwargs), **meta)
