"""Deploy paths (tritonbasis/conversion/deploy.py): ONNX export that keeps the
factorization, checked with onnxruntime; torch.export + decompose; torch.export + AOTInductor
on CPU.

The graph assertions are what make these tests able to fail: a merged dense conv, a lost
Concat/Gather or a custom op left in the graph changes the node list or the Conv weight shapes.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from helpers import UNIT, Case, assert_bounded, reference_with_bounds

import tritonbasis as tb
from tritonbasis.conversion import deploy

ROOT = Path(__file__).resolve().parents[2]


def _have(*mods):
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in mods)


needs_onnx = pytest.mark.skipif(
    not _have("onnx", "onnxscript", "onnxruntime"),
    reason='onnx, onnxscript and onnxruntime are needed (pip install -e ".[test]")',
)


class One(nn.Module):
    """One BasisConv2d with a Case's parameters (and permutation)."""

    def __init__(self, case: Case):
        super().__init__()
        x, basis, coeff, bias = case.make()
        self.x = x
        self.conv = tb.BasisConv2d(
            case.C_in,
            case.C_out,
            case.k,
            case.stride,
            case.padding,
            case.dilation,
            bias=case.bias,
            basis_channels=case.C_b,
            keep_basis=case.keep_basis,
            mode="fused",
        )
        with torch.no_grad():
            self.conv.basis.copy_(basis)
            self.conv.coeff.copy_(coeff)
            if case.bias:
                self.conv.bias.copy_(bias)
        self.conv.set_out_perm(case.make_perm())

    def forward(self, x):
        return self.conv(x)


def _graph(path):
    """(op types in order, {initializer name: shape}, Conv weight shapes in order)."""
    import onnx

    m = onnx.load(str(path))
    inits = {i.name: tuple(i.dims) for i in m.graph.initializer}
    for n in m.graph.node:  # a weight may also be a Constant node
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    inits[n.output[0]] = tuple(a.t.dims)
    ops = [n.op_type for n in m.graph.node if n.op_type != "Constant"]
    conv_w = [inits.get(n.input[1]) for n in m.graph.node if n.op_type == "Conv"]
    return ops, inits, conv_w


def _ort(path, *xs):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    return [torch.from_numpy(s.run(None, {n: x.numpy() for n, x in zip(names, xs)})[0])]


CASES = [
    # keep-basis with a permutation and bias: Conv, 1x1 Conv, Concat, Gather, Add
    Case(N=2, C_in=5, H=9, W=7, C_b=4, C_rest=7, k=3, stride=2, padding=1, perm=True),
    # keep-basis, no permutation, no bias, dilation: Conv, 1x1 Conv, Concat
    Case(N=2, C_in=4, H=8, W=8, C_b=3, C_rest=5, k=3, padding=2, dilation=2, bias=False),
    # full form with bias and a permutation: both folded into the 1x1 Conv
    Case(N=1, C_in=3, H=7, W=7, C_b=4, C_rest=6, k=3, padding=1, keep_basis=False, perm=True),
    # full form, 1x1 basis conv, no bias
    Case(N=3, C_in=6, H=5, W=6, C_b=2, C_rest=5, k=1, padding=0, keep_basis=False, bias=False),
    # keep-basis with C_b = C_out (no combined channels): only the basis conv
    Case(N=1, C_in=4, H=6, W=6, C_b=4, C_rest=0, k=3, padding=1, perm=True),
]


def _expected_ops(c: Case) -> list[str]:
    if not c.keep_basis:
        return ["Conv", "Conv"]
    ops = ["Conv"] + (["Conv", "Concat"] if c.C_rest else [])
    return ops + (["Gather"] if c.perm else []) + (["Add"] if c.bias else [])


