"""Launchers for the Triton kernels: run a launch plan under a device guard, autotuned. No
autograd, no argument validation beyond what the kernels need (``registry`` validated before
calling).

Functions mirror :mod:`.reference` (``forward`` / ``backward``) so ``registry`` can swap one
implementation for the other. Each runs a plan of :mod:`.launch_plan` (outputs, workspaces
and one :class:`~.launch_plan.Launch` per kernel, built by that kernel's argument builder)
with the current CUDA device set to the tensors' device.

Autotuning: ``triton.autotune(..., cache_results=True)`` (Triton >= 3.6), so the best config
of every launch key lives in Triton's own on-disk cache (``TRITON_CACHE_DIR``, default
``~/.triton/cache``) and a second process does not re-tune. Its key (Triton 3.6 and 3.8,
``Autotuner.check_disk_cache``): Triton's version, the backend's hash (the GPU architecture,
not its name: an H100 and an H200 share entries), the kernel's source hash (with the
``@jit`` functions it calls), the environment variables that invalidate compiles, the
autotune key values (each kernel record's ``key``: these include the layout operand's channel
stride, because ``configs.prune`` keeps other configs for NCHW operands) plus every tensor
argument's dtype, and the configs that survived pruning. In memory, triton keys on the key
values and dtypes only: hence the channel stride in the keys.

Precision: fp32 inputs use TF32 tensor cores exactly when PyTorch would for a convolution,
i.e. when ``torch.backends.cudnn.allow_tf32`` is True (PyTorch's default); otherwise full
IEEE fp32. Accumulation is always fp32. Outside CUDA (the interpreter) the flag is moot.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
from pathlib import Path
from typing import Any

import torch

from .geometry import ConvGeometry
from .launch_plan import Launch, plan_backward, plan_forward

__all__ = [
    "ENV_VARIANT",
    "Launch",
    "autotune_enabled",
    "backward",
    "force_forward_variant",
    "forward",
    "forward_variant",
    "interpreted",
    "prune_input",
    "run",
    "source_hash",
    "triton_version",
]


@functools.cache
def _kernels():
    # Imported on first launch only: ``import tritonbasis`` never imports triton.
    from tritonbasis import kernels
    from tritonbasis.kernels import configs

    return kernels, configs


@functools.cache
def interpreted() -> bool:
    """True when the kernels were decorated under TRITON_INTERPRET=1 (they run on CPU). Fixed
    for the process: triton decides it when the kernels are decorated."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_kernels()[0].basis_conv_fwd_kernel, InterpretedFunction)


def autotune_enabled() -> bool:
    return os.environ.get("TRITONBASIS_AUTOTUNE", "1") != "0" and not interpreted()


def __getattr__(name: str):
    # PRUNE_LAYOUT: {kernel: (operand, channel stride)} of every autotuned kernel, derived from
    # the kernel records on first access (importing them imports triton, which
    # ``import tritonbasis`` must not).
    if name == "PRUNE_LAYOUT":
        return {n: r.layout for n, r in _kernels()[1].RECORDS.items() if r.configs}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def prune_input(name: str, named: dict, arch: int | None = None) -> dict:
    """What ``configs.prune`` sees for a launch of kernel ``name`` whose arguments (constexprs
    included) are ``named`` by parameter name: those, plus the element size of the record's
    layout operand (``elem_bytes``: 16-bit NHWC loads vectorise, fp32 or NCHW ones need more
    registers), whether its channel stride is not 1 (``nchw``; that stride is in the autotune
    key too, so NCHW and NHWC launches tune and are cached apart) and the GPU's compute
    capability (``arch``: 80, 90; from the operand's CUDA device when not given, else None).
    The autotuner's early prune and the compile tier (which configs a shape can run) both
    use it."""
    operand, chan_stride = _kernels()[1].RECORDS[name].layout
    t = named[operand]
    if arch is None and t.is_cuda:
        major, minor = torch.cuda.get_device_capability(t.device)
        arch = 10 * major + minor
    return {**named, "elem_bytes": t.element_size(), "nchw": named[chan_stride] != 1, "arch": arch}


