"""The energy rule means the same thing in both forms: the initial basis spans at least the
asked fraction of the filters' squared Frobenius norm."""

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


@pytest.mark.parametrize("shape", [(24, 72), (64, 27), (16, 16)], ids=str)
def test_pivoted_qr_matches_lapack_geqp3(shape):
    """The torch pivoted QR picks the filters LAPACK's geqp3 picks, with the same |R|."""
    linalg = pytest.importorskip("scipy.linalg", reason="SciPy gives the LAPACK reference")
    g = torch.Generator().manual_seed(sum(shape))
    decay = 0.9 ** torch.arange(shape[1], dtype=torch.float64)
    h = torch.randn(*shape, generator=g, dtype=torch.float64) * decay
    r, piv = _pivoted_qr(h)
    r_ref, piv_ref = linalg.qr(h.t().numpy(), mode="r", pivoting=True)
    assert piv.tolist() == piv_ref.tolist()
    r_ref = torch.from_numpy(r_ref)[: r.shape[0]]
    assert torch.allclose(r.abs(), r_ref.abs(), rtol=0, atol=1e-12 * float(h.abs().max()))


def test_pivoted_qr_of_a_rank_deficient_matrix():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(10, 3, generator=g, dtype=torch.float64)
    h = h @ torch.randn(3, 30, generator=g, dtype=torch.float64)
    r, piv = _pivoted_qr(h)
    assert sorted(piv.tolist()) == list(range(10))
    rows = (r * r).sum(1)
    assert torch.all(rows[3:] < 1e-20 * rows[0]) and torch.all(rows[:3] > 1e-6 * rows[0])
    curve = captured_energy(h, True)
    assert float(curve[2]) == pytest.approx(1.0, abs=1e-12)


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
    spec = tb.BasisSpec(energy=0.9, keep_basis=True)
    _, report = tb.convert_with_report(model, {"_default": spec})
    rows = report.converted
    assert len(rows) == 2
    for r in rows:
        assert r.captured_energy is not None and 0.9 <= r.captured_energy <= 1.0
    assert "energy 0.9" in report.table()
    # ratio specs report what they capture too (below the threshold they were not asked for)
    _, rep = tb.convert_with_report(model, {"_default": tb.BasisSpec(ratio=0.25)})
    assert all(0.0 < r.captured_energy < 0.9 for r in rep.converted)


