"""The registered ops, ``torch.ops.tritonbasis.*``, and the one place that decides which
implementation runs.

Registration route: ``torch.library.custom_op`` + ``register_fake`` + ``register_autograd``
(available since torch 2.4; the floor is torch 2.11). The op is opaque to ``torch.compile`` (no
graph break, the compiled graph calls it), which is what we want: the kernels autotune
themselves and Inductor must not re-trace them. See README "Developer notes" for the probe of
the routes.

Ops:
* ``tritonbasis::basis_conv2d(x, basis, coeff, bias?, perm?, stride, padding, dilation,
  keep_basis, need_z) -> (out, z_saved)``; ``need_z``: the backward will need d coeff.
  ``z_saved`` is Z then for the full form, and for the keep-basis form with a bias in a 16-bit
  dtype (``geometry.saves_z``), else an empty tensor: otherwise keep-basis reads Z back as the
  basis output channels minus their bias. ``perm`` (int, (C_out,)): computed channel c (basis
  outputs first, then the combined ones) is output channel ``perm[c]``; the Triton kernels apply
  it in the epilogue store and the backward loads (no extra pass). ``bias`` is in output order.
* ``tritonbasis::basis_conv2d_backward(grad, x, basis, coeff, out, z_saved, bias?, perm?,
  stride, padding, dilation, keep_basis, output_mask) -> (dx, dbasis, dcoeff, dbias)``; gradients
  not in ``output_mask`` come back empty and are never computed.

Implementation choice (per call, at run time, so it also holds inside compiled graphs):
``TRITONBASIS_BACKEND=auto|torch|triton`` or :func:`set_backend` / :func:`use_backend`.
``auto``: Triton on CUDA for fp16/bf16/fp32 and C_b <= 128, plain PyTorch otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Sequence

import torch
from torch.utils.flop_counter import register_flop_formula

from ..util import compat
from . import launchers, reference
from .geometry import (
    MAX_BASIS_CHANNELS,
    ConvGeometry,
    backward_macs,
    check_inputs,
    conv_output_size,
    forward_macs,
    output_memory_format,
    saved_z_format,
    saves_z,
)

BACKENDS = ("auto", "torch", "triton")


class _State(threading.local):
    # a class default, not getattr(_state, "backend", None): a missing thread-local attribute
    # raises inside getattr, ~1 us per call
    backend: str | None = None


_state = _State()

# --------------------------------------------------------------------------------------------
# Backend selection


def get_backend() -> str:
    """The requested backend: :func:`set_backend`/:func:`use_backend` if set, else the
    ``TRITONBASIS_BACKEND`` environment variable, else ``"auto"``.

    Read on every call (a thread-local or environment change takes effect at once); only the
    parsing of an environment value is remembered (``_ENV_BACKENDS``)."""
    name = _state.backend  # set_backend stores it normalised
    if name is not None:
        return name
    # read on every call (util.compat.environ_reader: ~0.1 us), so os.environ[...] = ... and
    # monkeypatch.setenv take effect at once
    raw = _read_env()
    if raw is None:
        return "auto"
    name = _ENV_BACKENDS.get(raw)
    if name is None:
        name = (raw.decode() if isinstance(raw, bytes) else raw).strip().lower()
        if name not in BACKENDS:
            raise ValueError(
                f"TRITONBASIS_BACKEND must be one of {', '.join(BACKENDS)}, got {name!r}"
            )
        _ENV_BACKENDS[raw] = name
    return name


_ENV_BACKENDS: dict = {}  # raw TRITONBASIS_BACKEND value -> valid backend name

_read_env = compat.environ_reader("TRITONBASIS_BACKEND")


def set_backend(name: str | None) -> None:
    """Force the implementation for this thread (``None`` returns to the environment variable)."""
    if name is not None:
        if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)} or None, got {name!r}")
        name = name.strip().lower()
    _state.backend = name


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager form of :func:`set_backend`; restores the previous choice on exit."""
    prev = _state.backend
    set_backend(name)
    try:
        yield
    finally:
        _state.backend = prev


