"""PyTorch module (or compression result) + example inputs → a checked ONNX file.

`to_onnx` runs `torch.onnx.export(..., dynamo=True)` with a dynamic batch axis (and a dynamic
sequence axis for token inputs), names the graph's outputs after the model's own outputs
(`last_hidden_state`, `pooler_output`, ...), stores the compression plan in the model's
`metadata_props`, validates the file with `onnx.checker` and compares onnxruntime (graph
optimisations off) with PyTorch at the example shape and at a second batch size (and sequence
length), raising `ExportMismatchError` with the worst difference when they disagree.
`optimize=True` then fuses the graph for onnxruntime (`export/optimize.py`) and `precision=`
converts it to fp16 or int8 (`export/precision.py`); the file as written is checked again, with
the tolerance of its precision.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fxapprox.atomic import staged_path
from fxapprox.capture import conform_inputs
from fxapprox.errors import ExportError, ExportMismatchError
from fxapprox.export.runtime import onnxruntime
from fxapprox.inputs import ModelInputs, as_model_inputs

__all__ = [
    "to_onnx",
    "OnnxExport",
    "ParityCheck",
    "default_tolerance",
    "output_names",
    "plan_metadata",
    "read_metadata",
    "ort_feed",
    "resize_inputs",
]

log = logging.getLogger(__name__)

#: (rtol, atol) by output dtype for the onnxruntime-vs-PyTorch comparison.
_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-3, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 2e-2),
}
_BATCH, _SEQ = "batch", "sequence"
_METADATA_PREFIX = "fxapprox."


@dataclass
class ParityCheck:
    """One onnxruntime-vs-PyTorch comparison: the input shape and the worst error per output
    (`rel_err`: ‖onnxruntime − PyTorch‖_F / ‖PyTorch‖_F per output)."""

    batch_size: int
    seq_len: int | None
    max_abs_diff: dict[str, float]
    ok: bool
    rel_err: dict[str, float] = field(default_factory=dict)


@dataclass
class OnnxExport:
    """What `to_onnx` wrote and how it was checked."""

    path: Path
    input_names: list[str]
    output_names: list[str]
    opset: int
    external_data: bool
    size_bytes: int
    dynamic_axes: dict[str, dict[int, str]]
    metadata: dict[str, str]
    checks: list[ParityCheck] = field(default_factory=list)
    #: "fp32", "fp16" or "int8"; `optimization` is `optimize_onnx`'s record when optimize=True.
    precision: str = "fp32"
    optimization: dict[str, Any] | None = None
    #: The checks of the file as written when it is not the raw export (fused and/or converted).
    final_checks: list[ParityCheck] = field(default_factory=list)
    tolerance: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) suited to outputs of `dtype`; integer and bool outputs must match exactly."""
    return _TOLERANCES.get(dtype, (0.0, 0.0))


