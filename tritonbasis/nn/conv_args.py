"""``BasisConv2d``'s constructor arguments, checked and normalised the way ``nn.Conv2d`` takes
them (one clear error per bad argument, before any parameter is allocated), and the padding
plan its forward follows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from ..op.geometry import pair
from .functional import MODES
from .spec import BasisSpec

PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


@dataclass(frozen=True)
class ConvArgs:
    """The normalised arguments. ``padding`` as ``nn.Conv2d`` keeps it (``"same"``,
    ``"valid"`` or a pair); the forward pads with ``F.pad(x, pre_pad, mode=pad_mode)`` first
    when ``pre_pad`` is not None, then calls the op with ``call_padding`` (zeros, symmetric).
    ``op_padding``: the symmetric zero padding of the equivalent op call on the unpadded
    input (what the output size follows; the geometry the mode decision and tuning use)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: str | tuple[int, int]
    dilation: tuple[int, int]
    basis_channels: int
    padding_mode: PaddingMode
    call_padding: tuple[int, int]
    op_padding: tuple[int, int]
    pre_pad: tuple[int, int, int, int] | None
    pad_mode: str


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _pair_at_least(name: str, v, low: int) -> tuple[int, int]:
    p = pair(v, name)
    if min(p) < low:
        raise ValueError(f"{name} must be >= {low}, got {v!r}")
    return p


def check_conv_args(
    in_channels,
    out_channels,
    kernel_size,
    stride,
    padding,
    dilation,
    groups,
    bias,
    padding_mode,
    basis_channels,
    ratio,
    keep_basis,
    mode,
) -> ConvArgs:
    """Validate ``BasisConv2d``'s arguments; raises ``TypeError`` / ``ValueError`` naming the
    argument."""
    _positive_int("in_channels", in_channels)
    _positive_int("out_channels", out_channels)
    if basis_channels is None and ratio is None:
        raise TypeError(
            "BasisConv2d needs basis_channels=<int> or ratio=<float in (0, 1]> (keyword-only; "
            "as in nn.Conv2d the 4th positional argument is stride)"
        )
    if basis_channels is not None and ratio is not None:
        raise ValueError("give exactly one of basis_channels and ratio, not both")
    if basis_channels is not None:
        _positive_int("basis_channels", basis_channels)
        if basis_channels > out_channels:
            raise ValueError(
                f"basis_channels={basis_channels} is out of range: must be in "
                f"[1, out_channels={out_channels}]"
            )
    else:
        basis_channels = BasisSpec(ratio=ratio).channels_for(out_channels)
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    if groups != 1:
        raise ValueError(
            f"groups={groups} is not supported: BasisConv2d shares C_b basis filters across "
            "all input channels (groups=1); keep grouped/depthwise convs as nn.Conv2d"
        )
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
    if not isinstance(keep_basis, bool):
        raise TypeError(f"keep_basis must be a bool, got {type(keep_basis).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(
            f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}"
        )
    kernel = _pair_at_least("kernel_size", kernel_size, 1)
    stride = _pair_at_least("stride", stride, 1)
    dilation = _pair_at_least("dilation", dilation, 1)
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same', 'valid' or an int / pair, got {padding!r}")
        if padding == "same" and stride != (1, 1):
            raise ValueError("padding='same' is not supported for strided convolutions")
        # per axis (as nn.Conv2d): total d*(k-1), the smaller half first, the extra pixel of an
        # odd total after
        sides = (
            [(0, 0), (0, 0)]
            if padding == "valid"
            else [
                (d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for d, k in zip(dilation, kernel)
            ]
        )
    else:
        p = _pair_at_least("padding", padding, 0)
        sides = [(p[0], p[0]), (p[1], p[1])]
    (top, bottom), (left, right) = sides
    op_padding = (top, left)
    pre_pad: tuple[int, int, int, int] | None
    if padding_mode != "zeros":  # nn.Conv2d: F.pad(x, ..., mode=padding_mode), conv padding 0
        pre_pad, call_padding = (left, right, top, bottom), (0, 0)
        if top == bottom == left == right == 0:
            pre_pad = None
        pad_mode = padding_mode
    elif (top, left) != (bottom, right):  # 'same', even window: the extra pixel after
        pre_pad, call_padding, pad_mode = (
            (0, right - left, 0, bottom - top),
            (top, left),
            "constant",
        )
    else:
        pre_pad, call_padding, pad_mode = None, (top, left), "constant"
    return ConvArgs(
        kernel,
        stride,
        padding if isinstance(padding, str) else (top, left),
        dilation,
        basis_channels,
        cast(PaddingMode, padding_mode),  # one of PADDING_MODES (checked above)
        call_padding,
        op_padding,
        pre_pad,
        pad_mode,
    )