@functools.cache
def triton_import_error() -> str | None:
    """None if triton imports, else why not. Decided once per process: a failed import
    searches the file system again every time (the README's "once per process")."""
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"{type(e).__name__}: {e}"
    return None


def triton_supports(x: torch.Tensor, g: ConvGeometry) -> str | None:
    """None if the Triton kernels can run this call on a GPU, else the reason."""
    if x.dtype not in _TRITON_DTYPES:
        return f"dtype {x.dtype} (the Triton kernels take float16, bfloat16, float32)"
    if g.C_b > MAX_BASIS_CHANNELS:
        return (
            f"C_b={g.C_b} > {MAX_BASIS_CHANNELS}: the whole basis block must fit one tile "
            "(use mode='weight' or the torch backend)"
        )
    return None


_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def resolve_backend(x: torch.Tensor, g: ConvGeometry) -> str:
    """``"torch"`` or ``"triton"`` for this call; raises a clear error if ``triton`` was forced
    and cannot run."""
    name = get_backend()
    if name == "torch" or g.N == 0:  # an empty batch launches nothing: the torch path
        return "torch"
    if name == "auto":
        if x.is_cuda and triton_supports(x, g) is None and triton_import_error() is None:
            return "triton"
        return "torch"
    # forced triton
    err = triton_import_error()
    if err is not None:
        raise RuntimeError(f"TRITONBASIS_BACKEND=triton but triton cannot be imported ({err})")
    why = triton_supports(x, g)
    if why is not None:
        raise ValueError(f"TRITONBASIS_BACKEND=triton cannot run this call: {why}")
    if x.device.type == "cuda":
        return "triton"
    if x.device.type == "cpu":
        if launchers.interpreted():
            return "triton"
        raise RuntimeError(
            "TRITONBASIS_BACKEND=triton on CPU tensors runs the Triton kernels through the "
            "interpreter, which needs TRITON_INTERPRET=1 in the environment before triton is "
            "imported (the kernels were already compiled for GPU). Use a CUDA tensor, set "
            "TRITON_INTERPRET=1 at process start, or TRITONBASIS_BACKEND=torch."
        )
    raise RuntimeError(f"TRITONBASIS_BACKEND=triton cannot run on device {x.device}")


def _impl(x: torch.Tensor, g: ConvGeometry):
    # modules, not functions: tests replace reference.forward / launchers.forward
    return launchers if resolve_backend(x, g) == "triton" else reference


# --------------------------------------------------------------------------------------------
# Forward op


def run_forward(x, basis, coeff, bias, perm, g: ConvGeometry, need_z: bool):
    """The one forward body of both routes (the custom op below and the eager
    ``autograd.Function`` of :mod:`.eager`): ``(out, z_saved)`` from the implementation
    :func:`resolve_backend` picks for this call. ``g``: the validated geometry."""
    if perm is not None:  # validated by check_inputs; the kernels read it with unit stride
        perm = perm.contiguous()
    return _impl(x, g).forward(x, basis, coeff, bias, perm, g, need_z)


def autograd_differentiates(x: torch.Tensor, g: ConvGeometry) -> bool:
    """Whether autograd can differentiate this call's forward as it runs, and its backward
    is then as fast as the hand-written one: the torch backend (stock ops) where it takes no
    batched-GEMM branch (:func:`reference.takes_gemms`), and a keep-basis layer has combined
    channels (with ``C_out = C_b`` the output does not depend on ``coeff``, whose gradient
    the hand-written backward returns as zeros)."""
    return _impl(x, g) is reference and g.C_rest > 0 and not reference.takes_gemms(x, g)


def run_forward_differentiable(x, basis, coeff, bias, perm, g: ConvGeometry) -> torch.Tensor:
    """The output of :func:`run_forward`'s torch backend in ops autograd records (where
    :func:`autograd_differentiates`): no ``autograd.Function``, no Python in the backward."""
    if perm is not None:
        perm = perm.contiguous()
    return reference.forward(x, basis, coeff, bias, perm, g, False, differentiable=True)[0]