def _named_leaves(output: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """A model output → (key path, leaf) in flattening order: mappings (dicts, `ModelOutput`s, whose
    None fields are absent) by key, tuples/lists by `output_i`, anything else is a leaf.

    Written out rather than taken from `torch.utils._pytree.tree_flatten_with_path`, which needs a
    `flatten_with_keys_fn` that transformers' `ModelOutput` registration does not always provide."""
    if isinstance(output, Mapping):
        return [leaf for k, v in output.items() if v is not None for leaf in _named_leaves(v, (*prefix, str(k)))]
    if isinstance(output, (tuple, list)):
        return [leaf for i, v in enumerate(output)
                for leaf in _named_leaves(v, (*prefix, f"output_{i}" if not prefix else str(i)))]
    return [(prefix, output)]


def output_names(output: Any) -> list[str]:
    """Names of the tensors of a model output in flattening order.

    A tensor → `output`; a `ModelOutput`/dict → its keys (`last_hidden_state`, ...); a tuple →
    `output_0`, `output_1`, ...; nested containers join the keys with `_`. Anything that is not
    a tensor leaf → `ExportError`.
    """
    if isinstance(output, torch.Tensor):
        return ["output"]
    names = []
    for keypath, leaf in _named_leaves(output):
        name = "_".join(keypath) or "output"
        if not isinstance(leaf, torch.Tensor):
            raise ExportError(
                f"the model's output {name!r} is a {type(leaf).__name__}, not a tensor: ONNX graphs "
                "return tensors only. Wrap the model so that forward returns a tensor, a tuple/dict "
                "of tensors or a transformers ModelOutput"
            )
        names.append(name)
    if not names:
        raise ExportError("the model returned no tensor; an ONNX graph needs at least one output")
    if len(set(names)) != len(names):
        names = [f"output_{i}" for i in range(len(names))]
    return names


def _flat_outputs(output: Any) -> list[torch.Tensor]:
    return [leaf for _, leaf in _named_leaves(output)]


def _unwrap(module_or_result: Any) -> tuple[nn.Module, Any]:
    """A module, or a compression result (`.module` + `.plan`) → (module, plan or None)."""
    if isinstance(module_or_result, nn.Module):
        return module_or_result, None
    module = getattr(module_or_result, "module", None)
    if isinstance(module, nn.Module):
        return module, getattr(module_or_result, "plan", None)
    raise ExportError(
        f"cannot export a {type(module_or_result).__name__}: pass an nn.Module (the original model "
        "or a compressed GraphModule) or the result of fxapprox.compress / fxapprox.load"
    )


def run_module(module: nn.Module, inputs: ModelInputs) -> Any:
    """`module(*args, **kwargs)` without gradients; a failure → `ExportError` that says why."""
    try:
        with torch.no_grad():
            return inputs.call(module)
    except Exception as err:  # any failure of the user's forward
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ExportError(
            f"{type(module).__name__} does not run on the example inputs "
            f"({', '.join(f'{k}{tuple(v.shape)}' for k, v in _shapes(inputs).items())}): {type(err).__name__}: "
            f"{first}. A captured or compressed module only accepts the shapes it was captured with, "
            "except the batch (and sequence) axis: give inputs of those shapes"
        ) from err


def _shapes(inputs: ModelInputs) -> dict[str, torch.Tensor]:
    named = {f"arg{i}": a for i, a in enumerate(inputs.args)} | dict(inputs.kwargs)
    return {k: v for k, v in named.items() if isinstance(v, torch.Tensor)}


def _set_eval(module: nn.Module) -> None:
    try:
        module.eval()
    except NotImplementedError:  # torch.export's GraphModules refuse eval(); they are traced in eval
        pass


def plan_metadata(plan: Any) -> dict[str, str]:
    """A compression plan → ONNX `metadata_props` entries (`fxapprox.plan` holds it as JSON)."""
    if plan is None:
        return {}
    spans = [
        {"s": sp.s, "e": sp.e, "removed_blocks": list(range(sp.s + 1, sp.e + 1)), "transform": sp.transform,
         "residual": sp.residual, "in_features": sp.in_features, "out_features": sp.out_features}
        for sp in plan.spans
    ]
    meta = {
        "model_class": plan.model_class,
        "blocks": plan.blocks,
        "num_blocks": plan.num_blocks,
        "units": getattr(plan, "units", "block"),  # "half": spans count half blocks, removed_blocks units
        "num_samples": plan.num_samples,
        "ridge": plan.ridge,
        "spans": spans,
    }
    return {
        f"{_METADATA_PREFIX}plan": json.dumps(meta),
        f"{_METADATA_PREFIX}source_model": str(plan.model_class),
        f"{_METADATA_PREFIX}spans": ",".join(f"{sp.s}->{sp.e}:{sp.transform}" for sp in plan.spans),
    }


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file (without loading external weights)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _positional_names(module: nn.Module, count: int) -> list[str]:
    """Names of the first `count` positional parameters of `module.forward` (`input_i` beyond)."""
    names = []
    for p in inspect.signature(module.forward).parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
    return (names + [f"input_{i}" for i in range(len(names), count)])[:count]


def _token_shape(inputs: ModelInputs, dynamic_seq: bool | None) -> tuple[int, int] | None:
    """(batch, tokens) of the token inputs when the sequence axis is dynamic, else None."""
    if dynamic_seq is False:
        return None
    tokens = [t for t in inputs.tensors() if t.ndim == 2 and not t.is_floating_point()]
    if tokens:
        return tuple(tokens[0].shape[:2])
    if dynamic_seq:
        wide = [t for t in inputs.tensors() if t.ndim >= 2]
        if not wide:
            raise ExportError("dynamic_seq=True but no input has a second (sequence) dimension")
        return tuple(wide[0].shape[:2])
    return None


def _axes(t: Any, batch: int | None, token_shape: tuple[int, int] | None) -> dict[int, str] | None:
    if not isinstance(t, torch.Tensor) or t.ndim == 0:
        return None
    axes = {}
    if batch is not None and t.shape[0] == batch:
        axes[0] = _BATCH
    if token_shape is not None and t.ndim >= 2 and tuple(t.shape[:2]) == token_shape:
        axes[1] = _SEQ
    return axes or None


def _named_inputs(module: nn.Module, inputs: ModelInputs) -> dict[str, Any]:
    return {**dict(zip(_positional_names(module, len(inputs.args)), inputs.args)), **inputs.kwargs}


def resize_inputs(inputs: ModelInputs, batch_size: int, seq_len: int | None = None,
                  token_shape: tuple[int, int] | None = None) -> ModelInputs:
    """Example inputs → the same inputs at another batch size (rows repeated cyclically) and,
    for the tensors of shape `token_shape`, another sequence length (cut, or last token repeated)."""
    batch = inputs.batch_size
    rows = torch.arange(batch_size) % batch

    def resize(t: torch.Tensor) -> torch.Tensor:
        shape = tuple(t.shape[:2])
        out = t.index_select(0, rows.to(t.device)) if t.ndim and t.shape[0] == batch else t
        if seq_len is not None and token_shape is not None and t.ndim >= 2 and shape == token_shape:
            cols = torch.arange(seq_len).clamp(max=token_shape[1] - 1)
            out = out.index_select(1, cols.to(t.device))
        return out

    return inputs.map_tensors(resize)


def ort_feed(session: Any, module_inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Named model inputs → onnxruntime's input feed (matched by name, else by position)."""
    tensors = {k: v for k, v in module_inputs.items() if isinstance(v, torch.Tensor)}
    names = [i.name for i in session.get_inputs()]
    if all(n in tensors for n in names):
        return {n: tensors[n].detach().cpu().numpy() for n in names}
    if len(names) != len(tensors):
        raise ExportError(
            f"the ONNX graph takes inputs {names}, the example has tensors {list(tensors)}; export and "
            "run with the same inputs"
        )
    return {n: t.detach().cpu().numpy() for n, t in zip(names, tensors.values())}


def _compare(name: str, got: np.ndarray, want: torch.Tensor, rtol: float | None,
             atol: float | None, relative: float | None = None) -> tuple[float, float, bool]:
    """(worst |difference|, relative Frobenius error, ok): elementwise within rtol/atol, or, with
    `relative`, a relative error of at most `relative`."""
    want = want.detach().cpu()
    default_rtol, default_atol = default_tolerance(want.dtype)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    if tuple(got.shape) != tuple(want.shape):
        raise ExportMismatchError(
            f"onnxruntime's output {name!r} has shape {tuple(got.shape)}, PyTorch's {tuple(want.shape)}: "
            "a shape was fixed at export time; export with dynamic_batch/dynamic_seq for that axis"
        )
    w = want.double().numpy() if want.dtype != torch.bool else want.numpy()
    g = got.astype(w.dtype)
    diff = np.abs(g - w)
    finite = bool(np.isfinite(g).all() == np.isfinite(w).all())
    worst = float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0
    norm = float(np.linalg.norm(w.astype(np.float64))) if w.dtype != np.bool_ else 0.0
    rel = float(np.linalg.norm(np.nan_to_num(diff, nan=np.inf).astype(np.float64))) / norm if norm else worst
    if relative is not None:
        return worst, rel, finite and rel <= relative
    ok = finite and bool((np.nan_to_num(diff, nan=np.inf) <= atol + rtol * np.abs(w)).all())
    return worst, rel, ok


def _quiet_export(module: nn.Module, inputs: ModelInputs, **kwargs: Any) -> Any:
    """`torch.onnx.export(dynamo=True)` without its progress prints and train-mode warnings."""
    noisy = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in noisy]
    try:
        for lg in noisy:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message=".*training mode.*")
            warnings.filterwarnings("ignore", message=".*axis name.*")
            return torch.onnx.export(module, inputs.args, kwargs=inputs.kwargs, dynamo=True, verbose=False, **kwargs)
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a directory; give the path of the .onnx file to write")
    if not path.parent.is_dir():
        raise ExportError(f"directory {path.parent} does not exist; create it first or choose another path")
    return path


