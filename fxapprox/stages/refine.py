"""Stage 6, refine: `CompressionResult` + the original model + `Captured` batches + config → the same
result with its replacements trained at the model's output.

Runs only when the config trains (`transform="mlp"`: each span's map gets a residual bottleneck MLP
fitted on its boundaries; `refine="output"`: the replacements, and with
`refine_options.params="maps+norms"` the 1-D parameters after the first span, trained with Adam on
the damage at the model's output). The work is `fxapprox.refine`'s; the original model is never
written to, and what was trained goes into the plan (`plan.refinement`, `refined.<path>` weights).
"""

from __future__ import annotations

from torch import nn

from fxapprox.config import CompressConfig
from fxapprox.costs import UnitCosts
from fxapprox.refine import refine_stage
from fxapprox.stages.capture import Captured
from fxapprox.stages.rewrite import CompressionResult

__all__ = ["run"]


def run(model: nn.Module, captured: Captured, result: CompressionResult, config: CompressConfig,
        costs: UnitCosts | None = None) -> CompressionResult:
    """Train `result`'s replacements (in place) on `captured`'s calibration batches against `model`'s outputs
    (`costs`: the unit costs the select stage priced the MLPs with; counted again when None)."""
    if not config.trains:
        return result
    refine_stage(result, model, captured.batches, mlp=config.transform == "mlp", refine=config.refine,
                 options=config.refine_options, boundaries=captured.traced.boundaries, costs=costs,
                 progress=config.progress)
    result.num_params_after = sum(p.numel() for p in result.module.parameters())
    return result