def run_backward(grad, x, basis, coeff, out, z_saved, bias, perm, g: ConvGeometry, mask):
    """The one backward body of both routes: ``(dx, dbasis, dcoeff, dbias)``, an unrequested
    one empty (``mask``: x, basis, coeff, bias)."""
    if perm is not None:
        perm = perm.contiguous()
    return _impl(x, g).backward(grad, x, basis, coeff, out, z_saved, bias, perm, g, mask)


@torch.library.custom_op("tritonbasis::basis_conv2d", mutates_args=())
def basis_conv2d_op(
    x: torch.Tensor,
    basis: torch.Tensor,
    coeff: torch.Tensor,
    bias: torch.Tensor | None,
    perm: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    keep_basis: bool,
    need_z: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    # check_inputs validates perm (metadata always; values once per tensor, see
    # geometry.check_perm); a direct torch.ops call needs it here
    g = check_inputs(x, basis, coeff, bias, stride, padding, dilation, keep_basis, perm)
    return run_forward(x, basis, coeff, bias, perm, g, need_z)


@basis_conv2d_op.register_fake
def _(x, basis, coeff, bias, perm, stride, padding, dilation, keep_basis, need_z):
    g = check_inputs(x, basis, coeff, bias, stride, padding, dilation, keep_basis, perm)
    fmt = output_memory_format(x)
    out = torch.empty((g.N, g.C_out, g.Ho, g.Wo), dtype=x.dtype, device=x.device, memory_format=fmt)
    cpu = x.device.type == "cpu"
    if saves_z(keep_basis, bias is not None, x.dtype, need_z, cpu):
        z = torch.empty(
            (g.N, g.C_b, g.Ho, g.Wo),
            dtype=x.dtype,
            device=x.device,
            memory_format=saved_z_format(keep_basis, fmt, cpu),
        )
    else:
        z = x.new_empty(0)
    return out, z


# --------------------------------------------------------------------------------------------
# Backward op


@torch.library.custom_op("tritonbasis::basis_conv2d_backward", mutates_args=())
def basis_conv2d_backward_op(
    grad: torch.Tensor,
    x: torch.Tensor,
    basis: torch.Tensor,
    coeff: torch.Tensor,
    out: torch.Tensor,
    z_saved: torch.Tensor,
    bias: torch.Tensor | None,
    perm: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    keep_basis: bool,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = _check_backward(
        grad,
        x,
        basis,
        coeff,
        out,
        z_saved,
        bias,
        perm,
        stride,
        padding,
        dilation,
        keep_basis,
        output_mask,
    )
    return run_backward(
        grad, x, basis, coeff, out, z_saved, bias, perm, g, tuple(bool(m) for m in output_mask)
    )


def _check_backward(
    grad,
    x,
    basis,
    coeff,
    out,
    z_saved,
    bias,
    perm,
    stride,
    padding,
    dilation,
    keep_basis,
    output_mask,
) -> ConvGeometry:
    g = check_inputs(x, basis, coeff, bias, stride, padding, dilation, keep_basis, perm)
    expect = (g.N, g.C_out, g.Ho, g.Wo)
    if tuple(grad.shape) != expect:
        raise ValueError(f"grad must have the output's shape {expect}, got {tuple(grad.shape)}")
    if grad.dtype != x.dtype or grad.device != x.device:
        raise ValueError("grad must match x in dtype and device")
    if len(output_mask) != 4:
        raise ValueError("output_mask must have 4 entries (x, basis, coeff, bias)")
    if output_mask[2] and g.C_rest:
        z_shape = (g.N, g.C_b, g.Ho, g.Wo)
        if keep_basis and tuple(out.shape) != expect and tuple(z_saved.shape) != z_shape:
            raise ValueError(
                "d coeff (keep-basis form) needs the forward output `out` "
                "(or Z saved by the forward)"
            )
        if not keep_basis and tuple(z_saved.shape) != z_shape:
            raise ValueError("d coeff (full form) needs Z saved by the forward (need_z=True)")
    if output_mask[3] and bias is None:
        raise ValueError("output_mask asks for d bias but bias is None")
    return g


@basis_conv2d_backward_op.register_fake
def _(
    grad,
    x,
    basis,
    coeff,
    out,
    z_saved,
    bias,
    perm,
    stride,
    padding,
    dilation,
    keep_basis,
    output_mask,
):
    _check_backward(
        grad,
        x,
        basis,
        coeff,
        out,
        z_saved,
        bias,
        perm,
        stride,
        padding,
        dilation,
        keep_basis,
        output_mask,
    )
    need_x, need_b, need_c, need_bias = output_mask

    def e():  # distinct empties: outputs must not alias each other
        return grad.new_empty(0)

    dx = (
        torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
        if need_x
        else e()
    )
    return (
        dx,
        basis.new_empty(basis.shape) if need_b else e(),
        coeff.new_empty(coeff.shape) if need_c else e(),
        bias.new_empty(bias.shape) if need_bias else e(),
    )


# --------------------------------------------------------------------------------------------
# Autograd


def save_for_backward(ctx, x, basis, coeff, bias, perm, keep_basis: bool, out, z_saved) -> None:
    """What both routes save for the backward (``out, z_saved``: what the forward returned)."""
    # x, basis, coeff and bias are inputs (alive anyway). For d coeff, the Z the forward
    # returned (4-D: geometry.saves_z), else in the keep-basis form the output (Z =
    # out[:, :C_b] - bias). Saving the output means an in-place op on it (e.g.
    # ReLU(inplace=True) right after this conv) is reported by autograd's version check
    # instead of silently corrupting d coeff.
    need_c = ctx.needs_input_grad[2]
    has_z = z_saved.dim() == 4
    ctx.save_for_backward(
        x,
        basis,
        coeff,
        bias,
        perm,
        out if (need_c and keep_basis and not has_z) else None,
        z_saved if (need_c and has_z) else None,
    )


def input_grads(ctx, grad_out, backward, geometry) -> tuple:
    """``(dx, dbasis, dcoeff, dbias)`` for autograd (None where not needed) from what
    :func:`save_for_backward` saved; ``backward(grad, x, basis, coeff, out, z_saved, bias, perm,
    mask)`` computes them (the backward op, or :func:`run_backward` in the eager route).
    ``geometry``: ``(stride, padding, dilation, keep_basis)``.

    With grad mode on (``create_graph=True``: a second derivative is wanted) the gradients
    come from :func:`differentiable_grads` instead: the kernels' backward has no derivative."""
    x, basis, coeff, bias, perm, out, z = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [bool(need[0]), bool(need[1]), bool(need[2]), bool(need[3])]
    if torch.is_grad_enabled():
        stride, padding, dilation, keep_basis = geometry
        return differentiable_grads(
            grad_out, x, basis, coeff, bias, perm, stride, padding, dilation, keep_basis, mask
        )
    empty = grad_out.new_empty(0)
    dx, db, dc, dbias = backward(
        grad_out,
        x,
        basis,
        coeff,
        empty if out is None else out,
        empty if z is None else z,
        bias,
        perm,
        mask,
    )
    return (
        dx if mask[0] else None,
        db if mask[1] else None,
        dc if mask[2] else None,
        dbias if mask[3] else None,
    )


def differentiable_grads(
    grad_out, x, basis, coeff, bias, perm, stride, padding, dilation, keep_basis, mask
) -> tuple:
    """The gradients in differentiable stock ops, for a backward with ``create_graph=True``
    (double backward: gradient penalties, Hessian-vector products). The forward is recomputed
    by :func:`reference.basis_conv2d_reference` and differentiated by autograd with
    ``create_graph=True``, so the returned gradients carry their own graph. The fused kernels'
    backward computes numbers only; this path costs about one unfused forward + backward and
    runs only when a second derivative can be asked for (grad mode on in the backward)."""
    inputs = [t for t, m in zip((x, basis, coeff, bias), mask) if m]
    if not inputs:
        return (None, None, None, None)
    with torch.enable_grad():
        y = reference.basis_conv2d_reference(
            x, basis, coeff, bias, stride, padding, dilation, keep_basis, perm
        )
        got = torch.autograd.grad(y, inputs, grad_out, create_graph=True, allow_unused=True)
    it = iter(got)
    out: list[torch.Tensor | None] = []
    for t, m in zip((x, basis, coeff, bias), mask):
        if not m:
            out.append(None)
            continue
        gr = next(it)
        out.append(torch.zeros_like(t) if gr is None else gr)  # e.g. coeff of C_rest = 0
    return tuple(out)


def _setup_context(ctx, inputs, output):
    x, basis, coeff, bias, perm, stride, padding, dilation, keep_basis, need_z = inputs
    out, z_saved = output
    save_for_backward(ctx, x, basis, coeff, bias, perm, bool(keep_basis), out, z_saved)
    ctx.mark_non_differentiable(z_saved)
    ctx.geometry = (list(stride), list(padding), list(dilation), bool(keep_basis))


def _backward(ctx, grad_out, _grad_z):
    stride, padding, dilation, keep_basis = ctx.geometry

    def backward_op(grad, x, basis, coeff, out, z_saved, bias, perm, mask):
        return torch.ops.tritonbasis.basis_conv2d_backward(
            grad,
            x,
            basis,
            coeff,
            out,
            z_saved,
            bias,
            perm,
            stride,
            padding,
            dilation,
            keep_basis,
            mask,
        )

    return (
        *input_grads(ctx, grad_out, backward_op, (stride, padding, dilation, keep_basis)),
        None,
        None,
        None,
        None,
        None,
        None,
    )


basis_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# FLOP formulas (FlopCounterMode reports basis FLOPs, not dense ones)


def _shapes(
    x_shape, basis_shape, coeff_shape, stride, padding, dilation
) -> tuple[int, int, int, int, int, int]:
    """``(C_in, C_b, C_rest, KH, KW, output pixels)`` from the op's argument shapes."""
    N, C_in, H, W = x_shape
    C_b, _, KH, KW = basis_shape
    pixels = (
        N
        * conv_output_size(H, KH, stride[0], padding[0], dilation[0])
        * conv_output_size(W, KW, stride[1], padding[1], dilation[1])
    )
    return C_in, C_b, coeff_shape[0], KH, KW, pixels


def basis_conv2d_flops(
    x_shape, basis_shape, coeff_shape, stride, padding, dilation, keep_basis
) -> int:
    """2 x MACs of the fused forward: conv over C_b filters + the (C_rest x C_b) combination."""
    return (
        2
        * forward_macs(*_shapes(x_shape, basis_shape, coeff_shape, stride, padding, dilation))[
            "fused"
        ]
    )


@register_flop_formula(torch.ops.tritonbasis.basis_conv2d)
def _fwd_flops(
    x_shape,
    basis_shape,
    coeff_shape,
    bias_shape,
    perm_shape,
    stride,
    padding,
    dilation,
    keep_basis,
    need_z,
    *args,
    out_shape=None,
    **kwargs,
) -> int:
    return basis_conv2d_flops(
        x_shape, basis_shape, coeff_shape, stride, padding, dilation, keep_basis
    )


def basis_conv2d_backward_flops(
    x_shape, basis_shape, coeff_shape, stride, padding, dilation, keep_basis, output_mask
) -> int:
    """2 x MACs of the backward for the gradients in ``output_mask``."""
    return 2 * backward_macs(
        *_shapes(x_shape, basis_shape, coeff_shape, stride, padding, dilation), output_mask
    )


@register_flop_formula(torch.ops.tritonbasis.basis_conv2d_backward)
def _bwd_flops(
    grad_shape,
    x_shape,
    basis_shape,
    coeff_shape,
    out_shape_,
    z_shape,
    bias_shape,
    perm_shape,
    stride,
    padding,
    dilation,
    keep_basis,
    output_mask,
    *args,
    out_shape=None,
    **kwargs,
) -> int:
    return basis_conv2d_backward_flops(
        x_shape, basis_shape, coeff_shape, stride, padding, dilation, keep_basis, output_mask
    )