def _written_size(path: Path) -> tuple[int, bool]:
    data = path.with_name(path.name + ".data")
    external = data.is_file()
    return path.stat().st_size + (data.stat().st_size if external else 0), external


def to_onnx(module_or_model: Any, example_inputs: Any, path: str | Path, *, dynamic_batch: bool = True,
            dynamic_seq: bool | None = None, opset: int | None = None, metadata: Mapping[str, Any] | None = None,
            rtol: float | None = None, atol: float | None = None,
            check_batch_sizes: Sequence[int] | None = None, check_seq_lens: Sequence[int] | None = None,
            external_data: bool | None = None, validate: bool = True, optimize: bool = False,
            precision: str = "fp32") -> OnnxExport:
    """Module or compression result + example inputs → ONNX file at `path`, checked in onnxruntime.

    `example_inputs` is a tensor, a tuple/list whose first item is the input, a dict of keyword
    arguments, or `ModelInputs`. `dynamic_seq=None` makes the sequence axis dynamic when an input
    is a 2-D integer tensor (token ids). Parity is checked at the example shape and at
    `check_batch_sizes` (default: one other batch size) and `check_seq_lens` (default: one other
    length, for token inputs), with `rtol`/`atol` defaulting by output dtype.
    `external_data=None` stores the weights in `<path>.data` only when the model is over 2 GB.

    `optimize=True` fuses Attention, SkipLayerNormalization and BiasGelu for onnxruntime
    (`optimize_onnx`); `precision` "fp16" (GPU) or "int8" (dynamic quantization, CPU) converts
    the file after that (`convert_precision`). The raw export is checked with the tolerances
    above; the file as written again (`final_checks`): fused fp32 with the same tolerances, fp16
    elementwise within rtol = atol = 2e-2, int8 by relative error ‖ort − torch‖_F/‖torch‖_F ≤ 0.25.
    """
    from fxapprox.export.precision import PRECISIONS

    if precision not in PRECISIONS:
        raise ExportError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    module, plan = _unwrap(module_or_model)
    if any(p.dtype == torch.bfloat16 for p in module.parameters()):
        raise ExportError(
            "the module holds bfloat16 weights: torch.onnx exports them, but onnxruntime has no bfloat16 kernels "
            "for most operators (Conv, MatMul, LayerNormalization on CPU), so the file cannot be checked or run; "
            "export a float32 copy: to_onnx(result.module.float(), float32 inputs, path)")
    path = _check_path(path)
    inputs = conform_inputs(module, as_model_inputs(example_inputs, what="example inputs"))
    _set_eval(module)
    reference = run_module(module, inputs)
    names = output_names(reference)
    batch = inputs.batch_size if dynamic_batch else None
    token_shape = _token_shape(inputs, dynamic_seq)
    named = _named_inputs(module, inputs)
    dynamic_shapes = {k: _axes(v, batch, token_shape) for k, v in named.items()}
    dynamic_axes = {k: v for k, v in dynamic_shapes.items() if v}
    export_kwargs: dict[str, Any] = {"output_names": names}
    if dynamic_axes:
        export_kwargs["dynamic_shapes"] = dynamic_shapes
    if opset is not None:
        export_kwargs["opset_version"] = opset
    try:
        program = _quiet_export(module, inputs, **export_kwargs)
    except Exception as err:  # the exporter raises many unrelated types
        raise ExportError(
            f"torch.onnx.export(dynamo=True) failed for {type(module).__name__}: {type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}. Check that "
            "torch.export.export(model, args, kwargs, strict=False) works on these inputs, or try "
            "dynamic_batch=False / dynamic_seq=False"
        ) from err
    user = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    props = {**plan_metadata(plan), **user}
    program.model.metadata_props.update(props)
    final = path
    with staged_path(final) as path:  # written, checked and converted beside `final`, then renamed over it
        program.save(str(path), external_data=external_data)
        size, external = _written_size(path)
        opset_used = program.model.opset_imports.get("", opset or 0)
        result = OnnxExport(path, _input_names(path), names, int(opset_used), external, size, dynamic_axes, props)
        _check_model(path)
        check = lambda rt, at, rel=None: _parity(module, inputs, path, names, reference, batch,  # noqa: E731
                                                 token_shape, check_batch_sizes, check_seq_lens, rt, at, rel)
        if validate:
            result.checks = check(rtol, atol)
        if optimize or precision != "fp32":
            _deploy_form(result, optimize, precision, check if validate else None, rtol, atol)
    result.path = path = final
    stale = path.with_name(path.name + ".data")
    if not result.external_data and stale.exists():  # an earlier export's external data
        stale.unlink()
    log.info("exported %s to %s (%d bytes%s), opset %d, outputs %s", type(module).__name__, path, size,
             ", external data" if external else "", result.opset, names)
    return result


