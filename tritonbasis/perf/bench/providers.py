"""The providers: what each one runs for a :class:`~.cases.Variant`, as one zero-argument
callable per (provider, direction) that :func:`tritonbasis.util.timing.time_fn` times.

* ``dense_cudnn``      -- ``F.conv2d`` with all ``C_out`` filters (``cudnn.benchmark=True``)
* ``unfused_eager``    -- conv over the ``C_b`` basis filters, then the 1x1 combination, in
  PyTorch (:func:`tritonbasis.op.reference.basis_conv2d_reference`)
* ``unfused_compiled`` -- the same pair under ``torch.compile`` (``compile_mode``)
* ``weight_mod``       -- ``W = [B; coeff.B]`` then one dense conv
* ``fused``            -- :func:`tritonbasis.basis_conv2d` (the Triton kernels on CUDA; the
  op's torch path on CPU)

All in the keep-basis form (``cat(Z, coeff.Z)``), no bias. Inputs rotate over several
buffers (together >= 128 MiB on CUDA, more than an H100's 50 MB L2) *inside* the timed
callable: each call moves to the next buffer (a Python index, ~0.1 us), so a CUDA graph
captured over several calls replays them on different buffers too.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ...nn.functional import basis_conv2d
from ...op import reference
from ...op.geometry import MAX_BASIS_CHANNELS, check_inputs
from ...util import compat
from .cases import DIRECTIONS, PROVIDERS, Variant

__all__ = [
    "ROTATE_BYTES",
    "Problem",
    "Skip",
    "fused_implementation",
    "fused_unavailable",
    "memory_format",
    "short_error",
]

ROTATE_BYTES = 128 * 2**20  # rotating inputs together exceed this on CUDA (H100 L2: 50 MB)


class Skip(Exception):
    """This provider/direction cannot be measured here; the message says why."""


def short_error(e: BaseException, n: int = 300) -> str:
    """``Type: first line of the message``, at most ``n`` characters (for records and logs)."""
    s = f"{type(e).__name__}: {e}".strip().splitlines()[0] if str(e) else type(e).__name__
    return s[:n]


def memory_format(layout: str) -> torch.memory_format:
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


class Problem:
    """Tensors of one :class:`Variant` on a device and, per provider and direction, the
    callable to time (:meth:`timed`)."""

    def __init__(
        self,
        v: Variant,
        device,
        *,
        compile_mode: str | None = "max-autotune",
        rotate: int | None = None,
        seed: int = 0,
    ):
        self.v = v
        self.device = torch.device(device)
        self.compile_mode = compile_mode
        c, cb = v.case, v.c_b
        dtype = getattr(torch, v.dtype)
        fmt = memory_format(v.layout)
        gen = torch.Generator(device=self.device).manual_seed(seed)

        def mk(*shape, scale=1.0, grad=False):
            t = torch.randn(*shape, device=self.device, dtype=dtype, generator=gen) * scale
            if len(shape) == 4:
                t = t.contiguous(memory_format=fmt)
            return t.requires_grad_(grad)

        ho, wo = c.out_hw
        x_bytes = c.N * c.C_in * c.H * c.W * torch.empty(0, dtype=dtype).element_size()
        if rotate is None:
            rotate = (
                min(16, max(2, math.ceil(ROTATE_BYTES / max(x_bytes, 1))))
                if self.device.type == "cuda"
                else 2
            )
        self.xs = [mk(c.N, c.C_in, c.H, c.W, grad=True) for _ in range(rotate)]
        self.dys = [mk(c.N, c.C_out, ho, wo) for _ in range(rotate)]
        fan = c.C_in * c.k * c.k
        self.basis = mk(cb, c.C_in, c.k, c.k, scale=fan**-0.5, grad=True)
        self.coeff = mk(c.C_out - cb, cb, scale=cb**-0.5, grad=True)
        self.dense_w = mk(c.C_out, c.C_in, c.k, c.k, scale=fan**-0.5, grad=True)
        self.conv = dict(stride=c.stride, padding=c.padding, dilation=c.dilation)
        self.i = 0
        self._held: list[tuple] = []  # bwd: the forward graphs its calls run backward through
        self._compiled = None

    # -- the providers: x -> y
    def forward_fn(self, provider: str) -> Callable[[torch.Tensor], torch.Tensor]:
        kw = self.conv
        if provider == "dense_cudnn":
            return lambda x: F.conv2d(x, self.dense_w, None, **kw)
        if provider == "unfused_eager":
            return lambda x: reference.basis_conv2d_reference(x, self.basis, self.coeff, None, **kw)
        if provider == "weight_mod":
            return lambda x: reference.weight_modified(x, self.basis, self.coeff, None, **kw)
        if provider == "unfused_compiled":
            if self.compile_mode is None:
                raise Skip("unfused_compiled disabled (--compile-mode none)")
            if self._compiled is None:
                torch.compiler.reset()  # one case's graphs at a time (dynamo's cache limit)
                self._compiled = self._compile_fn()
            return self._compiled
        if provider == "fused":
            why = fused_unavailable(self.xs[0], self.basis, self.coeff, self.conv)
            if why:
                raise Skip(why)
            return lambda x: basis_conv2d(x, self.basis, self.coeff, None, mode="fused", **kw)
        raise ValueError(f"unknown provider {provider!r}: use {', '.join(PROVIDERS)}")

    def _compile_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """x -> the unfused pair under a fresh ``torch.compile`` (its own dynamo cache entry:
        dynamo guards on the backend, so two of these never share graphs)."""
        c = self.v.case
        mode = None if self.compile_mode == "default" else self.compile_mode
        comp = torch.compile(_unfused_pair, mode=mode, fullgraph=True, dynamic=False)
        return lambda x: comp(x, self.basis, self.coeff, c.stride, c.padding, c.dilation)

    def params(self, provider: str) -> list[torch.Tensor]:
        if provider == "dense_cudnn":
            return [self.dense_w]
        return [self.basis, self.coeff]

    def _next(self) -> int:
        self.i = (self.i + 1) % len(self.xs)
        return self.i

    def _step_marker(self, provider: str) -> Callable[[], None]:
        """Inductor's CUDA graphs (max-autotune / reduce-overhead) need to be told that a new
        iteration begins, or they keep the previous outputs alive; a no-op elsewhere."""
        mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
        if provider != "unfused_compiled" or self.device.type != "cuda" or mark is None:
            return _noop
        return mark

    def timed(self, provider: str, direction: str) -> Callable[[], Any]:
        """The zero-argument callable to time: each call moves to the next input buffer, then

        * ``fwd``: the forward under ``no_grad``;
        * ``bwd``: the gradients of x and of the weights (``torch.autograd.grad``) through a
          forward graph built once per buffer, here, before timing, and kept
          (``retain_graph=True``): the forward is not in the number. ``unfused_compiled``
          keeps one graph (Inductor's CUDA graphs would overwrite the saved tensors of the
          others), compiled apart with AOTAutograd's buffer donation off (a backward that
          donates its saved buffers refuses ``retain_graph``);
        * ``fwd+bwd``: forward and those gradients.
        """
        f = self.forward_fn(provider)
        params = self.params(provider)
        begin = self._step_marker(provider)
        if direction == "fwd":

            def fwd():
                begin()
                x = self.xs[self._next()]
                with torch.no_grad():
                    return f(x)

            return fwd
        if direction == "bwd":
            self._held = []
            begin()
            compiled = provider == "unfused_compiled"
            with _no_donated_buffers() if compiled else contextlib.nullcontext():
                if compiled:
                    f = self._compile_fn()  # its own graphs, compiled under the patch
                n = 1 if compiled else len(self.xs)
                for i in range(n):
                    self._held.append((f(self.xs[i]), [self.xs[i], *params], self.dys[i]))
            held = self._held

            def bwd():
                y, wrt, dy = held[self._next() % len(held)]
                return torch.autograd.grad(y, wrt, dy, retain_graph=True)

            return bwd
        if direction == "fwd+bwd":

            def fwd_bwd():
                begin()
                i = self._next()
                x = self.xs[i]
                return torch.autograd.grad(f(x), [x, *params], self.dys[i])

            return fwd_bwd
        raise ValueError(f"unknown direction {direction!r}: use {', '.join(DIRECTIONS)}")

    def release(self) -> None:
        """Drop the held forward graphs and the compiled function (their memory)."""
        self._held = []
        self._compiled = None


def _noop() -> None:
    return None


def _no_donated_buffers():
    """AOTAutograd's ``donated_buffer`` off while compiling (torch >= 2.6 has the option)."""
    aot_config = compat.aot_autograd_config()
    if aot_config is None or not hasattr(aot_config, "donated_buffer"):
        return contextlib.nullcontext()
    return aot_config.patch(donated_buffer=False)


