"""Launchers for the Triton kernels: allocate, pick configs, build grids, launch. No autograd,
no argument validation beyond what the kernels need (ops.py validated before calling).

Functions mirror :mod:`tritonbasis.reference` (``forward`` / ``backward``) so ``ops.py`` can
swap one implementation for the other.

Precision: fp32 inputs use TF32 tensor cores exactly when PyTorch would for a convolution,
i.e. when ``torch.backends.cudnn.allow_tf32`` is True (PyTorch's default); otherwise full
IEEE fp32. Accumulation is always fp32. Outside CUDA (the interpreter) the flag is moot.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import warnings
from pathlib import Path

import torch

from . import tune_cache
from .geometry import ConvGeometry, output_memory_format

_INT32_MAX = 2**31 - 1


@functools.cache
def _kernels():
    # Imported on first launch only: ``import tritonbasis`` never imports triton.
    from tritonbasis import kernels
    from tritonbasis.kernels import configs

    return kernels, configs


def interpreted() -> bool:
    """True when the kernels were decorated under TRITON_INTERPRET=1 (they run on CPU)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_kernels()[0].basis_conv_fwd_kernel, InterpretedFunction)


def autotune_enabled() -> bool:
    return os.environ.get("TRITONBASIS_AUTOTUNE", "1") != "0" and not interpreted()


# For each kernel: the operand whose dtype and channel stride decide the register budget
# (configs.prune): 16-bit NHWC loads vectorise, fp32 or NCHW ones need more registers.
_PRUNE_LAYOUT = {
    "fwd": ("x_ptr", "sx_c"),
    "fwd_reduce": ("c_ptr", "sy_c"),
    "grad_z": ("g_ptr", "sg_c"),
    "grad_x": ("dz_ptr", "sx_c"),
    "wgrad": ("x_ptr", "sx_c"),
    "bwd_reduce": ("w1_ptr", "L1"),  # never autotuned (FIXED only); listed for completeness
}


@functools.cache
def _autotuned(name: str):
    """The kernel wrapped in triton.autotune over its named configs (built lazily, once)."""
    import triton

    kernels, configs = _kernels()
    cfgs = [
        triton.Config(dict(c["blocks"]), num_warps=c["num_warps"], num_stages=c["num_stages"])
        for c in configs.CONFIGS[name].values()
    ]

    operand, chan_stride = _PRUNE_LAYOUT[name]

    def early_prune(cfg_list, named_args, **kwargs):
        shape = {**named_args, **kwargs}
        shape["elem_bytes"] = shape[operand].element_size()
        shape["nchw"] = shape[chan_stride] != 1
        as_dicts = [{"blocks": c.kwargs, "num_warps": c.num_warps} for c in cfg_list]
        kept = configs.prune(name, as_dicts, shape)
        return [cfg_list[as_dicts.index(k)] for k in kept]

    return triton.autotune(
        configs=cfgs,
        key=configs.KEYS[name],
        reset_to_zero=configs.RESET_TO_ZERO.get(name),
        prune_configs_by={"early_config_prune": early_prune},
    )(kernels.KERNELS[name])


# --------------------------------------------------------------------------------------------
# Persistent autotune results (tritonbasis.tune_cache): a launch whose key was tuned before, in
# any process on the same GPU with the same triton and kernel source, runs the stored config
# directly instead of re-tuning.


@functools.cache
def triton_version() -> str:
    import triton

    return triton.__version__


@functools.cache
def source_hash(name: str | None = None) -> str:
    """sha256 (16 hex digits) of the source files of kernel ``name`` (all kernels if None) and
    of ``kernels/configs.py``: any edit of a kernel's module or of the configs changes it."""
    kernels, configs = _kernels()
    names = [name] if name is not None else sorted(kernels.KERNELS)
    files = {Path(inspect.getsourcefile(getattr(kernels.KERNELS[n], "fn", kernels.KERNELS[n])))
             for n in names}
    files.add(Path(configs.__file__))
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def _arg_names(name: str) -> tuple[str, ...]:
    fn = _kernels()[0].KERNELS[name]
    names = getattr(fn, "arg_names", None)
    if names is None:
        names = list(inspect.signature(getattr(fn, "fn", fn)).parameters)
    return tuple(names)