@needs_onnx
@pytest.mark.parametrize("case", CASES, ids=[c.id() for c in CASES])
@pytest.mark.parametrize("route", ["torch.onnx.export", "tb.export_onnx"])
def test_onnx_export_keeps_the_factorization(case, route, tmp_path):
    model = One(case).eval()
    x = model.x
    path = tmp_path / "m.onnx"
    if route == "torch.onnx.export":  # plain, the default (dynamo) exporter
        torch.onnx.export(model, (x,), str(path), verbose=False)
    else:
        tb.export_onnx(model, (x,), path)
    ops, _, conv_w = _graph(path)
    assert ops == _expected_ops(case), ops
    # the k x k conv is over the C_b basis filters, never the dense C_out bank
    assert conv_w[0] == (case.C_b, case.C_in, case.k, case.k)
    if case.C_rest:
        assert conv_w[1] == (case.C_rest, case.C_b, 1, 1)
    (y,) = _ort(path, x)
    (ref, _), (ref_abs, _) = reference_with_bounds(
        case, (x, model.conv.basis, model.conv.coeff, model.conv.bias), perm=model.conv.out_perm
    )
    assert_bounded(
        y, ref, ref_abs, UNIT[torch.float32], case.reduction_lengths()["out"], "onnxruntime out"
    )


@needs_onnx
def test_onnx_export_legacy_exporter_matches(tmp_path):
    """The TorchScript exporter (dynamo=False) takes the same route (its constant folding
    leaves the permutation's ScatterElements in the graph, so only the result is checked)."""
    import warnings

    case = CASES[0]
    model = One(case).eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation/tracer warnings
        tb.export_onnx(model, (model.x,), path, dynamo=False)
    ops, _, conv_w = _graph(path)
    assert collections.Counter(ops)["Conv"] == 2 and "Concat" in ops, ops
    assert conv_w[0] == (case.C_b, case.C_in, case.k, case.k)
    (y,) = _ort(path, model.x)
    (ref, _), (ref_abs, _) = reference_with_bounds(
        case,
        (model.x, model.conv.basis, model.conv.coeff, model.conv.bias),
        perm=model.conv.out_perm,
    )
    assert_bounded(
        y, ref, ref_abs, UNIT[torch.float32], case.reduction_lengths()["out"], "onnxruntime out"
    )


def _converted_resnet():
    from tritonbasis.recipes.models import resnet18_cifar

    torch.manual_seed(0)
    m = resnet18_cifar(width=0.25).eval()
    for mod in m.modules():  # trained-looking BN statistics
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    plan = {
        "re:layer[34]\\..*conv[12]": tb.BasisSpec(ratio=0.25),  # full
        "re:layer2\\..*conv[12]": tb.BasisSpec(ratio=0.25, keep_basis=True),  # keep
        "_default": None,
    }
    cm = tb.convert(m, plan)
    layers = [mm for mm in cm.modules() if isinstance(mm, tb.BasisConv2d)]
    assert len(layers) == 12
    return m, cm, layers


@needs_onnx
def test_onnx_export_of_a_converted_resnet(tmp_path):
    """The README's flow: convert, export, run in onnxruntime with a dynamic batch."""
    dense, cm, layers = _converted_resnet()
    keep = [m for m in layers if m.keep_basis]
    n_dense_convs = sum(
        isinstance(m, nn.Conv2d) and not isinstance(m, tb.BasisConv2d) for m in cm.modules()
    )
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "resnet.onnx"
    tb.export_onnx(cm, (x,), path, dynamic_batch=True)
    ops, _, conv_w = _graph(path)
    count = collections.Counter(ops)
    assert count["Conv"] == n_dense_convs + 2 * len(layers), count
    assert count["Concat"] == count["Gather"] == len(keep) == 4, count
    assert not [o for o in ops if "tritonbasis" in o]
    # every converted layer appears as its basis conv: no dense (C_out, C_in, 3, 3) bank
    shapes = collections.Counter(conv_w)
    for m in layers:
        assert shapes[(m.basis_channels, m.in_channels, 3, 3)] >= 1
        assert shapes[(m.out_channels, m.in_channels, 3, 3)] == 0 or m.in_channels == 0
    with torch.no_grad():
        for n in (2, 5):  # the batch dimension is dynamic
            xn = torch.randn(n, 3, 16, 16)
            (y,) = _ort(path, xn)
            ref = cm.double()(xn.double()).float()
            cm.float()
            # fp32 through ~20 layers: ~1e-6 relative observed; a wrong channel is O(1)
            assert (y - ref).abs().max() <= 1e-4 * ref.abs().max(), n