@functools.cache
def _autotuned(name: str):
    """The kernel wrapped in ``triton.autotune`` over its record's named configs (built
    lazily, once), with triton's on-disk result cache on (``cache_results=True``). Nothing
    accumulates into a live buffer across trials (partials are written, never added to), so
    no ``reset_to_zero``."""
    import triton

    configs = _kernels()[1]
    rec = configs.RECORDS[name]
    cfgs = [
        triton.Config(dict(c["blocks"]), num_warps=c["num_warps"], num_stages=c["num_stages"])
        for c in rec.configs.values()
    ]

    def early_prune(cfg_list, named_args, **kwargs):
        shape = prune_input(name, {**named_args, **kwargs})
        as_dicts = [{"blocks": c.kwargs, "num_warps": c.num_warps} for c in cfg_list]
        kept = configs.prune(name, as_dicts, shape)
        return [cfg_list[as_dicts.index(k)] for k in kept]

    return triton.autotune(
        configs=cfgs,
        key=list(rec.key),
        prune_configs_by={"early_config_prune": early_prune},
        cache_results=True,
    )(rec.fn)


# --------------------------------------------------------------------------------------------
# Kernel identity (for the fused-vs-weight timings in tune_cache: a GPU timing is used only
# with the kernels it was measured with)


@functools.cache
def triton_version() -> str:
    import triton

    return triton.__version__


@functools.cache
def _source_file(fn) -> Path:
    src = inspect.getsourcefile(fn)
    if src is None:  # a kernel defined without a source file cannot be hashed
        raise RuntimeError(f"no source file for {fn!r}")
    return Path(src)


def source_hash(name: str | None = None) -> str:
    """sha256 (16 hex digits) of the source files of kernel ``name`` (all kernels if None) and
    of ``kernels/configs.py`` (the records) and ``kernels/pruning.py``: any edit of a kernel's
    module, its record or the pruning changes it."""
    configs = _kernels()[1]
    names = [name] if name is not None else sorted(configs.RECORDS)
    fns = [configs.RECORDS[n].fn for n in names]
    files = {_source_file(getattr(f, "fn", f)) for f in fns}
    files |= {Path(configs.__file__), Path(configs.pruning.__file__)}
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Launching


def _launch(name: str, grid, *args, **kwargs):
    """Launch kernel ``name``: autotuned (triton.autotune, results cached by triton), or with
    its record's fixed config (interpreter, tests, TRITONBASIS_AUTOTUNE=0). ``grid`` is a
    function of the config's block sizes."""
    if autotune_enabled():
        _autotuned(name)[grid](*args, **kwargs)
    else:
        _fixed(name, grid, args, kwargs)


def _launch_fixed(name: str, grid, *args, **kwargs):
    """Launch kernel ``name`` with its record's fixed config, never autotuned: for kernels
    with one sensible config (the backward's deterministic reduction, a memory-bound sum)."""
    _fixed(name, grid, args, kwargs)


def _fixed(name: str, grid, args: tuple, kwargs: dict) -> None:
    rec = _kernels()[1].RECORDS[name]
    c = rec.fixed
    rec.fn[grid(c["blocks"])](
        *args, **kwargs, **c["blocks"], num_warps=c["num_warps"], num_stages=c["num_stages"]
    )


def run(launches: list[Launch]) -> None:
    """Launch every :class:`Launch` in order: autotuned kernels through :func:`_launch`, the
    others (no named configs: ``bwd_reduce``) through :func:`_launch_fixed`."""
    records = _kernels()[1].RECORDS
    for lc in launches:
        go = _launch if records[lc.kernel].configs else _launch_fixed
        go(lc.kernel, lc.grid, *lc.args, **lc.consts)


def _device_guard(t: torch.Tensor):
    """Triton launches on the *current* CUDA device: make it the tensors' device (a tensor on
    cuda:1 launches on cuda:1, whatever the current device is)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sms(device: torch.device) -> int | None:
    """SM count of a CUDA device (cached per device), None elsewhere (the interpreter)."""
    if device.type != "cuda":
        return None
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


# --------------------------------------------------------------------------------------------
# Forward variants (kernels/configs.py records with variant_of="fwd"). v2 runs unless a variant
# is forced (force_forward_variant / TRITONBASIS_FWD_VARIANT, for tests and benchmarks) or
# kernels/verified.json lists it for this GPU, Triton and kernel source; with several
# candidates, each is autotuned and timed once per launch key and the fastest is kept (in
# memory: triton's cache keeps each variant's own best config across processes).

ENV_VARIANT = "TRITONBASIS_FWD_VARIANT"
_UNSET = object()
_FORCED: list = [_UNSET]  # _UNSET until the first forward reads ENV_VARIANT
_CHOSEN: dict[tuple, str] = {}


def force_forward_variant(name: str | None) -> None:
    """Run forward variant ``name`` (a record name: ``fwd``, ``fwd_l1``, ...) wherever it
    applies, v2 elsewhere; None: the default choice (the verified variants, by measurement).
    Overrides ``TRITONBASIS_FWD_VARIANT`` (read once, at the first forward). Raises
    ValueError for an unknown name."""
    known = _kernels()[1].VARIANTS.get("fwd", ["fwd"])
    if name is not None and name not in known:
        raise ValueError(f"unknown forward variant {name!r}; known: {known}")
    _FORCED[0] = name
    _CHOSEN.clear()


def _forced() -> str | None:
    if _FORCED[0] is _UNSET:
        force_forward_variant(os.environ.get(ENV_VARIANT) or None)
    return _FORCED[0]


@functools.cache
def _verified_variants(index: int | None) -> tuple[str, ...]:
    """The forward variants kernels/verified.json lists for CUDA device ``index`` (None: the
    interpreter, where nothing is verified)."""
    if index is None:
        return ()
    from tritonbasis.kernels import verified

    major, minor = torch.cuda.get_device_capability(index)
    entries = verified.load()
    return tuple(
        v
        for v in _kernels()[1].VARIANTS.get("fwd", ())[1:]
        if verified.passed(entries, v, f"{major}.{minor}", triton_version(), source_hash(v))
    )


@functools.cache
def _param_names(name: str) -> tuple[str, ...]:
    """Kernel ``name``'s runtime (non-constexpr) parameter names, in order."""
    fn = _kernels()[1].RECORDS[name].fn
    sig = inspect.signature(getattr(fn, "fn", fn))
    return tuple(p.name for p in sig.parameters.values() if "constexpr" not in str(p.annotation))


