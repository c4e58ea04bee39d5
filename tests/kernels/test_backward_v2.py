"""v2 backward: gradients vs the float64 reference through the Triton kernels
(interpreter tier on CPU, tiny shapes), launch counts (Triton launches AND aten compute/fill ops:
<= 4 in all), only the requested gradients, and bitwise determinism run to run."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from helpers import Case, check_case
from torch.utils._python_dispatch import TorchDispatchMode

import tritonbasis as tb
from tritonbasis.op.geometry import check_inputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _needs_kernels(one_thread):
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set: the kernels cannot run")
    pytest.importorskip("triton", reason="the Triton backend needs triton")


CASES = [
    Case(),
    Case(keep_basis=False, C_rest=6),
    Case(keep_basis=False, C_rest=6, bias=False, channels_last=True),
    Case(perm=True),
    Case(perm=True, channels_last=True, bias=False),
    Case(stride=2),  # sub-pixel phases: 4 phases with 4, 2, 2, 1 taps
    Case(stride=2, H=8, W=9, perm=True, channels_last=True),
    Case(stride=2, keep_basis=False, C_rest=6, H=9, W=6),
    Case(dilation=2, H=9, W=8),
    Case(stride=3, dilation=2, padding=2, H=11, W=10),  # phases with step 3 / gcd(3, 2) = 3
    Case(stride=2, dilation=2, H=10, W=9),  # gcd 2: each phase has all taps or none
    Case(padding=0, bias=False, H=6, W=5),
    Case(k=1, padding=0, stride=2, H=7, W=6),  # odd rows/cols: phases with no tap at all
    # C_b not a power of two and > the FIXED BLOCK_K = 16 (two C_b blocks per tap in grad_x),
    # C_in > BLOCK_N = 16 (two C_in tiles), C_rest > BLOCK_N (two coefficient blocks)
    Case(C_in=20, C_b=19, C_rest=21, H=5, W=5, perm=True),
    Case(C_in=3, C_b=17, C_rest=18, H=5, W=7, keep_basis=False, stride=2, channels_last=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id())
def test_gradients_match_float64_reference(case):
    check_case(case, device=DEVICE, backend="triton")


# --------------------------------------------------------------------------------------------
# Launch counting


class _AtenCounter(TorchDispatchMode):
    """Aten ops that run a kernel (compute, fill, copy) outside our Triton launches.
    Allocation (empty*) and views launch nothing and are not counted."""

    FREE = {"empty", "empty_strided", "new_empty", "new_empty_strided", "empty_like"}

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.in_launch = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.in_launch and name not in self.FREE and not func.is_view:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _count_launches(monkeypatch):
    """Yields (triton_launch_names, aten_counter). Ops the interpreter itself dispatches while
    running a kernel (copies to and from numpy) belong to that launch, not counted as aten."""
    from tritonbasis.op import launchers as _triton

    names: list[str] = []
    mode = _AtenCounter()

    def wrap(real):
        def launch(name, *a, **k):
            names.append(name)
            mode.in_launch = True
            try:
                return real(name, *a, **k)
            finally:
                mode.in_launch = False

        return launch

    monkeypatch.setattr(_triton, "_launch", wrap(_triton._launch))
    monkeypatch.setattr(_triton, "_launch_fixed", wrap(_triton._launch_fixed))
    with mode:
        yield names, mode


def _backward_inputs(case: Case):
    x, basis, coeff, bias = case.make(device=DEVICE)
    perm = case.make_perm(DEVICE)
    with tb.use_backend("triton"):
        out, z = torch.ops.tritonbasis.basis_conv2d(
            x,
            basis,
            coeff,
            bias,
            perm,
            [case.stride] * 2,
            [case.padding] * 2,
            [case.dilation] * 2,
            case.keep_basis,
            True,
        )
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(
        device=DEVICE, dtype=out.dtype
    )
    if case.channels_last:
        grad = grad.contiguous(memory_format=torch.channels_last)
    g = check_inputs(
        x,
        basis,
        coeff,
        bias,
        (case.stride,) * 2,
        (case.padding,) * 2,
        (case.dilation,) * 2,
        case.keep_basis,
        perm,
    )
    return (grad, x, basis, coeff, out, z, bias, perm), g


def _run_launcher(inputs, g, mask):
    from tritonbasis.op import launchers as _triton

    return _triton.backward(*inputs, g, mask)


COUNT_CASES = [
    Case(),
    Case(keep_basis=False, C_rest=6, perm=False),
    Case(perm=True, stride=2, channels_last=True),
    Case(bias=False, dilation=2, H=9, W=9),
]


@pytest.mark.parametrize("case", COUNT_CASES, ids=lambda c: c.id())
def test_full_backward_is_at_most_4_launches(monkeypatch, case):
    inputs, g = _backward_inputs(case)
    mask = (True, True, True, case.bias)
    with _count_launches(monkeypatch) as (names, aten):
        grads = _run_launcher(inputs, g, mask)
    assert aten.ops == [], f"aten compute/fill ops in the backward: {aten.ops}"
    assert names == ["grad_z", "grad_x", "wgrad", "bwd_reduce"], names
    assert len(names) + len(aten.ops) <= 4
    assert all(t.numel() for t, m in zip(grads, mask) if m)


@pytest.mark.parametrize(
    "mask, expect",
    [
        ((True, False, False, False), ["grad_z", "grad_x"]),
        ((False, True, False, False), ["grad_z", "wgrad", "bwd_reduce"]),
        ((False, False, True, False), ["grad_z", "bwd_reduce"]),
        ((False, False, False, True), ["grad_z", "bwd_reduce"]),
        ((False, True, True, True), ["grad_z", "wgrad", "bwd_reduce"]),
        ((True, False, True, True), ["grad_z", "grad_x", "bwd_reduce"]),
    ],
    ids=lambda v: (
        "".join("xbcB"[i] if m else "-" for i, m in enumerate(v)) if isinstance(v, tuple) else ""
    ),
)
def test_only_requested_gradients_launch(monkeypatch, mask, expect):
    case = Case(perm=True)
    inputs, g = _backward_inputs(case)
    with _count_launches(monkeypatch) as (names, aten):
        grads = _run_launcher(inputs, g, mask)
    assert names == expect
    assert aten.ops == []
    for t, m, name in zip(grads, mask, ("dx", "dbasis", "dcoeff", "dbias")):
        assert (t.numel() > 0) == m, f"{name}: requested={m}, numel={t.numel()}"
    # what was computed equals the full backward's
    full = _run_launcher(inputs, g, (True, True, True, True))
    for t, f, m in zip(grads, full, mask):
        if m:
            assert torch.equal(t, f)


def test_no_remaining_channels_needs_no_coeff_work(monkeypatch):
    """C_rest = 0 (keep-basis, every output is a basis output): d coeff is (0, C_b), made by
    an allocation, no launch and no fill."""
    case = Case(C_rest=0)
    inputs, g = _backward_inputs(case)
    with _count_launches(monkeypatch) as (names, aten):
        grads = _run_launcher(inputs, g, (False, False, True, False))
    assert names == [] and aten.ops == []
    assert grads[2].shape == (0, case.C_b)


def test_autograd_backward_is_at_most_4_launches(monkeypatch):
    """Through the registered op and autograd: after the forward, backward() launches 4
    Triton kernels and the custom op's own code runs no aten compute op."""
    case = Case(perm=True, stride=2)
    x, basis, coeff, bias = case.make(device=DEVICE, requires_grad=True)
    with tb.use_backend("triton"):
        y = tb.basis_conv2d(x, basis, coeff, bias, **case.kwargs(), perm=case.make_perm(DEVICE))
        from tritonbasis.op import launchers as _triton

        names: list[str] = []
        for fn in ("_launch", "_launch_fixed"):
            real = getattr(_triton, fn)
            monkeypatch.setattr(
                _triton, fn, lambda n, *a, _r=real, **k: (names.append(n), _r(n, *a, **k))[1]
            )
        y.backward(torch.ones_like(y))
    assert names == ["grad_z", "grad_x", "wgrad", "bwd_reduce"]


