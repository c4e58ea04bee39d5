"""Every private torch (and CPython) name tritonbasis uses, in one place, each with a public
fallback.

The private names are fast flag reads on the per-call path (bench/NOTES.md "Host overhead per
call": the eager route saves ~14-40 us per call against the custom-op dispatch, and these
reads are how it knows it may run). Each one is looked up once, here; when a torch release
drops or renames one, its public fallback takes over: results are the same, some calls are
slower (the op route instead of the eager one, a profiler range always recorded, a cache not
reused). ``TRITONBASIS_PUBLIC_TORCH_ONLY=1`` in the environment before the first import
makes every name here take its fallback (tests/util/test_compat.py runs the op, the layer,
``torch.compile`` and export that way and compares the results).

Not here, on purpose: ``nn.Module._load_from_state_dict`` (the documented override point of
``load_state_dict``) and ``torch._inductor.aoti_compile_and_package`` /
``aoti_load_package`` (AOTInductor's documented entry points; used by
``conversion.deploy``).
"""

from __future__ import annotations

import os

import torch

PUBLIC_ONLY = os.environ.get("TRITONBASIS_PUBLIC_TORCH_ONLY", "").strip() not in ("", "0")

# name -> True if the private symbol is in use, False if its fallback is (see missing())
_USED: dict[str, bool] = {}


def _private(name: str, get):
    """``get()`` (the private symbol) unless PUBLIC_ONLY or it is missing: then None."""
    value = None
    if not PUBLIC_ONLY:
        try:
            value = get()
        except (AttributeError, ImportError):
            value = None
    _USED[name] = value is not None
    return value


def missing() -> list[str]:
    """The private names whose public fallback is in use (all of them with PUBLIC_ONLY)."""
    return sorted(k for k, used in _USED.items() if not used)


# --------------------------------------------------------------------------------------------
# Dispatch state: may a call take the eager route (op/eager.py)? Fallbacks say "a mode may be
# active", so every call takes the custom-op route, which handles all of them.

_len_dispatch = _private(
    "torch._C._len_torch_dispatch_stack", lambda: torch._C._len_torch_dispatch_stack
)
_fn_modes = _private(
    "torch._C._is_torch_function_mode_enabled", lambda: torch._C._is_torch_function_mode_enabled
)
_functorch_level = _private(
    "torch._C._functorch.maybe_current_level", lambda: torch._C._functorch.maybe_current_level
)
EAGER_ROUTE_KNOWABLE = None not in (_len_dispatch, _fn_modes, _functorch_level)

if EAGER_ROUTE_KNOWABLE:
    dispatch_modes = _len_dispatch  # number of active TorchDispatchModes
    function_modes = _fn_modes  # a TorchFunctionMode is active
    functorch_level = _functorch_level  # None outside vmap / grad transforms
else:

    def dispatch_modes() -> int:
        return 1

    def function_modes() -> bool:
        return True

    def functorch_level():
        return 0


_any_rg = _private("torch._C._any_requires_grad", lambda: torch._C._any_requires_grad)
if _any_rg is not None:
    any_requires_grad = _any_rg
else:

    def any_requires_grad(*tensors) -> bool:
        return any(t is not None and t.requires_grad for t in tensors)


_profiling = _private(
    "torch._C._autograd._profiler_enabled", lambda: torch._C._autograd._profiler_enabled
)
if _profiling is not None:
    profiler_enabled = _profiling
else:

    def profiler_enabled() -> bool:
        # unknown: record the op's range always (a no-op range costs a few us)
        return True


_tracing = _private("torch._C._is_tracing", lambda: torch._C._is_tracing)
# torch.jit.is_tracing adds an is_scripting check (~0.5 us); this code is never scripted
jit_tracing = _tracing if _tracing is not None else torch.jit.is_tracing

_autocast_any = _private(
    "torch._C._is_any_autocast_enabled", lambda: torch._C._is_any_autocast_enabled
)
if _autocast_any is not None:
    autocast_enabled = _autocast_any
else:

    def autocast_enabled() -> bool:
        return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


# --------------------------------------------------------------------------------------------
# Tensors


def _fake_getter():
    from torch._subclasses.fake_tensor import is_fake

    return is_fake


_is_fake = _private("torch._subclasses.fake_tensor.is_fake", _fake_getter)


def has_no_values(t: torch.Tensor) -> bool:
    """True for tensors without data to read: fake (tracing, register_fake) or meta. The
    fallback treats every tensor subclass as such (their values are the subclass's business;
    the op checks them where its real implementation runs on plain tensors)."""
    if t.device.type == "meta":
        return True
    if _is_fake is not None:
        return _is_fake(t)
    return type(t) is not torch.Tensor


_HAS_VERSION = _private("Tensor._version", lambda: torch.empty(0)._version is not None or None)


def tensor_version(t: torch.Tensor) -> int | None:
    """The tensor's version counter (bumped by every in-place write through autograd), or
    None when it cannot be read: then nothing keyed on it may be reused."""
    return t._version if _HAS_VERSION else None


_MODULE_DICTS = _private(
    "nn.Module._parameters / _buffers",
    lambda: isinstance(torch.nn.Module()._parameters, dict) or None,
)
_EMPTY: dict = {}


def module_dicts(module: torch.nn.Module) -> tuple[dict, dict]:
    """``(parameters, buffers)``: nn.Module's own dicts (reading them saves ~1.3 us per layer
    call against four lookups through ``nn.Module.__getattr__``), or two empty dicts (the
    caller then reads the attributes)."""
    if _MODULE_DICTS:
        return module._parameters, module._buffers
    return _EMPTY, _EMPTY


# --------------------------------------------------------------------------------------------
# Compilation settings (benchmarks only): AOTAutograd's config module, looked up when asked
# (importing it at package import would cost every user its import time).


def aot_autograd_config():
    """``torch._functorch.config`` (AOTAutograd's settings), or None where it is missing or
    PUBLIC_ONLY: the caller then compiles with torch's defaults."""
    import importlib

    return _private(
        "torch._functorch.config", lambda: importlib.import_module("torch._functorch.config")
    )


# --------------------------------------------------------------------------------------------
# Environment


def _environ_store():
    store, encode = os.environ._data, os.environ.encodekey
    encode("X")  # the same API on this Python
    return store, encode


_ENV_STORE = _private("os.environ._data", _environ_store)


def environ_reader(name: str):
    """A function returning the raw value of environment variable ``name`` (str or bytes) or
    None, read on every call so ``os.environ[...] = ...`` takes effect at once: from
    ``os.environ``'s own store (~0.1 us) where readable, else ``os.environ.get`` (~1.5 us)."""
    if _ENV_STORE is not None:
        store, encode = _ENV_STORE
        key, environ = encode(name), os.environ

        def read():
            if os.environ is environ:
                return store.get(key)
            return os.environ.get(name)  # os.environ replaced (a test's patch)

        return read
    return lambda: os.environ.get(name)
