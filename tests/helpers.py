"""Shared test helpers: case construction and error bounds derived from dtype and reduction
length (never tuned until green).

Bound: a dot product of K terms computed in a float format with unit roundoff u has error
<= gamma * sum_i |a_i b_i| with gamma ~ K u worst case, ~ sqrt(K) u for random rounding. The
sum of |terms| is computed exactly as the same reference on |inputs| in float64, so each element
gets its own bound: |actual - ref| <= C * u_eff * sqrt(K) * ref_abs + tiny, with C = 8. That can
fail: a wrong tap, stride or channel shows up as an O(1) relative error.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch

import tritonbasis as tb

# Unit roundoff of the arithmetic actually used. fp32 on CUDA may be TF32 (10-bit mantissa).
UNIT = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    "tf32": 2.0**-11,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}


@dataclass
class Case:
    N: int = 2
    C_in: int = 4
    H: int = 7
    W: int = 7
    C_b: int = 5
    C_rest: int = 3
    k: int = 3
    stride: int = 1
    padding: int = 1
    dilation: int = 1
    bias: bool = True
    keep_basis: bool = True
    channels_last: bool = False
    perm: bool = False  # a fixed random output-channel permutation (keep-basis conversions)

    @property
    def C_out(self) -> int:
        return self.C_rest + (self.C_b if self.keep_basis else 0)

    def id(self) -> str:
        return (
            f"n{self.N}_ci{self.C_in}_{self.H}x{self.W}_cb{self.C_b}_r{self.C_rest}_k{self.k}"
            f"_s{self.stride}_p{self.padding}_d{self.dilation}"
            f"{'_bias' if self.bias else ''}_{'keep' if self.keep_basis else 'full'}"
            f"_{'cl' if self.channels_last else 'nchw'}{'_perm' if self.perm else ''}"
        )

    def valid(self) -> bool:
        if not self.keep_basis and self.C_rest < self.C_b:
            return False
        eff = self.dilation * (self.k - 1) + 1
        return self.H + 2 * self.padding >= eff and self.W + 2 * self.padding >= eff

    def kwargs(self) -> dict:
        return dict(
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            keep_basis=self.keep_basis,
        )

    def make(self, dtype=torch.float32, device="cpu", requires_grad=False):
        """(x, basis, coeff, bias) with unit-scale outputs (weights ~ 1/sqrt(fan_in))."""
        g = torch.Generator().manual_seed(zlib.crc32(self.id().encode()))

        def r(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(
                device=device, dtype=dtype
            )

        x = r(self.N, self.C_in, self.H, self.W)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        basis = r(self.C_b, self.C_in, self.k, self.k, scale=1 / math.sqrt(self.C_in * self.k**2))
        coeff = r(self.C_rest, self.C_b, scale=1 / math.sqrt(self.C_b))
        bias = r(self.C_out) if self.bias else None
        ts = (x, basis, coeff, bias)
        if requires_grad:
            ts = tuple(t.requires_grad_() if t is not None else None for t in ts)
        return ts

    def make_perm(self, device="cpu"):
        if not self.perm:
            return None
        g = torch.Generator().manual_seed(zlib.crc32(self.id().encode()) + 1)
        p = torch.randperm(self.C_out, generator=g)
        assert self.C_out < 2 or not torch.equal(p, torch.arange(self.C_out)), "trivial perm"
        return p.to(device)

    def reduction_lengths(self) -> dict[str, int]:
        """K of every output: forward (conv taps + the combination), dx, d basis, d coeff."""
        ho = (self.H + 2 * self.padding - self.dilation * (self.k - 1) - 1) // self.stride + 1
        wo = (self.W + 2 * self.padding - self.dilation * (self.k - 1) - 1) // self.stride + 1
        pix = self.N * ho * wo
        return {
            "out": self.C_in * self.k**2 * (1 + self.C_b),  # Z then coeff.Z, nested
            "x": (self.C_rest + 1) * self.C_b * self.k**2,
            "basis": pix * (self.C_rest + 1),
            "coeff": pix * self.C_in * self.k**2,
            "bias": pix,
        }


def reference_with_bounds(case: Case, inputs, grad_out=None, perm=None):
    """float64 reference output and gradients, plus sum-of-|terms| for each (same math on
    |inputs| and |grad|)."""
    x, basis, coeff, bias = inputs
    perm = None if perm is None else perm.cpu()

    def run(ts, g_out, absval):
        ts = [None if t is None else t.detach().double() for t in ts]
        if absval:
            ts = [None if t is None else t.abs() for t in ts]
        ts = [None if t is None else t.requires_grad_() for t in ts]
        y = tb.basis_conv2d_reference(*ts, **case.kwargs(), perm=perm)
        grads = None
        if g_out is not None:
            g = g_out.detach().double()
            y.backward(g.abs() if absval else g)
            grads = {
                k: (None if t is None else t.grad)
                for k, t in zip(("x", "basis", "coeff", "bias"), ts)
            }
        return y.detach(), grads

    y, grads = run(inputs, grad_out, False)
    y_abs, grads_abs = run(inputs, grad_out, True)
    return (y, grads), (y_abs, grads_abs)


def assert_bounded(actual, ref, ref_abs, unit, K, name, C=8.0):
    """|actual - ref| <= C * unit * sqrt(K) * ref_abs + C * unit * max(ref_abs) / 1e3."""
    assert actual.shape == ref.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    a = actual.detach().double().cpu()
    ref, ref_abs = ref.cpu(), ref_abs.cpu()
    floor = C * unit * (ref_abs.max().item() if ref_abs.numel() else 0.0) * 1e-3
    bound = C * unit * math.sqrt(K) * ref_abs + floor
    err = (a - ref).abs()
    # `err > bound` is False for NaN: a NaN or inf in the result must fail, not pass.
    bad = ~(err <= bound)
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{err.numel()} elements out of bound; first at flat "
            f"index {i}: got {a.flatten()[i].item():.6g}, want {ref.flatten()[i].item():.6g}, "
            f"err {err.flatten()[i].item():.3g} > bound {bound.flatten()[i].item():.3g} "
            f"(max err {err.max().item():.3g}, unit {unit:.3g}, K {K})"
        )


def unit_for(dtype: torch.dtype, device: str) -> float:
    if dtype == torch.float32 and device == "cuda" and torch.backends.cudnn.allow_tf32:
        return UNIT["tf32"]
    return UNIT[dtype]


def check_case(case: Case, dtype=torch.float32, device="cpu", backend="auto", grads=True):
    """Run the op (forward and backward) and compare everything with the float64 reference."""
    inputs = case.make(dtype=dtype, device=device, requires_grad=grads)
    perm = case.make_perm(device)
    with tb.use_backend(backend):
        y = tb.basis_conv2d(*inputs, **case.kwargs(), perm=perm)
        g_out = torch.randn(
            y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64
        ).to(device=device, dtype=dtype)
        if case.channels_last:
            g_out = g_out.contiguous(memory_format=torch.channels_last)
        if grads:
            y.backward(g_out)
    want_fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=want_fmt), f"output format should be {want_fmt}"
    assert y.dtype == dtype
    (ry, rg), (ay, ag) = reference_with_bounds(case, inputs, g_out if grads else None, perm)
    unit = unit_for(dtype, device)
    K = case.reduction_lengths()
    assert_bounded(y, ry, ay, unit, K["out"], "out")
    if grads:
        for name, t in zip(("x", "basis", "coeff", "bias"), inputs):
            if t is None:
                continue
            assert t.grad is not None, f"no gradient for {name}"
            assert_bounded(t.grad, rg[name], ag[name], unit, K[name], f"d{name}")
    return y


class DictState:
    """The two methods a search stage uses of the search state (``get``, ``put``), in
    memory."""

    def __init__(self):
        self.stages = {}

    def get(self, key, default=None):
        return self.stages.get(key, default)

    def put(self, key, value):
        self.stages[key] = value


# The kernel tier's small cases (the GPU tier runs them too, beside its larger shapes).
KERNEL_CASES = [
    Case(),  # 3x3, pad 1, bias, keep-basis, C_b=5 (padded to 16), C_in=4
    Case(C_in=3, C_b=1, C_rest=3, H=9, W=9, bias=False),  # C_b = 1, C_in = 3
    Case(C_in=16, C_b=16, C_rest=64, stride=2, padding=1, channels_last=True),  # stride 2, NHWC
    Case(C_in=5, C_b=5, C_rest=9, k=5, padding=2, dilation=2, H=15, W=9, keep_basis=False),
    Case(C_in=4, C_b=5, C_rest=0, k=1, padding=0),  # C_out = C_b: nothing to combine
    Case(
        C_in=20,
        C_b=17,
        C_rest=20,
        k=3,
        stride=2,
        padding=0,
        dilation=2,
        H=15,
        W=15,
        keep_basis=False,
        channels_last=True,
        bias=False,
    ),  # C_in and C_b span 2 blocks
    Case(N=3, C_in=6, C_b=3, C_rest=35, k=3, stride=2, padding=2, H=7, W=9),  # C_rest > 2 blocks
    Case(C_in=8, C_b=40, C_rest=8, k=3, padding=1, H=7, W=7, channels_last=True),  # C_b > 32
    # output-channel permutation (keep-basis conversion of a trained conv), both formats/forms
    Case(C_in=5, C_b=6, C_rest=21, stride=2, perm=True),
    Case(C_in=4, C_b=3, C_rest=5, channels_last=True, bias=False, perm=True),
    Case(C_in=4, C_b=3, C_rest=7, keep_basis=False, perm=True),
]