# --------------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize(
    "case",
    [Case(perm=True, stride=2), Case(keep_basis=False, C_rest=6, channels_last=True)],
    ids=lambda c: c.id(),
)
def test_backward_bitwise_deterministic(case):
    """Two backward runs give bitwise identical gradients; also under
    torch.use_deterministic_algorithms(True), which the path honours by construction (no
    atomics anywhere: partial sums are reduced in a fixed order)."""
    inputs, g = _backward_inputs(case)
    mask = (True, True, True, True)
    first = _run_launcher(inputs, g, mask)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        second = _run_launcher(inputs, g, mask)
    finally:
        torch.use_deterministic_algorithms(prev)
    for a, b, name in zip(first, second, ("dx", "dbasis", "dcoeff", "dbias")):
        assert torch.equal(a, b), f"{name} differs between two runs"


def test_dtype_of_every_gradient_is_the_parameters():
    """The reduce writes the final dtype directly (no .to() afterwards): fp16 parameters get
    fp16 gradients, shaped like the parameters, contiguous."""
    case = Case()
    inputs, g = _backward_inputs(case)
    inputs = tuple(
        t.half() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs
    )
    grads = _run_launcher(inputs, g, (True, True, True, True))
    for t, ref in zip(grads, (inputs[1], inputs[2], inputs[3], inputs[6])):
        assert t.dtype == torch.float16 and t.shape == ref.shape


