"""The registered ops: opcheck, torch.compile, FLOP formulas, backend switch."""

import os

import pytest
import torch
from conftest import HAS_CUDA, HAS_TRITON
from helpers import Case

import tritonbasis as tb
from tritonbasis.op import registry
from tritonbasis.op.geometry import check_inputs
from tritonbasis.op.registry import basis_conv2d_backward_flops, basis_conv2d_flops

FWD = torch.ops.tritonbasis.basis_conv2d.default
BWD = torch.ops.tritonbasis.basis_conv2d_backward.default

BACKENDS = ["torch"]
if HAS_TRITON and (HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1"):
    BACKENDS.append("triton")
DEVICE = "cuda" if HAS_CUDA else "cpu"

OPCHECK_CASES = [
    Case(C_in=3, C_b=5, C_rest=3, stride=2),
    Case(C_in=4, C_b=5, C_rest=6, channels_last=True, bias=False),
    Case(C_in=4, C_b=3, C_rest=7, keep_basis=False, channels_last=True),
    Case(C_in=4, C_b=3, C_rest=5, keep_basis=False, dilation=2, padding=2, bias=False),
]


def _perm(case):
    """A fixed non-trivial permutation of the output channels (or None for even-C_out cases)."""
    if case.C_out % 2:
        return None
    g = torch.Generator().manual_seed(case.C_out)
    return torch.randperm(case.C_out, generator=g).to(DEVICE)


def _op_args(case, need_z, requires_grad=True):
    x, basis, coeff, bias = case.make(device=DEVICE, requires_grad=requires_grad)
    return (
        x,
        basis,
        coeff,
        bias,
        _perm(case),
        [case.stride] * 2,
        [case.padding] * 2,
        [case.dilation] * 2,
        case.keep_basis,
        need_z,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=[c.id() for c in OPCHECK_CASES])
def test_opcheck_forward(case, backend):
    with tb.use_backend(backend):
        torch.library.opcheck(FWD, _op_args(case, need_z=not case.keep_basis))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", OPCHECK_CASES[:3], ids=[c.id() for c in OPCHECK_CASES[:3]])
def test_opcheck_backward(case, backend):
    x, basis, coeff, bias, perm, s, p, d, keep, _ = _op_args(case, need_z=True, requires_grad=False)
    with tb.use_backend(backend):
        out, z = FWD(x, basis, coeff, bias, perm, s, p, d, keep, True)
        grad = torch.randn_like(out)
        mask = [True, True, True, bias is not None]
        torch.library.opcheck(BWD, (grad, x, basis, coeff, out, z, bias, perm, s, p, d, keep, mask))
        # a partial mask: only d coeff
        torch.library.opcheck(
            BWD,
            (grad, x, basis, coeff, out, z, bias, perm, s, p, d, keep, [False, False, True, False]),
        )


def test_custom_op_is_registered_in_project_namespace():
    assert hasattr(torch.ops.tritonbasis, "basis_conv2d")
    assert hasattr(torch.ops.tritonbasis, "basis_conv2d_backward")
    schema = str(FWD._schema)
    assert schema.startswith("tritonbasis::basis_conv2d(Tensor x, Tensor basis, Tensor coeff")


class _Net(torch.nn.Module):
    def __init__(self, keep_basis):
        super().__init__()
        self.a = tb.BasisConv2d(
            3, 8, 3, basis_channels=4, padding=1, keep_basis=keep_basis, mode="fused"
        )
        self.bn = torch.nn.BatchNorm2d(8)
        self.b = tb.BasisConv2d(
            8, 6, 3, basis_channels=2, stride=2, keep_basis=keep_basis, mode="fused"
        )

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x))))


@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
def test_torch_compile_fullgraph_cpu(keep_basis):
    torch._dynamo.reset()
    net = _Net(keep_basis)
    x = torch.randn(2, 3, 9, 9)
    eager = net(x)
    eager.square().sum().backward()
    g_eager = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    compiled = torch.compile(net, fullgraph=True)  # raises on any graph break
    out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, g_eager[n], rtol=1e-4, atol=1e-5, msg=n)


def test_compiled_graph_calls_the_op():
    """The op stays opaque in the compiled graph (one call per layer), not decomposed."""
    torch._dynamo.reset()
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    net = _Net(True)
    torch.compile(net, backend=backend, fullgraph=True)(torch.randn(2, 3, 9, 9))
    assert sum("tritonbasis.basis_conv2d" in s for s in seen) == 2, seen