@functools.cache
def _known_configs(name: str) -> list[dict]:
    return list(_kernels()[1].CONFIGS[name].values())


def _scalar(v):
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    return str(v)


def tune_key(name: str, args: tuple, kwargs: dict) -> tuple:
    """What the best config of a launch depends on: the values of ``configs.KEYS[name]`` (as
    triton.autotune's key), the dtypes of the tensor arguments (as triton adds them) and
    whether the layout operand is NCHW (``configs.prune`` depends on it; triton's key does not
    see it)."""
    _, configs = _kernels()
    named = dict(zip(_arg_names(name), args))
    named.update(kwargs)
    vals = [_scalar(named[k]) for k in configs.KEYS[name]]
    dtypes = [str(v.dtype) for v in named.values() if isinstance(v, torch.Tensor)]
    _, chan_stride = _PRUNE_LAYOUT[name]
    return (*vals, *dtypes, named[chan_stride] != 1)


_CACHE_BROKEN: list[str] = []  # set once when computing a cache key failed (then: no cache)


def _cache_ident(name: str, args: tuple, kwargs: dict) -> tuple | None:
    if _CACHE_BROKEN or not tune_cache.enabled():
        return None
    try:
        dev = next(a.device for a in args if isinstance(a, torch.Tensor))
        return (name, tune_cache.device_name(dev), triton_version(), source_hash(name),
                tune_key(name, args, kwargs))
    except Exception as e:  # never let the cache break a launch
        _CACHE_BROKEN.append(repr(e))
        warnings.warn(f"tritonbasis: autotune cache disabled for this process ({e!r})",
                      RuntimeWarning, stacklevel=3)
        return None


def _config_dict(cfg) -> dict:
    """A triton.Config as the cache stores it (the shape of kernels/configs.py's entries)."""
    return {"blocks": dict(cfg.kwargs), "num_warps": int(cfg.num_warps),
            "num_stages": int(cfg.num_stages)}


def _launch_config(name: str, grid, cfg: dict, args, kwargs) -> None:
    kernels, _ = _kernels()
    kernels.KERNELS[name][grid(cfg["blocks"])](
        *args, **kwargs, **cfg["blocks"], num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"]
    )


def _launch(name: str, grid, *args, **kwargs):
    """Launch kernel ``name``: autotuned, or with its FIXED config (interpreter, tests,
    TRITONBASIS_AUTOTUNE=0). ``grid`` is a function of the config's block sizes.

    Autotuned launches first look the launch key up in the on-disk cache
    (:mod:`tritonbasis.tune_cache`) and run a cached config directly; otherwise triton.autotune
    tunes (or reuses its in-process result) and its ``best_config`` is stored."""
    kernels, configs = _kernels()
    if autotune_enabled():
        ident = _cache_ident(name, args, kwargs)
        if ident is not None:
            cfg = tune_cache.lookup_config(*ident)
            if cfg is not None and cfg in _known_configs(name):
                _launch_config(name, grid, cfg, args, kwargs)
                return
        tuner = _autotuned(name)
        tuner[lambda meta: grid(meta)](*args, **kwargs)
        if ident is not None and getattr(tuner, "best_config", None) is not None:
            tune_cache.store_config(*ident, _config_dict(tuner.best_config))
    else:
        c = configs.FIXED[name]
        kernels.KERNELS[name][grid(c["blocks"])](
            *args, **kwargs, **c["blocks"], num_warps=c["num_warps"], num_stages=c["num_stages"]
        )


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


def _needs_int64(*tensors: torch.Tensor) -> bool:
    # Any element offset (sum of index * stride) that can pass 2**31 - 1.
    for t in tensors:
        if t.numel() and sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) > _INT32_MAX:
            return True
    return False


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _empty_4d(shape, like: torch.Tensor, fmt, dtype=None) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)