def _named(lc: Launch) -> dict:
    """A launch's arguments by the kernel's parameter name (constexprs included)."""
    return {**dict(zip(_param_names(lc.kernel), lc.args)), **lc.consts}


def forward_variant(x, basis, coeff, bias, perm, g: ConvGeometry, need_z: bool) -> str:
    """The forward kernel (record name) :func:`forward` runs for these arguments."""
    with _device_guard(x):
        launches, _ = plan_forward(
            x, basis, coeff, bias, perm, g, need_z, _sms(x.device), variant=_variant(x)
        )
    return launches[0].kernel


def _variant(x):
    """``"fwd"`` when nothing is forced and nothing is verified on ``x``'s device (the
    default, decided from two cached values), else the chooser for ``plan_forward``."""
    forced = _forced()
    if forced is None:
        index = (
            (x.device.index if x.device.index is not None else torch.cuda.current_device())
            if x.is_cuda
            else None
        )
        candidates = _verified_variants(index)
        if not candidates:
            return "fwd"
    else:
        candidates = (forced,)
    return functools.partial(_choose, candidates, forced is not None, x.dtype)


def _choose(candidates: tuple, forced: bool, dtype, build) -> str:
    """The forward variant among ``candidates`` (see the section's comment): the first that
    applies if ``forced``, else the fastest of v2 and those that apply; ``build(name)`` makes
    a variant's launch over the plan's tensors."""
    records = _kernels()[1].RECORDS
    named = _named(build("fwd"))
    ok = [
        v
        for v in candidates
        if v != "fwd"
        and records[v].applies(named)
        and (records[v].interpretable or not interpreted())
    ]
    if forced or not ok:
        return ok[0] if ok else "fwd"
    key = (tuple(ok), *(named[k] for k in records["fwd"].key), dtype)
    if key not in _CHOSEN:
        _CHOSEN[key] = _measure(["fwd", *ok], build)
    return _CHOSEN[key]


def _measure(variants: list[str], build) -> str:
    """The fastest of ``variants``' forward launches for this call (each autotuned first;
    the split-K reduce, the same for all, is left out), by CUDA events."""
    import triton.testing

    times: dict[Any, float] = {}
    for v in variants:
        lc = build(v)
        run([lc])  # autotunes (or reads triton's cache)
        times[v] = triton.testing.do_bench(lambda lc=lc: run([lc]), warmup=5, rep=20)
    return min(times, key=lambda v: times[v])


def forward(x, basis, coeff, bias, perm, g: ConvGeometry, need_z: bool):
    """``(y, z_saved)``, as :func:`tritonbasis.op.reference.forward`."""
    with _device_guard(x):
        launches, out = plan_forward(
            x, basis, coeff, bias, perm, g, need_z, _sms(x.device), variant=_variant(x)
        )
        run(launches)
    return out


def backward(grad, x, basis, coeff, out, z_saved, bias, perm, g: ConvGeometry, mask):
    """Gradients ``(dx, dbasis, dcoeff, dbias)`` (see :func:`plan_backward`); an unrequested
    one is an empty tensor."""
    with _device_guard(grad):
        launches, grads = plan_backward(
            grad, x, basis, coeff, out, z_saved, bias, perm, g, mask, _sms(grad.device)
        )
        run(launches)
    return grads