def _weights(kind: str, c_out: int, c_in: int, k: int, seed: int) -> nn.Conv2d:
    """float64 convs: ``random`` (flat spectrum), ``lowrank`` (rank 5 exactly) and
    ``lowrank+noise`` (rank 5 plus 1 % noise: a sharp knee, then a flat tail)."""
    g = torch.Generator().manual_seed(seed)
    d = c_in * k * k
    if kind == "random":
        w = torch.randn(c_out, d, generator=g, dtype=torch.float64)
    else:
        w = torch.randn(c_out, 5, generator=g, dtype=torch.float64) @ torch.randn(
            5, d, generator=g, dtype=torch.float64
        )
        if kind == "lowrank+noise":
            w = w + 0.01 * w.norm() / (c_out * d) ** 0.5 * torch.randn(
                c_out, d, generator=g, dtype=torch.float64
            )
    conv = nn.Conv2d(c_in, c_out, k, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(w.reshape(conv.weight.shape))
    return conv


def _svd_rule(h: torch.Tensor, t: float) -> int:
    """BasisConv's rule, written independently: the smallest k with sum_{i<k} s_i^2 >= t * sum."""
    s2 = torch.linalg.svdvals(h) ** 2
    frac = torch.cumsum(s2, 0) / s2.sum()
    return int((frac >= t - 1e-12).nonzero()[0]) + 1


SHAPES = [(24, 8, 3), (32, 3, 3), (16, 16, 1)]  # C_out < C_in*k*k; stem (27 < 32); 1x1
KINDS = ["random", "lowrank", "lowrank+noise"]


@pytest.mark.parametrize("t", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_keep_basis_subset_reaches_the_threshold_with_the_fewest_filters(shape, kind, t):
    c_out, c_in, k = shape
    conv = _weights(kind, c_out, c_in, k, seed=10 * SHAPES.index(shape) + KINDS.index(kind))
    h = conv.weight.detach().reshape(c_out, -1)
    layer = tb.from_conv(conv, tb.BasisSpec(energy=t, keep_basis=True))
    cb, perm = layer.basis_channels, layer.out_perm
    svd_min = _svd_rule(h, t)
    assert svd_min <= cb <= c_out
    # the basis is the first C_b filters of the pivot order, kept unchanged
    assert torch.equal(layer.basis.detach().reshape(cb, -1), h[perm[:cb]])
    spanned = _spanned(h, h[perm[:cb]])  # projection of all filters onto the kept ones
    assert spanned >= t - 1e-9
    assert layer.captured_energy == pytest.approx(spanned, abs=1e-9)
    if cb > svd_min:  # C_b grew past the SVD's: one filter fewer must fall short
        assert _spanned(h, h[perm[: cb - 1]]) < t
    # the layer's function: the kept filters exactly, the others their projections
    merged = layer.merged_weight().detach().reshape(c_out, -1)
    resid = float(((merged - h) ** 2).sum() / (h * h).sum())
    assert resid == pytest.approx(1.0 - spanned, abs=1e-9)


@pytest.mark.parametrize("t", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_full_form_keeps_basisconvs_rank_and_the_eckart_young_error(shape, kind, t):
    c_out, c_in, k = shape
    conv = _weights(kind, c_out, c_in, k, seed=10 * SHAPES.index(shape) + KINDS.index(kind))
    h = conv.weight.detach().reshape(c_out, -1)
    layer = tb.from_conv(conv, tb.BasisSpec(energy=t, keep_basis=False))
    cb = layer.basis_channels
    assert cb == _svd_rule(h, t)
    s = torch.linalg.svdvals(h)
    err = float((layer.merged_weight().detach().reshape(c_out, -1) - h).norm())
    assert err == pytest.approx(float(s[cb:].norm()), abs=1e-9 * float(s.norm()))
    assert layer.captured_energy == pytest.approx(
        float((s[:cb] ** 2).sum() / (s**2).sum()), abs=1e-12
    )
    keep = tb.from_conv(conv, tb.BasisSpec(energy=t, keep_basis=True)).basis_channels
    assert keep >= cb


def test_from_conv_states_captured_energy_for_every_svd_init():
    conv = _conv()
    h = conv.weight.detach().reshape(24, -1)
    for keep_basis in (True, False):
        layer = tb.from_conv(conv, tb.BasisSpec(ratio=0.25, keep_basis=keep_basis))
        curve = captured_energy(h, keep_basis)
        assert layer.captured_energy == pytest.approx(float(curve[layer.basis_channels - 1]))
    assert tb.from_conv(conv, tb.BasisSpec(ratio=0.25, init="random")).captured_energy is None


def test_report_json_has_captured_energy_per_layer():
    import json

    model = nn.Sequential(
        _conv(),
        nn.ReLU(),
        _conv(c_in=24, c_out=24, seed=1),
        nn.ReLU(),
        nn.Conv2d(24, 24, 3, groups=24).double(),
    )  # depthwise: skipped
    conv_model, report = tb.convert_with_report(
        model, {"_default": tb.BasisSpec(energy=0.95, keep_basis=True)}
    )
    rows = json.loads(report.to_json())["layers"]
    assert [r["captured_energy"] is not None for r in rows] == [True, True, False]
    for r, (name, m) in zip(rows[:2], [("0", model[0]), ("2", model[2])]):
        h = m.weight.detach().reshape(24, -1)
        layer = conv_model.get_submodule(name)
        assert r["fqn"] == name and r["C_b"] == layer.basis_channels
        kept = layer.basis.detach().reshape(layer.basis_channels, -1)
        assert r["captured_energy"] == pytest.approx(_spanned(h, kept), abs=1e-6)
        assert r["captured_energy"] >= 0.95
        assert r["captured_energy"] == pytest.approx(layer.captured_energy, abs=1e-6)
    table = report.table().splitlines()
    assert sum("energy 0." in line for line in table) == 2