@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
def test_flop_counter_reports_basis_flops(keep_basis):
    from torch.utils.flop_counter import FlopCounterMode

    case = Case(C_in=8, C_b=4, C_rest=12, stride=2, keep_basis=keep_basis)
    x, basis, coeff, bias = case.make(requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        y = tb.basis_conv2d(x, basis, coeff, bias, **case.kwargs())
    ho, wo = y.shape[2:]
    P = case.N * ho * wo
    want = 2 * P * (case.C_b * case.C_in * case.k**2 + case.C_rest * case.C_b)
    assert fc.get_total_flops() == want
    assert want == basis_conv2d_flops(
        x.shape, basis.shape, coeff.shape, [2, 2], [1, 1], [1, 1], keep_basis
    )
    # dense conv of the same shape costs more (that is the point)
    dense = 2 * P * case.C_out * case.C_in * case.k**2
    assert want < dense
    with FlopCounterMode(display=False) as fc:
        y.sum().backward()
    conv = P * case.C_b * case.C_in * case.k**2
    comb = P * case.C_rest * case.C_b
    assert fc.get_total_flops() == 2 * (comb + 2 * conv + comb)
    assert fc.get_total_flops() == basis_conv2d_backward_flops(
        x.shape,
        basis.shape,
        coeff.shape,
        [2, 2],
        [1, 1],
        [1, 1],
        keep_basis,
        [True, True, True, True],
    )


def test_backend_env_var_and_context(monkeypatch):
    from tritonbasis.op import reference

    calls = []
    real = reference.forward
    monkeypatch.setattr(
        reference, "forward", lambda *a, **k: (calls.append("torch"), real(*a, **k))[1]
    )
    x, basis, coeff, bias = Case().make()
    monkeypatch.setenv("TRITONBASIS_BACKEND", "torch")
    assert tb.get_backend() == "torch"
    tb.basis_conv2d(x, basis, coeff, bias, padding=1)
    assert calls == ["torch"]
    monkeypatch.setenv("TRITONBASIS_BACKEND", "auto")
    with tb.use_backend("torch"):
        assert tb.get_backend() == "torch"
    assert tb.get_backend() == "auto"
    # auto on CPU is the torch path
    tb.basis_conv2d(x, basis, coeff, bias, padding=1)
    assert calls == ["torch", "torch"]


def test_auto_on_cpu_never_runs_triton():
    x = torch.randn(1, 3, 5, 5)
    g = check_inputs(x, torch.randn(2, 3, 3, 3), torch.randn(2, 2), None, 1, 0, 1, True)
    assert registry.resolve_backend(x, g) == "torch"


def test_autocast_casts_params_like_conv():
    """Under autocast (CPU bf16 here) params are cast with x, as F.conv2d does."""
    layer = tb.BasisConv2d(4, 8, 3, basis_channels=2, padding=1, mode="fused")
    x = torch.randn(2, 4, 7, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    ref = tb.basis_conv2d_reference(
        x.double(), layer.basis.double(), layer.coeff.double(), layer.bias.double(), padding=1
    )
    torch.testing.assert_close(y.double(), ref, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
def test_empty_batch_like_conv2d(keep_basis, backend):
    """N = 0 gives an empty output of the right shape and zero parameter gradients, as
    nn.Conv2d does (models can see empty batches)."""
    layer = tb.BasisConv2d(
        4, 8, 3, basis_channels=3, stride=2, padding=1, keep_basis=keep_basis, mode="fused"
    ).to(DEVICE)
    x = torch.randn(0, 4, 9, 9, device=DEVICE, requires_grad=True)
    with tb.use_backend(backend):
        y = layer(x)
        y.sum().backward()
    conv = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1).to(DEVICE)
    assert y.shape == conv(x).shape
    assert x.grad.shape == x.shape
    for p in layer.parameters():
        assert p.grad is not None and p.grad.abs().sum().item() == 0.0


@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
def test_perm_gradcheck_and_weight_mode(keep_basis):
    """The output permutation: gradcheck (float64, torch path), and weight modification with
    the same perm (rows of W permuted) gives the same function."""
    case = Case(C_in=3, C_b=3, C_rest=4, stride=2, keep_basis=keep_basis, perm=True)
    x, basis, coeff, bias = case.make(dtype=torch.float64, requires_grad=True)
    perm = case.make_perm()
    with tb.use_backend("torch"):
        assert torch.autograd.gradcheck(
            lambda *a: tb.basis_conv2d(*a, **case.kwargs(), perm=perm), (x, basis, coeff, bias)
        )
    fused = tb.basis_conv2d(x, basis, coeff, bias, **case.kwargs(), perm=perm)
    weight = tb.basis_conv2d(x, basis, coeff, bias, **case.kwargs(), perm=perm, mode="weight")
    torch.testing.assert_close(fused, weight, rtol=1e-12, atol=1e-12)
    # and it really permutes: without perm the channels come out in computed order
    plain = tb.basis_conv2d(x, basis, coeff, None, **case.kwargs())
    torch.testing.assert_close(fused - bias[None, :, None, None], plain[:, torch.argsort(perm)])


def test_perm_bad_input():
    x, basis, coeff, bias = Case().make()
    with pytest.raises(ValueError, match=r"perm must have shape \(8,\)"):
        tb.basis_conv2d(x, basis, coeff, bias, padding=1, perm=torch.arange(7))
    with pytest.raises(TypeError, match="perm must be an int64 or int32"):
        tb.basis_conv2d(x, basis, coeff, bias, padding=1, perm=torch.arange(8.0))


# --------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True) of converted models: both forms, perm and bias, through the
# layer and through the raw op; forward and a training step (backward + optimizer step)


class _RawOp(torch.nn.Module):
    """Calls torch.ops.tritonbasis.basis_conv2d itself, with a perm and a bias."""

    def __init__(self, c, keep_basis):
        super().__init__()
        cb = 2
        self.keep_basis = keep_basis
        self.basis = torch.nn.Parameter(torch.randn(cb, c, 3, 3) / 6)
        self.coeff = torch.nn.Parameter(torch.randn(c - cb if keep_basis else c, cb))
        self.bias = torch.nn.Parameter(torch.randn(c) / 4)
        self.register_buffer("perm", torch.randperm(c))

    def forward(self, x):
        return torch.ops.tritonbasis.basis_conv2d(
            x,
            self.basis,
            self.coeff,
            self.bias,
            self.perm,
            [1, 1],
            [1, 1],
            [1, 1],
            self.keep_basis,
            not self.keep_basis,
        )[0]


def _converted_net(keep_basis):
    torch.manual_seed(0)
    dense = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, bias=True),
    )
    spec = tb.BasisSpec(ratio=0.5, keep_basis=keep_basis, mode="fused")
    net = tb.convert(dense, spec, require_saving=False)
    for m in net.modules():
        if isinstance(m, tb.BasisConv2d):
            assert m.bias is not None
            if m.out_perm is None:  # the full form has none from the SVD: give it one
                m.set_out_perm(torch.randperm(m.out_channels))
    assert all(isinstance(net[i], tb.BasisConv2d) for i in (0, 2))
    return torch.nn.Sequential(*net, torch.nn.ReLU(), _RawOp(8, keep_basis))


