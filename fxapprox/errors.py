"""Typed errors of fxapprox: every failure a user can cause → one class under `FxApproxError`.

Each message says what was wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "FxApproxError",
    "CaptureError",
    "BlockDiscoveryError",
    "NoMiddleBoundaryError",
    "NoBlockStackError",
    "AmbiguousBlockStackError",
    "SpanError",
    "FoldError",
    "CalibrationError",
    "EmptyCalibrationError",
    "NonFiniteActivationError",
    "UnsupportedBatchError",
    "FewerSamplesWarning",
    "PlanMismatchError",
    "CorruptPlanError",
    "ExportError",
    "ExportMismatchError",
    "ProviderUnavailableError",
    "RuntimeMissingError",
    "AssetError",
    "ChecksumMismatchError",
    "RegistryUnreachableError",
    "DatasetFilesMissingError",
    "MissingScoreError",
    "UnsupportedOutputError",
    "DistributedError",
    "RankFailedError",
    "RankMismatchError",
    "OutputExistsError",
    "ConfigError",
    "SpanConfigError",
    "MetricConfigError",
    "InferenceOnlyError",
    "GraphDtypeError",
    "one_line",
    "RefineError",
]


class FxApproxError(Exception):
    """Base class of every error fxapprox raises on purpose.

    Its text is the message alone: the context torch.fx's Interpreter appends to an error raised
    inside a graph ("While executing %node ... Original traceback ...") is dropped.
    """

    def __str__(self) -> str:
        return super().__str__().split(_FX_CONTEXT, 1)[0]


_FX_CONTEXT = "\n\nWhile executing "


def one_line(err: BaseException) -> str:
    """`Type: first line of the message` of an error raised by a library fxapprox calls (torch.fx's
    context, fake-tensor logs and onnxruntime's details dropped), for the typed error that wraps it."""
    text = str(err).split(_FX_CONTEXT, 1)[0].strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


class CaptureError(FxApproxError):
    """The model could not be turned into an FX graph by any capture path."""


class BlockDiscoveryError(FxApproxError):
    """The stack of repeated blocks, or a block's output node, could not be identified."""


class NoMiddleBoundaryError(BlockDiscoveryError):
    """A block has no middle boundary `M_k` (e.g. parallel attention + MLP): no half units on it."""


class NoBlockStackError(BlockDiscoveryError):
    """No ModuleList/Sequential of same-class children was found (or `blocks=` names none)."""


class AmbiguousBlockStackError(BlockDiscoveryError):
    """Several candidate block stacks are equally long; the caller must choose with `blocks=`."""


class SpanError(FxApproxError, ValueError):
    """A span is out of range, overlaps another, or cannot take the requested transform."""


class FoldError(SpanError):
    """A span's map cannot be folded into the Linear that ends the block before it (`fold=True`)."""


class CalibrationError(FxApproxError):
    """Calibration data was missing, malformed or produced unusable activations."""


class EmptyCalibrationError(CalibrationError):
    """The calibration loader yielded no batch."""


class NonFiniteActivationError(CalibrationError):
    """A watched boundary tensor held NaN or Inf during calibration."""


class UnsupportedBatchError(CalibrationError, TypeError):
    """A batch was neither a tensor, a tuple/list whose first item is the input, nor a mapping."""


class FewerSamplesWarning(UserWarning):
    """The calibration loader ran out before `num_samples` samples were seen."""


class PlanMismatchError(FxApproxError):
    """A saved compression plan does not fit the model it is applied to."""


class CorruptPlanError(PlanMismatchError):
    """A plan directory is damaged: a file missing or truncated, a key missing or of the wrong type, spans out
    of range, weights of the wrong shape, or weights whose checksum differs from the one `plan.json` records."""


class ExportError(FxApproxError):
    """The model could not be exported to ONNX, or the export request was malformed."""


class ExportMismatchError(ExportError):
    """onnxruntime's outputs disagree with PyTorch's beyond the tolerance."""


class ProviderUnavailableError(ExportError):
    """An onnxruntime execution provider was requested explicitly but is not available."""


class RuntimeMissingError(ExportError, ImportError):
    """No onnxruntime package (neither `onnxruntime` nor `onnxruntime-gpu`) is installed."""


class AssetError(FxApproxError):
    """A built-in model or dataset could not be fetched, verified or converted."""


class ChecksumMismatchError(AssetError):
    """A fetched file's sha256 differs from the pinned one."""


class RegistryUnreachableError(AssetError):
    """The package registry that holds an asset could not be reached."""


class DatasetFilesMissingError(AssetError, FileNotFoundError):
    """Files of a locally installed dataset (e.g. a Debian package) are missing."""


class MissingScoreError(FxApproxError, ValueError):
    """A score was asked of an analysis (or compress) that does not hold or take it."""


class UnsupportedOutputError(FxApproxError, TypeError):
    """The model's output holds neither final hidden states nor logits the `output` score can compare."""


class DistributedError(FxApproxError):
    """A multi-process (torch.distributed) run could not go on."""


class RankFailedError(DistributedError):
    """Another rank of the process group failed with an error that is not an fxapprox error."""


class RankMismatchError(DistributedError):
    """The ranks of a process group disagree on the model, the arguments or the boundary widths."""


class SingleProcessCommandError(DistributedError):
    """A command that runs in one process was started in a process group of several (e.g. by torchrun)."""


class OutputExistsError(FxApproxError, FileExistsError):
    """An output directory already holds files and overwriting them was not allowed."""


class ConfigError(FxApproxError, ValueError):
    """An option of `CompressConfig` (or of a recipe file) has a value it cannot take; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class SpanConfigError(ConfigError, SpanError):
    """What to remove is missing or given twice (`spans`, `num_blocks`, the budgets) or out of range."""


class MetricConfigError(ConfigError, MissingScoreError):
    """`metric` names a score that `compress` does not take."""


class InferenceOnlyError(FxApproxError, NotImplementedError):
    """Training mode was asked of a captured (inference-only) module."""


class GraphDtypeError(FxApproxError, TypeError):
    """A captured graph fixed a floating dtype (an upcast, a cast to the weights' dtype) that a
    conversion of the module (`.half()`, `.to(dtype)`) would have to change."""


class RefineError(FxApproxError, ValueError):
    """Options of the refinement or of the `mlp` transform are invalid, or the result cannot be refined."""