def test_int64_indexing_path(monkeypatch):
    """The INT64 specialisation (taken for tensors past 2**31 elements, too big for this tier)
    gives the same gradients: forced on for a tiny case."""
    from tritonbasis.op import launch_plan

    case = Case(perm=True, stride=2, channels_last=True)
    inputs, g = _backward_inputs(case)
    want = _run_launcher(inputs, g, (True, True, True, True))
    monkeypatch.setattr(launch_plan, "_needs_int64", lambda *t: True)
    launch_plan.clear_caches()  # (remembered launch scalars on a GPU)
    got = _run_launcher(inputs, g, (True, True, True, True))
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "stride, dilation", [((2, 1), (1, 1)), ((1, 3), (2, 1))], ids=["s2x1", "s1x3_d2x1"]
)
def test_asymmetric_stride_phases(stride, dilation):
    """Phases per axis: stride (2, 1) has 2 phases, (1, 3) has 3, each with its own taps."""
    from helpers import UNIT, assert_bounded, reference_with_bounds

    case = Case(C_in=5, C_b=6, C_rest=4, H=9, W=10, perm=True)
    x, basis, coeff, bias = case.make(device=DEVICE, requires_grad=True)
    perm = case.make_perm(DEVICE)
    kw = dict(stride=stride, padding=1, dilation=dilation, keep_basis=True)
    with tb.use_backend("triton"):
        y = tb.basis_conv2d(x, basis, coeff, bias, perm=perm, **kw)
    g_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    y.backward(g_out)

    class _C(Case):  # the helpers' reference with this call's geometry
        def kwargs(self):
            return kw

    ref_case = _C(**{f: getattr(case, f) for f in case.__dataclass_fields__})
    (ry, rg), (ay, ag) = reference_with_bounds(ref_case, (x, basis, coeff, bias), g_out, perm)
    # reduction lengths of a stride-1 call bound these (fewer pixels, same taps)
    K = case.reduction_lengths()
    assert_bounded(y, ry, ay, UNIT[torch.float32], K["out"], "out")
    for name, t in zip(("x", "basis", "coeff", "bias"), (x, basis, coeff, bias)):
        assert_bounded(t.grad, rg[name], ag[name], UNIT[torch.float32], K[name], f"d{name}")
