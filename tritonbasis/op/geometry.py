"""Argument normalisation and validation shared by the functional API, the ops and their fakes.

Every check here runs before any kernel launch, on metadata only (shapes, dtypes, devices), so
it is also safe on fake tensors under ``torch.compile``.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

import torch

from ..util import compat
from ..util.compat import tensor_version

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Limit of the Triton kernels, known without importing triton: they hold the whole (padded)
# basis block in one tile, BLOCK_M x BLOCK_CB fp32 accumulators per program. At 256 every
# forward config spilled registers on sm_90 in the compile tier; 128 compiles clean. Must equal
# tritonbasis.kernels.configs.MAX_BLOCK_CB (a test checks).
MAX_BASIS_CHANNELS = 128


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
    return (items[0], items[1])


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
        return {
            **forward_macs(self.C_in, self.C_b, self.C_rest, self.KH, self.KW, self.pixels),
            "dense": dense_macs(self.C_in, self.C_out, self.KH, self.KW, self.pixels),
        }


# --------------------------------------------------------------------------------------------
# The formulas: output size and multiply-accumulates. Everything that counts (the op's FLOP
# formula for FlopCounterMode, the conversion report, the mode decision, the benchmarks, the
# compile tier) calls these.


def conv_output_size(
    size: int, k: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """Output length of a convolution along one axis (PyTorch's formula, floor division)."""
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def dense_macs(C_in: int, C_out: int, KH: int, KW: int, pixels: int = 1) -> int:
    """MACs of a dense ``C_in -> C_out`` KHxKW conv over ``pixels`` output pixels."""
    return pixels * C_out * C_in * KH * KW


def forward_macs(
    C_in: int, C_b: int, C_rest: int, KH: int, KW: int, pixels: int = 1
) -> dict[str, int]:
    """MACs of the basis convolution's forward over ``pixels`` output pixels: ``basis`` (the
    conv over C_b filters), ``combine`` (the ``C_rest x C_b`` coefficient product) and their
    sum ``fused``."""
    basis = pixels * C_b * C_in * KH * KW
    combine = pixels * C_rest * C_b
    return {"basis": basis, "combine": combine, "fused": basis + combine}


def backward_macs(
    C_in: int, C_b: int, C_rest: int, KH: int, KW: int, pixels: int, output_mask
) -> int:
    """MACs of the backward for the gradients in ``output_mask`` (x, basis, coeff, bias): dZ
    (needed by dx and d basis), dx (as cuDNN counts dgrad: the forward conv's MACs), d basis,
    d coeff. d bias is a sum, no MACs."""
    need_x, need_b, need_c, _ = output_mask
    conv = pixels * C_b * C_in * KH * KW
    combine = pixels * C_rest * C_b
    return (
        (combine if (need_x or need_b) else 0)
        + (conv if need_x else 0)
        + (conv if need_b else 0)
        + (combine if need_c else 0)
    )


class PermDtypeError(TypeError, ValueError):
    """perm has a non-integer dtype (a TypeError, and a ValueError like every bad perm)."""


# Tensors whose values were checked to be a permutation: id -> (weakref, what was checked).
# A hit needs the very same live tensor object and, on CPU, the same values as the copy kept
# here (a ~1 us compare, so writes that bypass the version counter -- ``perm.data[...] = ``,
# ``perm.numpy()[...] = ``, DLPack -- are seen too); on other devices the same storage and
# version counter (any in-place write through the tensor bumps it; a value compare would be a
# sync per call). A freed perm's id reused by another tensor is checked again.
_PERM_CHECKED: dict[int, tuple] = {}


def _perm_state(perm: torch.Tensor):
    if perm.device.type == "cpu":
        return perm.clone()
    return (perm.data_ptr(), tensor_version(perm))


def _forget_perm(key: int, _ref: object) -> None:
    _PERM_CHECKED.pop(key, None)  # the tensor is gone: its id may be reused


def _perm_unchanged(perm: torch.Tensor, hit) -> bool:
    if hit[0]() is not perm:
        return False
    state = hit[1]
    if isinstance(state, torch.Tensor):
        return torch.equal(state, perm)
    return state[1] is not None and state == (perm.data_ptr(), tensor_version(perm))


def check_perm(perm, C_out: int, device: torch.device | None = None) -> None:
    """Validate an output-channel permutation before anything is launched with it: a 1-D
    int64/int32 tensor of C_out elements on ``device`` (metadata, checked every call) holding
    each of 0 .. C_out-1 exactly once (values). Non-contiguous is fine: the ops make it
    contiguous (the kernels read it with unit stride). Raises ValueError (PermDtypeError,
    also a TypeError, for the dtype).

    When the values are checked (the contract, README "API"): on CPU on every call -- against
    a copy of the values last validated (~1 us), the full check (a sort) only when they
    changed, however they were written. On CUDA the check's host read synchronises the
    stream (~10-50 us), so it runs once per tensor and version: a layer's perm buffer is
    checked on its first call, and again after an in-place write through the tensor (its
    version counter moves); a write that bypasses the version counter (``perm.data[...] =``,
    DLPack) is not seen there -- write through the tensor or use ``set_out_perm``. While traced
    (``torch.compile``, export) and on fake tensors (``register_fake``) there are no values:
    only the metadata is checked, and the op's real implementation checks the values when the
    compiled graph runs."""
    if not isinstance(perm, torch.Tensor):
        raise TypeError(f"perm must be a torch.Tensor or None, got {type(perm).__name__}")
    if perm.dtype not in (torch.int64, torch.int32):
        raise PermDtypeError(f"perm must be an int64 or int32 tensor, got dtype {perm.dtype}")
    if perm.dim() != 1 or perm.shape[0] != C_out:
        raise ValueError(
            f"perm must have shape ({C_out},) (one output channel per computed channel), "
            f"got {tuple(perm.shape)}"
        )
    if device is not None and perm.device != device:
        raise ValueError(f"perm is on {perm.device} but x is on {device}; they must match")
    if torch.compiler.is_compiling() or compat.has_no_values(perm):
        # traced (dynamo / export: a value check would be a data-dependent graph break) or
        # fake: no values here; the op's real implementation checks them when it runs
        return
    key = id(perm)
    hit = _PERM_CHECKED.get(key)
    if hit is not None and _perm_unchanged(perm, hit):
        return
    ok = torch.equal(
        torch.sort(perm.long()).values, torch.arange(C_out, device=perm.device, dtype=torch.int64)
    )
    if not ok:
        p = perm.detach().long().cpu()
        bad = p[(p < 0) | (p >= C_out)]
        if bad.numel():
            why = f"value {int(bad[0])} is outside 0..{C_out - 1}"
        else:
            vals, counts = torch.unique(p, return_counts=True)
            why = f"value {int(vals[counts > 1][0])} appears more than once"
        raise ValueError(f"perm must be a permutation of range({C_out}): {why}")
    _PERM_CHECKED[key] = (
        weakref.ref(perm, functools.partial(_forget_perm, key)),
        _perm_state(perm),
    )


# Geometries of argument metadata that passed validation: key (see _memo_key) -> geometry.
# Everything check_inputs looks at except perm's values is metadata (shapes, dtypes, devices,
# the stride/padding/dilation ints, keep_basis), so a call whose metadata was validated before
# needs only a dict lookup. A call through tb.basis_conv2d validates in the functional and
# again in the op (which a direct torch.ops call needs): 7-13 us each before, ~2 us for the key
# and lookup now (1x16x8x8 CPU, bench/NOTES.md "Host overhead per call"). Bad arguments are
# never stored, so they always reach the checks below and raise the same errors.
_CHECKED: dict[tuple, ConvGeometry] = {}
_CHECKED_MAX = 4096  # distinct call shapes kept (a model has tens); cleared when full


def _int_pair(v) -> tuple[int, int] | None:
    """``pair(v)`` for the plain forms (an int, or a list/tuple of two ints), else None."""
    t = type(v)
    if t is int:
        return (v, v)
    if (t is tuple or t is list) and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return (v[0], v[1])
    return None


def _memo_key(x, basis, coeff, bias, stride, padding, dilation, keep_basis) -> tuple | None:
    """The metadata that decides :func:`check_inputs`' outcome, or None when it cannot be
    memoised: while dynamo traces (no global state in a graph), non-tensor arguments, odd
    forms of stride/padding/dilation (they take the full path and its errors)."""
    s, p, d = _int_pair(stride), _int_pair(padding), _int_pair(dilation)
    if (
        s is None
        or p is None
        or d is None
        or not isinstance(x, torch.Tensor)
        or not isinstance(basis, torch.Tensor)
        or not isinstance(coeff, torch.Tensor)
        or torch.compiler.is_compiling()
    ):
        return None
    if bias is None:
        b = None
    elif isinstance(bias, torch.Tensor):
        b = (bias.shape, bias.dtype, bias.device)
    else:
        return None
    return (
        x.shape,
        x.dtype,
        x.device,
        basis.shape,
        basis.dtype,
        basis.device,
        coeff.shape,
        coeff.dtype,
        coeff.device,
        b,
        s,
        p,
        d,
        bool(keep_basis),
    )


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
    Metadata validated once is remembered (``_CHECKED``); ``perm`` is checked on every call
    (its values once per tensor version, see :func:`check_perm`).
    """
    key = _memo_key(x, basis, coeff, bias, stride, padding, dilation, keep_basis)
    if key is not None:
        try:
            g = _CHECKED.get(key)
        except TypeError:  # symbolic sizes (fake tensors of a dynamic-shape trace)
            key, g = None, None
        if g is not None:
            if perm is not None:
                check_perm(perm, g.C_out, x.device)
            return g
    g = _check_inputs(x, basis, coeff, bias, stride, padding, dilation, keep_basis, perm)
    if key is not None:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[key] = g
    return g


def _check_inputs(
    x, basis, coeff, bias, stride, padding, dilation, keep_basis, perm
) -> ConvGeometry:
    stride, padding, dilation = (
        pair(stride, "stride"),
        pair(padding, "padding"),
        pair(dilation, "dilation"),
    )
    _check_tensors(x, basis, coeff, bias)
    C_b, C_rest, C_out = _channels(x, basis, coeff, bias, keep_basis)
    _check_same_dtype_and_device(x, basis, coeff, bias)
    if perm is not None:
        check_perm(perm, C_out, x.device)
    _check_window(stride, padding, dilation)
    N, C_in, H, W = x.shape
    KH, KW = basis.shape[2:]
    Ho = conv_output_size(H, KH, stride[0], padding[0], dilation[0])
    Wo = conv_output_size(W, KW, stride[1], padding[1], dilation[1])
    if Ho < 1 or Wo < 1:
        raise ValueError(
            f"output would be empty: input {H}x{W}, kernel {KH}x{KW}, stride {stride}, "
            f"padding {padding}, dilation {dilation}"
        )
    return ConvGeometry(
        N,
        C_in,
        H,
        W,
        C_b,
        C_rest,
        C_out,
        KH,
        KW,
        Ho,
        Wo,
        stride,
        padding,
        dilation,
        bool(keep_basis),
    )


def _check_tensors(x, basis, coeff, bias) -> None:
    """Tensors of a floating dtype, of the ranks the op takes."""
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
        raise ValueError(f"basis must be 4-D (C_b, C_in, kH, kW), got shape {tuple(basis.shape)}")
    if coeff.dim() != 2:
        raise ValueError(f"coeff must be 2-D, got shape {tuple(coeff.shape)}")


def _channels(x, basis, coeff, bias, keep_basis) -> tuple[int, int, int]:
    """(C_b, C_rest, C_out) of the call; the channel counts must agree (groups=1 only), C_b
    in range for the form, the bias one entry per output."""
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
        raise ValueError(f"empty input or filter: x {tuple(x.shape)}, basis {tuple(basis.shape)}")
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
    return C_b, C_rest, C_out


def _check_same_dtype_and_device(x, basis, coeff, bias) -> None:
    """The parameters share x's dtype and device."""
    for name, t in (("basis", basis), ("coeff", coeff), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x has {x.dtype}; they must match")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; they must match")


def _check_window(stride, padding, dilation) -> None:
    """Stride and dilation >= 1, padding >= 0."""
    if min(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if min(dilation) < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The output follows the input: channels_last if x is channels_last (and not also plainly
    contiguous, which happens when C == 1 or H == W == 1), else contiguous."""
    if x.is_contiguous():  # the common case in one call
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# With a 16-bit output, out[:, :C_b] - bias recovers Z with the rounding error of |Z + bias|
# instead of |Z|: bf16, bias 8, |Z| ~ 0.1 puts 0.0625-wide steps on Z, a d coeff error of tens of
# percent (bench/NOTES.md "Keep-basis d coeff with a large bias"). Those calls save Z instead.
_ROUNDED_OUT_DTYPES = (torch.float16, torch.bfloat16)


def saves_z(
    keep_basis: bool, has_bias: bool, dtype: torch.dtype, need_z: bool, cpu: bool = False
) -> bool:
    """Whether the forward returns Z (the basis outputs before bias) for the backward's d coeff;
    ``need_z``: d coeff will be needed. The full form always saves it (no output channel is Z).
    On a GPU the keep-basis form reads it back as ``out[:, :C_b] - bias`` (the fused kernel
    never writes Z apart from the output), except with a bias in a 16-bit dtype, where that
    subtraction loses Z's low bits. On a CPU (``cpu``) the keep-basis form saves it too: the
    CPU path holds Z in memory anyway (two stock convs, as the pair a user would write, which
    also keeps it for its backward), and reading it back from the output's channel slice is a
    copy (+1-3 % of a forward+backward at 2 threads, C_b = C_out/4)."""
    return need_z and (not keep_basis or cpu or (has_bias and dtype in _ROUNDED_OUT_DTYPES))


def saved_z_format(
    keep_basis: bool, out_format: torch.memory_format, cpu: bool = False
) -> torch.memory_format:
    """Memory format of the saved Z: the output's (``out_format``) in the full form and on a
    CPU (Z as the CPU path computed it, no copy); channels_last in the keep-basis form on a
    GPU, whatever the output's: grad_z reads Z as [pixels, C_b] tiles, which NHWC makes
    16-byte vector loads (with NCHW bf16 operands, grad_z's m32_n32 config spilled 24 B on
    sm_90 reading an NCHW Z, 0 B reading an NHWC one)."""
    return torch.channels_last if keep_basis and not cpu else out_format