def _small_converted():
    """conv (kept dense) -> keep-basis conv with a permutation -> full-form conv."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
    ).eval()
    cm = tb.convert(
        m,
        {
            "2": tb.BasisSpec(ratio=0.25, keep_basis=True),
            "4": tb.BasisSpec(ratio=0.25),
            "_default": None,
        },
    )
    layers = [cm[2], cm[4]]
    assert all(isinstance(m, tb.BasisConv2d) for m in layers)
    return cm, layers


@needs_onnx
def test_export_onnx_modes(tmp_path):
    """mode="weight" exports merged dense convs (what tb.merge gives), None keeps each layer's
    own mode, and the layers' modes are restored afterwards."""
    cm, layers = _small_converted()
    layers[0].mode = "weight"
    x = torch.randn(1, 3, 8, 8)
    tb.export_onnx(cm, (x,), tmp_path / "w.onnx", mode="weight")
    ops, _, conv_w = _graph(tmp_path / "w.onnx")
    assert ops == ["Conv", "Relu", "Conv", "Relu", "Conv"], ops
    assert conv_w == [(8, 3, 3, 3), (16, 8, 3, 3), (16, 16, 3, 3)]
    # an auto layer exports factorized even where it runs in weight mode on this machine:
    # the graph runs elsewhere
    layers[1].set_resolved("weight", "cpu")
    tb.export_onnx(cm, (x,), tmp_path / "own.onnx", mode=None)
    ops, _, conv_w = _graph(tmp_path / "own.onnx")
    assert ops == ["Conv", "Relu", "Conv", "Relu", "Conv", "Conv"], ops
    assert conv_w[2:] == [(4, 16, 3, 3), (16, 4, 1, 1)]
    tb.export_onnx(cm, (x,), tmp_path / "fused.onnx")  # default: every layer factorized
    ops, _, conv_w = _graph(tmp_path / "fused.onnx")
    assert ops == [
        "Conv",
        "Relu",
        "Conv",
        "Conv",
        "Concat",
        "Gather",
        "Add",
        "Relu",
        "Conv",
        "Conv",
    ], ops
    assert conv_w == [(8, 3, 3, 3), (4, 8, 3, 3), (12, 4, 1, 1), (4, 16, 3, 3), (16, 4, 1, 1)]
    assert [m.mode for m in layers] == ["weight", "auto"]
    with pytest.raises(ValueError, match="mode must be"):
        tb.export_onnx(cm, (x,), tmp_path / "bad.onnx", mode="dense")


def test_export_onnx_without_onnx_packages_is_a_clear_error(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxscript" else real(name, *a),
    )
    with pytest.raises(ImportError, match=r"onnxscript.*tritonbasis\[onnx\]"):
        tb.export_onnx(One(CASES[0]), (torch.randn(1, 5, 9, 7),), tmp_path / "m.onnx")


def test_decompose_replaces_the_op_with_standard_convs():
    cm, layers = _small_converted()
    for m in layers:  # auto may resolve to weight on this CPU: the program must hold the op
        m.mode = "fused"
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ep = torch.export.export(cm, (x,))
        targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
        assert sum("tritonbasis.basis_conv2d" in t for t in targets) == len(layers)
        dep = deploy.decompose(ep)
        targets = [str(n.target) for n in dep.graph.nodes if n.op == "call_function"]
        assert not [t for t in targets if "tritonbasis" in t]
        convs = [t for t in targets if "conv" in t]
        assert len(convs) == 1 + 2 * len(layers), targets
        ref = cm(x)
        y = dep.module()(x)
    assert (y - ref).abs().max() <= 1e-5 * ref.abs().max()