def _deploy_form(result: OnnxExport, optimize: bool, precision: str, check: Any, rtol: float | None,
                 atol: float | None) -> None:
    """Fuse and/or convert `result.path` in place, then check the file as written (`check`)."""
    from fxapprox.export.optimize import optimize_onnx
    from fxapprox.export.precision import PRECISION_TOLERANCES, convert_precision

    path = result.path
    if optimize:
        result.optimization = optimize_onnx(path, path)
    relative = None
    if precision != "fp32" and result.external_data:
        raise ExportError(f"{path} keeps its weights in external data (over 2 GB); precision={precision!r} is only "
                          "supported for single-file models: export with precision='fp32' and convert with "
                          "onnxruntime's tools")
    if precision != "fp32":
        staged = path.with_name(path.stem + f".{precision}.tmp.onnx")
        convert_precision(path, staged, precision)
        for src, dst in ((staged, path), (Path(str(staged) + ".data"), Path(str(path) + ".data"))):
            if src.is_file():
                src.replace(dst)
        result.precision = precision
        kind, rtol, tol = PRECISION_TOLERANCES[precision]
        if kind == "relative":
            relative = rtol
        else:
            atol = tol
    result.size_bytes, result.external_data = _written_size(path)
    result.tolerance = {"relative": relative} if relative is not None else {"rtol": rtol, "atol": atol}
    _check_model(path)
    if check is not None:
        result.final_checks = check(rtol, atol, relative)


