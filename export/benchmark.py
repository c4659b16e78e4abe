"""ONNX file or PyTorch module + example inputs → latency (median and spread) and items/s per batch size.

ONNX files run in onnxruntime: the CUDA execution provider with IO binding (inputs and outputs
stay on the GPU) when it is available, the CPU provider otherwise (IO binding there on request,
`io_binding=True`); the provider that really ran is reported in every result, and one requested
explicitly but unavailable raises `ProviderUnavailableError`. fp16 files keep fp32 inputs and
outputs (`to_onnx(precision="fp16")`), so the same example inputs time every precision.
Modules run in PyTorch eager (on CUDA where present). `compare` times an original and a
compressed model interleaved in one run and reports their latency ratio next to their FLOP ratio.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fxapprox.capture import conform_inputs
from fxapprox.errors import ExportError, ProviderUnavailableError, one_line
from fxapprox.export.onnx import _set_eval, _unwrap, ort_feed, resize_inputs
from fxapprox.export.runtime import onnxruntime
from fxapprox.inputs import ModelInputs, as_model_inputs

__all__ = ["Timing", "BenchResult", "benchmark", "compare", "resolve_providers", "onnx_example_inputs",
           "interleaved", "comparison_row", "torch_runner", "torch_device"]

log = logging.getLogger(__name__)

_CUDA, _CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
_ALIASES = {"cuda": _CUDA, "gpu": _CUDA, "cpu": _CPU, "tensorrt": "TensorrtExecutionProvider"}


@dataclass
class Timing:
    """Latency statistics of one model at one batch size (milliseconds per call)."""

    batch_size: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    std_ms: float
    items_per_s: float
    iters: int

    @classmethod
    def of(cls, batch_size: int, seconds: Sequence[float]) -> Timing:
        ms = np.asarray(seconds) * 1e3
        median = float(np.median(ms))
        return cls(batch_size, median, float(np.percentile(ms, 10)), float(np.percentile(ms, 90)),
                   float(ms.min()), float(ms.std()), batch_size / (median / 1e3), len(ms))


@dataclass
class BenchResult:
    """Timings of one model on one backend; `provider` is the onnxruntime provider (or torch device) that ran."""

    backend: str
    provider: str
    device: str
    io_binding: bool = False
    timings: list[Timing] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def resolve_providers(providers: Sequence[str] | str | None) -> tuple[list[str], bool]:
    """Requested providers (full names or `cuda`/`cpu`) → onnxruntime's names and whether they were explicit.

    None → CUDA then CPU where onnxruntime has CUDA, else CPU. An explicitly requested provider
    that this onnxruntime lacks → `ProviderUnavailableError`.
    """
    available = onnxruntime().get_available_providers()
    if providers is None:
        return ([_CUDA, _CPU] if _CUDA in available else [_CPU]), False
    if isinstance(providers, str):
        providers = [providers]
    names = [_ALIASES.get(p.lower(), p) for p in providers]
    missing = [p for p in names if p not in available]
    if missing:
        hint = " (install the `gpu` extra: pip install onnxruntime-gpu, and a CUDA driver)" if _CUDA in missing else ""
        raise ProviderUnavailableError(
            f"onnxruntime provider(s) {missing} are not available here{hint}; available: {available}. "
            "Leave providers=None to use the best available one"
        )
    return names, True


def _ort_session(path: Path, providers: Sequence[str] | str | None, threads: int | None) -> tuple[Any, str]:
    names, explicit = resolve_providers(providers)
    ort = onnxruntime(cuda=names[0] == _CUDA)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = _load_session(ort, path, options, names)
    ran = session.get_providers()[0]
    if ran != names[0]:
        if explicit:
            raise ProviderUnavailableError(
                f"onnxruntime could not start {names[0]} for {path} and fell back to {ran} (check the "
                "CUDA/cuDNN libraries onnxruntime-gpu needs); request providers=['CPUExecutionProvider'] "
                "to benchmark on the CPU"
            )
        log.warning("onnxruntime could not start %s; running on %s", names[0], ran)
    return session, ran


def _load_session(ort: Any, path: Path, options: Any, providers: list[str]) -> Any:
    """`onnxruntime.InferenceSession` of `path`, or `ExportError` naming the file (empty, truncated, not ONNX)."""
    if path.stat().st_size == 0:
        raise ExportError(f"{path} is empty; pass an ONNX file written by to_onnx (or `fxapprox export`)")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph types
        raise ExportError(f"onnxruntime cannot load {path} ({one_line(err)}); the file is damaged, truncated or "
                          "not an ONNX model: export it again") from None


def _expected_inputs(session: Any) -> str:
    return ", ".join(f"{i.name}: {i.type} {i.shape}" for i in session.get_inputs())


def _ort_runner(session: Any, provider: str, inputs: ModelInputs, io_binding: bool) -> Callable[[], Any]:
    """A zero-argument call that runs the session once on `inputs` and returns its outputs (ORT
    values that stay on the provider's device with IO binding, numpy arrays without)."""
    named = {**{f"input_{i}": a for i, a in enumerate(inputs.args)}, **inputs.kwargs}
    feed = ort_feed(session, named)
    try:  # once, to answer inputs that do not fit the graph in one line
        session.run(None, feed)
    except Exception as err:  # onnxruntime's InvalidArgument / Fail for wrong dtypes, ranks or sizes
        given = ", ".join(f"{k}: {v.dtype} {list(v.shape)}" for k, v in feed.items())
        raise ExportError(f"the ONNX graph takes {_expected_inputs(session)}; the inputs given are {given} "
                          f"({one_line(err)})") from None
    if not io_binding:
        return lambda: session.run(None, feed)
    ort = onnxruntime()
    device = "cuda" if provider == _CUDA else "cpu"
    binding = session.io_binding()
    for name, arr in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, device, 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, device)

    def run() -> Any:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding.get_outputs()

    return run


