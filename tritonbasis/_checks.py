"""Argument normalisation and validation shared by the functional API, the ops and their fakes.

Every check here runs before any kernel launch, on metadata only (shapes, dtypes, devices), so
it is also safe on fake tensors under ``torch.compile``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def pair(v, name: str) -> tuple[int, int]:
    """``int`` or a length-2 sequence of ints -> ``(int, int)``; anything else is a ValueError."""
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got a bool")
    if isinstance(v, int):
        return (v, v)
    try:
        items = tuple(v)
    except TypeError:
        kind = type(v).__name__
        raise TypeError(f"{name} must be an int or a pair of ints, got {kind}") from None
    if len(items) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return items  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvGeometry:
    """Everything a kernel needs to know about the shapes of one basis convolution."""

    N: int
    C_in: int
    H: int
    W: int
    C_b: int
    C_rest: int  # rows of coeff: C_out - C_b (keep-basis) or C_out (full)
    C_out: int
    KH: int
    KW: int
    Ho: int
    Wo: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    keep_basis: bool

    @property
    def pixels(self) -> int:
        """Output pixels, the M of the forward implicit GEMM."""
        return self.N * self.Ho * self.Wo

    def macs(self) -> dict[str, int]:
        """Multiply-accumulates of the fused forward and of the dense conv it replaces."""
        basis = self.pixels * self.C_b * self.C_in * self.KH * self.KW
        combine = self.pixels * self.C_rest * self.C_b
        dense = self.pixels * self.C_out * self.C_in * self.KH * self.KW
        return {"basis": basis, "combine": combine, "fused": basis + combine, "dense": dense}


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def check_inputs(
    x: torch.Tensor,
    basis: torch.Tensor,
    coeff: torch.Tensor,
    bias: torch.Tensor | None,
    stride,
    padding,
    dilation,
    keep_basis: bool,
    perm: torch.Tensor | None = None,
) -> ConvGeometry:
    """Validate a basis convolution's arguments and return its geometry.

    Raises ``ValueError`` (shapes, ranks, ranges) or ``TypeError`` (dtypes, argument types) with
    a message naming the offending argument; nothing is launched before this returns.
    """
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(
        dilation, "dilation"
    )
    for name, t in (("x", x), ("basis", basis), ("coeff", coeff), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C_in, H, W), got shape {tuple(x.shape)}")
    if basis.dim() != 4:
        raise ValueError(
            f"basis must be 4-D (C_b, C_in, kH, kW), got shape {tuple(basis.shape)}"
        )
    if coeff.dim() != 2:
        raise ValueError(f"coeff must be 2-D, got shape {tuple(coeff.shape)}")
    N, C_in, H, W = x.shape
    C_b, C_in_b, KH, KW = basis.shape
    if C_in_b != C_in:
        if C_in % C_in_b == 0 and C_in_b > 0:
            raise ValueError(
                f"basis has {C_in_b} input channels but x has {C_in}: grouped convolution "
                f"(groups={C_in // C_in_b}) is not supported, only groups=1"
            )
        raise ValueError(f"basis expects {C_in_b} input channels but x has {C_in}")
    if C_b < 1:
        raise ValueError(f"basis must hold at least one filter (C_b >= 1), got C_b={C_b}")
    if min(C_in, H, W, KH, KW) < 1:  # N == 0 is fine: an empty output, as nn.Conv2d
        raise ValueError(
            f"empty input or filter: x {tuple(x.shape)}, basis {tuple(basis.shape)}"
        )
    C_rest, C_b_coeff = coeff.shape
    if C_b_coeff != C_b:
        raise ValueError(
            f"coeff must have C_b={C_b} columns (one per basis filter), got shape "
            f"{tuple(coeff.shape)}"
        )
    if keep_basis:
        C_out = C_b + C_rest
    else:
        C_out = C_rest
        if C_out < 1:
            raise ValueError("keep_basis=False needs coeff of shape (C_out, C_b) with C_out >= 1")
        if C_b > C_out:
            raise ValueError(
                f"C_b={C_b} is out of range: with keep_basis=False it must be <= C_out={C_out}"
            )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != C_out):
        form = "C_b + coeff rows" if keep_basis else "coeff rows"
        raise ValueError(f"bias must have shape ({C_out},) = ({form},), got {tuple(bias.shape)}")
    for name, t in (("basis", basis), ("coeff", coeff), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x has {x.dtype}; they must match")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; they must match")
    if perm is not None:
        if not isinstance(perm, torch.Tensor):
            raise TypeError(f"perm must be a torch.Tensor or None, got {type(perm).__name__}")
        if perm.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"perm must be an int64 or int32 tensor, got dtype {perm.dtype}")
        if perm.dim() != 1 or perm.shape[0] != C_out:
            raise ValueError(
                f"perm must have shape ({C_out},) (one output channel per computed channel), "
                f"got {tuple(perm.shape)}"
            )
        if perm.device != x.device:
            raise ValueError(f"perm is on {perm.device} but x is on {x.device}; they must match")
    if min(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if min(dilation) < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    Ho = _out_size(H, KH, stride[0], padding[0], dilation[0])
    Wo = _out_size(W, KW, stride[1], padding[1], dilation[1])
    if Ho < 1 or Wo < 1:
        raise ValueError(
            f"output would be empty: input {H}x{W}, kernel {KH}x{KW}, stride {stride}, "
            f"padding {padding}, dilation {dilation}"
        )
    return ConvGeometry(
        N, C_in, H, W, C_b, C_rest, C_out, KH, KW, Ho, Wo, stride, padding, dilation,
        bool(keep_basis),
    )


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The output follows the input: channels_last if x is channels_last (and not also plainly
    contiguous, which happens when C == 1 or H == W == 1), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last
    ):
        return torch.channels_last
    return torch.contiguous_format