def fwd_split_k(M: int, C_in: int, KH: int, KW: int, C_b: int, device: torch.device) -> int:
    """Split-K factor of a forward launch (``configs.split_k`` with the device's SM count);
    1 outside CUDA (the interpreter): tests force a split by patching this function."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return _kernels()[1].split_k(M, C_in, KH, KW, C_b, sms)


def forward(x, basis, coeff, bias, perm, g: ConvGeometry, need_z: bool):
    """1 launch (``fwd``), or 2 with split-K (``fwd`` into an fp32 workspace, ``fwd_reduce``
    for the epilogue). The basis is passed with C_in contiguous (channels_last): a basis that
    is not already laid out that way is copied once per call (C_b * C_in * KH * KW elements,
    at most 128 * 512 * 9 * 2 B = 1.2 MB at the benchmark shapes; none for a 1x1 conv's
    contiguous basis or a channels_last parameter)."""
    _, configs = _kernels()
    fmt = output_memory_format(x)
    y = _empty_4d((g.N, g.C_out, g.Ho, g.Wo), x, fmt)
    store_z = need_z and not g.keep_basis
    z = _empty_4d((g.N, g.C_b, g.Ho, g.Wo), x, fmt) if store_z else x.new_empty(0)
    zs = z.stride() if store_z else (0, 0, 0, 0)
    if basis.stride(1) != 1:
        basis = basis.contiguous(memory_format=torch.channels_last)
    M = g.pixels
    m_key = configs.m_bucket(M)
    bcb = configs.block_cb(g.C_b)
    split = fwd_split_k(M, g.C_in, g.KH, g.KW, g.C_b, x.device)
    ws = (torch.empty((split, M, bcb), device=x.device, dtype=torch.float32) if split > 1
          else x)
    flags = dict(HAS_BIAS=bias is not None, HAS_PERM=perm is not None, KEEP_BASIS=g.keep_basis,
                 STORE_Z=store_z, INT64=_needs_int64(x, y, z), PRECISION=_precision(x.dtype),
                 SPLIT_K=split, BLOCK_CB=bcb)
    bias_ = bias if bias is not None else x
    perm_ = perm if perm is not None else x
    z_ = z if store_z else x
    _launch(
        "fwd",
        lambda meta: (_cdiv(M, meta["BLOCK_M"]), split),
        x, basis, coeff, bias_, perm_, y, z_, ws,
        M, m_key, g.C_in, g.H, g.W, g.C_b, g.C_rest, g.Ho, g.Wo,
        *x.stride(), *basis.stride(), *coeff.stride(), *y.stride(), *zs,
        *g.stride, *g.padding, *g.dilation,
        KH=g.KH, KW=g.KW, **flags,
    )
    if split > 1:
        _launch(
            "fwd_reduce",
            lambda meta: (_cdiv(M, meta["BLOCK_M"]),),
            ws, coeff, bias_, perm_, y, z_,
            M, m_key, g.C_b, g.C_rest, g.Ho, g.Wo,
            *coeff.stride(), *y.stride(), *zs,
            **flags,
        )
    return y, z


def _launch_fixed(name: str, grid, *args, **kwargs):
    """Launch kernel ``name`` with ``configs.FIXED[name]``, never autotuned: for kernels with
    one sensible config (the backward's deterministic reduction, a memory-bound sum)."""
    kernels, configs = _kernels()
    c = configs.FIXED[name]
    kernels.KERNELS[name][grid(c["blocks"])](
        *args, **kwargs, **c["blocks"], num_warps=c["num_warps"], num_stages=c["num_stages"]
    )


def _m_key(m: int) -> int:
    """Autotune key of a pixel count: m rounded up to a power of two (a new batch size re-tunes
    only when it crosses one)."""
    return 1 << max(0, int(m) - 1).bit_length()


def _sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _phase_step(stride: int, dil: int) -> int:
    """Distance between two taps of one sub-pixel phase: stride / gcd(stride, dilation)."""
    import math

    return stride // math.gcd(stride, dil)


def _phase_pixels(g: ConvGeometry) -> int:
    """Input pixels of the largest sub-pixel phase, (0, 0)."""
    return g.N * _cdiv(g.H, g.stride[0]) * _cdiv(g.W, g.stride[1])


def _max_phase_taps(g: ConvGeometry) -> int:
    """Most taps any sub-pixel phase has (all KH*KW at stride 1)."""
    def axis(K, s, p, d):
        return max(sum((ph + p - k * d) % s == 0 for k in range(K)) for ph in range(s))

    return (axis(g.KH, g.stride[0], g.padding[0], g.dilation[0])
            * axis(g.KW, g.stride[1], g.padding[1], g.dilation[1]))


def _grad_z_slices(M: int, device: torch.device) -> tuple[int, int]:
    """(programs, pixels per program) of grad_z. Each program loops over a contiguous pixel
    chunk and keeps ONE fp32 partial row of d coeff / d bias (so the partials are P rows, not
    one per 128-pixel tile). On CUDA: about 4 programs per SM, chunks a multiple of 128 pixels
    (the largest BLOCK_M). In the interpreter: 64-pixel chunks (two FIXED BLOCK_M = 32 steps),
    so the multi-step accumulation and the multi-row reduction are both exercised."""
    if device.type == "cuda":
        p = max(1, min(_cdiv(M, 128), 4 * _sms(device)))
        chunk = _cdiv(_cdiv(M, p), 128) * 128
    else:
        chunk = 64
    return -(-M // chunk), chunk  # (not _cdiv: a test patches _cdiv(., 64) to force 1 slice)


def _wgrad_split(g: ConvGeometry, device: torch.device) -> int:
    """Pixel slices of the d-basis reduction (each writes its own fp32 partial, summed by the
    reduce launch). On CUDA: enough slices for (tiles x phases x slices) to fill the GPU about
    twice, keeping >= 256 pixels per slice. Interpreter: two slices whenever a phase has more
    than 64 pixels, so the split is tested."""
    mp = _phase_pixels(g)
    if device.type == "cuda":
        phases = g.stride[0] * g.stride[1]
        tiles = _cdiv(_max_phase_taps(g) * g.C_b, 128) * _cdiv(g.C_in, 64) * phases
        return max(1, min(_cdiv(2 * _sms(device), tiles), _cdiv(mp, 256)))
    return max(1, min(2, _cdiv(mp, 64)))


def backward(grad, x, basis, coeff, out, z_saved, bias, perm, g: ConvGeometry, mask):
    """At most 4 launches, no aten compute or fill op, bitwise deterministic (always, whether
    or not torch.use_deterministic_algorithms is on: nothing here uses atomics):

    1. ``grad_z`` (any gradient): dZ, per-program partials of d coeff and d bias, and the
       K-contiguous copy of the basis that grad_x reads;
    2. ``grad_x`` (d x): one pipelined (tap, C_b) loop per sub-pixel phase;
    3. ``wgrad`` (d basis): x-stationary, per-slice fp32 partials;
    4. ``bwd_reduce`` (d basis, d coeff or d bias): sums every partial in a fixed order and
       writes the parameters' dtypes.

    Buffers come from ``torch.empty`` (no fill): every partial element is written before the
    reduce reads it. Gradients not in ``mask`` are neither computed nor allocated."""
    _, configs = _kernels()
    need_x, need_b, need_c, need_bias = mask
    need_c = need_c and g.C_rest > 0
    # distinct empties: a custom op's outputs must not alias each other
    dx, dbasis, dcoeff, dbias = (grad.new_empty(0) for _ in range(4))
    if mask[2] and not need_c:  # C_rest == 0: d coeff is (0, C_b), nothing to compute
        dcoeff = coeff.new_empty(coeff.shape)
    dev = grad.device
    f32 = dict(device=dev, dtype=torch.float32)
    M = g.pixels
    need_dz = need_x or need_b
    P, chunk = _grad_z_slices(M, dev)
    LW = g.KH * g.KW * g.C_in * g.C_b
    step_h = _phase_step(g.stride[0], g.dilation[0])
    step_w = _phase_step(g.stride[1], g.dilation[1])
    phases = g.stride[0] * g.stride[1]
    mp = _phase_pixels(g)

    if need_dz or need_c or need_bias:
        # dZ in NHWC: grad_x and wgrad read it as [pixels, C_b] tiles.
        dz = _empty_4d((g.N, g.C_b, g.Ho, g.Wo), grad, torch.channels_last) if need_dz else None
        wt = torch.empty(LW if need_x else 0, dtype=basis.dtype, device=dev)
        wsc = torch.empty((P, g.C_rest, g.C_b) if need_c else (0,), **f32)
        wsb = torch.empty((P, g.C_out) if need_bias else (0,), **f32)
        if need_c:
            zsrc = out if g.keep_basis else z_saved
        else:
            zsrc = grad
        stand_in = wsb if need_bias else wsc  # never read: flags are off for absent operands
        _launch(
            "grad_z",
            lambda meta: (P,),
            grad, coeff, dz if need_dz else grad, zsrc,
            bias if bias is not None else grad, perm if perm is not None else grad,
            wsc if need_c else stand_in, wsb if need_bias else stand_in,
            basis, wt if need_x else grad,
            M, _m_key(M), g.C_b, g.C_rest, g.C_in, g.KW, LW if need_x else 0, chunk,
            _cdiv(LW, P),
            g.Ho, g.Wo,
            *grad.stride(), *coeff.stride(), *(dz.stride() if need_dz else (0, 0, 0, 0)),
            *zsrc.stride(), *basis.stride(),
            KEEP_BASIS=g.keep_basis, STORE_DZ=need_dz, NEED_DC=need_c, NEED_DBIAS=need_bias,
            HAS_BIAS=bias is not None, HAS_PERM=perm is not None, COPY_W=need_x,
            INT64=_needs_int64(grad, zsrc), PRECISION=_precision(grad.dtype),
            BLOCK_CB=configs.block_cb(g.C_b), BLOCK_W=512,
        )
    if need_x:
        dx = _empty_4d((g.N, g.C_in, g.H, g.W), x, output_memory_format(x))
        _launch(
            "grad_x",
            lambda meta: (phases * _cdiv(mp, meta["BLOCK_M"]), _cdiv(g.C_in, meta["BLOCK_N"])),
            dz, wt, dx,
            g.N, _m_key(mp), g.C_in, g.H, g.W, g.C_b, g.Ho, g.Wo,
            *dz.stride(), *dx.stride(),
            *g.stride, *g.padding, *g.dilation, step_h, step_w,
            KH=g.KH, KW=g.KW, INT64=_needs_int64(dz, dx), PRECISION=_precision(grad.dtype),
        )
    split = _wgrad_split(g, dev) if need_b else 0
    if need_b:
        wsw = torch.empty((split, LW), **f32)
        rows = _max_phase_taps(g) * g.C_b
        _launch(
            "wgrad",
            lambda meta: (_cdiv(rows, meta["BLOCK_A"]), _cdiv(g.C_in, meta["BLOCK_X"]),
                          phases * split),
            dz, x, wsw,
            g.N, _m_key(mp), g.C_in, g.H, g.W, g.C_b, g.Ho, g.Wo, split,
            *dz.stride(), *x.stride(),
            *g.stride, *g.padding, *g.dilation, step_h, step_w,
            KH=g.KH, KW=g.KW, INT64=_needs_int64(dz, x), PRECISION=_precision(grad.dtype),
        )
        dbasis = torch.empty(basis.shape, dtype=basis.dtype, device=dev)
    if need_c:
        dcoeff = torch.empty(coeff.shape, dtype=coeff.dtype, device=dev)
    if need_bias:
        dbias = torch.empty(bias.shape, dtype=bias.dtype, device=dev)
    if need_b or need_c or need_bias:
        segs = [(wsw, dbasis, split, LW) if need_b else None,
                (wsc, dcoeff, P, g.C_rest * g.C_b) if need_c else None,
                (wsb, dbias, P, g.C_out) if need_bias else None]
        live = next(s for s in segs if s is not None)
        segs = [s if s is not None else (live[0], live[1], 0, 0) for s in segs]
        _launch_fixed(
            "bwd_reduce",
            lambda meta: (sum(_cdiv(s[3], meta["BLOCK"]) for s in segs),),
            *(v for s in segs for v in s),
        )
    return dx, dbasis, dcoeff, dbias