def torch_device(device: str | torch.device | None) -> torch.device:
    """`device` (None: CUDA where present, else CPU) → a torch device; CUDA asked for but absent is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProviderUnavailableError("device='cuda' was requested but PyTorch sees no CUDA device; use device='cpu'")
    return device


def _on_device(module: nn.Module, device: torch.device) -> nn.Module:
    """The module on `device` (a copy when it has to move, so the caller's model stays put).

    A torch.export graph may hold tensors made on its capture device inside the graph; time a
    compressed model on the device it was compressed on.
    """
    tensors = [*module.parameters(), *module.buffers()]
    if all(t.device == device for t in tensors):
        return module
    return copy.deepcopy(module).to(device)


def torch_runner(module: nn.Module, inputs: ModelInputs, device: torch.device,
                 autocast: torch.dtype | None = None) -> Callable[[], Any]:
    """A zero-argument call of `module` on `inputs` (moved to `device`) in inference mode, under
    autocast to `autocast` when given; on CUDA it returns after the GPU has finished."""
    on_device = conform_inputs(module, inputs).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            on_device.call(module)
        sync()

    return run


class _Target:
    """One model to time: an ONNX file in onnxruntime or a module in PyTorch eager."""

    def __init__(self, target: Any, providers: Sequence[str] | str | None, device: str | torch.device | None,
                 threads: int | None, io_binding: bool | None = None):
        if isinstance(target, (str, Path)):
            path = Path(target)
            if not path.is_file():
                raise ExportError(f"{path} is not a file; pass an ONNX file written by to_onnx, or a module")
            self.session, self.provider = _ort_session(path, providers, threads)
            self.backend, self.device = "onnxruntime", "cuda" if self.provider == _CUDA else "cpu"
            self.io_binding = self.provider == _CUDA if io_binding is None else io_binding
            self.module = None
        else:
            if providers is not None or io_binding:
                raise ExportError("providers= and io_binding= are onnxruntime options; for a PyTorch module pass "
                                  "device= instead")
            module, _ = _unwrap(target)
            _set_eval(module)
            dev = torch_device(device)
            if threads:
                torch.set_num_threads(threads)
            self.module, self.session = _on_device(module, dev), None
            self.backend, self.device = "torch", str(dev)
            self.provider = f"torch-{dev.type}"
            self.io_binding = False

    def runner(self, inputs: ModelInputs) -> Callable[[], Any]:
        if self.session is not None:
            return _ort_runner(self.session, self.provider, inputs, self.io_binding)
        return torch_runner(self.module, inputs, torch.device(self.device))


def onnx_example_inputs(path: str | Path, *, batch_size: int = 1, seq_len: int = 128) -> ModelInputs:
    """An ONNX file's graph inputs → one example batch: floats random normal, integers (token
    ids, masks) all ones; symbolic axes become `batch_size` (the first) and `seq_len` (others)."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and the like
        raise ExportError(f"{path} cannot be read as an ONNX model ({one_line(err)}); the file is damaged, "
                          "truncated or not ONNX: export it again") from None
    initializers = {i.name for i in model.graph.initializer}
    kwargs = {}
    gen = torch.Generator().manual_seed(0)
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        tt = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (batch_size if i == 0 else seq_len)
                 for i, d in enumerate(tt.shape.dim)]
        dtype = torch.from_numpy(np.zeros(0, tensor_dtype_to_np_dtype(tt.elem_type))).dtype
        if dtype.is_floating_point:
            kwargs[inp.name] = torch.randn(shape, generator=gen).to(dtype)
        else:
            kwargs[inp.name] = torch.ones(shape, dtype=dtype)
    return ModelInputs((), kwargs)