def _train_step(model, opt, x):
    opt.zero_grad()
    out = model(x)
    out.square().mean().backward()
    opt.step()
    return out


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
def test_compile_fullgraph_converted_model_perm_bias(keep_basis, backend):
    """Converted models (a perm in every basis layer, bias everywhere, plus a raw
    torch.ops call with perm) compile with fullgraph=True: the permutation's value check is
    not traced (the op checks the values when it runs). Forward and a training step equal
    eager's."""
    import copy

    torch._dynamo.reset()
    eager = _converted_net(keep_basis)
    comp = copy.deepcopy(eager)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.1)
    opt_c = torch.optim.SGD(comp.parameters(), lr=0.1)
    compiled = torch.compile(comp, fullgraph=True, backend=backend)
    x = torch.randn(2, 3, 6, 6)
    try:
        for _ in range(2):  # the second step runs with the updated parameters
            out_e = _train_step(eager, opt_e, x)
            out_c = _train_step(compiled, opt_c, x)
            torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-5)
        for (n, pe), pc in zip(eager.named_parameters(), comp.parameters()):
            torch.testing.assert_close(pc, pe, rtol=1e-4, atol=1e-5, msg=n)
        # the compiled graph still refuses a bad perm when it runs (checked by the op)
        comp[2].set_out_perm(torch.arange(8))
        comp[2].out_perm.data[0] = 1  # not a permutation (two 1s), the same tensor
        with pytest.raises(ValueError, match="perm must be a permutation"):
            compiled(x)
    finally:
        torch._dynamo.reset()
