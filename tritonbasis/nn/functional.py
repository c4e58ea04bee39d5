"""Functional API: :func:`basis_conv2d` and the weight-vs-fused cost model."""

from __future__ import annotations

import sys

import torch

from ..op import eager, reference
from ..op.geometry import ConvGeometry, check_inputs
from ..util.compat import autocast_enabled as _autocast_enabled
from ..util.compat import jit_tracing as _jit_tracing

# The decision lives in tritonbasis.nn.modes (its constants re-exported here).
from .modes import FUSED_EFFICIENCY, MIN_FUSED_PIXELS, _has_symbolic, decide  # noqa: F401

MODES = ("fused", "weight", "auto")


def choose_mode(g: ConvGeometry, device: torch.device | str = "cpu", timings=None) -> str:
    """``"fused"`` or ``"weight"`` for one call shape: :func:`tritonbasis.nn.modes.decide`
    (measured ``timings`` > the tuning cache > the cost model calibrated per device type)."""
    return decide(g, device, timings)


# The registered op's one overload, resolved once: calling the OpOverloadPacket
# (torch.ops.tritonbasis.basis_conv2d) picks the overload on every call, ~10-15 us on the
# 2-core CI machine (bench/NOTES.md "Host overhead per call").
_OP = torch.ops.tritonbasis.basis_conv2d.default


def _autocast(x, basis, coeff, bias):
    """Under autocast, run in the autocast dtype like F.conv2d does (params included)."""
    dev = "cuda" if x.is_cuda else "cpu" if x.is_cpu else None  # (x.device.type: ~0.7 us)
    if dev is not None and torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
        return tuple(
            t.to(dtype) if t is not None and t.is_floating_point() else t
            for t in (x, basis, coeff, bias)
        )
    return x, basis, coeff, bias


def onnx_exporting() -> bool:
    """True inside ``torch.onnx.export``. Both exporters trace (the dynamo one through
    torch.export, which sets ``torch.compiler.is_compiling()``; the TorchScript one through
    ``torch.jit`` tracing), so eager calls skip ``torch.onnx.is_in_onnx_export()`` (~3 us: two
    imports per call) behind those two flag reads (~0.3 us)."""
    return _tracing() and _onnx_export_on()


def _tracing() -> bool:
    # under dynamo is_compiling() is True and short-circuits
    return torch.compiler.is_compiling() or _jit_tracing()


def _onnx_export_on() -> bool:
    return "torch.onnx" in sys.modules and torch.onnx.is_in_onnx_export()


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
    tracing = _tracing()
    if (
        (tracing or _autocast_enabled())  # one flag read in eager
        and isinstance(x, torch.Tensor)
        and isinstance(basis, torch.Tensor)
    ):
        x, basis, coeff, bias = _autocast(x, basis, coeff, bias)
    # validated once per call: the eager route passes g on; the op route's own check_inputs
    # (direct torch.ops calls need it) is a dict lookup (op.geometry._CHECKED)
    g = check_inputs(x, basis, coeff, bias, stride, padding, dilation, keep_basis, perm)
    exporting = tracing and _onnx_export_on()
    if mode == "auto":
        # an ONNX graph runs on another machine: keep the factorization there (an explicit
        # mode="weight" still exports the merged conv)
        mode = "fused" if exporting else choose_mode(g, x.device)
    if exporting:
        # ONNX knows no tritonbasis op: the same function in standard ops
        return reference.basis_conv2d_standard_ops(
            x,
            basis,
            coeff,
            bias,
            g.stride,
            g.padding,
            g.dilation,
            keep_basis,
            perm,
            merged=mode == "weight",
        )
    if mode == "weight":
        return reference.weight_modified(
            x, basis, coeff, bias, g.stride, g.padding, g.dilation, keep_basis, perm
        )
    need_z = torch.is_grad_enabled() and coeff.requires_grad  # d coeff: the op may save Z
    if not tracing and eager.eager_ok(x, basis, coeff, bias, perm):
        # plain eager: the op's own forward/backward bodies without custom-op dispatch
        # (op/eager.py: an autograd.Function, or on the CPU path autograd over its stock ops);
        # traced, under a mode or with a subclass: the op
        return eager.basis_conv2d(x, basis, coeff, bias, perm, g, need_z)
    return _OP(x, basis, coeff, bias, perm, g.stride, g.padding, g.dilation, g.keep_basis, need_z)[
        0
    ]
