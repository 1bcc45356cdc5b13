"""Compute settings shared by training and planning: numeric precision and compilation.

- :class:`Precision` and :func:`autocast`: ``float32`` runs everything in float32 (the
  default; deterministic on the CPU; on CUDA, matrix products and convolutions use TF32);
  ``bfloat16`` runs matrix products and convolutions under ``torch.autocast`` in bfloat16
  (CPUs with AVX512-BF16 or AMX, and CUDA GPUs, do these about twice as fast), while
  parameters, optimizer state, the sampler's arithmetic and every elementwise operation stay
  float32.
- :func:`compile_module`: ``torch.compile`` of a network (inductor: C++ on the CPU, Triton
  on CUDA), falling back to eager execution with one warning when compilation is not
  available on the machine (no C++ compiler, an unsupported platform).

This module imports nothing else from the package.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from diffplan.enums import Precision

log = logging.getLogger(__name__)


@contextlib.contextmanager
def autocast(precision: Precision | str, device: torch.device | str) -> Iterator[None]:
    """Run the enclosed network calls at ``precision`` on ``device``'s type (a no-op for float32)."""
    if Precision(precision) is Precision.float32:
        yield
        return
    device_type = torch.device(device).type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
        yield


class CompiledModule(nn.Module):
    """A module that runs ``torch.compile(module)`` and falls back to ``module`` itself.

    The wrapped module's parameters are shared (not copied), so training, EMA updates and
    ``load_state_dict`` act on both. The state dict of this wrapper carries the prefix
    ``module.``: save ``wrapper.module``'s state dict, not the wrapper's. Errors raised by the
    compiler stack (``torch._dynamo`` and ``torch._inductor`` exceptions, which wrap toolchain
    failures) switch to eager for good; any other error propagates.

    Args:
        module: the network.
        what: a name for messages, e.g. ``"the denoiser"``.
        options: keyword arguments of ``torch.compile`` (``mode``, ``dynamic``, ...).
    """

    def __init__(self, module: nn.Module, *, what: str, **options: Any) -> None:
        super().__init__()
        self.module = module
        self.what = what
        # Not a registered submodule: the state dict holds the module's weights once, under ``module.``.
        self._compiled: Callable[..., Any] | None
        object.__setattr__(self, "_compiled", torch.compile(module, **options))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any backend failure means: run eagerly
                if not _is_compile_failure(error):
                    raise
                log.warning(
                    "torch.compile of %s failed (%s: %s); running it eagerly",
                    self.what, type(error).__name__, str(error).splitlines()[0] if str(error) else "",
                )
                object.__setattr__(self, "_compiled", None)
        return self.module(*args, **kwargs)


def _is_compile_failure(error: Exception) -> bool:
    """True for errors raised by the compiler stack (dynamo, inductor, the C++/Triton toolchain),
    False for errors of the module's own code (a bad input shape), which must propagate."""
    module = type(error).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor"))


#: Where a module keeps its compiled wrappers (by options), outside its registered submodules.
_WRAPPERS = "_diffplan_compiled"


def compile_module(module: nn.Module, enabled: bool, *, what: str, **options: Any) -> nn.Module:
    """``module`` wrapped in :class:`CompiledModule` when ``enabled``, else ``module`` unchanged.

    One wrapper per module and options, kept on the module itself (a reference cycle the
    garbage collector frees with the module), so planners built repeatedly on the same network
    (one per evaluation seed, say) compile it once. A wrapper passed in is returned as it is.
    """
    if not enabled or isinstance(module, CompiledModule):
        return module
    wrappers: dict[tuple[tuple[str, Any], ...], CompiledModule] = module.__dict__.setdefault(_WRAPPERS, {})
    key = tuple(sorted(options.items()))
    if key not in wrappers:
        wrappers[key] = CompiledModule(module, what=what, **options)
    return wrappers[key]
