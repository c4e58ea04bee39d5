"""The two routes of ``basis_conv2d(mode="fused")``: in plain eager ``tritonbasis.op.eager``
-- on the CPU path the stock ops recorded by autograd ("autograd"), elsewhere an
``autograd.Function`` around the registry's own forward and backward bodies ("function",
forced here on CPU); traced, under a dispatch / function mode or with a tensor subclass, the
custom op ``torch.ops.tritonbasis.basis_conv2d``. Same numbers either way (float64), gradcheck
through the eager route, and which route each situation takes (spies, no timing)."""

import pytest
import torch
from helpers import Case

import tritonbasis as tb
from tritonbasis.nn import functional
from tritonbasis.op import eager, geometry, registry

EAGER_GRAD_FN = "BasisConv2dFunctionBackward"

CASES = [
    Case(C_in=3, C_b=3, C_rest=5, stride=2, perm=True),
    Case(C_in=4, C_b=2, C_rest=4, padding=2, dilation=2, bias=False),
    Case(C_in=3, C_b=4, C_rest=0, keep_basis=True),  # keep-basis, no combined channels
    Case(C_in=3, C_b=2, C_rest=4, channels_last=True),  # keep-basis + bias, no perm: the cat
    Case(C_in=4, C_b=3, C_rest=5, keep_basis=False, channels_last=True),
    Case(C_in=3, C_b=2, C_rest=4, keep_basis=False, stride=2, padding=0, perm=True),
    Case(C_in=3, C_b=3, C_rest=3, keep_basis=False, dilation=2, padding=2, bias=False),
]
# which inputs require grad: all (need_z in the full form), all but coeff (no need_z, no
# d coeff), coeff only (Z saved, nothing else computed)
GRAD_SETS = {"all": (0, 1, 2, 3), "no_coeff": (0, 1, 3), "coeff_only": (2,)}


@pytest.fixture
def routes(monkeypatch):
    """Counts of the two routes: ``eager`` (op.eager.basis_conv2d), ``op`` (the custom op as
    functional calls it) and ``run_backward`` calls; ``force_op()`` sends plain eager calls to
    the op (as a mode or a trace would)."""
    calls = {"eager": 0, "op": 0, "run_backward": 0}
    real_eager, real_op, real_bwd = eager.basis_conv2d, functional._OP, registry.run_backward

    def spy_eager(*a):
        calls["eager"] += 1
        return real_eager(*a)

    def spy_op(*a):
        calls["op"] += 1
        return real_op(*a)

    def spy_bwd(*a):
        calls["run_backward"] += 1
        return real_bwd(*a)

    monkeypatch.setattr(eager, "basis_conv2d", spy_eager)
    monkeypatch.setattr(functional, "_OP", spy_op)
    monkeypatch.setattr(registry, "run_backward", spy_bwd)
    calls["force_op"] = lambda: monkeypatch.setattr(eager, "eager_ok", lambda *a: False)
    # the eager route's autograd.Function where the CPU path would let autograd record it
    calls["force_function"] = lambda: monkeypatch.setattr(
        registry, "autograd_differentiates", lambda *a: False
    )
    return calls


EAGER_FORMS = ["autograd", "function"]


def _run(case, which, perm, grad_out_seed=1):
    """Output and gradients (float64) of one call, with a fixed upstream gradient."""
    ts = case.make(dtype=torch.float64)
    ts = tuple(
        None if t is None else t.clone().requires_grad_(i in which) for i, t in enumerate(ts)
    )
    x, basis, coeff, bias = ts
    y = tb.basis_conv2d(x, basis, coeff, bias, **case.kwargs(), mode="fused", perm=perm)
    g = torch.Generator().manual_seed(grad_out_seed)
    grad_out = torch.randn(y.shape, generator=g, dtype=y.dtype)
    wrt = [t for t in ts if t is not None and t.requires_grad]
    grads = torch.autograd.grad(y, wrt, grad_out) if wrt else ()
    return y, grads, type(y.grad_fn).__name__ if y.grad_fn is not None else None


