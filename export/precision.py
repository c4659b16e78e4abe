"""fp32 ONNX file → fp16 (for GPUs) or int8 dynamically quantized (for CPUs) ONNX file, and the
parity tolerance that fits each precision.

* `fp16`: onnxruntime.transformers' float16 conversion (it knows the fused contrib ops), inputs
  and outputs kept fp32 so callers feed the same tensors. Tolerance: elementwise rtol = atol =
  2e-2 (fp16 keeps ~3 significant digits; errors grow a little per block).
* `int8`: `onnxruntime.quantization.quantize_dynamic`, int8 weights of MatMul/Gemm (QInt8, per
  tensor), activations quantized at run time. Per-element bounds say little for quantization
  (a few elements move by 0.1 while the output stays right), so int8 parity is the relative
  error of each output, ‖onnxruntime − PyTorch‖_F / ‖PyTorch‖_F ≤ 0.25 (measured: 0.01–0.02 on
  the tiny test models, 0.15 on DINOv2-small's last hidden state, whose few high-norm tokens
  quantize coarsely; a wrong graph is off by ~1); how much the predictions change is measured on
  a real asset (README "Deployment figures").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fxapprox.atomic import staged_path
from fxapprox.errors import ExportError
from fxapprox.export.runtime import onnxruntime

__all__ = ["PRECISIONS", "PRECISION_TOLERANCES", "convert_precision"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
#: precision → ("elementwise", rtol, atol) or ("relative", max ‖got − want‖_F / ‖want‖_F, None).
PRECISION_TOLERANCES: dict[str, tuple[str, float, float | None]] = {
    "fp16": ("elementwise", 2e-2, 2e-2),
    "int8": ("relative", 0.25, None),
}


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ExportError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")


def convert_precision(src: str | Path, dst: str | Path, precision: str) -> dict[str, Any]:
    """fp32 ONNX file `src` → `dst` in `precision` ("fp16" or "int8"); returns a small record."""
    _check(precision)
    if precision == "fp32":
        raise ExportError("convert_precision: the file is already fp32; ask for fp16 or int8")
    src, dst = Path(src), Path(dst)
    onnxruntime()  # both converters ship with onnxruntime: RuntimeMissingError when it is absent
    if precision == "fp16":
        import onnx
        from onnxruntime.transformers.onnx_model import OnnxModel

        model = OnnxModel(onnx.load(str(src)))
        model.convert_float_to_float16(keep_io_types=True)
        with staged_path(dst) as staged:
            model.save_model_to_file(str(staged), use_external_data_format=Path(str(src) + ".data").is_file())
        record = {"precision": "fp16", "converter": "onnxruntime.transformers float16", "keep_io_types": True}
    else:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quant_log = logging.getLogger()  # quantize_dynamic warns on the root logger about pre-processing
        level = quant_log.level
        quant_log.setLevel(max(level, logging.ERROR))
        try:
            with staged_path(dst) as staged:
                quantize_dynamic(src, staged, weight_type=QuantType.QInt8,
                                 use_external_data_format=Path(str(src) + ".data").is_file())
        finally:
            quant_log.setLevel(level)
        record = {"precision": "int8", "converter": "onnxruntime.quantization.quantize_dynamic",
                  "weight_type": "QInt8"}
    log.info("converted %s to %s: %s", src.name, precision, dst)
    return record
