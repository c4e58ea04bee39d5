"""The public surface: ``tritonbasis.__all__`` is what users call, internals stay reachable
under their modules, the documented import paths re-export their modules, and ``convert``
has one return type."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn as nn

import tritonbasis as tb

PUBLIC = {
    "BasisConv2d",
    "BasisSpec",
    "ConversionReport",
    "LayerReport",
    "basis_conv2d",
    "basis_conv2d_reference",
    "candidate_convs",
    "convert",
    "convert_with_report",
    "deploy",
    "export_onnx",
    "from_conv",
    "get_backend",
    "load_plan",
    "merge",
    "save_plan",
    "set_backend",
    "tune",
    "use_backend",
}
# internals, not top-level -> where they live
INTERNAL = {
    "check_inputs": "tritonbasis.op.geometry",
    "ConvGeometry": "tritonbasis.op.geometry",
    "merged_weight": "tritonbasis.op.reference",
    "choose_mode": "tritonbasis.nn",
}


def test_all_is_the_user_api():
    assert set(tb.__all__) == PUBLIC
    for name in tb.__all__:
        assert getattr(tb, name) is not None, name


@pytest.mark.parametrize("name", sorted(INTERNAL))
def test_internals_live_under_their_modules(name):
    assert not hasattr(tb, name), f"tritonbasis.{name} should not be top-level"
    assert getattr(importlib.import_module(INTERNAL[name]), name) is not None
    assert not hasattr(tb, "ops")  # the registry: tritonbasis.op.registry
    assert hasattr(torch.ops.tritonbasis, "basis_conv2d")  # still registered on import


@pytest.mark.parametrize(
    ("alias", "target"),
    [
        ("tritonbasis.data", "tritonbasis.recipes.data"),
        ("tritonbasis.models", "tritonbasis.recipes.models"),
        ("tritonbasis.train", "tritonbasis.recipes.train"),
        ("tritonbasis.search", "tritonbasis.recipes.search"),
        ("tritonbasis.profiling", "tritonbasis.perf.profiling"),
    ],
)
def test_documented_import_paths_reexport_their_module(alias, target):
    """README / docs import from these paths: each re-exports its module's __all__."""
    a, t = importlib.import_module(alias), importlib.import_module(target)
    assert list(a.__all__) == list(t.__all__) and a.__all__
    for name in t.__all__:
        assert getattr(a, name) is getattr(t, name), name


def test_convert_has_one_return_type():
    net = nn.Sequential(nn.Conv2d(8, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3))
    spec = tb.BasisSpec(ratio=0.25)
    out = tb.convert(net, spec)
    assert isinstance(out, nn.Sequential) and isinstance(out[2], tb.BasisConv2d)
    model, report = tb.convert_with_report(net, spec, input_shape=(8, 12, 12))
    assert isinstance(model, nn.Sequential) and isinstance(report, tb.ConversionReport)
    assert [r.converted for r in report.layers] == [True, True]
    x = torch.randn(1, 8, 12, 12)
    torch.testing.assert_close(model(x), out(x))
    with pytest.raises(TypeError, match=r"convert_with_report\(\) returns \(model, report\)"):
        tb.convert(net, spec, return_report=True)
    with pytest.raises(TypeError, match="unexpected keyword"):
        tb.convert(net, spec, inplce=True)