@needs_onnx
def test_onnx_export_of_an_exported_program_after_decompose(tmp_path):
    """torch.onnx.export(ep) of a program that already holds the op: decompose first."""
    case = CASES[0]
    model = One(case).eval()
    with torch.no_grad():
        ep = deploy.decompose(torch.export.export(model, (model.x,)))
    path = tmp_path / "ep.onnx"
    torch.onnx.export(ep, (model.x,), str(path), verbose=False)
    ops, _, _ = _graph(path)
    assert ops == _expected_ops(case), ops
    (y,) = _ort(path, model.x)
    with torch.no_grad():
        ref = model(model.x)
    assert (y - ref).abs().max() <= 1e-5 * ref.abs().max()


def _padded_layers():
    """Basis layers with non-zero padding modes (an explicit pad before the op)."""
    torch.manual_seed(0)
    a = tb.BasisConv2d(5, 6, 3, padding=1, padding_mode="reflect", basis_channels=2, mode="fused")
    a.set_out_perm(torch.randperm(6))
    b = tb.BasisConv2d(
        6,
        4,
        4,
        padding="same",
        padding_mode="circular",
        basis_channels=2,
        keep_basis=False,
        mode="fused",
    )
    return nn.Sequential(a, nn.ReLU(), b).eval()


@needs_onnx
@pytest.mark.parametrize("route", ["torch.onnx.export", "tb.export_onnx"])
def test_onnx_export_with_padding_modes(route, tmp_path):
    """padding_mode layers export as Pad + the factorized convs, and match onnxruntime."""
    model = _padded_layers()
    x = torch.randn(2, 5, 9, 7)
    path = tmp_path / "pad.onnx"
    if route == "torch.onnx.export":
        torch.onnx.export(model, (x,), str(path), verbose=False)
    else:
        tb.export_onnx(model, (x,), path)
    ops, _, conv_w = _graph(path)
    assert ops.count("Pad") >= 2 and ops.count("Conv") == 4, ops
    assert conv_w[0] == (2, 5, 3, 3) and conv_w[2] == (2, 6, 4, 4)
    (y,) = _ort(path, x)
    with torch.no_grad():
        ref = model(x)
    assert (y - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.slow
@pytest.mark.parametrize("self_contained", [False, True], ids=["op", "self-contained"])
def test_aoti_package_matches_eager_on_cpu(self_contained, tmp_path, one_thread):
    """torch.export + AOTInductor (C++ compile on CPU, ~15 s). The default package calls our
    op; the self-contained one is loaded in a fresh process that never imports tritonbasis."""
    case = CASES[0]
    # with padding_mode layers too (an explicit pad before the op)
    model = nn.Sequential(
        nn.Conv2d(5, 5, 1), One(case), nn.ReLU(), nn.Conv2d(11, 5, 1), *_padded_layers()
    ).eval()
    x = torch.randn(2, 5, 9, 7)
    path = deploy.aoti_package(model, (x,), tmp_path / "m.pt2", self_contained=self_contained)
    assert os.path.exists(path)
    with torch.no_grad():
        ref = model(x)
    if not self_contained:
        y = deploy.aoti_load(path)(x)
        assert (y - ref).abs().max() <= 1e-5 * ref.abs().max()
    else:
        _check_in_fresh_process(path, x, ref, tmp_path)


def _check_in_fresh_process(path, x, ref, tmp_path):
    torch.save({"x": x, "ref": ref}, tmp_path / "io.pt")
    code = f"""
        import sys, torch
        f = torch._inductor.aoti_load_package({str(path)!r})
        d = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        y = f(d["x"])
        assert "tritonbasis" not in sys.modules
        err = (y - d["ref"]).abs().max().item()
        assert err <= 1e-5 * d["ref"].abs().max().item(), err
        print("OK", err)
    """
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


def test_aoti_package_bad_path(tmp_path):
    with pytest.raises(ValueError, match=r"\.pt2"):
        deploy.aoti_package(One(CASES[0]), (torch.randn(1, 5, 9, 7),), tmp_path / "m.zip")
