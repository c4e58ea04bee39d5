"""Inference (no autograd) for converted layers: weight mode reuses its merged weight while
the parameters are unchanged, and ``mode="auto"`` can run a different resolved mode there
than in training (the search measures both objectives per layer)."""

import pytest
import torch

import tritonbasis as tb
from tritonbasis.nn import layer as layer_mod
from tritonbasis.op import reference
from tritonbasis.recipes.search.final import apply_modes


def _count_merges(monkeypatch):
    calls = {"n": 0}
    real = reference.merged_weight

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(reference, "merged_weight", counting)
    return calls


def _ref(layer, x):
    return tb.basis_conv2d_reference(
        x,
        layer.basis,
        layer.coeff,
        layer.bias,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.keep_basis,
        layer.out_perm,
    )


@pytest.mark.parametrize("keep_basis", [True, False])
def test_weight_mode_without_autograd_builds_the_merged_weight_once_per_version(
    keep_basis, monkeypatch
):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 10, 3, padding=1, stride=2).double()
    layer = tb.BasisConv2d.from_conv(conv, basis_channels=4, keep_basis=keep_basis)
    layer.mode = "weight"
    x = torch.randn(2, 6, 9, 9, dtype=torch.double)
    merges = _count_merges(monkeypatch)
    with torch.no_grad():  # train mode: built per call
        layer(x), layer(x)
    assert merges["n"] == 2
    merges["n"] = 0
    layer.eval()
    with torch.no_grad():
        y1, y2 = layer(x), layer(x)
    assert merges["n"] == 1
    torch.testing.assert_close(y1, _ref(layer, x), rtol=1e-12, atol=1e-12)
    assert torch.equal(y1, y2)
    # an in-place update (an optimizer step) rebuilds it
    with torch.no_grad():
        layer.coeff.mul_(1.5)
        y3 = layer(x)
    assert merges["n"] == 2
    torch.testing.assert_close(y3, _ref(layer, x), rtol=1e-12, atol=1e-12)
    # so does loading other weights
    other = tb.BasisConv2d.from_conv(
        torch.nn.Conv2d(6, 10, 3, padding=1, stride=2).double(),
        basis_channels=4,
        keep_basis=keep_basis,
    )
    layer.load_state_dict(other.state_dict())
    with torch.no_grad():
        y4 = layer(x)
    assert merges["n"] == 3
    torch.testing.assert_close(y4, _ref(other, x), rtol=1e-12, atol=1e-12)
    # a write through .data bypasses the version counter; setting eval again forgets the weight
    layer.basis.data.mul_(2.0)
    layer.eval()
    with torch.no_grad():
        y5 = layer(x)
    assert merges["n"] == 4
    torch.testing.assert_close(y5, _ref(layer, x), rtol=1e-12, atol=1e-12)
    # with autograd: the per-call path, gradients flow
    y6 = layer(x)
    assert y6.requires_grad and merges["n"] == 5
    y6.sum().backward()
    assert layer.coeff.grad is not None


def test_bad_input_in_cached_weight_mode_is_a_clear_error():
    layer = tb.BasisConv2d(6, 10, 3, basis_channels=4, padding=1, mode="weight").eval()
    with torch.no_grad(), pytest.raises(ValueError, match="input channels"):
        layer(torch.randn(1, 5, 8, 8))


def test_auto_runs_the_inference_mode_without_autograd(monkeypatch):
    layer = tb.BasisConv2d(6, 10, 3, basis_channels=4, padding=1, mode="auto").eval()
    layer.set_resolved("fused", "cpu", infer="weight")
    modes = []
    real = layer_mod.basis_conv2d

    def spy(*a, mode, **k):
        modes.append(mode)
        return real(*a, mode=mode, **k)

    monkeypatch.setattr(layer_mod, "basis_conv2d", spy)
    merges = _count_merges(monkeypatch)
    x = torch.randn(2, 6, 8, 8)
    layer(x).sum().backward()
    assert modes == ["fused"] and merges["n"] == 0
    with torch.no_grad():
        layer(x)
    assert modes == ["fused"] and merges["n"] == 1  # weight, through the cached merge
    assert layer.resolved_mode(x) == "fused"
    with torch.no_grad():
        assert layer.resolved_mode(x) == "weight"
    assert "'weight' without autograd" in repr(layer)
    layer.set_resolved("weight", "cpu")  # no inference mode: the same mode everywhere
    with torch.no_grad():
        assert layer.resolved_mode(x) == "weight"
    assert layer.resolved_mode(x) == "weight"


def test_set_resolved_rejects_bad_inference_modes():
    layer = tb.BasisConv2d(6, 10, 3, basis_channels=4, padding=1)
    with pytest.raises(ValueError, match="infer"):
        layer.set_resolved("fused", "cpu", infer="dense")
    with pytest.raises(ValueError, match="needs a resolved mode"):
        layer.set_resolved(None, "cpu", infer="weight")


def test_apply_modes_sets_both_objectives_and_reads_old_states():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3))
    model = tb.convert(model, {"0": {"ratio": 0.5}, "1": {"ratio": 0.5}})
    apply_modes(
        model,
        ["0", "1"],
        {"0": {"mode": "fused", "mode_infer": "weight"}, "1": {"mode": "weight"}},
        "cpu",
    )  # "1": an old state
    assert (model[0].resolved, model[0].resolved_infer) == ("fused", "weight")
    assert (model[1].resolved, model[1].resolved_infer) == ("weight", None)
