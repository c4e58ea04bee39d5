"""Plain-PyTorch basis convolution: the oracle for tests and benchmarks, and the CPU path.

Two things live here, next to each other on purpose (one source per formula):

* :func:`basis_conv2d_reference` -- the obvious composition ``F.conv2d(x, basis)`` then the 1x1
  combination (``cat(Z, coeff.Z)`` or ``coeff.Z``) plus bias, differentiated by autograd. Tests
  compare everything against it in float64; benchmarks use it as the ``unfused_eager`` provider.
* :func:`forward` / :func:`backward` -- the same math written for speed with stock ops, used by
  the registered op on CPU (and on CUDA where Triton cannot run). The backward is hand-written
  so it computes only the gradients that are asked for and reuses ``aten.convolution_backward``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .geometry import ConvGeometry, output_memory_format, saved_z_format, saves_z


def combine(z: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
    """``coeff . z`` over the channel axis, per pixel: a 1x1 convolution.

    A 1x1 ``conv2d`` beats ``einsum`` on CPU by 3-6x here (mkldnn, either memory format);
    conv2d refuses zero filters, so a (0, C_b) coeff (keep-basis with C_out = C_b) uses einsum.
    """
    if coeff.shape[0] == 0:
        return torch.einsum("oc,nchw->nohw", coeff, z)
    return F.conv2d(z, coeff[:, :, None, None])


def basis_conv2d_reference(
    x, basis, coeff, bias=None, stride=1, padding=0, dilation=1, keep_basis=True, perm=None
) -> torch.Tensor:
    """The definition of a basis convolution, in stock autograd-able PyTorch ops.

    The computed channels are ``[Z; coeff.Z]`` (keep-basis) or ``coeff.Z`` (full); with
    ``perm`` (a permutation of range(C_out)), computed channel ``c`` becomes output channel
    ``perm[c]``. ``bias`` is indexed by output channel.
    """
    z = F.conv2d(x, basis, None, stride, padding, dilation)
    rest = combine(z, coeff)
    y = torch.cat([z, rest], dim=1) if keep_basis else rest
    if perm is not None:
        y = y.index_select(1, inverse_permutation(perm))
    if bias is not None:
        y = y + bias[None, :, None, None]
    return y


def merged_weight(
    basis: torch.Tensor, coeff: torch.Tensor, keep_basis: bool, perm: torch.Tensor | None = None
) -> torch.Tensor:
    """The dense filter bank ``W`` equal to the basis convolution: ``[B; coeff.B]`` or
    ``coeff.B`` (weight modification), rows permuted by ``perm`` if given (computed from the
    parameters alone, so exporters fold it to a constant)."""
    flat = basis.reshape(basis.shape[0], -1)
    rest = (coeff @ flat).reshape(coeff.shape[0], *basis.shape[1:])
    w = torch.cat([basis, rest], dim=0) if keep_basis else rest
    if perm is not None:
        w = w.index_select(0, inverse_permutation(perm))
    return w


def weight_modified(
    x,
    basis,
    coeff,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    keep_basis=True,
    perm=None,
    weight=None,
) -> torch.Tensor:
    """Weight-modification path: build ``W`` (cheap, once per call) and run one dense conv.
    ``weight``: ``W`` already built from these parameters (a layer's inference cache)."""
    w = merged_weight(basis, coeff, keep_basis, perm) if weight is None else weight
    return F.conv2d(x, w, bias, stride, padding, dilation)


# --------------------------------------------------------------------------------------------
# The export lowering: one basis convolution in standard ops that keep the factorization
# (tritonbasis.conversion.deploy: ONNX, AOTInductor)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[perm[c]] = c`` (output channel o is computed channel ``inv[o]``).

    Written as a scatter, not ``argsort``: inside an exported graph the permutation is a
    constant buffer and ONNX constant folding evaluates a ScatterElements of constants, but it
    leaves argsort's TopK (two outputs) in the graph to run on every inference."""
    src = torch.arange(perm.shape[0], dtype=perm.dtype, device=perm.device)
    return torch.zeros_like(perm).scatter(0, perm, src)


def basis_conv2d_standard_ops(
    x: torch.Tensor,
    basis: torch.Tensor,
    coeff: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    keep_basis: bool,
    perm: torch.Tensor | None = None,
    merged: bool = False,
) -> torch.Tensor:
    """The basis convolution written in standard ops that keep the factorization: a conv over
    the basis, a 1x1 conv with the coefficients, a concat (keep-basis), the permutation and the
    bias (see :mod:`tritonbasis.conversion.deploy`). Same function as the op, same FLOPs.

    ``merged=True`` (a layer in ``mode="weight"``): one dense conv whose weight
    ``[B; coeff.B]`` is computed from the parameters alone, so exporters fold it to a constant.
    """
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    if merged:
        return F.conv2d(
            x, merged_weight(basis, coeff, keep_basis, perm), bias, stride, padding, dilation
        )
    z = F.conv2d(x, basis, None, stride, padding, dilation)
    c_rest = int(coeff.shape[0])
    if not keep_basis:
        # computed channel c is output channel perm[c]: permute the rows once (a constant)
        w = coeff if perm is None else coeff.index_select(0, inverse_permutation(perm))
        return F.conv2d(z, w[:, :, None, None], bias)
    y = torch.cat([z, F.conv2d(z, coeff[:, :, None, None])], dim=1) if c_rest else z
    if perm is not None:
        y = y.index_select(1, inverse_permutation(perm))
    if bias is not None:
        y = y + bias[None, :, None, None]
    return y


# --------------------------------------------------------------------------------------------
# The CPU path of the op (also CUDA where Triton cannot run): the stock pair's work (the basis
# conv, the C_rest x C_b product, the basis conv's convolution_backward) without the stock
# pair's copies, in the input's memory format. Relayouts to channels_last and back cost more
# than they save (at 64ch@32px, batch 32: 42 layout copies were 36% of a forward+backward).
#
# * Keep-basis, no perm, NCHW, one intra-op thread, >= _GEMM_MIN_HW output pixels per image:
#   Z and coeff . Z are two channel slices of the output. Z is written into its slice, one
#   batched GEMM writes coeff . Z (+ bias) into the other: no cat. Backward: dZ = G_b +
#   coeff^T . G_r is one batched GEMM over the two slices of G (no slice copies, no sum),
#   d coeff another.
# * Keep-basis with perm: one product with W = [I; coeff], rows permuted, writes the output in
#   output order (no cat, no gather; +C_b^2 MACs per pixel, +3% at C_b = C_out/4, 3x3); the
#   backward multiplies G as it is (dZ = W^T . G, d W = G x Z, d coeff its rows), no gathered
#   copy of G: batched GEMMs, or below GEMM sizes oneDNN's 1x1 backward with W.
# * Full form: W = coeff with rows permuted (perm and bias folded into the one product); its
#   backward is oneDNN's 1x1 convolution_backward (dZ and d coeff in one call, as autograd
#   runs for the stock pair).
# * Otherwise the products are 1x1 convs (oneDNN) as in the stock pair. Measured against the
#   stock pair in one run, alternating, C_b = C_out/4 (stock time / ours, GEMM vs 1x1 conv):
#   1 thread, 64ch@32px batch 32 keep fwd 1.08 vs 0.98, but 128ch@16px 0.93 vs 0.97 and
#   256ch@8px equal; 2 threads, the GEMMs lose where oneDNN splits the work: 64ch@32px keep
#   fwd 0.72 vs 0.98, fwd+bwd 0.86 vs 0.94.
# bench/cpu_path.py measures the whole against the stock pair.

# Per-image output pixels from which the pointwise products are batched GEMMs (NCHW), the
# output size below which they are 1x1 convs anyway (lower fixed cost: 7.4 vs 10.7 us at
# 1x16x8x8, the per-call host time of small layers), and the most intra-op threads at which
# the GEMMs still win.
_GEMM_MIN_HW = 512
_GEMM_MIN_NUMEL = 1 << 15
_GEMM_MAX_THREADS = 1

_EYES: dict[tuple, torch.Tensor] = {}


def _eye(n: int, like: torch.Tensor) -> torch.Tensor:
    """The n x n identity, kept per (n, dtype, device) (torch.eye costs ~1.7 us per call; a
    model has a few distinct C_b)."""
    key = (n, like.dtype, like.device)
    e = _EYES.get(key)
    if e is None:
        if len(_EYES) >= 256:
            _EYES.clear()
        e = _EYES[key] = torch.eye(n, dtype=like.dtype, device=like.device)
    return e


def pointwise_weight(coeff, perm, g: ConvGeometry) -> torch.Tensor:
    """W (C_out, C_b) of the product that writes the whole output: ``[I; coeff]``
    (keep-basis) or ``coeff`` (full), row ``perm[c]`` = computed channel c."""
    w = torch.cat([_eye(g.C_b, coeff), coeff]) if g.keep_basis else coeff
    if perm is not None:
        w = w.index_select(0, inverse_permutation(perm))
    return w


def _gemm(t: torch.Tensor, g: ConvGeometry) -> bool:
    """Batched GEMMs over ``t`` (Z or G): NCHW, large enough, few threads."""
    # the geometry's ints first, then one torch call at a time (each costs several times its
    # warm time right after a large conv)
    return (
        g.Ho * g.Wo >= _GEMM_MIN_HW
        and g.N * g.C_out * g.Ho * g.Wo >= _GEMM_MIN_NUMEL
        and torch.get_num_threads() <= _GEMM_MAX_THREADS
        and t.is_contiguous()
    )


def _bmm_into(out3, w, z3, bias) -> None:
    """``out3 = w . z3 (+ bias)`` per image; ``out3`` may be a channel slice of the output."""
    if bias is None:
        torch.matmul(w, z3, out=out3)
    else:
        torch.baddbmm(bias[:, None], w.expand(z3.shape[0], *w.shape), z3, out=out3)


def _1x1(w: torch.Tensor) -> torch.Tensor:
    """``w`` (O, I) as a 1x1 conv weight (O, I, 1, 1): ``view`` costs 0.7 us per call where
    ``w[:, :, None, None]`` costs 1.6 (per call on the hot path, and several times that right
    after large convs, bench/NOTES.md "CPU path against the stock pair: what is left")."""
    return w.view(w.shape[0], w.shape[1], 1, 1)


def _pointwise(z, w, bias, gemm: bool) -> torch.Tensor:
    """``w . z + bias`` per pixel: a batched GEMM (``gemm``: z NCHW) or a 1x1 conv. The result
    is a fresh tensor, no view (an autograd.Function's output may not be one)."""
    if not gemm:
        return F.conv2d(z, _1x1(w), bias)
    n, cb, h, wd = z.shape
    y = z.new_empty((n, w.shape[0], h, wd))
    _bmm_into(y.view(n, w.shape[0], h * wd), w, z.view(n, cb, h * wd), bias)
    return y


def takes_gemms(x: torch.Tensor, g: ConvGeometry) -> bool:
    """Whether :func:`forward` and :func:`backward` multiply by batched GEMMs for input ``x``
    (an NCHW ``x`` gives an NCHW Z and G): then the hand-written backward is the faster one."""
    return _gemm(x, g)


def forward(x, basis, coeff, bias, perm, g: ConvGeometry, need_z: bool, differentiable=False):
    """Returns ``(y, z_saved)``; ``z_saved`` is Z when :func:`~.geometry.saves_z` says the
    backward reads it (the full form; keep-basis on a CPU, or with a 16-bit bias), else
    empty. ``y`` has the input's memory format.

    ``differentiable``: only ops autograd differentiates (no batched-GEMM writes into the
    output), so that autograd can record the call: its backward is then autograd's own over
    these stock ops, as for the pair a user would write."""
    fmt = output_memory_format(x)
    z = F.conv2d(x, basis, None, g.stride, g.padding, g.dilation)
    gemm = not differentiable and _gemm(z, g)
    if not g.keep_basis:
        w = coeff if perm is None else coeff.index_select(0, inverse_permutation(perm))
        y = _pointwise(z, w, bias, gemm)
        z_saved = z.contiguous(memory_format=fmt) if need_z else x.new_empty(0)
        return y.contiguous(memory_format=fmt), z_saved
    cpu = x.device.type == "cpu"
    save = saves_z(True, bias is not None, x.dtype, need_z, cpu)
    if save and not cpu:  # the 16-bit bias case on a GPU: in the kernels' layout
        z_saved = z.clone(memory_format=saved_z_format(True, fmt, cpu))
    elif save:  # Z exists here anyway: saved as it is (no branch below writes into it)
        z_saved = z.contiguous(memory_format=fmt)
    else:
        z_saved = x.new_empty(0)
    if perm is not None:
        y = _pointwise(z, pointwise_weight(coeff, perm, g), bias, gemm)
    elif not g.C_rest:  # C_out = C_b: the output is Z (+ bias), never Z_saved itself
        y = z + bias[:, None, None] if bias is not None else (z.clone() if save else z)
    elif gemm:
        n, hw = g.N, g.Ho * g.Wo
        y = z.new_empty((n, g.C_out, g.Ho, g.Wo))
        y3, z3 = y.view(n, g.C_out, hw), z.view(n, g.C_b, hw)
        if bias is None:
            y3[:, : g.C_b].copy_(z3)
        else:
            torch.add(z3, bias[: g.C_b, None], out=y3[:, : g.C_b])
        _bmm_into(y3[:, g.C_b :], coeff, z3, None if bias is None else bias[g.C_b :])
    else:  # the stock pair's own ops: the combined channels, then one cat
        rest = F.conv2d(z, _1x1(coeff), None if bias is None else bias[g.C_b :])
        # the basis channels' bias on a copy of Z (Z itself stays without it), not in place
        # on the output: under autograd an in-place write into the cat's output would copy
        # the whole output gradient in the backward
        zb = z if bias is None else z + bias[: g.C_b, None, None]
        y = torch.cat([zb, rest], dim=1)
    # (a copy only where Z is both NCHW and NHWC, e.g. C_b = 1, and x is channels_last)
    return y.contiguous(memory_format=fmt), z_saved


def _channels(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t.index_select(1, index)``; on an NCHW tensor through its (N, C, HW) view (0.6 vs
    1.1 ms at 64x128x16x16: one contiguous block per channel instead of per row)."""
    if t.is_contiguous():
        n, _, h, w = t.shape
        return t.view(n, t.shape[1], h * w).index_select(1, index).view(n, len(index), h, w)
    return t.index_select(1, index)


def basis_outputs(out, z_saved, bias, perm, g: ConvGeometry) -> torch.Tensor:
    """Z for the backward, in computed order: the saved Z (full form, or keep-basis when the
    forward saved it), or the basis output channels minus their bias (keep-basis form,
    nothing extra saved)."""
    if not g.keep_basis or z_saved.dim() == 4:
        return z_saved
    if perm is None:
        z = out[:, : g.C_b]
        b = bias[: g.C_b] if bias is not None else None
    else:
        z = _channels(out, perm[: g.C_b])
        b = bias.index_select(0, perm[: g.C_b]) if bias is not None else None
    if b is not None:
        z = z - b[None, :, None, None]
    return z


def _pointwise_backward(grad, z, w, need_dz: bool):
    """oneDNN's 1x1 backward of ``w . z``: ``(dZ or None, d w)`` in one call, as autograd runs
    it for the stock pair's 1x1 conv."""
    dz, dw, _ = torch.ops.aten.convolution_backward(
        grad,
        z,
        _1x1(w),
        None,
        [1, 1],
        [0, 0],
        [1, 1],
        False,
        [0, 0],
        1,
        [need_dz, True, False],
    )
    return dz, dw[:, :, 0, 0]


def _keep_grads(grad, coeff, out, z_saved, bias, perm, g, need_dz, need_c):
    """(dZ or None, d coeff or None) of the keep-basis form."""
    if perm is not None and g.C_rest:
        return _keep_grads_perm(grad, coeff, out, z_saved, bias, perm, g, need_dz, need_c)
    if perm is not None:  # C_out = C_b: the output is Z, permuted
        grad = _channels(grad, perm)
    g_b = grad[:, : g.C_b]
    if not g.C_rest:
        return g_b, None
    g_r = grad[:, g.C_b :]
    z = basis_outputs(out, z_saved, bias, perm, g) if need_c else None
    if _gemm(grad, g):
        n, hw = g.N, g.Ho * g.Wo
        g3 = grad.view(n, g.C_out, hw)
        g_b3, g_r3 = g3[:, : g.C_b], g3[:, g.C_b :]
        dcoeff = None
        if z is not None:  # need_c
            dcoeff = torch.bmm(g_r3, z.reshape(n, g.C_b, hw).transpose(1, 2)).sum(0)
        dz = (
            torch.baddbmm(g_b3, coeff.t().expand(n, g.C_b, g.C_rest), g_r3).view(
                n, g.C_b, g.Ho, g.Wo
            )
            if need_dz
            else None
        )
        return dz, dcoeff
    if need_c:
        dz_r, dcoeff = _pointwise_backward(g_r, z, coeff, need_dz)
    else:
        dz_r, dcoeff = (F.conv2d(g_r, _1x1(coeff.t())) if need_dz else None), None
    return (dz_r.add_(g_b) if need_dz else None), dcoeff


def _keep_grads_perm(grad, coeff, out, z_saved, bias, perm, g, need_dz, need_c):
    """The keep-basis gradients with an output permutation: products with the forward's
    W = [I; coeff] (rows permuted) over G as it is, no gathered copy of G (one output-sized
    allocation and pass fewer, and no slice copy of G's combined channels; +C_b^2 MACs per
    pixel). At 2 threads, C_b = C_out/4, 128ch@16px batch 64, forward+backward 14.6 -> 13.3 ms
    against the gather-then-slice backward."""
    w = pointwise_weight(coeff, perm, g)
    z = basis_outputs(out, z_saved, bias, perm, g) if need_c else None
    if _gemm(grad, g):
        n, hw = g.N, g.Ho * g.Wo
        g3 = grad.view(n, g.C_out, hw)
        dz = torch.matmul(w.t(), g3).view(n, g.C_b, g.Ho, g.Wo) if need_dz else None
        dw = None
        if z is not None:
            dw = torch.bmm(g3, z.reshape(n, g.C_b, hw).transpose(1, 2)).sum(0)
    elif z is not None:
        dz, dw = _pointwise_backward(grad, z, w, need_dz)
    else:
        dz, dw = F.conv2d(grad, _1x1(w.t())), None  # need_dz
    # dw's rows are in output order: d coeff = the rows of the combined channels
    return dz, (dw.index_select(0, perm[g.C_b :]) if dw is not None else None)


def backward(grad, x, basis, coeff, out, z_saved, bias, perm, g: ConvGeometry, mask):
    """Gradients ``(dx, dbasis, dcoeff, dbias)``; an unrequested one is an empty tensor."""
    need_x, need_b, need_c, need_bias = mask
    need_dz = need_x or need_b
    # distinct empties: a custom op's outputs must not alias each other
    dx, dbasis, dcoeff, dbias = (grad.new_empty(0) for _ in range(4))
    if need_bias:
        dbias = grad.sum(dim=(0, 2, 3))  # d bias is in output-channel order
    if need_c and not g.C_rest:  # keep-basis with C_out = C_b: coeff has no entries
        dcoeff, need_c = coeff.new_zeros(coeff.shape), False
    dz = None
    if g.keep_basis and (need_dz or need_c):
        dz, dc = _keep_grads(grad, coeff, out, z_saved, bias, perm, g, need_dz, need_c)
        if need_c:
            dcoeff = dc.clone() if dc._base is not None else dc  # own storage, no view
    elif need_dz or need_c:
        w = coeff if perm is None else coeff.index_select(0, inverse_permutation(perm))
        if need_c:  # oneDNN's 1x1 backward: dZ and d W in one call
            dz, dw = _pointwise_backward(grad, z_saved, w, need_dz)
            # dw's rows are in output order: d coeff = d W[perm]
            dcoeff = dw.index_select(0, perm) if perm is not None else dw.clone()
        else:
            dz = _pointwise(grad, w.t(), None, _gemm(grad, g))  # W^T . G
    if need_dz:
        dx_, db_, _ = torch.ops.aten.convolution_backward(
            dz,
            x,
            basis,
            None,
            list(g.stride),
            list(g.padding),
            list(g.dilation),
            False,
            [0, 0],
            1,
            [need_x, need_b, False],
        )
        if need_x:  # (no-ops where mkldnn already returns these layouts)
            dx = dx_.contiguous(memory_format=output_memory_format(x))
        if need_b:
            dbasis = db_.contiguous()
    return dx, dbasis, dcoeff, dbias