def _input_names(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [i.name for i in model.graph.input]


def _check_model(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as err:
        raise ExportError(
            f"onnx.checker rejected {path}: {str(err).strip().splitlines()[0]}. Re-export with another "
            "opset= or report the model to the torch.onnx exporter"
        ) from err


def _session(path: Path) -> Any:
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _parity(module: nn.Module, inputs: ModelInputs, path: Path, names: list[str], reference: Any,
            batch: int | None, token_shape: tuple[int, int] | None,
            check_batch_sizes: Sequence[int] | None, check_seq_lens: Sequence[int] | None,
            rtol: float | None, atol: float | None, relative: float | None = None) -> list[ParityCheck]:
    """onnxruntime (optimisations off, CPU) vs PyTorch at the example and the other shapes."""
    session = _session(path)
    base = inputs.batch_size
    seq = token_shape[1] if token_shape else None
    shapes: list[tuple[int, int | None]] = [(base, seq)]
    if batch is not None:
        others = check_batch_sizes if check_batch_sizes is not None else [2 * base + 1]
        shapes += [(b, seq) for b in others if b != base]
    if token_shape is not None:
        others = check_seq_lens if check_seq_lens is not None else [seq - max(1, seq // 4) if seq > 2 else seq + 1]
        shapes += [(base, t) for t in others if t != seq]
    checks = []
    for b, t in shapes:
        sized = inputs if (b, t) == (base, seq) else resize_inputs(inputs, b, t, token_shape)
        want = reference if sized is inputs else run_module(module, sized)
        try:
            got = session.run(None, ort_feed(session, _named_inputs(module, sized)))
        except Exception as err:  # onnxruntime raises its own exception types
            raise ExportMismatchError(
                f"onnxruntime failed to run {path} at batch {b}" + (f", sequence {t}" if t else "")
                + f": {str(err).strip().splitlines()[0]}. Export with the axis fixed "
                "(dynamic_batch=False / dynamic_seq=False) or check the model for shape-dependent code"
            ) from err
        wants = _flat_outputs(want)
        if len(got) != len(wants):
            raise ExportMismatchError(
                f"onnxruntime returned {len(got)} outputs, PyTorch {len(wants)}; the model's output "
                "structure depends on its inputs, which an ONNX graph cannot follow"
            )
        diffs, rels, ok = {}, {}, True
        for name, g, w in zip(names, got, wants):
            diffs[name], rels[name], good = _compare(name, g, w, rtol, atol, relative)
            ok = ok and good
        checks.append(ParityCheck(b, t, diffs, ok, rels))
        if not ok:
            worst_name = max(diffs, key=diffs.get)
            ref = wants[names.index(worst_name)]
            r, a = default_tolerance(ref.dtype)
            tol = (f"relative error {rels[worst_name]:.3g} > {relative:g}" if relative is not None else
                   f"tolerance rtol={rtol if rtol is not None else r:g}, atol={atol if atol is not None else a:g}")
            err = ExportMismatchError(
                f"onnxruntime disagrees with PyTorch on {path.name} at batch {b}"
                + (f", sequence {t}" if t else "")
                + f": worst |difference| {diffs[worst_name]:.3g} in output {worst_name!r} "
                f"({tol} for {ref.dtype}). Look for shape-dependent Python code in forward, export with "
                "opset= another version, or pass looser rtol/atol if the error is rounding"
            )
            err.checks = checks
            err.worst_abs_diff = diffs[worst_name]
            err.output = worst_name
            raise err
    return checks
