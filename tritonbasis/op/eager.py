"""The eager route of the basis op: an ``autograd.Function`` around the registry's own forward
and backward bodies, for plain eager calls.

Why two routes: a call through ``torch.ops.tritonbasis.basis_conv2d`` pays the custom-op
dispatch and ``register_autograd``'s Python autograd kernel (it redispatches even under
no_grad): +15 us no_grad / +40 us grad over the stock conv pair on the 2-core CPU machine,
where an ``autograd.Function`` around the same math costs ~+1.5 us (bench/NOTES.md "Host
overhead per call"). So in plain eager ``nn.basis_conv2d`` calls :func:`basis_conv2d` here,
and everything that must see the registered op -- ``torch.compile`` / export (an opaque op in
the graph), ``torch.jit`` tracing, dispatch and function modes (FlopCounterMode,
FakeTensorMode, ...), functorch transforms, tensor subclasses -- gets the custom op
(:func:`eager_ok` decides).

One source: the forward is :func:`registry.run_forward` (backend choice included), the saved
tensors :func:`registry.save_for_backward`, the gradients :func:`registry.input_grads` over
:func:`registry.run_backward` -- the very functions the custom op and its registered autograd
call. Nothing here dispatches through ``torch.ops.tritonbasis``. One exception to the
Function: on the CPU path with grad (:func:`registry.autograd_differentiates`), autograd
records the forward body's own stock ops (:func:`registry.run_forward_differentiable`) and
differentiates them itself, which is faster than any Python backward.

Profiler: while a profiler runs, the forward and the backward run inside
``record_function`` ranges named like the ops (``tritonbasis::basis_conv2d``,
``tritonbasis::basis_conv2d_backward``), so traces read as before; without a profiler that is
one flag read.
"""

from __future__ import annotations

import torch

from ..util import compat
from . import registry
from .geometry import ConvGeometry

FORWARD_NAME = "tritonbasis::basis_conv2d"
BACKWARD_NAME = "tritonbasis::basis_conv2d_backward"

# flag reads of torch's dispatch state (private names, util.compat: public fallbacks that
# send every call to the op route when they are missing)
_profiling = compat.profiler_enabled
_dispatch_modes = compat.dispatch_modes
_function_modes = compat.function_modes
_functorch_level = compat.functorch_level
_any_requires_grad = compat.any_requires_grad
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def eager_ok(x, basis, coeff, bias, perm) -> bool:
    """True when a call may take the eager route: not traced (``torch.compile``, export,
    ``torch.jit`` tracing; the caller checks those, it reads the same flags for ONNX export),
    no active TorchDispatchMode (FlopCounterMode, FakeTensorMode, ...) or TorchFunctionMode
    (``with torch.device(...)`` included), no functorch transform (vmap, grad), and every
    tensor exactly a ``torch.Tensor`` or ``nn.Parameter`` (a subclass gets the op, which it
    can intercept)."""
    return (
        not _dispatch_modes()
        and not _function_modes()
        and _functorch_level() is None
        and type(x) in _PLAIN
        and type(basis) in _PLAIN
        and type(coeff) in _PLAIN
        and (bias is None or type(bias) in _PLAIN)
        and (perm is None or type(perm) in _PLAIN)
    )


class BasisConv2dFunction(torch.autograd.Function):
    """The basis convolution's output: ``apply(x, basis, coeff, bias, (perm, g, need_z))``,
    arguments as :func:`registry.run_forward`. The tensors autograd tracks are the four
    arguments; ``perm`` (integer, never differentiated), the geometry and ``need_z`` travel as
    one argument (each argument of ``apply`` costs ~0.1 us). Z, when the full form's d coeff
    needs it, is saved for the backward, not returned (the op returns it as a
    non-differentiable output; one output fewer is ~0.3 us)."""

    @staticmethod
    def forward(ctx, x, basis, coeff, bias, rest):
        perm, g, need_z = rest
        out, z_saved = registry.run_forward(x, basis, coeff, bias, perm, g, need_z)
        registry.save_for_backward(ctx, x, basis, coeff, bias, perm, g.keep_basis, out, z_saved)
        ctx.g = g
        return out

    @staticmethod
    def backward(ctx, grad_out):
        # not once_differentiable: with create_graph=True (grad mode on here) input_grads
        # returns gradients in differentiable ops, so double backward works as on the op
        g = ctx.g
        geometry = (g.stride, g.padding, g.dilation, g.keep_basis)

        def backward(grad, x, basis, coeff, out, z_saved, bias, perm, mask):
            return registry.run_backward(
                grad, x, basis, coeff, out, z_saved, bias, perm, g, tuple(mask)
            )

        if _profiling():
            with torch.autograd.profiler.record_function(BACKWARD_NAME):
                grads = registry.input_grads(ctx, grad_out, backward, geometry)
        else:
            grads = registry.input_grads(ctx, grad_out, backward, geometry)
        return (*grads, None)


_apply = BasisConv2dFunction.apply


def basis_conv2d(x, basis, coeff, bias, perm, g: ConvGeometry, need_z: bool) -> torch.Tensor:
    """The output through the eager route; ``g`` from ``check_inputs`` (validated by the
    caller, once per call). Without grad (grad mode off, or no input requiring grad) the
    forward body runs directly, with no ``autograd.Function`` at all. With grad, where the
    torch backend runs stock ops autograd can differentiate
    (:func:`registry.autograd_differentiates`: the CPU path, except its batched-GEMM branches)
    autograd records those ops and its backward is theirs, as for the pair a user would write
    (the ``autograd.Function`` cost ~2 % of a forward+backward on a 2-core CPU, bench/NOTES.md
    "CPU path against the stock pair: paired timing"); elsewhere the ``autograd.Function``.
    While a profiler runs: the ``autograd.Function`` inside ranges named like the ops, so
    traces name them (the same aten calls)."""
    if _profiling():
        with torch.autograd.profiler.record_function(FORWARD_NAME):
            return _run(x, basis, coeff, bias, perm, g, need_z)
    if torch.is_grad_enabled() and _any_requires_grad(x, basis, coeff, bias):
        if registry.autograd_differentiates(x, g):
            return registry.run_forward_differentiable(x, basis, coeff, bias, perm, g)
        return _apply(x, basis, coeff, bias, (perm, g, need_z))
    return registry.run_forward(x, basis, coeff, bias, perm, g, need_z)[0]


def _run(x, basis, coeff, bias, perm, g, need_z):
    # basis_conv2d without the profiler check (inside its range)
    if torch.is_grad_enabled() and _any_requires_grad(x, basis, coeff, bias):
        return _apply(x, basis, coeff, bias, (perm, g, need_z))
    return registry.run_forward(x, basis, coeff, bias, perm, g, need_z)[0]
