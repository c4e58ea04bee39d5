"""Functional API: :func:`basis_conv2d` and the weight-vs-fused cost model."""

from __future__ import annotations

import sys

import torch

from . import reference, tune_cache
from ._checks import ConvGeometry, check_inputs
from .kernels_limits import MAX_BASIS_CHANNELS

MODES = ("fused", "weight", "auto")

# Cost-model constants (the fallback when the tuning cache has no measured timing for a shape:
# `tritonbasis tune` measures fused vs weight per layer shape, see tritonbasis.tune_cache).
# The fused kernel must do clearly fewer MACs than the dense conv to pay for running at a lower
# fraction of peak than cuDNN: we assume >= 60% of cuDNN's efficiency, so fused wins when
# fused_MACs < 0.6 x dense_MACs. Below ~2k output pixels a launch is mostly fixed cost and the
# single dense conv of weight modification wins.
FUSED_EFFICIENCY = 0.6
MIN_FUSED_PIXELS = 2048


def choose_mode(g: ConvGeometry, device: torch.device | str = "cpu") -> str:
    """``"fused"`` or ``"weight"`` for one call shape.

    Measured first: if the tuning cache (:mod:`tritonbasis.tune_cache`, filled by
    ``tritonbasis tune``) has fused and weight timings for this layer shape on this device, the
    faster one. Otherwise the FLOP/shape cost model below. Either way, ``C_b`` above the fused
    kernel's limit on CUDA is ``"weight"`` (the kernel cannot run it)."""
    device = torch.device(device)
    if device.type == "cuda" and g.C_b > MAX_BASIS_CHANNELS:
        return "weight"  # the fused kernel holds C_b in one tile; cuDNN does the rest
    # Under torch.export / torch.compile with a dynamic batch (or size), N (H, W) are symbolic:
    # any comparison on them becomes a guard that the export's range violates ("Not all values
    # of batch satisfy ... 86016*N < 0.6*294912*N"). The decision then uses static numbers only.
    symbolic = _has_symbolic(g)
    measured = None if symbolic else tune_cache.lookup_mode(g, device)
    if measured is not None:
        return measured
    # per output pixel: the ratio fused/dense does not depend on how many pixels there are
    fused_pp = g.C_b * g.C_in * g.KH * g.KW + g.C_rest * g.C_b
    dense_pp = g.C_out * g.C_in * g.KH * g.KW
    if fused_pp >= FUSED_EFFICIENCY * dense_pp:
        return "weight"  # no real saving (stems with C_in*k^2 < C_b, C_b close to C_out)
    # the launch-overhead rule needs the pixel count; with a symbolic one it is skipped (a
    # model exported for any batch is exported for large ones: fused)
    if device.type == "cuda" and not symbolic and g.pixels < MIN_FUSED_PIXELS:
        return "weight"
    return "fused"


def _has_symbolic(g: ConvGeometry) -> bool:
    return any(not isinstance(v, int) for v in (g.N, g.H, g.W, g.Ho, g.Wo))


def _autocast(*tensors):
    """Under autocast, run in the autocast dtype like F.conv2d does (params included)."""
    dev = next(t.device.type for t in tensors if t is not None)
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
        return tuple(
            t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors
        )
    return tensors


def basis_conv2d(
    x: torch.Tensor,
    basis: torch.Tensor,
    coeff: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    keep_basis: bool = True,
    mode: str = "fused",
    perm: torch.Tensor | None = None,
) -> torch.Tensor:
    """Basis convolution: ``Z = conv2d(x, basis)``, then ``cat(Z, coeff.Z)`` (``keep_basis``)
    or ``coeff.Z``, plus ``bias``.

    Args:
        x: ``(N, C_in, H, W)``, contiguous or channels_last; the output has the same format.
        basis: ``(C_b, C_in, kH, kW)`` basis filters.
        coeff: ``(C_out - C_b, C_b)`` if ``keep_basis`` else ``(C_out, C_b)``.
        bias: ``(C_out,)`` or None.
        stride, padding, dilation: int or pair. Only ``groups=1`` exists.
        mode: ``"fused"`` (the registered op: Triton on CUDA, plain PyTorch on CPU),
            ``"weight"`` (build ``W = [B; coeff.B]`` and run one dense conv), or ``"auto"``
            (:func:`choose_mode`).
        perm: optional int tensor ``(C_out,)``, a permutation: computed channel ``c`` (basis
            outputs first, then the combined ones) is written to output channel ``perm[c]``.
            Keep-basis conversions of trained convs use it to keep the original channel order;
            the kernels apply it in their stores and loads. ``bias`` is in output order.

    dtypes: float16/bfloat16/float32 on CUDA (fp32 uses TF32 iff
    ``torch.backends.cudnn.allow_tf32``), float32/float64 on CPU; accumulation in fp32.
    Under autocast, all arguments are cast to the autocast dtype first.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(x, torch.Tensor) and isinstance(basis, torch.Tensor):
        x, basis, coeff, bias = _autocast(x, basis, coeff, bias)
    g = check_inputs(x, basis, coeff, bias, stride, padding, dilation, keep_basis, perm)
    if mode == "auto":
        mode = choose_mode(g, x.device)
    if "torch.onnx" in sys.modules and torch.onnx.is_in_onnx_export():
        # ONNX knows no tritonbasis op: the same function in standard ops (tritonbasis.deploy)
        from .deploy import basis_conv2d_standard_ops

        return basis_conv2d_standard_ops(x, basis, coeff, bias, g.stride, g.padding,
                                         g.dilation, keep_basis, perm, merged=mode == "weight")
    if mode == "weight":
        return reference.weight_modified(
            x, basis, coeff, bias, g.stride, g.padding, g.dilation, keep_basis, perm
        )
    need_z = (not keep_basis) and coeff.requires_grad and torch.is_grad_enabled()
    out, _ = torch.ops.tritonbasis.basis_conv2d(
        x, basis, coeff, bias, perm, list(g.stride), list(g.padding), list(g.dilation),
        bool(keep_basis), need_z,
    )
    return out
