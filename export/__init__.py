"""ONNX export, parity validation, benchmarking and FLOP counts (installed as `fxapprox.export`).

Module or compression result → checked ONNX file (`to_onnx`); ONNX file or module → latency
per batch size (`benchmark`), original vs compressed interleaved (`compare`; the modules
themselves in PyTorch, per precision and mode: `torch_compare`); module → FLOPs and parameters
per block (`count_flops`, `compare_flops`); raw ONNX file → fused for onnxruntime
(`optimize_onnx`) → fp16 / int8 (`convert_precision`).
"""

from __future__ import annotations

from fxapprox.export.benchmark import BenchResult, Timing, benchmark, compare, resolve_providers
from fxapprox.export.flops import FlopCount, compare_flops, count_flops
from fxapprox.export.onnx import OnnxExport, ParityCheck, read_metadata, to_onnx
from fxapprox.export.optimize import fused_ops, optimize_onnx
from fxapprox.export.precision import PRECISION_TOLERANCES, convert_precision
from fxapprox.export.torch_bench import TORCH_PRECISIONS, torch_compare

__all__ = [
    "to_onnx",
    "OnnxExport",
    "ParityCheck",
    "read_metadata",
    "benchmark",
    "compare",
    "BenchResult",
    "Timing",
    "resolve_providers",
    "count_flops",
    "compare_flops",
    "FlopCount",
    "optimize_onnx",
    "fused_ops",
    "convert_precision",
    "PRECISION_TOLERANCES",
    "torch_compare",
    "TORCH_PRECISIONS",
]