@pytest.mark.parametrize("form", EAGER_FORMS)
@pytest.mark.parametrize("grad_set", list(GRAD_SETS), ids=list(GRAD_SETS))
@pytest.mark.parametrize("case", CASES, ids=[c.id() for c in CASES])
def test_eager_and_op_routes_agree(case, grad_set, form, routes):
    perm = case.make_perm()
    which = GRAD_SETS[grad_set]
    if case.bias is False:
        which = tuple(i for i in which if i != 3)
    if form == "function":
        routes["force_function"]()
    y_e, g_e, fn_e = _run(case, which, perm)
    assert routes["eager"] == 1 and routes["op"] == 0
    if form == "function":
        assert fn_e == EAGER_GRAD_FN
        assert routes["run_backward"] == 1  # the registry's backward body, no backward op
    elif case.C_rest == 0:  # no combined channels: the Function (d coeff is zeros)
        assert fn_e in (EAGER_GRAD_FN, None)
    else:  # autograd's own nodes over the stock ops, no backward body of ours
        assert fn_e in ("ConvolutionBackward0", "CatBackward0"), fn_e
        assert routes["run_backward"] == 0
    bodies = routes["run_backward"]
    routes["force_op"]()
    y_o, g_o, fn_o = _run(case, which, perm)
    assert routes["eager"] == 1 and routes["op"] == 1
    assert fn_o != EAGER_GRAD_FN
    assert routes["run_backward"] == bodies + 1  # the backward op runs the registry's body
    assert y_e.dtype == torch.float64 and torch.equal(y_e, y_o)
    assert y_e.is_contiguous(memory_format=torch.channels_last) == y_o.is_contiguous(
        memory_format=torch.channels_last
    )
    assert len(g_e) == len(g_o) == len(which)
    for a, b in zip(g_e, g_o, strict=True):
        if form == "function":  # the same body: the same bits
            assert torch.equal(a, b)
        else:  # the same products; d bias may sum in another order (float64 roundoff)
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_eager_route_without_grad_runs_no_function(routes):
    case = CASES[0]
    x, basis, coeff, bias = case.make(dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        y = tb.basis_conv2d(x, basis, coeff, bias, **case.kwargs(), perm=case.make_perm())
    assert y.grad_fn is None and not y.requires_grad
    assert routes["eager"] == 1 and routes["op"] == 0
    ref = tb.basis_conv2d_reference(
        x.detach(),
        basis.detach(),
        coeff.detach(),
        bias.detach(),
        **case.kwargs(),
        perm=case.make_perm(),
    )
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", EAGER_FORMS)
@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=["keep_perm", "full_perm"])
def test_gradcheck_through_the_eager_route(case, form, routes):
    if form == "function":
        routes["force_function"]()
    x, basis, coeff, bias = case.make(dtype=torch.float64, requires_grad=True)
    perm = case.make_perm()
    assert torch.autograd.gradcheck(
        lambda *a: tb.basis_conv2d(*a, **case.kwargs(), perm=perm), (x, basis, coeff, bias)
    )
    assert routes["eager"] > 0 and routes["op"] == 0


def test_validation_once_per_call(monkeypatch):
    counts = {"check": 0}
    real = geometry.check_inputs

    def spy(*a, **k):
        counts["check"] += 1
        return real(*a, **k)

    monkeypatch.setattr(functional, "check_inputs", spy)
    monkeypatch.setattr(registry, "check_inputs", spy)
    x, basis, coeff, bias = Case().make(requires_grad=True)
    tb.basis_conv2d(x, basis, coeff, bias, padding=1).sum().backward()
    assert counts["check"] == 1  # forward and backward of the eager route: one validation


def test_layer_takes_the_eager_route(routes):
    layer = tb.BasisConv2d(4, 8, 3, basis_channels=3, padding=1, mode="fused")
    y = layer(torch.randn(2, 4, 6, 6))
    assert type(y.grad_fn).__name__ == "CatBackward0"  # the CPU path's ops, recorded
    assert routes["eager"] == 1 and routes["op"] == 0
    routes["force_function"]()
    y = layer(torch.randn(2, 4, 6, 6))
    assert type(y.grad_fn).__name__ == EAGER_GRAD_FN
    assert routes["eager"] == 2 and routes["op"] == 0


