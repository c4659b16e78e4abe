"""Installed onnxruntime package → the imported module, or a typed error that says what to install.

fxapprox runs on either runtime wheel, `onnxruntime` (CPU; extra `cpu`) or `onnxruntime-gpu`
(CUDA and CPU; extra `gpu`). Both install the same `onnxruntime` module, so onnxruntime's docs
say to install only one. `onnxruntime()` imports whichever is there; when the CUDA provider is
wanted it first calls `onnxruntime.preload_dlls()` (onnxruntime-gpu ≥ 1.21), which loads the
CUDA/cuDNN libraries that PyTorch's CUDA wheels bring, so no system CUDA install is needed.
"""

from __future__ import annotations

import logging
from types import ModuleType

from fxapprox.errors import RuntimeMissingError

__all__ = ["onnxruntime", "INSTALL_HINT"]

log = logging.getLogger(__name__)

INSTALL_HINT = ('install one onnxruntime package: pip install -e ".[cpu]" (onnxruntime) or, on a CUDA machine, '
                'pip install -e ".[gpu]" (onnxruntime-gpu), not both')

_preloaded = False


def onnxruntime(*, cuda: bool = False) -> ModuleType:
    """The `onnxruntime` module; `cuda=True` preloads the CUDA/cuDNN libraries once where the
    runtime can (`onnxruntime.preload_dlls`). No runtime installed → `RuntimeMissingError`."""
    global _preloaded
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise RuntimeMissingError(f"onnxruntime is not installed ({err}); {INSTALL_HINT}") from err
    if cuda and not _preloaded and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as err:  # a CPU wheel, or libraries not found: the session reports the provider it got
            log.warning("onnxruntime.preload_dlls() failed (%s); CUDA provider may not start", err)
        _preloaded = True
    return ort
