"""Launch plans: what the Triton launchers allocate and pass to each kernel, as a function of
the geometry and the tensors' metadata (shapes, strides, dtypes). No launch, no triton import.

One argument builder per kernel (:func:`fwd_args`, :func:`fwd_reduce_args`,
:func:`grad_z_args`, :func:`grad_x_args`, :func:`wgrad_args`, :func:`bwd_reduce_args`) returns
a :class:`Launch`: the kernel's arguments in its parameter order. :func:`plan_forward` /
:func:`plan_backward` allocate the outputs and workspaces and call the builders; the launchers
(:mod:`.launchers`) run the plan, and the compile tier (``tools/aot.py``) builds its kernel
signatures from the same plan with meta tensors, so the arguments are listed once, here.

Device-dependent choices (split-K, program counts) take the GPU's SM count ``sms``; None means
the interpreter's rules (small chunks, so every split path is exercised on CPU).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from .geometry import ConvGeometry, output_memory_format, saved_z_format, saves_z

_INT32_MAX = 2**31 - 1


@functools.cache
def _configs():
    # kernels/configs.py as tritonbasis.kernels.configs (importing the package imports triton,
    # so only on first use)
    from tritonbasis.kernels import configs

    return configs


class Launch(NamedTuple):
    """One kernel launch: ``kernel`` (a name of ``kernels.KERNELS``), ``grid`` (a function of
    the config's block sizes), ``args`` (the kernel's runtime arguments in its parameter
    order: tensors for pointers, ints) and ``consts`` (its constexprs except the config's
    block sizes, num_warps and num_stages)."""

    kernel: str
    grid: Callable[[dict], tuple]
    args: tuple
    consts: dict


# --------------------------------------------------------------------------------------------
# Helpers of the argument builders


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


def _needs_int64(*tensors: torch.Tensor) -> bool:
    # Any element offset (sum of index * stride) that can pass 2**31 - 1. A dense tensor
    # (contiguous or channels_last, what the launchers pass almost always) has its largest
    # offset at numel - 1: two flag reads (~0.3 us) instead of the sum (~2.5 us).
    for t in tensors:
        n = t.numel()
        if not n or (
            n <= _INT32_MAX
            and (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last))
        ):
            continue
        if sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) > _INT32_MAX:
            return True
    return False


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _empty_4d(shape, like: torch.Tensor, fmt, dtype=None) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)


def _phase_step(stride: int, dil: int) -> int:
    """Distance between two taps of one sub-pixel phase: stride / gcd(stride, dilation)."""
    return stride // math.gcd(stride, dil)


def _phase_pixels(g: ConvGeometry) -> int:
    """Input pixels of the largest sub-pixel phase, (0, 0)."""
    return g.N * _cdiv(g.H, g.stride[0]) * _cdiv(g.W, g.stride[1])


def _max_phase_taps(g: ConvGeometry) -> int:
    """Most taps any sub-pixel phase has (all KH*KW at stride 1)."""

    def axis(K, s, p, d):
        return max(sum((ph + p - k * d) % s == 0 for k in range(K)) for ph in range(s))

    return axis(g.KH, g.stride[0], g.padding[0], g.dilation[0]) * axis(
        g.KW, g.stride[1], g.padding[1], g.dilation[1]
    )


def fwd_split_k(M: int, C_in: int, KH: int, KW: int, C_b: int, sms: int | None) -> int:
    """Split-K factor of a forward launch (``configs.split_k`` with the GPU's SM count ``sms``);
    1 outside CUDA (``sms`` None, the interpreter): tests force a split by patching this."""
    if sms is None:
        return 1
    return _configs().split_k(M, C_in, KH, KW, C_b, sms)


def _grad_z_slices(M: int, sms: int | None) -> tuple[int, int]:
    """(programs, pixels per program) of grad_z. Each program loops over a contiguous pixel
    chunk and keeps ONE fp32 partial row of d coeff / d bias (so the partials are P rows, not
    one per 128-pixel tile). On CUDA: about 4 programs per SM, chunks a multiple of 128 pixels
    (the largest BLOCK_M). In the interpreter: 64-pixel chunks (two FIXED BLOCK_M = 32 steps),
    so the multi-step accumulation and the multi-row reduction are both exercised."""
    if sms is not None:
        p = max(1, min(_cdiv(M, 128), 4 * sms))
        chunk = _cdiv(_cdiv(M, p), 128) * 128
    else:
        chunk = 64
    return -(-M // chunk), chunk  # (not _cdiv: a test patches _cdiv(., 64) to force 1 slice)


def _wgrad_split(g: ConvGeometry, sms: int | None) -> int:
    """Pixel slices of the d-basis reduction (each writes its own fp32 partial, summed by the
    reduce launch). On CUDA: enough slices for (tiles x phases x slices) to fill the GPU about
    twice, keeping >= 256 pixels per slice. Interpreter: two slices whenever a phase has more
    than 64 pixels, so the split is tested."""
    mp = _phase_pixels(g)
    if sms is not None:
        phases = g.stride[0] * g.stride[1]
        tiles = _cdiv(_max_phase_taps(g) * g.C_b, 128) * _cdiv(g.C_in, 64) * phases
        return max(1, min(_cdiv(2 * sms, tiles), _cdiv(mp, 256)))
    return max(1, min(2, _cdiv(mp, 64)))


# --------------------------------------------------------------------------------------------
# Argument builders: one per kernel, a function of the geometry and the (real or meta) tensors
# returning the kernel's arguments. The launch path and the compile tier both use them.


# The scalar part of a launch (ints, constexprs, grid) as a function of metadata, remembered
# per call shape on CUDA (``cache=True``): building it costs ~8-11 us per kernel in Python
# (strides, the int64 check, flags), a lookup ~2-3 us, paid at every launch of every layer
# (bench/NOTES.md "Host overhead per call"). The interpreter (tests that patch the helpers
# above) always rebuilds; :func:`clear_caches` forgets.
_SCALARS: dict[tuple, tuple] = {}
_SCALARS_MAX = 4096


def clear_caches() -> None:
    """Forget the remembered launch scalars (tests that patch a helper on a GPU call it)."""
    _SCALARS.clear()


def _scalars(key: tuple | None, build) -> tuple:
    if key is None:
        return build()
    hit = _SCALARS.get(key)
    if hit is None:
        if len(_SCALARS) >= _SCALARS_MAX:
            _SCALARS.clear()
        hit = _SCALARS[key] = build()
    return hit


# Not reformatted (fmt: off): the tuples below list each kernel's arguments in its signature's
# order, several per line as the kernels group them; one per line would double their length.
# fmt: off
def _flags(g: ConvGeometry, x, y, z, bias, perm, store_z: bool, split: int) -> dict:
    """Constexprs shared by ``fwd`` and ``fwd_reduce``."""
    return dict(HAS_BIAS=bias is not None, HAS_PERM=perm is not None, KEEP_BASIS=g.keep_basis,
                STORE_Z=store_z, INT64=_needs_int64(x, y, z), PRECISION=_precision(x.dtype),
                SPLIT_K=split, BLOCK_CB=_configs().block_cb(g.C_b))


def fwd_args(g: ConvGeometry, x, basis, coeff, bias, perm, y, z, ws, *, store_z: bool,
             split: int, cache: bool = False, kernel: str = "fwd",
             sms: int | None = None) -> Launch:
    """``basis_conv_fwd_kernel``'s arguments (and those of the forward variants that take the
    same ones, named by ``kernel``). Absent operands (bias, perm, z, the workspace without
    split-K) get ``x`` in their place: never read (their flags are off). ``sms``: unused (one
    program per tile), as every forward builder takes it."""
    ptrs = (x, basis, coeff, x if bias is None else bias, x if perm is None else perm, y,
            z if store_z else x, ws)

    def build():
        M = g.pixels
        zs = z.stride() if store_z else (0, 0, 0, 0)
        ints = (M, _configs().m_bucket(M), g.C_in, g.H, g.W, g.C_b, g.C_rest, g.Ho, g.Wo,
                *x.stride(), *basis.stride(), *coeff.stride(), *y.stride(), *zs,
                *g.stride, *g.padding, *g.dilation)
        consts = dict(KH=g.KH, KW=g.KW, **_flags(g, x, y, z, bias, perm, store_z, split))
        return ints, consts, lambda meta: (_cdiv(M, meta["BLOCK_M"]), split)

    key = ((kernel, g, x.stride(), basis.stride(), coeff.stride(), y.stride(),
            z.stride() if store_z else None, split, bias is None, perm is None,
            _precision(x.dtype)) if cache else None)
    ints, consts, grid = _scalars(key, build)
    return Launch(kernel, grid, ptrs + ints, consts)


def fwd_tma_args(g: ConvGeometry, x, basis, coeff, bias, perm, y, z, ws, *, store_z: bool,
                 split: int, cache: bool = False, kernel: str = "fwd_tma",
                 sms: int | None = None) -> Launch:
    """``basis_conv_fwd_tma_kernel``'s arguments: v2's, with one program per 2-D tile of
    (TILE_N images, TILE_H rows, TILE_W cols) output pixels (the config's blocks)."""
    lc = fwd_args(g, x, basis, coeff, bias, perm, y, z, ws, store_z=store_z, split=split,
                  cache=cache, kernel=kernel)

    def grid(meta):
        return (_cdiv(g.N, meta["TILE_N"]) * _cdiv(g.Ho, meta["TILE_H"])
                * _cdiv(g.Wo, meta["TILE_W"]), split)

    return lc._replace(grid=grid)


def fwd_halo_args(g: ConvGeometry, x, basis, coeff, bias, perm, y, z, ws, *, store_z: bool,
                  split: int, cache: bool = False, kernel: str = "fwd_halo",
                  sms: int | None = None) -> Launch:
    """``basis_conv_fwd_halo_kernel``'s arguments: v2's pointers and strides, the geometry
    and C_in as constexprs (they fix the halo schedule and the resident basis's size), one
    program per tile of the virtual grid (``kernels/halo_schedule.py``), or with the config's
    ``RESIDENT`` two persistent programs per SM (``sms``; 132 when unknown)."""
    ptrs = (x, basis, coeff, x if bias is None else bias, x if perm is None else perm, y,
            z if store_z else x, ws)

    def build():
        from tritonbasis.kernels import halo_schedule as hs

        M = g.pixels
        zs = z.stride() if store_z else (0, 0, 0, 0)
        ints = (M, _configs().m_bucket(M), g.N, g.C_b, g.C_rest,
                *x.stride(), *basis.stride(), *coeff.stride(), *y.stride(), *zs)
        geo = dict(H=g.H, W=g.W, Ho=g.Ho, Wo=g.Wo, KH=g.KH, KW=g.KW,
                   stride_h=g.stride[0], stride_w=g.stride[1], pad_h=g.padding[0],
                   pad_w=g.padding[1], dil_h=g.dilation[0], dil_w=g.dilation[1])
        consts = dict(C_in=g.C_in, **geo, **_flags(g, x, y, z, bias, perm, store_z, split))
        sched = tuple(geo.values())
        persistent = 2 * (sms or 132)

        def grid(meta):
            tiles = hs.num_tiles(sched, g.N, meta["BLOCK_M"])
            return (min(tiles, persistent) if meta["RESIDENT"] else tiles, split)

        return ints, consts, grid

    key = ((kernel, g, x.stride(), basis.stride(), coeff.stride(), y.stride(),
            z.stride() if store_z else None, split, bias is None, perm is None,
            _precision(x.dtype), sms) if cache else None)
    ints, consts, grid = _scalars(key, build)
    return Launch(kernel, grid, ptrs + ints, consts)


def fwd_reduce_args(g: ConvGeometry, x, ws, coeff, bias, perm, y, z, *, store_z: bool,
                    split: int, cache: bool = False) -> Launch:
    """``basis_conv_fwd_reduce_kernel``'s arguments (the split-K epilogue launch)."""
    ptrs = (ws, coeff, x if bias is None else bias, x if perm is None else perm, y,
            z if store_z else x)

    def build():
        M = g.pixels
        zs = z.stride() if store_z else (0, 0, 0, 0)
        ints = (M, _configs().m_bucket(M), g.C_b, g.C_rest, g.Ho, g.Wo,
                *coeff.stride(), *y.stride(), *zs)
        consts = _flags(g, x, y, z, bias, perm, store_z, split)
        return ints, consts, lambda meta: (_cdiv(M, meta["BLOCK_M"]),)

    key = (("fwd_reduce", g, x.stride(), coeff.stride(), y.stride(),
            z.stride() if store_z else None, split, bias is None, perm is None,
            _precision(x.dtype)) if cache else None)
    ints, consts, grid = _scalars(key, build)
    return Launch("fwd_reduce", grid, ptrs + ints, consts)


def grad_z_args(g: ConvGeometry, grad, coeff, dz, zsrc, bias, perm, wsc, wsb, basis, wt, *,
                P: int, chunk: int, need_x: bool, need_c: bool, need_bias: bool,
                z_from_out: bool = False, cache: bool = False) -> Launch:
    """``basis_conv_grad_z_kernel``'s arguments: ``P`` programs of ``chunk`` pixels; ``dz``
    None when neither dx nor d basis is needed; ``z_from_out``: ``zsrc`` is the keep-basis
    output (Z = its basis channels minus bias), else the saved Z. Absent operands get ``grad``
    (or a workspace that exists) in their place: never read, their flags are off."""
    need_dz = dz is not None
    stand_in = wsb if need_bias else wsc
    ptrs = (grad, coeff, dz if need_dz else grad, zsrc,
            grad if bias is None else bias, grad if perm is None else perm,
            wsc if need_c else stand_in, wsb if need_bias else stand_in,
            basis, wt if need_x else grad)

    def build():
        M = g.pixels
        LW = g.KH * g.KW * g.C_in * g.C_b
        ints = (M, _configs().m_bucket(M), g.C_b, g.C_rest, g.C_in, g.KW,
                LW if need_x else 0, chunk, _cdiv(LW, P), g.Ho, g.Wo,
                *grad.stride(), *coeff.stride(),
                *(dz.stride() if need_dz else (0, 0, 0, 0)), *zsrc.stride(), *basis.stride())
        consts = dict(KEEP_BASIS=g.keep_basis, STORE_DZ=need_dz, NEED_DC=need_c,
                      NEED_DBIAS=need_bias, HAS_BIAS=bias is not None,
                      HAS_PERM=perm is not None, Z_FROM_OUT=z_from_out, COPY_W=need_x,
                      INT64=_needs_int64(grad, zsrc), PRECISION=_precision(grad.dtype),
                      BLOCK_CB=_configs().block_cb(g.C_b), BLOCK_W=512)
        return ints, consts, lambda meta: (P,)

    key = (("grad_z", g, grad.stride(), coeff.stride(), dz.stride() if need_dz else None,
            zsrc.shape, zsrc.stride(), basis.stride(), P, chunk, need_x, need_c, need_bias,
            z_from_out, bias is None, perm is None, _precision(grad.dtype)) if cache else None)
    ints, consts, grid = _scalars(key, build)
    return Launch("grad_z", grid, ptrs + ints, consts)


def _phase_ints(g: ConvGeometry) -> tuple:
    return (*g.stride, *g.padding, *g.dilation, _phase_step(g.stride[0], g.dilation[0]),
            _phase_step(g.stride[1], g.dilation[1]))


def grad_x_args(g: ConvGeometry, dz, wt, dx, dtype: torch.dtype, *,
                cache: bool = False) -> Launch:
    """``basis_conv_grad_x_kernel``'s arguments: one program row per sub-pixel phase tile."""

    def build():
        phases, mp = g.stride[0] * g.stride[1], _phase_pixels(g)
        ints = (g.N, _configs().m_bucket(mp), g.C_in, g.H, g.W, g.C_b, g.Ho, g.Wo,
                *dz.stride(), *dx.stride(), *_phase_ints(g))
        consts = dict(KH=g.KH, KW=g.KW, INT64=_needs_int64(dz, dx),
                      PRECISION=_precision(dtype))
        return ints, consts, lambda meta: (phases * _cdiv(mp, meta["BLOCK_M"]),
                                           _cdiv(g.C_in, meta["BLOCK_N"]))

    key = ("grad_x", g, dz.stride(), dx.stride(), _precision(dtype)) if cache else None
    ints, consts, grid = _scalars(key, build)
    return Launch("grad_x", grid, (dz, wt, dx) + ints, consts)


def wgrad_args(g: ConvGeometry, dz, x, wsw, dtype: torch.dtype, *, split: int,
               cache: bool = False) -> Launch:
    """``basis_conv_wgrad_kernel``'s arguments: ``split`` pixel slices per phase."""

    def build():
        phases, mp = g.stride[0] * g.stride[1], _phase_pixels(g)
        rows = _max_phase_taps(g) * g.C_b
        ints = (g.N, _configs().m_bucket(mp), g.C_in, g.H, g.W, g.C_b, g.Ho, g.Wo, split,
                *dz.stride(), *x.stride(), *_phase_ints(g))
        consts = dict(KH=g.KH, KW=g.KW, INT64=_needs_int64(dz, x),
                      PRECISION=_precision(dtype))
        return ints, consts, lambda meta: (_cdiv(rows, meta["BLOCK_A"]),
                                           _cdiv(g.C_in, meta["BLOCK_X"]), phases * split)

    key = (("wgrad", g, dz.stride(), x.stride(), split, _precision(dtype)) if cache
           else None)
    ints, consts, grid = _scalars(key, build)
    return Launch("wgrad", grid, (dz, x, wsw) + ints, consts)


def bwd_reduce_args(segs) -> Launch:
    """``bwd_reduce_kernel``'s arguments: up to three ``(partials, out, slices, length)``
    sums (d basis, d coeff, d bias); an absent one (None) is a zero-length sum."""
    live = next(s for s in segs if s is not None)
    segs = [s if s is not None else (live[0], live[1], 0, 0) for s in segs]
    return Launch("bwd_reduce", lambda meta: (sum(_cdiv(s[3], meta["BLOCK"]) for s in segs),),
                  tuple(v for s in segs for v in s), {})


# fmt: on

# --------------------------------------------------------------------------------------------
# Forward: plan


def plan_forward(
    x,
    basis,
    coeff,
    bias,
    perm,
    g: ConvGeometry,
    need_z: bool,
    sms: int | None = None,
    split: int | None = None,
    variant="fwd",
):
    """``([Launch, ...], (y, z))`` of one forward: 1 launch (``fwd``), or 2 with split-K
    (``fwd`` into an fp32 workspace, ``fwd_reduce`` for the epilogue). ``sms``: the GPU's SM
    count (None: the interpreter's rules); ``split`` overrides the split-K factor (the compile
    tier builds the ``fwd_reduce`` launch of shapes that do not split); ``variant``: the
    forward kernel's record name (``fwd``, or a v3 variant: its record's builder makes the
    launch; the split-K workspace and ``fwd_reduce`` are shared), or a function that picks
    it: called with ``build(name) -> Launch`` over this plan's tensors, returns the name.

    The basis is passed with C_in contiguous (channels_last): a basis that is not already laid
    out that way is copied once per call (C_b * C_in * KH * KW elements, at most
    128 * 512 * 9 * 2 B = 1.2 MB at the benchmark shapes; none for a 1x1 conv's contiguous
    basis or a channels_last parameter)."""
    configs = _configs()
    fmt = output_memory_format(x)
    y = _empty_4d((g.N, g.C_out, g.Ho, g.Wo), x, fmt)
    cpu = x.device.type == "cpu"  # the interpreter: the op's outputs as on any CPU
    store_z = saves_z(g.keep_basis, bias is not None, x.dtype, need_z, cpu)
    z = (
        _empty_4d((g.N, g.C_b, g.Ho, g.Wo), x, saved_z_format(g.keep_basis, fmt, cpu))
        if store_z
        else x.new_empty(0)
    )
    if basis.stride(1) != 1:
        basis = basis.contiguous(memory_format=torch.channels_last)
    M = g.pixels
    if split is None:
        split = fwd_split_k(M, g.C_in, g.KH, g.KW, g.C_b, sms)
    ws = (
        torch.empty((split, M, configs.block_cb(g.C_b)), device=x.device, dtype=torch.float32)
        if split > 1
        else x
    )
    cache = sms is not None  # CUDA (see _SCALARS)

    def build(name: str) -> Launch:
        return globals()[configs.RECORDS[name].builder](
            g,
            x,
            basis,
            coeff,
            bias,
            perm,
            y,
            z,
            ws,
            store_z=store_z,
            split=split,
            cache=cache,
            kernel=name,
            sms=sms,
        )

    launches = [build(variant(build) if callable(variant) else variant)]
    if split > 1:
        launches.append(
            fwd_reduce_args(
                g, x, ws, coeff, bias, perm, y, z, store_z=store_z, split=split, cache=cache
            )
        )
    return launches, (y, z)


# --------------------------------------------------------------------------------------------
# Backward: plan


# --------------------------------------------------------------------------------------------
# Backward: plan


def plan_backward(
    grad, x, basis, coeff, out, z_saved, bias, perm, g: ConvGeometry, mask, sms: int | None = None
):
    """``([Launch, ...], (dx, dbasis, dcoeff, dbias))`` of one backward: at most 4 launches, no
    aten compute or fill op, bitwise deterministic (always, whether or not
    torch.use_deterministic_algorithms is on: nothing here uses atomics):

    1. ``grad_z`` (any gradient): dZ, per-program partials of d coeff and d bias, and the
       K-contiguous copy of the basis that grad_x reads;
    2. ``grad_x`` (d x): one pipelined (tap, C_b) loop per sub-pixel phase;
    3. ``wgrad`` (d basis): x-stationary, per-slice fp32 partials;
    4. ``bwd_reduce`` (d basis, d coeff or d bias): sums every partial in a fixed order and
       writes the parameters' dtypes.

    Buffers come from ``torch.empty`` (no fill): every partial element is written before the
    reduce reads it. Gradients not in ``mask`` are neither computed nor allocated."""
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
    P, chunk = _grad_z_slices(M, sms)
    LW = g.KH * g.KW * g.C_in * g.C_b
    launches = []
    cache = sms is not None  # CUDA (see _SCALARS)
    dz = None
    if need_dz or need_c or need_bias:
        # dZ in NHWC: grad_x and wgrad read it as [pixels, C_b] tiles.
        dz = _empty_4d((g.N, g.C_b, g.Ho, g.Wo), grad, torch.channels_last) if need_dz else None
        wt = torch.empty(LW if need_x else 0, dtype=basis.dtype, device=dev)
        wsc = torch.empty((P, g.C_rest, g.C_b) if need_c else (0,), **f32)
        wsb = torch.empty((P, g.C_out) if need_bias else (0,), **f32)
        # Z: saved by the forward (4-D) when it was, else the keep-basis output minus bias
        z_from_out = need_c and g.keep_basis and z_saved.dim() != 4
        zsrc = (out if z_from_out else z_saved) if need_c else grad
        launches.append(
            grad_z_args(
                g,
                grad,
                coeff,
                dz,
                zsrc,
                bias,
                perm,
                wsc,
                wsb,
                basis,
                wt,
                P=P,
                chunk=chunk,
                need_x=need_x,
                need_c=need_c,
                need_bias=need_bias,
                z_from_out=z_from_out,
                cache=cache,
            )
        )
    if need_x:
        dx = _empty_4d((g.N, g.C_in, g.H, g.W), x, output_memory_format(x))
        launches.append(grad_x_args(g, dz, wt, dx, grad.dtype, cache=cache))
    split = _wgrad_split(g, sms) if need_b else 0
    if need_b:
        wsw = torch.empty((split, LW), **f32)
        launches.append(wgrad_args(g, dz, x, wsw, grad.dtype, split=split, cache=cache))
        dbasis = torch.empty(basis.shape, dtype=basis.dtype, device=dev)
    if need_c:
        dcoeff = torch.empty(coeff.shape, dtype=coeff.dtype, device=dev)
    if need_bias:
        dbias = torch.empty(bias.shape, dtype=bias.dtype, device=dev)
    if need_b or need_c or need_bias:
        segs = [
            (wsw, dbasis, split, LW) if need_b else None,
            (wsc, dcoeff, P, g.C_rest * g.C_b) if need_c else None,
            (wsb, dbias, P, g.C_out) if need_bias else None,
        ]
        launches.append(bwd_reduce_args(segs))
    return launches, (dx, dbasis, dcoeff, dbias)