def _unfused_pair(x, basis, coeff, stride, padding, dilation):
    return reference.basis_conv2d_reference(x, basis, coeff, None, stride, padding, dilation)


def fused_unavailable(x, basis, coeff, conv: dict) -> str | None:
    """Why the ``fused`` provider would not measure the fused kernel here (None: it would)."""
    from ...op.registry import resolve_backend

    g = check_inputs(x, basis, coeff, None, conv["stride"], conv["padding"], conv["dilation"], True)
    if x.device.type != "cuda":
        return None  # CPU: the op's torch path, stated in the settings
    if g.C_b > MAX_BASIS_CHANNELS:
        return (
            f"C_b={g.C_b} > {MAX_BASIS_CHANNELS}: the fused kernel does not run this shape "
            "(the op would fall back to the torch path; mode='auto' picks weight)"
        )
    try:
        backend = resolve_backend(x, g)
    except Exception as e:
        return f"the Triton backend cannot run: {short_error(e)}"
    if backend != "triton":
        return (
            "the op would run its torch path here, not the Triton kernels "
            "(TRITONBASIS_BACKEND or an unsupported dtype)"
        )
    return None


def fused_implementation(device: torch.device) -> str:
    from ...op.registry import get_backend, triton_import_error

    if torch.device(device).type != "cuda":
        return "torch path of the op (conv over C_b filters + 1x1 conv; hand-written backward)"
    err = triton_import_error()
    return (
        f"Triton kernels (backend={get_backend()})"
        if err is None
        else f"torch path: triton unavailable ({err})"
    )
