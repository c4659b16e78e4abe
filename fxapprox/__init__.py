"""fxapprox: replace spans of transformer blocks by closed-form linear maps on the FX graph."""

from __future__ import annotations

from fxapprox.analysis import Analysis, analyze
from fxapprox.compression import CompressionResult, compress, load
from fxapprox.config import CompressConfig
from fxapprox.errors import *  # noqa: F401,F403
from fxapprox.errors import __all__ as _errors_all

__all__ = ["compress", "load", "CompressionResult", "CompressConfig", "analyze", "Analysis", *_errors_all]
__version__ = "0.1.0"
