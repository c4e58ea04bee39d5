"""``BasisConv2d``: a Conv2d whose C_out filters are C_b trained basis filters plus a trained
coefficient matrix."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import reference
from ._checks import check_inputs, pair
from .functional import MODES, basis_conv2d, choose_mode


class BasisConv2d(nn.Module):
    """Drop-in for ``nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
    dilation, groups=1, bias)`` with ``basis_channels`` trainable filters.

    Parameters: ``basis (C_b, C_in, kH, kW)``, ``coeff`` (``(C_out - C_b, C_b)`` with
    ``keep_basis=True``, else ``(C_out, C_b)``), ``bias (C_out,)`` or None.

    Initialisation (so the output variance matches an ``nn.Conv2d`` of the same shape):
    the basis and the bias get nn.Conv2d's own init (Kaiming-uniform with a=sqrt(5), i.e.
    U(+-1/sqrt(fan_in)); bias U(+-1/sqrt(fan_in))), so every basis output has a conv output's
    variance. A combined output sum_c coeff[j, c] Z_c of C_b such (independent, zero-mean)
    outputs has variance sum_c coeff[j, c]^2 var(Z); drawing coeff ~ U(+-sqrt(3/C_b)) makes
    E[sum_c coeff^2] = 1, so combined outputs keep that variance too.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        basis_channels: int,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        keep_basis: bool = True,
        mode: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("basis_channels", basis_channels)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if basis_channels > out_channels:
            raise ValueError(
                f"basis_channels={basis_channels} is out of range: must be in "
                f"[1, out_channels={out_channels}]"
            )
        kh, kw = pair(kernel_size, "kernel_size")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.basis_channels = basis_channels
        self.kernel_size = (kh, kw)
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding")
        self.dilation = pair(dilation, "dilation")
        self.keep_basis = bool(keep_basis)
        self.mode = mode
        fk = {"device": device, "dtype": dtype}
        rows = out_channels - basis_channels if keep_basis else out_channels
        self.basis = nn.Parameter(torch.empty(basis_channels, in_channels, kh, kw, **fk))
        self.coeff = nn.Parameter(torch.empty(rows, basis_channels, **fk))
        self.bias = nn.Parameter(torch.empty(out_channels, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.basis, a=math.sqrt(5))  # as nn.Conv2d
        bound = math.sqrt(3.0 / self.basis_channels)
        nn.init.uniform_(self.coeff, -bound, bound)
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
            b = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -b, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return basis_conv2d(
            x, self.basis, self.coeff, self.bias, self.stride, self.padding, self.dilation,
            self.keep_basis, mode=self.mode,
        )

    def resolved_mode(self, x: torch.Tensor) -> str:
        """What ``mode="auto"`` picks for input ``x`` (``"fused"`` or ``"weight"``)."""
        if self.mode != "auto":
            return self.mode
        g = check_inputs(x, self.basis, self.coeff, self.bias, self.stride, self.padding,
                         self.dilation, self.keep_basis)
        return choose_mode(g, x.device)

    def merged_weight(self) -> torch.Tensor:
        """The equivalent dense filter bank ``W`` (C_out, C_in, kH, kW)."""
        return reference.merged_weight(self.basis, self.coeff, self.keep_basis)

    @torch.no_grad()
    def to_conv(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` computing the same function (weight modification, exact up to
        rounding)."""
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            self.dilation, bias=self.bias is not None, device=self.basis.device,
            dtype=self.basis.dtype,
        )
        conv.weight.copy_(self.merged_weight())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"basis_channels={self.basis_channels}, stride={self.stride}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        s += f", keep_basis={self.keep_basis}, mode={self.mode!r}"
        return s
