"""Raw dynamo ONNX export → fused graph for onnxruntime (Attention, SkipLayerNormalization, BiasGelu).

The fusions are onnxscript's `onnxscript.rewriter.ort_fusions.optimize_for_ort`. onnxruntime's own
transformer optimizer (`onnxruntime.transformers.optimizer.optimize_model`, model_type vit/bert)
was compared on the same files: it fuses SkipLayerNormalization and BiasGelu but finds no
Attention in the dynamo export (transformers' SDPA attention is not one of its patterns), so it is
not used (README "Deployment figures").

Before fusing, each span `Linear` whose output feeds a LayerNormalization (pre-norm blocks: ViT,
DINOv2) is written in residual form, `y = x + (x (W − I) + b)`: the same function, but the graph
then shows the `LN(x + bias + matmul)` shape the SkipLayerNormalization rule fuses, as the
residual add of the removed block did. Without it the first LayerNorm after each span stays a
plain LayerNormalization (and its input a separate MatMul + Add).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fxapprox.atomic import staged_path
from fxapprox.errors import ExportError

__all__ = ["optimize_onnx", "optimized_pair", "fused_ops", "original_fused_ops", "FUSED_OPS", "SPAN_PREFIX"]

log = logging.getLogger(__name__)

#: onnxruntime contrib ops the fusions produce, and the plain LayerNormalization left unfused.
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu",
             "LayerNormalization")
#: Name prefix of the span modules (and so of their initializers) in a compressed graph.
SPAN_PREFIX = "fxapprox_blocks_"


def fused_ops(model_or_path: Any) -> dict[str, int]:
    """An ONNX model or file → how many of each `FUSED_OPS` it holds (absent ones omitted)."""
    import onnx

    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(
        str(model_or_path), load_external_data=False)
    counts = Counter(n.op_type for n in model.graph.node if n.op_type in FUSED_OPS)
    return dict(sorted(counts.items()))


def _residual_span_linears(model: Any) -> int:
    """Rewrite each span `MatMul(x, W) + b` that feeds a LayerNormalization as
    `x + (MatMul(x, W − I) + b)` in place (onnx_ir model); returns how many were rewritten."""
    import onnx_ir as ir

    graph = model.graph
    rewritten = 0
    for add in list(graph):
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
            continue
        matmul_out, bias = add.inputs
        if bias is None or not bias.name or not bias.name.startswith(SPAN_PREFIX):
            continue
        matmul = matmul_out.producer() if matmul_out is not None else None
        if matmul is None or matmul.op_type != "MatMul" or matmul.inputs[1].const_value is None:
            continue
        out = add.outputs[0]
        if not any(use.node.op_type == "LayerNormalization" for use in out.uses()):
            continue
        weight = matmul.inputs[1]
        w = weight.const_value.numpy()
        if w.ndim != 2 or w.shape[0] != w.shape[1]:
            continue
        x = matmul.inputs[0]
        shifted = ir.Value(name=f"{weight.name}_minus_identity", shape=weight.shape, type=weight.type,
                           const_value=ir.tensor(w - np.eye(w.shape[0], dtype=w.dtype)))
        graph.register_initializer(shifted)
        matmul.replace_input_with(1, shifted)
        residual = ir.node("Add", [out, x], name=f"{add.name}_residual")
        residual.outputs[0].name = f"{out.name}_residual"
        graph.insert_after(add, residual)
        out.replace_all_uses_with(residual.outputs[0])
        residual.replace_input_with(0, out)  # the line above also redirected the new node's own input
        if out.is_graph_output():
            graph.outputs[graph.outputs.index(out)] = residual.outputs[0]
        rewritten += 1
    return rewritten


def optimize_onnx(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """ONNX file `src` → fused ONNX file `dst` (may be the same path).

    Returns a record: the fused-operator counts before and after, the fusion statistics of
    onnxscript's rules and how many span Linears were put in residual form.
    """
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    before = fused_ops(src)
    model = ir.load(str(src))
    residual = _residual_span_linears(model)
    try:
        model, stats = optimize_for_ort(model)
    except Exception as err:  # onnxscript's rewriter raises many types
        raise ExportError(
            f"onnxscript's ORT fusions failed on {src}: {type(err).__name__}: {err}. Export without "
            "optimize=True, or report the model to onnxscript"
        ) from err
    dst = Path(dst)
    data = dst.with_name(dst.name + ".data")
    external = data.is_file() or Path(str(src) + ".data").is_file()
    with staged_path(dst) as staged:  # `dst` (may be `src`) is replaced only once the new file is complete
        ir.save(model, str(staged), external_data=data.name if external else None)
        after = fused_ops(staged)
    log.info("fused %s: %s → %s (%d span Linear(s) in residual form)", dst.name, before, after, residual)
    return {"optimizer": "onnxscript.rewriter.ort_fusions.optimize_for_ort", "fused_ops_before": before,
            "fused_ops": after, "fusion_rules": {k: v for k, v in stats.items() if v},
            "span_linears_in_residual_form": residual}


def original_fused_ops(model: Any, example_inputs: Any) -> dict[str, int]:
    """The fused-operator counts of `model` exported and optimized like a compressed one (no parity
    check: for reporting next to the compressed model's counts)."""
    import tempfile

    from fxapprox.export.onnx import to_onnx

    with tempfile.TemporaryDirectory() as tmp:
        return to_onnx(model, example_inputs, Path(tmp) / "original.onnx", optimize=True,
                       validate=False).optimization["fused_ops"]


def optimized_pair(sources: Sequence[Any], out_dir: str | Path, example_inputs: Any = None, *,
                   precision: str = "fp32") -> list[Path]:
    """Original and compressed (ONNX files, or modules / compression results with `example_inputs`)
    → both fused the same way (and converted to `precision`) in `out_dir`, for a like-for-like
    benchmark. Modules are exported with `to_onnx` (parity-checked) and their per-item FLOPs
    stored in the `fxapprox.flops` metadata that `fxapprox bench` reads."""
    from fxapprox.export.flops import count_flops
    from fxapprox.export.onnx import to_onnx
    from fxapprox.export.precision import convert_precision
    from fxapprox.inputs import as_model_inputs

    out_dir = Path(out_dir)
    files = []
    for i, source in enumerate(sources):
        dst = out_dir / f"{i}_{'original' if i == 0 else 'compressed'}.onnx"
        if isinstance(source, (str, Path)):
            optimize_onnx(source, dst)
            if precision != "fp32":
                convert_precision(dst, dst.with_suffix(f".{precision}.onnx"), precision)
                dst = dst.with_suffix(f".{precision}.onnx")
        else:
            if example_inputs is None:
                raise ExportError("optimized_pair: modules need example_inputs to be exported")
            example = as_model_inputs(example_inputs, what="example inputs")
            flops = count_flops(source, example.take(1))
            to_onnx(source, example, dst, optimize=True, precision=precision,
                    metadata={"fxapprox.flops": {"per_item": flops.per_item, "params": flops.params}})
        files.append(dst)
    return files