def test_cpu_gemm_branches_keep_the_function(routes, monkeypatch):
    """Where the CPU path multiplies by batched GEMMs (out= writes autograd cannot record;
    NCHW, one thread, large enough) the eager route takes its autograd.Function; its
    gradients equal the float64 reference's."""
    from tritonbasis.op import reference

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    case = Case(N=2, C_in=3, C_b=2, C_rest=14, H=32, W=32, perm=True)
    x, basis, coeff, bias = case.make(dtype=torch.float64, requires_grad=True)
    g = geometry.check_inputs(x, basis, coeff, bias, **case.kwargs(), perm=case.make_perm())
    assert reference.takes_gemms(x, g) and not registry.autograd_differentiates(x, g)
    y = tb.basis_conv2d(x, basis, coeff, bias, **case.kwargs(), perm=case.make_perm())
    assert type(y.grad_fn).__name__ == EAGER_GRAD_FN
    got = torch.autograd.grad(y.square().sum(), (x, basis, coeff, bias))
    ref_in = [t.detach().clone().requires_grad_() for t in (x, basis, coeff, bias)]
    ref = tb.basis_conv2d_reference(*ref_in, **case.kwargs(), perm=case.make_perm())
    want = torch.autograd.grad(ref.square().sum(), ref_in)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_flop_counter_mode_takes_the_op(routes):
    from torch.utils.flop_counter import FlopCounterMode

    case = Case(keep_basis=False, C_rest=6)
    x, basis, coeff, bias = case.make(requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        y = tb.basis_conv2d(x, basis, coeff, bias, **case.kwargs())
        y.sum().backward()
    assert routes["eager"] == 0 and routes["op"] == 1
    flops = fc.get_flop_counts()["Global"]
    assert flops[torch.ops.tritonbasis.basis_conv2d] > 0
    assert flops[torch.ops.tritonbasis.basis_conv2d_backward] > 0


def test_function_mode_and_subclass_take_the_op(routes):
    x, basis, coeff, bias = Case().make()
    with torch.device("cpu"):  # a TorchFunctionMode
        tb.basis_conv2d(x, basis, coeff, bias, padding=1)
    assert routes["eager"] == 0 and routes["op"] == 1

    class Sub(torch.Tensor):
        pass

    y = tb.basis_conv2d(x.as_subclass(Sub), basis, coeff, bias, padding=1)
    assert routes["eager"] == 0 and routes["op"] == 2
    torch.testing.assert_close(
        y.as_subclass(torch.Tensor), tb.basis_conv2d(x, basis, coeff, bias, padding=1)
    )
    assert routes["eager"] == 1  # and plain tensors are back on the eager route


def test_jit_trace_takes_the_op(routes):
    layer = tb.BasisConv2d(4, 8, 3, basis_channels=3, padding=1, mode="fused")
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        traced = torch.jit.trace(layer, x, check_trace=False)
    assert routes["eager"] == 0 and routes["op"] == 1
    assert "tritonbasis::basis_conv2d" in str(traced.graph)
    torch.testing.assert_close(traced(x), layer(x))


@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
def test_compile_fullgraph_takes_the_op(keep_basis, routes):
    """torch.compile: no graph break (fullgraph), the graph holds the op, the eager route is
    never entered while compiling or running the compiled code; same numbers as eager."""
    torch._dynamo.reset()
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    layer = tb.BasisConv2d(
        4, 8, 3, basis_channels=3, padding=1, keep_basis=keep_basis, mode="fused"
    )
    x = torch.randn(2, 4, 6, 6)
    want = layer(x)
    want.square().sum().backward()
    g_want = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    assert routes["eager"] == 1
    try:
        got = torch.compile(layer, backend=backend, fullgraph=True)(x)
        got.square().sum().backward()
    finally:
        torch._dynamo.reset()
    assert routes["eager"] == 1  # compiling and the compiled call: never the eager route
    assert sum("tritonbasis.basis_conv2d" in s for s in seen) == 1, seen
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for p, g in zip(layer.parameters(), g_want, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


def test_profiler_sees_the_op_names_on_the_eager_route(routes):
    from torch.profiler import ProfilerActivity, profile

    x, basis, coeff, bias = Case().make(requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y = tb.basis_conv2d(x, basis, coeff, bias, padding=1)
        y.sum().backward()
    assert type(y.grad_fn).__name__ == EAGER_GRAD_FN
    assert routes["eager"] == 1 and routes["op"] == 0
    names = [e.name for e in prof.events()]
    assert names.count(eager.FORWARD_NAME) == 1
    assert names.count(eager.BACKWARD_NAME) == 1


def test_eager_route_reports_inplace_edit_of_saved_output(monkeypatch):
    """Where the output is saved for d coeff (keep-basis with Z read back from it, the GPU
    rule, forced here): an in-place edit is caught, as on the op route. (On a CPU the
    keep-basis form saves Z instead; tests/nn/test_layer.py checks that such a model trains.)"""
    from tritonbasis.op import reference

    real = reference.saves_z
    monkeypatch.setattr(reference, "saves_z", lambda *a: real(*a[:4], False))
    monkeypatch.setattr(registry, "autograd_differentiates", lambda *a: False)
    x, basis, coeff, bias = Case().make(requires_grad=True)
    y = tb.basis_conv2d(x, basis, coeff, bias, padding=1)
    y.relu_()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


DOUBLE_CASES = [
    Case(C_in=3, C_b=2, C_rest=3, stride=2, perm=True, H=5, W=5, N=1),
    Case(C_in=2, C_b=2, C_rest=4, keep_basis=False, perm=True, H=5, W=5, N=1),
]


@pytest.mark.parametrize("route", ["eager", "function", "op"])
@pytest.mark.parametrize("case", DOUBLE_CASES, ids=[c.id() for c in DOUBLE_CASES])
def test_double_backward_mode_fused(case, route, routes):
    """Second order through mode="fused" on every route (the CPU path's ops under autograd,
    the eager autograd.Function and the custom op's registered autograd): gradgradcheck in
    float64, and a gradient penalty's gradients equal the float64 reference's -- including
    with allow_unused=True, which must return real gradients, never a silent None."""
    if route == "op":
        routes["force_op"]()
    if route == "function":
        routes["force_function"]()
    route = "op" if route == "op" else "eager"
    x, basis, coeff, bias = case.make(dtype=torch.float64, requires_grad=True)
    perm = case.make_perm()

    def f(*a):
        return tb.basis_conv2d(*a, **case.kwargs(), mode="fused", perm=perm)

    inputs = (x, basis, coeff, bias)
    assert torch.autograd.gradgradcheck(f, inputs)
    assert routes[route] > 0 and routes["eager" if route == "op" else "op"] == 0

    def penalty(fn, ts):
        (gx,) = torch.autograd.grad(fn(*ts).square().sum(), ts[0], create_graph=True)
        return torch.autograd.grad(gx.square().sum(), ts[1:], allow_unused=True)

    got = penalty(f, inputs)
    ref_in = tuple(t.detach().clone().requires_grad_() for t in inputs)
    want = penalty(lambda *a: tb.basis_conv2d_reference(*a, **case.kwargs(), perm=perm), ref_in)
    for name, g_got, g_want in zip(("basis", "coeff", "bias"), got, want):
        assert g_got is not None, f"d{name} of the penalty is None"
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-10, msg=name)


def test_first_backward_keeps_the_fast_path(routes):
    """Without create_graph the autograd.Function's backward runs the registry's body (the
    kernels' backward on CUDA), not the differentiable recomputation."""
    routes["force_function"]()
    x, basis, coeff, bias = Case().make(requires_grad=True)
    tb.basis_conv2d(x, basis, coeff, bias, padding=1).sum().backward()
    assert routes["run_backward"] == 1


def test_double_backward_under_compile_is_a_clear_error():
    """Compiled (aot_autograd), second order is torch's own clear refusal, never a None."""
    torch._dynamo.reset()
    layer = tb.BasisConv2d(3, 5, 3, basis_channels=2, padding=1, mode="fused").double()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    f = torch.compile(layer, fullgraph=True, backend="aot_eager")
    try:
        (gx,) = torch.autograd.grad(f(x).square().sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(gx.square().sum(), (layer.basis, layer.coeff), allow_unused=True)
    finally:
        torch._dynamo.reset()