def _batch(inputs: ModelInputs, batch_size: int) -> ModelInputs:
    return inputs if batch_size == inputs.batch_size else resize_inputs(inputs, batch_size)


def _time(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved(run_a: Callable[[], Any], run_b: Callable[[], Any], warmup: int, iters: int,
                warmup_s: float = 0.0) -> tuple[list[float], list[float]]:
    """Seconds per call of `run_a` and `run_b`, `iters` each, alternating which goes first, after
    untimed warm-up calls of both: at least `warmup` each and until `warmup_s` seconds have passed."""
    start, done = time.perf_counter(), 0
    while done < warmup or time.perf_counter() - start < warmup_s:
        run_a()
        run_b()
        done += 1
    ta, tb = [], []
    for i in range(iters):
        if i % 2:
            ta.append(_time(run_a))
            tb.append(_time(run_b))
        else:
            tb.append(_time(run_b))
            ta.append(_time(run_a))
    return ta, tb


def comparison_row(batch_size: int, original_s: Sequence[float], compressed_s: Sequence[float],
                   flop_speedup: float | None) -> dict[str, Any]:
    """Timings of original and compressed at one batch size → their row of a comparison: both
    timings, `speedup` (original / compressed median), `latency_ratio`, `efficiency` (speedup / FLOP ratio)."""
    ma, mb = Timing.of(batch_size, original_s), Timing.of(batch_size, compressed_s)
    speedup = ma.median_ms / mb.median_ms
    log.info("batch %d: %.3f ms → %.3f ms (speed-up %.2f×, FLOP ratio %s)", batch_size, ma.median_ms, mb.median_ms,
             speedup, f"{flop_speedup:.2f}×" if flop_speedup else "n/a")
    return {
        "batch_size": batch_size,
        "original": asdict(ma),
        "compressed": asdict(mb),
        "speedup": speedup,
        "latency_ratio": mb.median_ms / ma.median_ms,
        "flop_speedup": flop_speedup,
        "efficiency": speedup / flop_speedup if flop_speedup else None,
    }


def benchmark(path_or_module: Any, inputs: Any = None, *, providers: Sequence[str] | str | None = None,
              batch_sizes: Sequence[int] = (1, 8, 32), warmup: int = 5, iters: int = 30,
              device: str | torch.device | None = None, threads: int | None = None,
              io_binding: bool | None = None) -> BenchResult:
    """Time an ONNX file (onnxruntime) or a module (PyTorch eager) at each batch size.

    `inputs` is one example batch (tensor, tuple, dict or `ModelInputs`); its rows are repeated
    to make each batch size; for an ONNX file it may be None (see `onnx_example_inputs`).
    `providers` (ONNX only) defaults to CUDA then CPU; `io_binding` (ONNX only) defaults to on
    for CUDA; `device` (modules only) defaults to CUDA where present.
    """
    if inputs is None:
        if not isinstance(path_or_module, (str, Path)):
            raise ExportError("benchmark(module, inputs): a module needs example inputs (a tensor, tuple or dict)")
        inputs = onnx_example_inputs(path_or_module)
    inputs = as_model_inputs(inputs, what="example inputs")
    target = _Target(path_or_module, providers, device, threads, io_binding)
    result = BenchResult(target.backend, target.provider, target.device, target.io_binding)
    for b in batch_sizes:
        run = target.runner(_batch(inputs, b))
        for _ in range(warmup):
            run()
        result.timings.append(Timing.of(b, [_time(run) for _ in range(iters)]))
        log.info("%s %s batch %d: %.3f ms", target.backend, target.provider, b, result.timings[-1].median_ms)
    return result


def compare(original: Any, compressed: Any, inputs: Any, *, providers: Sequence[str] | str | None = None,
            batch_sizes: Sequence[int] = (1, 8, 32), warmup: int = 5, iters: int = 30,
            device: str | torch.device | None = None, threads: int | None = None,
            modules: tuple[Any, Any] | None = None, blocks: str | None = None,
            flop_speedup: float | None = None, io_binding: bool | None = None) -> dict[str, Any]:
    """Original vs compressed, timed interleaved (alternating order every call) in one run.

    Both are ONNX files or both modules. FLOPs come from the modules (`modules=(original,
    compressed)` when timing ONNX files). Per batch size the result holds both timings, the
    measured `speedup` (original / compressed median latency), the `flop_speedup` (original /
    compressed FLOPs; pass `flop_speedup=` to give it directly) and `efficiency` =
    speedup / flop_speedup.
    """
    from fxapprox.export.flops import compare_flops

    inputs = as_model_inputs(inputs, what="example inputs")
    kinds = {isinstance(t, (str, Path)) for t in (original, compressed)}
    if len(kinds) != 1:
        raise ExportError("compare() needs two ONNX files or two modules, not one of each")
    a = _Target(original, providers, device, threads, io_binding)
    b = _Target(compressed, providers, device, threads, io_binding)
    if a.provider != b.provider:
        raise ProviderUnavailableError(f"the original ran on {a.provider}, the compressed model on {b.provider}: "
                                       "request one provider explicitly (providers=[...]) to compare them")
    if modules is None and a.module is not None and flop_speedup is None:
        modules = (original, compressed)
    flops = compare_flops(modules[0], modules[1], inputs.take(1), blocks=blocks) if modules else None
    if flop_speedup is None and flops is not None:
        flop_speedup = flops["flop_ratio"]
    rows = []
    for bs in batch_sizes:
        sized = _batch(inputs, bs)
        rows.append(comparison_row(bs, *interleaved(a.runner(sized), b.runner(sized), warmup, iters), flop_speedup))
    return {
        "backend": a.backend,
        "provider": a.provider,
        "device": a.device,
        "io_binding": a.io_binding,
        "flop_speedup": flop_speedup,
        "param_ratio": flops["param_ratio"] if flops else None,
        "flops": flops,
        "warmup": warmup,
        "iters": iters,
        "rows": rows,
    }
