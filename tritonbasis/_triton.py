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
from ._checks import ConvGeometry, output_memory_format

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
    "grad_z": ("g_ptr", "sg_c"),
    "grad_x": ("dz_ptr", "sx_c"),
    "wgrad": ("x_ptr", "sx_c"),
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


def forward(x, basis, coeff, bias, perm, g: ConvGeometry, need_z: bool):
    _, configs = _kernels()
    fmt = output_memory_format(x)
    y = _empty_4d((g.N, g.C_out, g.Ho, g.Wo), x, fmt)
    store_z = need_z and not g.keep_basis
    z = _empty_4d((g.N, g.C_b, g.Ho, g.Wo), x, fmt) if store_z else x.new_empty(0)
    zs = z.stride() if store_z else (0, 0, 0, 0)
    M = g.pixels
    _launch(
        "fwd",
        lambda meta: (_cdiv(M, meta["BLOCK_M"]),),
        x, basis, coeff, bias if bias is not None else x, perm if perm is not None else x, y,
        z if store_z else x,
        M, g.C_in, g.H, g.W, g.C_b, g.C_rest, g.Ho, g.Wo,
        *x.stride(), *basis.stride(), *coeff.stride(), *y.stride(), *zs,
        *g.stride, *g.padding, *g.dilation,
        KH=g.KH, KW=g.KW,
        HAS_BIAS=bias is not None, HAS_PERM=perm is not None, KEEP_BASIS=g.keep_basis,
        STORE_Z=store_z,
        INT64=_needs_int64(x, y, z), PRECISION=_precision(x.dtype),
        BLOCK_CB=configs.block_cb(g.C_b),
    )
    return y, z


def _wgrad(a, xsrc, shift, out, M, H, W, Ho, Wo, KH, KW, stride, padding, dilation, dtype,
           a_perm=None, x_perm=None):
    """out (fp32, zeroed, (CA, CX, KH, KW)-strided) += sum over pixels of A^T X_tap.
    With a_perm / x_perm, row a of the product reads A's channel a_perm[a] (same for X and
    the shift); CA / CX are then the permutations' lengths."""
    CA = a.shape[1] if a_perm is None else a_perm.numel()
    CX = xsrc.shape[1] if x_perm is None else x_perm.numel()
    if a.device.type == "cuda":
        # Split the pixel reduction until (tiles x slices) fills the GPU about twice, keeping
        # slices >= 256 pixels. SPLIT is fixed before autotuning so every trial shares it.
        sms = torch.cuda.get_device_properties(a.device).multi_processor_count
        tiles = _cdiv(CA, 64) * _cdiv(CX, 64) * KH * KW
        split = max(1, min(_cdiv(2 * sms, tiles), _cdiv(M, 256)))
    else:  # interpreter: two slices whenever there is enough to split, so the split is tested
        split = max(1, min(2, _cdiv(M, 64)))
    _launch(
        "wgrad",
        lambda meta: (_cdiv(CA, meta["BLOCK_A"]), _cdiv(CX, meta["BLOCK_X"]) * KH * KW, split),
        a, xsrc, shift if shift is not None else out,
        a_perm if a_perm is not None else out, x_perm if x_perm is not None else out, out,
        M, CA, CX, H, W, Ho, Wo, split,
        *a.stride(), *xsrc.stride(), *out.stride(), *stride, *padding, *dilation,
        KW=KW, HAS_SHIFT=shift is not None, A_PERM=a_perm is not None,
        X_PERM=x_perm is not None, INT64=_needs_int64(a, xsrc),
        PRECISION=_precision(dtype),
    )


def backward(grad, x, basis, coeff, out, z_saved, bias, perm, g: ConvGeometry, mask):
    _, configs = _kernels()
    need_x, need_b, need_c, need_bias = mask
    empty = grad.new_empty(0)
    # distinct empties: a custom op's outputs must not alias each other
    dx, dbasis, dcoeff, dbias = (grad.new_empty(0) for _ in range(4))
    M = g.pixels
    need_dz = need_x or need_b
    if need_dz or need_bias:
        # dZ in NHWC: the grad_x and wgrad kernels read it as [pixels, C_b] tiles.
        dz = (
            _empty_4d((g.N, g.C_b, g.Ho, g.Wo), grad, torch.channels_last)
            if need_dz else empty
        )
        # db32 is always a real fp32 buffer: autotune's reset_to_zero zeroes whatever is passed
        # as db_ptr, so a dummy must never alias a live tensor such as grad.
        db32 = torch.zeros(g.C_out if need_bias else 1, device=grad.device, dtype=torch.float32)
        _launch(
            "grad_z",
            lambda meta: (_cdiv(M, meta["BLOCK_M"]),),
            grad, coeff, dz if need_dz else db32, db32, perm if perm is not None else db32,
            M, g.C_b, g.C_rest, g.Ho, g.Wo,
            *grad.stride(), *coeff.stride(), *(dz.stride() if need_dz else (0, 0, 0, 0)),
            KEEP_BASIS=g.keep_basis, STORE_DZ=need_dz, NEED_DBIAS=need_bias,
            HAS_PERM=perm is not None,
            INT64=_needs_int64(grad), PRECISION=_precision(grad.dtype),
            BLOCK_CB=configs.block_cb(g.C_b),
        )
        if need_bias:
            dbias = db32.to(grad.dtype)
    if need_x:
        dx = _empty_4d((g.N, g.C_in, g.H, g.W), x, output_memory_format(x))
        Mx = g.N * g.H * g.W
        _launch(
            "grad_x",
            lambda meta: (_cdiv(Mx, meta["BLOCK_M"]), _cdiv(g.C_in, meta["BLOCK_N"])),
            dz, basis, dx,
            Mx, g.C_in, g.H, g.W, g.C_b, g.Ho, g.Wo,
            *dz.stride(), *basis.stride(), *dx.stride(),
            *g.stride, *g.padding, *g.dilation,
            KH=g.KH, KW=g.KW, INT64=_needs_int64(dz, dx), PRECISION=_precision(grad.dtype),
        )
    if need_b:
        db32 = torch.zeros(basis.shape, device=basis.device, dtype=torch.float32)
        _wgrad(dz, x, None, db32, M, g.H, g.W, g.Ho, g.Wo, g.KH, g.KW,
               g.stride, g.padding, g.dilation, grad.dtype)
        dbasis = db32.to(basis.dtype)
    if need_c:
        if g.C_rest:
            off = g.C_b if g.keep_basis else 0
            if perm is not None:  # G_r = G[:, perm[off:]], Z = out[:, perm[:C_b]] - bias[...]
                g_r, a_perm = grad, perm[off:]
            else:
                g_r, a_perm = grad[:, off:], None
            x_perm = None
            if g.keep_basis:
                if perm is not None:
                    zsrc, x_perm, shift = out, perm[: g.C_b], bias
                else:
                    zsrc, shift = out[:, : g.C_b], (bias[: g.C_b] if bias is not None else None)
            else:
                zsrc, shift = z_saved, None
            dc32 = torch.zeros((g.C_rest, g.C_b, 1, 1), device=coeff.device, dtype=torch.float32)
            _wgrad(g_r, zsrc, shift, dc32, M, g.Ho, g.Wo, g.Ho, g.Wo, 1, 1,
                   (1, 1), (0, 0), (1, 1), grad.dtype, a_perm=a_perm, x_perm=x_perm)
            dcoeff = dc32.view(g.C_rest, g.C_b).to(coeff.dtype)
        else:
            dcoeff = coeff.new_zeros(coeff.shape)
    return dx, dbasis, dcoeff, dbias
