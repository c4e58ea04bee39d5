"""The energy rule means the same thing in both forms: the initial basis spans at least the
asked fraction of the filters' squared Frobenius norm (issue 12, item 5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import tritonbasis as tb
from tritonbasis.nn.decompose import _pivoted_qr, captured_energy


def _conv(c_in=8, c_out=24, k=3, decay=0.85, seed=0) -> nn.Conv2d:
    """A conv whose filters have a decaying spectrum, like trained filters (random filters have
    a flat one, where every threshold needs nearly full rank)."""
    g = torch.Generator().manual_seed(seed)
    d = c_in * k * k
    u = torch.linalg.qr(torch.randn(c_out, c_out, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    r = min(c_out, d)
    s = decay ** torch.arange(r, dtype=torch.float64)
    w = (u[:, :r] * s) @ v[:r]
    conv = nn.Conv2d(c_in, c_out, k, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(w.reshape(conv.weight.shape))
    return conv


def _spanned(h: torch.Tensor, basis: torch.Tensor) -> float:
    """Fraction of ||h||^2 in the row span of ``basis`` (least-squares projection)."""
    coef = torch.linalg.lstsq(basis.t(), h.t()).solution
    proj = (basis.t() @ coef).t()
    return float((proj * proj).sum() / (h * h).sum())


@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
def test_curve_is_the_projection_of_the_filters(keep_basis):
    h = _conv().weight.detach().reshape(24, -1)
    curve = captured_energy(h, keep_basis)
    assert curve.shape == (24,)
    assert torch.all(curve[1:] >= curve[:-1] - 1e-12)
    if keep_basis:
        _, piv = _pivoted_qr(h)
        for k in (1, 3, 10, 24):
            assert curve[k - 1] == pytest.approx(_spanned(h, h[piv[:k]]), abs=1e-10)
    else:
        s2 = torch.linalg.svdvals(h) ** 2
        assert torch.allclose(curve, torch.cumsum(s2, 0) / s2.sum(), atol=1e-12)


def test_a_subset_of_filters_captures_no_more_than_the_svd():
    h = _conv(seed=3).weight.detach().reshape(24, -1)
    assert torch.all(captured_energy(h, True) <= captured_energy(h, False) + 1e-12)


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
def test_energy_threshold_is_reached_by_the_smallest_basis(energy, keep_basis):
    conv = _conv()
    h = conv.weight.detach().reshape(24, -1)
    layer = tb.from_conv(conv, tb.BasisSpec(energy=energy, keep_basis=keep_basis))
    cb = layer.basis_channels
    basis = layer.basis.detach().reshape(cb, -1)
    assert _spanned(h, basis) >= energy - 1e-9
    if cb > 1:  # one channel fewer (in the same form's order) falls short
        assert captured_energy(h, keep_basis)[cb - 2] < energy


def test_keep_basis_needs_more_channels_than_full_at_the_same_energy():
    conv = _conv()
    keep = tb.from_conv(conv, tb.BasisSpec(energy=0.9, keep_basis=True)).basis_channels
    full = tb.from_conv(conv, tb.BasisSpec(energy=0.9, keep_basis=False)).basis_channels
    assert keep > full


def test_report_states_captured_energy_per_layer():
    model = nn.Sequential(_conv(), nn.ReLU(), _conv(c_in=24, c_out=24, seed=1))
    _, report = tb.convert(model, {"_default": tb.BasisSpec(energy=0.9, keep_basis=True)},
                           return_report=True)
    rows = report.converted
    assert len(rows) == 2
    for r in rows:
        assert r.captured_energy is not None and 0.9 <= r.captured_energy <= 1.0
    assert "energy 0.9" in report.table()
    # ratio specs report what they capture too (below the threshold they were not asked for)
    _, rep = tb.convert(model, {"_default": tb.BasisSpec(ratio=0.25)}, return_report=True)
    assert all(0.0 < r.captured_energy < 0.9 for r in rep.converted)
