"""``BasisConv2d``: a Conv2d whose C_out filters are C_b trained basis filters plus a trained
coefficient matrix."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..op import reference
from ..op.geometry import check_inputs
from ..util import compat
from ..util.compat import tensor_version
from ..util.ranges import layer_range
from . import decompose
from .conv_args import PaddingMode, check_conv_args
from .functional import basis_conv2d, choose_mode, onnx_exporting
from .spec import BasisSpec, as_spec


def _plain_no_grad_call(x) -> bool:
    """A call without autograd, outside tracing / compile / export and autocast, on a plain
    tensor: where weight mode may reuse a merged weight (nothing records the parameters)."""
    return (
        not torch.is_grad_enabled()
        and type(x) is torch.Tensor
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not compat.autocast_enabled()
    )


class BasisConv2d(nn.Module):
    """Drop-in for ``nn.Conv2d``: the same positional arguments (``in_channels,
    out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
    padding_mode="zeros", device=None, dtype=None``), plus the size of the basis, keyword-only
    and required: exactly one of ``basis_channels`` (C_b) or ``ratio`` (C_b / C_out, C_b =
    max(1, round(ratio * C_out)), as :class:`BasisSpec`). ``keep_basis``: the form;
    ``mode``: fused / weight / auto.

    ``padding``: an int, a pair, ``"valid"`` or ``"same"`` (stride 1 only; an even window gets
    the extra pixel after, as ``nn.Conv2d``); ``padding_mode`` ``"zeros"`` (the op pads),
    ``"reflect"``, ``"replicate"`` or ``"circular"`` (an explicit ``F.pad`` first, then the op
    with padding 0, as ``nn.Conv2d`` does). Only ``groups=1`` (else a ValueError).

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
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        basis_channels: int | None = None,
        ratio: float | None = None,
        keep_basis: bool = True,
        mode: str = "auto",
    ):
        super().__init__()
        a = check_conv_args(
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
        )
        basis_channels = a.basis_channels
        kh, kw = a.kernel_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.basis_channels = basis_channels
        self.kernel_size = (kh, kw)
        self.stride = a.stride
        self.padding = a.padding  # as nn.Conv2d: "same", "valid" or a pair
        self.dilation = a.dilation
        self.groups = 1
        self.padding_mode = a.padding_mode
        # how the forward pads (conv_args.ConvArgs): F.pad first or not, then the op's padding
        self._pre_pad, self._pad_mode, self._call_padding = a.pre_pad, a.pad_mode, a.call_padding
        self.op_padding = a.op_padding
        self.keep_basis = bool(keep_basis)
        self.mode = mode  # as asked: "auto", "fused" or "weight"
        # What "auto" runs, decided once (plain attributes, not in the state_dict, so old and
        # new checkpoints load alike): ``resolved`` set by convert / tune / set_resolved for
        # ``resolved_device`` (a device type); else memoised per (device type, input shape) on
        # the first forward (tritonbasis.nn.modes.decide: in-memory tables, no disk read after
        # the first per process).
        self.resolved: str | None = None
        self.resolved_device: str | None = None
        self._mode_memo: dict[tuple, str] = {}
        fk = {"device": device, "dtype": dtype}
        rows = out_channels - basis_channels if keep_basis else out_channels
        self.basis = nn.Parameter(torch.empty(basis_channels, in_channels, kh, kw, **fk))
        self.coeff = nn.Parameter(torch.empty(rows, basis_channels, **fk))
        self.bias = nn.Parameter(torch.empty(out_channels, **fk)) if bias else None
        # Optional output-channel permutation (see basis_conv2d's ``perm``): set by
        # ``from_conv`` in the keep-basis form so outputs keep the original channel order.
        self.register_buffer("out_perm", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.basis, a=math.sqrt(5))  # as nn.Conv2d
        bound = math.sqrt(3.0 / self.basis_channels)
        nn.init.uniform_(self.coeff, -bound, bound)
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
            b = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -b, b)

    # Profiling (tritonbasis.perf.profiling.name_layers sets them per instance): with a name, the
    # forward runs inside a record_function (and, with profile_nvtx, an NVTX) range of that
    # name; None costs one attribute check. Left out under torch.compile (graphs stay whole).
    profile_name: str | None = None
    profile_nvtx: bool = False
    # class defaults: modules pickled whole before these attributes existed still unpickle
    # (and then pad as they always did: zeros, by the op, padding = the stored pair)
    groups: int = 1
    padding_mode: PaddingMode = "zeros"
    _pre_pad: tuple[int, int, int, int] | None = None
    _pad_mode: str = "constant"
    resolved: str | None = None
    resolved_device: str | None = None
    # What "auto" runs for calls without autograd (inference), when measured apart from the
    # training objective (the search times both); None: the same as ``resolved``.
    resolved_infer: str | None = None
    # Set by from_conv for init="svd" (a plain attribute, not in the state_dict): the fraction
    # of the original filters' squared Frobenius norm that the initial basis spans (the energy
    # of their projection onto it; see tritonbasis.nn.decompose). None otherwise.
    captured_energy: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.profile_name is not None and not torch.compiler.is_compiling():
            with layer_range(self.profile_name, self.profile_nvtx and x.is_cuda):
                return self._forward(x)
        return self._forward(x)

    def __setstate__(self, state):
        # pickled before padding modes: the op padded with the stored pair
        state.setdefault("_call_padding", state.get("padding"))
        state.setdefault("op_padding", state.get("padding"))
        super().__setstate__(state)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the op sees it: explicitly padded first for a non-zero ``padding_mode``
        (and the extra pixel of ``padding="same"`` with an even window), as nn.Conv2d."""
        if self._pre_pad is None:
            return x
        return F.pad(x, self._pre_pad, mode=self._pad_mode)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pad(x)
        mode = self.mode
        if mode == "auto" and not onnx_exporting():  # exported: factorized (functional)
            mode = self._auto_mode(x)
        # self.basis etc. go through nn.Module.__getattr__ (~0.35 us each, 1.3 us of the
        # per-call host time for the four); the dicts hold them. Names not there (pruning,
        # parametrization; bias=False is a plain None attribute) take the attributes.
        p, b = compat.module_dicts(self)
        if "basis" in p and "coeff" in p and "out_perm" in b:
            basis, coeff, perm = p["basis"], p["coeff"], b["out_perm"]
        else:
            basis, coeff, perm = self.basis, self.coeff, self.out_perm
        bias = p["bias"] if "bias" in p else self.bias  # noqa: SIM401 (.get reads both)
        if mode == "weight" and not self.training and _plain_no_grad_call(x):
            # inference (eval mode, no autograd): the merged weight is a function of the
            # parameters alone, so it is built once per parameter version instead of per call
            # (weight mode then costs one dense conv, as the layer it replaced)
            check_inputs(
                x,
                basis,
                coeff,
                bias,
                self.stride,
                self._call_padding,
                self.dilation,
                self.keep_basis,
                perm,
            )
            return reference.weight_modified(
                x,
                basis,
                coeff,
                bias,
                self.stride,
                self._call_padding,
                self.dilation,
                self.keep_basis,
                perm,
                weight=self._inference_weight(basis, coeff, perm),
            )
        return basis_conv2d(
            x,
            basis,
            coeff,
            bias,
            self.stride,
            self._call_padding,
            self.dilation,
            self.keep_basis,
            mode=mode,
            perm=perm,
        )

    def _inference_weight(self, basis, coeff, perm) -> torch.Tensor:
        """``merged_weight`` of the current parameters, remembered until one of them changes
        (in place: its version counter; replaced or moved: its storage) or the layer's
        train/eval mode is set -- one dense weight of memory per weight-mode layer in eval.
        Writes through ``param.data`` bypass the version counter: call ``.eval()`` again
        after such a write."""
        key = (
            tensor_version(basis),
            tensor_version(coeff),
            basis.data_ptr(),
            coeff.data_ptr(),
            basis.dtype,
            basis.device,
            None if perm is None else (tensor_version(perm), perm.data_ptr()),
        )
        cached = self.__dict__.get("_weight_cache")
        if cached is not None and cached[0] == key and key[0] is not None:
            return cached[1]  # (no version counter to read: built per call)
        w = reference.merged_weight(basis, coeff, self.keep_basis, perm)
        self.__dict__["_weight_cache"] = (key, w)
        return w

    def _auto_mode(self, x: torch.Tensor) -> str:
        """What ``mode="auto"`` runs for ``x``: the resolved mode for this device type, else
        the memoised decision for (device type, shape), else decide once and remember."""
        dev = x.device.type
        if self.resolved is not None and self.resolved_device == dev:
            if self.resolved_infer is not None and not torch.is_grad_enabled():
                return self.resolved_infer
            return self.resolved
        if torch.compiler.is_compiling():
            # traced: no memo writes and no shape-keyed dict (a symbolic N must not be hashed
            # into a guard); choose_mode handles symbolic shapes with static numbers only
            return "auto"
        key = (dev, tuple(x.shape))
        memo = self.__dict__.get("_mode_memo")
        if memo is None:
            memo = self.__dict__["_mode_memo"] = {}
        mode = memo.get(key)
        if mode is None:
            g = check_inputs(
                x,
                self.basis,
                self.coeff,
                self.bias,
                self.stride,
                self._call_padding,
                self.dilation,
                self.keep_basis,
                self.out_perm,
            )
            mode = memo[key] = choose_mode(g, x.device)
        return mode

    def train(self, mode: bool = True):
        self.__dict__.pop("_weight_cache", None)  # set train/eval: build the weight afresh
        return super().train(mode)

    def set_resolved(self, mode: str | None, device="cpu", infer: str | None = None) -> None:
        """Fix what ``mode="auto"`` runs on ``device``'s type (``"fused"``/``"weight"``), or
        forget it (None: decided again per input shape on the next forward). ``infer``: a
        different mode for calls without autograd (``torch.no_grad()`` / inference), when the
        two objectives were measured apart; None runs ``mode`` there too."""
        for name, m in (("mode", mode), ("infer", infer)):
            if m not in (None, "fused", "weight"):
                raise ValueError(f"resolved {name} must be 'fused', 'weight' or None, got {m!r}")
        if mode is None and infer is not None:
            raise ValueError("an inference mode needs a resolved mode")
        self.resolved = mode
        self.resolved_infer = infer
        self.resolved_device = None if mode is None else torch.device(device).type
        self._mode_memo = {}

    def set_out_perm(self, perm: torch.Tensor | None) -> None:
        """Set (or clear) the output-channel permutation; checked to be a permutation."""
        if perm is not None:
            perm = torch.as_tensor(perm, dtype=torch.int64, device=self.basis.device)
            if perm.shape != (self.out_channels,) or not torch.equal(
                perm.sort().values, torch.arange(self.out_channels, device=perm.device)
            ):
                raise ValueError(
                    f"out_perm must be a permutation of range({self.out_channels}), got "
                    f"{perm.tolist() if perm.numel() <= 16 else tuple(perm.shape)}"
                )
        self.out_perm = perm

    def _out_perm_problem(self, perm) -> str | None:
        """Why ``perm`` (from a state_dict) is not a permutation of range(C_out), or None. A
        non-permutation must not load: forward maps channels by argsort(perm), backward by
        perm, which agree only for a permutation (the gradients would be wrong)."""
        if not isinstance(perm, torch.Tensor):
            return f"is a {type(perm).__name__}, not a tensor"
        if perm.dtype not in (torch.int64, torch.int32):
            return f"has dtype {perm.dtype}, not int64"
        if tuple(perm.shape) != (self.out_channels,):
            return f"has shape {tuple(perm.shape)}, expected ({self.out_channels},)"
        if perm.device.type == "meta":
            return None  # values unknown (meta init); checked when real weights load
        if not torch.equal(
            perm.sort().values.cpu(), torch.arange(self.out_channels, dtype=perm.dtype)
        ):
            return f"is not a permutation of range({self.out_channels})"
        return None

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # out_perm is an optional buffer: a checkpoint may have it while a fresh module has
        # None (or the other way round); adopt the checkpoint's.
        key = prefix + "out_perm"
        if key in state_dict:
            why = self._out_perm_problem(state_dict[key])
            if why is not None:
                error_msgs.append(f"{key} {why}: the checkpoint is corrupt or not from this layer")
                return
        if key in state_dict and self.out_perm is None:
            self.out_perm = torch.empty_like(state_dict[key], device=self.basis.device)
        elif key not in state_dict and self.out_perm is not None:
            self.out_perm = None
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def resolved_mode(self, x: torch.Tensor) -> str:
        """What ``mode="auto"`` picks for input ``x`` (``"fused"`` or ``"weight"``)."""
        if self.mode != "auto":
            return self.mode
        return self._auto_mode(self._pad(x))

    def merged_weight(self) -> torch.Tensor:
        """The equivalent dense filter bank ``W`` (C_out, C_in, kH, kW)."""
        return reference.merged_weight(self.basis, self.coeff, self.keep_basis, self.out_perm)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, spec=None, **spec_kwargs) -> BasisConv2d:
        """A BasisConv2d initialised from a (trained) ``nn.Conv2d``; see :func:`from_conv`."""
        return from_conv(conv, spec, **spec_kwargs)

    @torch.no_grad()
    def to_conv(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` computing the same function (weight modification, exact up to
        rounding)."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=self.basis.device,
            dtype=self.basis.dtype,
        )
        conv.weight.copy_(self.merged_weight())
        if self.bias is not None and conv.bias is not None:
            conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        s += f", basis_channels={self.basis_channels}"
        s += f", keep_basis={self.keep_basis}, mode={self.mode!r}"
        if self.mode == "auto" and self.resolved is not None:
            s += f" (runs {self.resolved!r} on {self.resolved_device}"
            s += f", {self.resolved_infer!r} without autograd)" if self.resolved_infer else ")"
        if self.out_perm is not None:
            s += ", out_perm=True"
        if not self.basis.requires_grad:
            s += ", trainable_basis=False"
        return s


def from_conv(
    conv: nn.Conv2d,
    spec: BasisSpec | dict | None = None,
    *,
    factors: decompose.Factors | None = None,
    **kw,
) -> BasisConv2d:
    """A BasisConv2d computing (an approximation of) ``conv``, following ``spec`` (a
    :class:`BasisSpec`, its dict, or its fields as keywords): ``init="svd"`` starts from the
    decomposition of the trained filters (:mod:`tritonbasis.nn.decompose`: SVD for the full
    form, a pivoted-QR subset of the filters for keep-basis), ``init="random"`` from the
    layer's own variance-matched init (a fixed orthogonal basis with
    ``trainable_basis=False``).

    With ``energy=t`` both forms get the smallest basis that spans at least ``t`` of the filters'
    energy in their own form (the keep-basis form usually needs more channels than the SVD's);
    the layer's ``captured_energy`` says what its initial basis spans (``init="svd"``).
    ``factors``: ``decompose.factors(conv, spec)`` already computed (the conversion does, to
    size the layer before building it), so the filters are not decomposed twice."""
    spec = as_spec(spec) or BasisSpec(**kw)
    f = factors if factors is not None else decompose.factors(conv, spec)
    w = conv.weight
    layer = BasisConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=w.device,
        dtype=w.dtype,
        basis_channels=f.C_b,
        keep_basis=spec.keep_basis,
        mode=spec.mode,
    )
    with torch.no_grad():
        if f.basis is not None and f.coeff is not None:
            layer.basis.copy_(f.basis.reshape(layer.basis.shape))
            layer.coeff.copy_(f.coeff)
            if f.perm is not None:
                layer.set_out_perm(f.perm.to(w.device))
            if conv.bias is not None and layer.bias is not None:
                layer.bias.copy_(conv.bias)
        elif not spec.trainable_basis:
            layer.basis.copy_(decompose.orthogonal_basis(layer.basis))
    layer.basis.requires_grad_(spec.trainable_basis)
    layer.captured_energy = f.captured
    return layer
