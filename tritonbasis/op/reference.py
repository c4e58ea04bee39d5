"""Plain-PyTorch basis convolution: the oracle for tests and benchmarks, and the CPU path.

Two things live here, next to each other on purpose (DESIGN.md §3):

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
    x, basis, coeff, bias=None, stride=1, padding=0, dilation=1, keep_basis=True, perm=None,
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
        return F.conv2d(x, merged_weight(basis, coeff, keep_basis, perm), bias, stride, padding,
                        dilation)
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
# The CPU path of the op.


def _compute_layout(t: torch.Tensor) -> torch.Tensor:
    """On CPU, run the convolutions in channels_last: mkldnn's NCHW convolution backward is ~2x
    slower than its NHWC one at ResNet shapes (12.9 vs 6.0 ms at 64x128x16x16, C_b = 32),
    far more than the ~1 ms layout copy. Results go back to the input's format at the end."""
    if t.device.type == "cpu" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


# Below this many input elements the forward runs in the input's own layout: the two layout
# copies of _compute_layout (x in, y out) then cost more than an NHWC convolution saves.
# Measured (CPU, 1 thread, keep-basis 3x3, C_b = C_in/4, best of 2 blocked_autorange runs):
# every input under 4096 elements ran faster without the copies (time ratio 0.58-0.94, e.g.
# 1x16x8x8: 53 vs 82 us); above it the result is mixed (0.3-1.4x: NHWC wins at batch 64 and
# 4-16 px, NCHW at 32 px), so the layout stays as it was measured for the search.
_MIN_RELAYOUT_NUMEL = 4096


def forward(x, basis, coeff, bias, perm, g: ConvGeometry, need_z: bool):
    """Returns ``(y, z_saved)``; ``z_saved`` is Z when :func:`~.geometry.saves_z` says the
    backward reads it (the full form, or keep-basis with a 16-bit bias), else empty."""
    fmt = output_memory_format(x)
    if x.numel() >= _MIN_RELAYOUT_NUMEL:
        x = _compute_layout(x)
    z = F.conv2d(x, basis, None, g.stride, g.padding, g.dilation)
    rest = combine(z, coeff) if g.C_rest else None
    if g.keep_basis:
        y = torch.cat([z, rest], dim=1) if rest is not None else z.clone()
    else:
        y = rest
    if perm is not None:  # one gather here; the Triton kernel permutes in its epilogue store
        y = y.index_select(1, inverse_permutation(perm))
    if bias is not None:
        y.add_(bias[None, :, None, None])
    y = y.contiguous(memory_format=fmt)
    z_saved = (z.contiguous(memory_format=saved_z_format(g.keep_basis, fmt))
               if saves_z(g.keep_basis, bias is not None, x.dtype, need_z) else x.new_empty(0))
    return y, z_saved


def basis_outputs(out, z_saved, bias, perm, g: ConvGeometry) -> torch.Tensor:
    """Z for the backward: the saved Z (full form, or keep-basis when the forward saved it), or
    the basis output channels minus their bias (keep-basis form, nothing extra saved)."""
    if not g.keep_basis or z_saved.dim() == 4:
        return z_saved
    if perm is None:
        z = out[:, : g.C_b]
        b = bias[: g.C_b] if bias is not None else None
    else:
        z = out.index_select(1, perm[: g.C_b])
        b = bias[perm[: g.C_b]] if bias is not None else None
    if b is not None:
        z = z - b[None, :, None, None]
    return z


def grad_basis_outputs(grad, coeff, g: ConvGeometry) -> torch.Tensor:
    """dZ from the gradient in *computed* channel order."""
    """dZ = G_b + coeff^T . G_r (keep-basis) or coeff^T . G (full)."""
    if g.keep_basis:
        dz = grad[:, : g.C_b]
        if g.C_rest:
            dz = dz + combine(grad[:, g.C_b :], coeff.t())
        return dz
    return combine(grad, coeff.t())


def backward(grad, x, basis, coeff, out, z_saved, bias, perm, g: ConvGeometry, mask):
    """Gradients ``(dx, dbasis, dcoeff, dbias)``; an unrequested one is an empty tensor."""
    need_x, need_b, need_c, need_bias = mask
    dbias_grad = grad  # d bias is in output-channel order
    if perm is not None and (need_x or need_b or need_c):
        grad = grad.index_select(1, perm)  # computed order
    # distinct empties: a custom op's outputs must not alias each other
    dx, dbasis, dcoeff, dbias = (grad.new_empty(0) for _ in range(4))
    if need_x or need_b:
        dz = grad_basis_outputs(_compute_layout(grad), coeff, g)
        dx_, db_, _ = torch.ops.aten.convolution_backward(
            _compute_layout(dz), _compute_layout(x), basis, None, list(g.stride),
            list(g.padding), list(g.dilation), False, [0, 0], 1, [need_x, need_b, False],
        )
        if need_x:
            dx = dx_.contiguous(memory_format=output_memory_format(x))
        if need_b:
            dbasis = db_.contiguous()
    if need_c:
        if g.C_rest:
            z = basis_outputs(out, z_saved, bias, perm, g)
            g_r = grad[:, g.C_b :] if g.keep_basis else grad
            dcoeff = torch.einsum("njhw,nchw->jc", g_r, z)
        else:
            dcoeff = coeff.new_zeros(coeff.shape)
    if need_bias:
        dbias = dbias_grad.sum(dim=(0, 2, 3))
    return dx, dbasis, dcoeff, dbias
