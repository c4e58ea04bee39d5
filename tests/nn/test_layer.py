"""BasisConv2d: parameters, numerics against the float64 reference, initialisation statistics,
serialisation, conversion, use in models, torch.compile, dtype/device (the mode cost model:
test_modes.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import UNIT, assert_bounded

import tritonbasis as tb
import tritonbasis.op.reference as tb_reference
import tritonbasis.op.registry as tb_registry

U32 = UNIT[torch.float32]
U64 = UNIT[torch.float64]


def reference_and_abs(layer: tb.BasisConv2d, x: torch.Tensor):
    """float64 reference of ``layer(x)`` and the same math on |inputs| (the error scale)."""

    def run(absval):
        ts = [
            None if t is None else t.detach().double()
            for t in (x, layer.basis, layer.coeff, layer.bias)
        ]
        if absval:
            ts = [None if t is None else t.abs() for t in ts]
        return tb.basis_conv2d_reference(
            *ts,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            keep_basis=layer.keep_basis,
        )

    return run(False), run(True)


def out_K(layer: tb.BasisConv2d) -> int:
    """Reduction length of one output: conv taps, then the C_b-term combination (nested)."""
    kh, kw = layer.kernel_size
    return layer.in_channels * kh * kw * (1 + layer.basis_channels)


def assert_matches_reference(layer, x, y, name="out"):
    ref, ref_abs = reference_and_abs(layer, x)
    unit = U64 if y.dtype == torch.float64 else U32
    assert_bounded(y, ref, ref_abs, unit, out_K(layer), name)


LAYER_CONFIGS = [
    dict(in_channels=3, out_channels=16, kernel_size=3, basis_channels=5, padding=1),
    dict(
        in_channels=8,
        out_channels=12,
        kernel_size=3,
        basis_channels=4,
        stride=2,
        padding=1,
        dilation=2,
        bias=False,
        keep_basis=False,
    ),
    dict(
        in_channels=16,
        out_channels=10,
        kernel_size=(3, 5),
        basis_channels=10,
        padding=(1, 2),
        keep_basis=True,
    ),
    dict(in_channels=6, out_channels=9, kernel_size=1, basis_channels=3, keep_basis=False),
]
CONFIG_IDS = ["keep_3to16", "full_s2_d2_nobias", "keep_cb_eq_cout_3x5", "full_1x1"]


# --------------------------------------------------------------------------------------------
# Parameters and numerics


@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_parameter_shapes(keep_basis, bias):
    m = tb.BasisConv2d(6, 20, (3, 5), basis_channels=7, bias=bias, keep_basis=keep_basis)
    assert m.basis.shape == (7, 6, 3, 5)
    assert m.coeff.shape == ((20 - 7) if keep_basis else 20, 7)
    if bias:
        assert m.bias.shape == (20,)
    else:
        assert m.bias is None
    names = {n for n, _ in m.named_parameters()}
    assert names == ({"basis", "coeff", "bias"} if bias else {"basis", "coeff"})
    n_params = sum(p.numel() for p in m.parameters())
    assert n_params == 7 * 6 * 15 + m.coeff.numel() + (20 if bias else 0)
    assert m.merged_weight().shape == (20, 6, 3, 5)


@pytest.mark.parametrize("cfg", LAYER_CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_forward_matches_reference(cfg, channels_last):
    m = tb.BasisConv2d(**cfg, mode="fused")
    x = torch.randn(2, cfg["in_channels"], 11, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = m(x)
    assert_matches_reference(m, x, y)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("cfg", LAYER_CONFIGS, ids=CONFIG_IDS)
def test_modes_agree(cfg):
    x = torch.randn(2, cfg["in_channels"], 11, 9)
    m = tb.BasisConv2d(**cfg)
    ref, ref_abs = reference_and_abs(m, x)
    outs = {}
    for mode in ("fused", "weight", "auto"):
        m.mode = mode
        outs[mode] = m(x)
        assert_bounded(outs[mode], ref, ref_abs, U32, out_K(m), f"mode={mode}")
    # and with each other: two fp32 results each within the bound are within twice of it
    diff = (outs["fused"] - outs["weight"]).abs().double()
    assert (diff <= 2 * 8 * U32 * math.sqrt(out_K(m)) * ref_abs + 1e-30).all()


def layer_K(layer: tb.BasisConv2d, x_shape) -> dict[str, int]:
    """Reduction length of every gradient (as helpers.Case.reduction_lengths, any kernel)."""
    kh, kw = layer.kernel_size
    N, _, H, W = x_shape
    ho = (H + 2 * layer.padding[0] - layer.dilation[0] * (kh - 1) - 1) // layer.stride[0] + 1
    wo = (W + 2 * layer.padding[1] - layer.dilation[1] * (kw - 1) - 1) // layer.stride[1] + 1
    pix, rows = N * ho * wo, layer.coeff.shape[0]
    return {
        "out": out_K(layer),
        "x": (rows + 1) * layer.basis_channels * kh * kw,
        "basis": pix * (rows + 1),
        "coeff": pix * layer.in_channels * kh * kw,
        "bias": pix,
    }


def reference_grads(layer: tb.BasisConv2d, x, g, absval=False):
    """float64 gradients of <reference(x), g> w.r.t. x and the layer's parameters; with
    ``absval``, the same on |inputs| and |g| (the sum of |terms| of every gradient)."""
    ts = {
        k: (None if t is None else t.detach().double())
        for k, t in (("x", x), ("basis", layer.basis), ("coeff", layer.coeff), ("bias", layer.bias))
    }
    if absval:
        ts = {k: (None if t is None else t.abs()) for k, t in ts.items()}
        g = g.abs()
    ts = {k: (None if t is None else t.requires_grad_()) for k, t in ts.items()}
    y = tb.basis_conv2d_reference(
        ts["x"],
        ts["basis"],
        ts["coeff"],
        ts["bias"],
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.keep_basis,
    )
    y.backward(g.double())
    return {k: (None if t is None else t.grad) for k, t in ts.items()}


@pytest.mark.parametrize("cfg", LAYER_CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("mode", ["fused", "weight"])
def test_gradients_match_reference(cfg, mode):
    m = tb.BasisConv2d(**cfg, mode=mode)
    x = torch.randn(2, cfg["in_channels"], 11, 9, requires_grad=True)
    y = m(x)
    g = torch.randn_like(y)
    y.backward(g)
    ref = reference_grads(m, x, g)
    ref_abs = reference_grads(m, x, g, absval=True)
    K = layer_K(m, x.shape)
    for k, t in (("x", x), ("basis", m.basis), ("coeff", m.coeff), ("bias", m.bias)):
        if t is None:
            continue
        assert t.grad is not None, f"no gradient for {k}"
        assert_bounded(t.grad, ref[k], ref_abs[k], U32, K[k], f"d{k}")


# --------------------------------------------------------------------------------------------
# Initialisation statistics


def output_variance_ratio(cfg: dict, n_inits: int = 32, coeff_scale: float = 1.0):
    """Mean output variance of freshly initialised BasisConv2d over that of nn.Conv2d of the
    same shape, on the same N(0, 1) inputs, averaged over ``n_inits`` initialisations each.

    Returns ``(ratio, rel_se)``: ``rel_se`` is the relative standard error of the ratio (delta
    method, from the spread across initialisations), so the caller can check that the
    tolerance is several standard errors wide.
    """
    kw = {k: v for k, v in cfg.items() if k != "basis_channels"}
    x = torch.randn(4, cfg["in_channels"], 10, 10)
    vb, vc = [], []
    with torch.no_grad():
        for _ in range(n_inits):
            m = tb.BasisConv2d(**cfg)
            m.coeff.mul_(coeff_scale)
            conv = nn.Conv2d(**{k: v for k, v in kw.items() if k != "keep_basis"})
            vb.append(m(x).var().item())
            vc.append(conv(x).var().item())
    vb = torch.tensor(vb, dtype=torch.float64)
    vc = torch.tensor(vc, dtype=torch.float64)
    ratio = (vb.mean() / vc.mean()).item()
    rel_se = math.sqrt(
        (vb.var() / n_inits / vb.mean() ** 2 + vc.var() / n_inits / vc.mean() ** 2).item()
    )
    return ratio, rel_se


INIT_CONFIGS = [
    dict(in_channels=3, out_channels=64, kernel_size=3, basis_channels=16, padding=1),
    dict(in_channels=64, out_channels=64, kernel_size=3, basis_channels=16, padding=1),
    dict(
        in_channels=32,
        out_channels=48,
        kernel_size=5,
        basis_channels=12,
        padding=2,
        keep_basis=False,
    ),
    dict(in_channels=16, out_channels=32, kernel_size=1, basis_channels=8, bias=False),
    dict(
        in_channels=8,
        out_channels=24,
        kernel_size=3,
        basis_channels=24,
        padding=1,
        keep_basis=False,
    ),
]
INIT_IDS = ["stem_3to64_cb16", "64to64_cb16", "full_5x5_cb12", "1x1_nobias", "full_cb_eq_cout"]

# Tolerance on |ratio - 1|. The per-init spread gives a relative standard error <= ~0.022 for
# these shapes (asserted < 0.025), so 0.1 is >= 4 standard errors: a false failure needs a
# > 4-sigma draw (p < 1e-4). A coeff scaled by s multiplies the combined channels' variance by
# s^2; with C_b/C_out <= 1/4 (keep) or the full form, s = sqrt(2) gives ratio ~1.75 and s = 2
# gives ratio ~3.25: far outside 0.1.
INIT_TOL = 0.1


@pytest.mark.parametrize("cfg", INIT_CONFIGS, ids=INIT_IDS)
def test_init_variance_matches_conv2d(cfg):
    ratio, se = output_variance_ratio(cfg)
    assert se < INIT_TOL / 4, f"estimator too noisy for the tolerance: se={se:.3g}"
    assert abs(ratio - 1) < INIT_TOL, f"output variance ratio {ratio:.3f} (se {se:.3g})"


@pytest.mark.parametrize("coeff_scale", [2.0, math.sqrt(2.0)], ids=["x2", "xsqrt2"])
@pytest.mark.parametrize("cfg", [INIT_CONFIGS[0], INIT_CONFIGS[2]], ids=[INIT_IDS[0], INIT_IDS[2]])
def test_init_variance_metric_detects_misscaled_coeff(cfg, coeff_scale):
    """Negative control: the same metric and tolerance reject a deliberately mis-scaled coeff."""
    ratio, se = output_variance_ratio(cfg, coeff_scale=coeff_scale)
    assert se < INIT_TOL / 4
    assert abs(ratio - 1) > INIT_TOL, f"mis-scaled coeff not detected: ratio {ratio:.3f}"
    # and the metric moves the way the variance algebra says: s^2 on the combined channels
    # (the bias variance is not scaled, so the ratio falls a little short; 20% allows for it)
    frac = 1 - cfg["basis_channels"] / cfg["out_channels"] if cfg.get("keep_basis", True) else 1
    expect = (1 - frac) + frac * coeff_scale**2
    assert abs(ratio - expect) < 0.2 * expect, (ratio, expect)


def test_reset_parameters_bounds():
    m = tb.BasisConv2d(16, 32, 3, basis_channels=8)
    fan_in = 16 * 9
    assert m.basis.abs().max() <= 1 / math.sqrt(fan_in)
    assert m.bias.abs().max() <= 1 / math.sqrt(fan_in)
    assert m.coeff.abs().max() <= math.sqrt(3 / 8)
    before = [p.detach().clone() for p in m.parameters()]
    m.reset_parameters()
    assert all(not torch.equal(b, p) for b, p in zip(before, m.parameters()))


# --------------------------------------------------------------------------------------------
# repr, serialisation, conversion


def test_extra_repr_default():
    s = repr(tb.BasisConv2d(3, 64, 3, basis_channels=16))
    assert s.startswith("BasisConv2d(")
    expect = (
        f"3, 64, kernel_size={(3, 3)}, stride={(1, 1)}, basis_channels=16, "
        f"keep_basis=True, mode={'auto'!r}"
    )
    assert expect in s
    assert "padding" not in s and "dilation" not in s and "bias" not in s


def test_extra_repr_everything():
    m = tb.BasisConv2d(
        8,
        12,
        (3, 5),
        basis_channels=4,
        stride=2,
        padding=(1, 2),
        dilation=2,
        bias=False,
        keep_basis=False,
        mode="fused",
    )
    s = m.extra_repr()
    for part in (
        "8, 12",
        f"kernel_size={(3, 5)}",
        "basis_channels=4",
        f"stride={(2, 2)}",
        f"padding={(1, 2)}",
        f"dilation={(2, 2)}",
        "bias=False",
        "keep_basis=False",
        f"mode={'fused'!r}",
    ):
        assert part in s, (part, s)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [1, (2, 0), "same", "valid"], ids=str)
def test_padding_and_padding_mode_like_conv2d(padding, padding_mode):
    """Every padding_mode (an explicit F.pad, then the op with padding 0) and string padding
    ("same" with an even window: the extra pixel after, as nn.Conv2d): output and gradients
    equal nn.Conv2d's with the merged weight (float64), fused and weight mode, both forms;
    to_conv keeps padding and padding_mode."""
    for keep_basis in (True, False):
        m = tb.BasisConv2d(
            3,
            7,
            (4, 3),
            1,
            padding,
            (1, 2),
            bias=True,
            padding_mode=padding_mode,
            basis_channels=3,
            keep_basis=keep_basis,
            dtype=torch.float64,
        )
        m.set_out_perm(torch.randperm(7))
        conv = m.to_conv()
        assert (conv.padding, conv.padding_mode) == (m.padding, padding_mode)
        x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
        want = conv(x)
        (gx_want,) = torch.autograd.grad(want.square().sum(), x)
        for mode in ("fused", "weight"):
            m.mode = mode
            got = m(x)
            (gx,) = torch.autograd.grad(got.square().sum(), x)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(gx, gx_want, rtol=1e-10, atol=1e-10)
            assert m.resolved_mode(x) == mode


def test_ratio_sizes_the_basis_like_basis_spec():
    assert tb.BasisConv2d(16, 32, 3, ratio=0.25).basis_channels == 8
    assert tb.BasisConv2d(16, 32, 3, ratio=0.01).basis_channels == 1  # at least one
    assert tb.BasisConv2d(16, 32, 3, ratio=1.0, keep_basis=False).coeff.shape == (32, 32)
    assert tb.BasisConv2d(16, 32, 3, ratio=0.3).basis_channels == tb.BasisSpec(
        ratio=0.3
    ).channels_for(32)


def test_module_pickled_before_padding_modes_still_runs():
    """A whole module pickled before padding modes existed (no padding plan attributes)
    unpickles and pads with its stored pair, as it did."""
    m = tb.BasisConv2d(3, 6, 3, padding=1, basis_channels=2, mode="fused")
    x = torch.randn(1, 3, 5, 5)
    want = m(x)
    for k in ("_call_padding", "op_padding"):
        del m.__dict__[k]
    back = copy.deepcopy(m)  # __reduce_ex__ -> __setstate__, as unpickling
    assert back._call_padding == (1, 1) and back.padding_mode == "zeros"
    torch.testing.assert_close(back(x), want)


@pytest.mark.parametrize("cfg", LAYER_CONFIGS, ids=CONFIG_IDS)
def test_state_dict_round_trip(cfg, tmp_path):
    m = tb.BasisConv2d(**cfg)
    x = torch.randn(2, cfg["in_channels"], 9, 9)
    y = m(x)
    sd = m.state_dict()
    assert set(sd) == {n for n, _ in m.named_parameters()}

    fresh = tb.BasisConv2d(**cfg)
    assert not torch.equal(fresh(x), y), "a fresh init should differ (else the test is vacuous)"
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(x), y)

    path = tmp_path / "basis.pt"
    torch.save(sd, path)
    loaded = torch.load(path, weights_only=True)
    fresh2 = tb.BasisConv2d(**cfg)
    fresh2.load_state_dict(loaded)
    assert torch.equal(fresh2(x), y)


def test_state_dict_form_mismatch_is_rejected():
    keep = tb.BasisConv2d(4, 8, 3, basis_channels=3, keep_basis=True)
    full = tb.BasisConv2d(4, 8, 3, basis_channels=3, keep_basis=False)
    with pytest.raises(RuntimeError, match="size mismatch for coeff"):
        full.load_state_dict(keep.state_dict())


@pytest.mark.parametrize("cfg", LAYER_CONFIGS, ids=CONFIG_IDS)
def test_to_conv(cfg):
    m = tb.BasisConv2d(**cfg)
    conv = m.to_conv()
    assert type(conv) is nn.Conv2d
    assert conv.weight.shape == m.merged_weight().shape
    assert (conv.in_channels, conv.out_channels) == (m.in_channels, m.out_channels)
    assert conv.kernel_size == m.kernel_size and conv.stride == m.stride
    assert conv.padding == m.padding and conv.dilation == m.dilation and conv.groups == 1
    assert (conv.bias is None) == (m.bias is None)
    assert conv.weight.requires_grad  # a normal, trainable conv
    x = torch.randn(2, cfg["in_channels"], 11, 9)
    assert_matches_reference(m, x, conv(x), "to_conv")
    # independent copy: changing the layer afterwards does not change the conv
    w = conv.weight.detach().clone()
    with torch.no_grad():
        m.basis.add_(1.0)
    assert torch.equal(conv.weight, w)


@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
def test_merged_weight(keep_basis):
    m = tb.BasisConv2d(5, 11, (3, 1), basis_channels=4, keep_basis=keep_basis)
    W = m.merged_weight()
    assert W.shape == (11, 5, 3, 1)
    flat = m.basis.detach().double().reshape(4, -1)
    rest = m.coeff.detach().double() @ flat
    want = torch.cat([flat, rest]) if keep_basis else rest
    err = (W.detach().double().reshape(11, -1) - want).abs()
    bound = 8 * U32 * math.sqrt(4) * (m.coeff.detach().double().abs() @ flat.abs())
    if keep_basis:
        assert torch.equal(W[:4], m.basis)
        err = err[4:]
    assert (err <= bound + 1e-30).all()
    assert W.requires_grad  # differentiable w.r.t. basis and coeff


# --------------------------------------------------------------------------------------------
# In models


@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
@pytest.mark.parametrize("mode", ["fused", "weight"])
def test_in_sequential_with_batchnorm(keep_basis, mode):
    """Sequential(BasisConv2d, BatchNorm2d (training), ReLU): forward and every gradient against
    a float64 functional reference, with per-element bounds.

    Error scales: the conv's fp32 error is <= e * z_abs (e = 8 u sqrt(K), z_abs the conv on
    |inputs|); BN divides it by sigma and subtracts its mean. Backward: BN's dz = gamma/sigma *
    (g - mean(g) - xhat * mean(g xhat)) has terms bounded by dz_abs = |gamma|/sigma * (|g| +
    mean|g| + |xhat| mean|g xhat|); the conv's gradients of dz then have sum-of-|terms| equal to
    the reference backward of dz_abs on |inputs|. The conv bias right before training-mode BN
    has true gradient 0, so only this kind of bound (not a relative one) can test it.
    """
    layer = tb.BasisConv2d(8, 16, 3, basis_channels=4, padding=1, keep_basis=keep_basis, mode=mode)
    bn = nn.BatchNorm2d(16)
    with torch.no_grad():  # non-trivial affine params
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    model = nn.Sequential(layer, bn, nn.ReLU()).train()
    x = torch.randn(4, 8, 9, 9)
    y = model(x)
    g = torch.randn_like(y)
    y.backward(g)

    # float64 reference
    dims = (0, 2, 3)
    p = {
        k: (None if t is None else t.detach().double().requires_grad_())
        for k, t in (
            ("basis", layer.basis),
            ("coeff", layer.coeff),
            ("bias", layer.bias),
            ("gamma", bn.weight),
            ("beta", bn.bias),
        )
    }
    z = tb.basis_conv2d_reference(
        x.double(),
        p["basis"],
        p["coeff"],
        p["bias"],
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.keep_basis,
    )
    yr = F.relu(F.batch_norm(z, None, None, p["gamma"], p["beta"], training=True, eps=bn.eps))
    yr.backward(g.double())

    # error scales
    zd = z.detach()
    sigma = (zd.var(dim=dims, unbiased=False, keepdim=True) + bn.eps).sqrt()
    xhat = (zd - zd.mean(dim=dims, keepdim=True)) / sigma
    gam = p["gamma"].detach().abs()[None, :, None, None]
    beta = p["beta"].detach().abs()[None, :, None, None]
    ga = g.double().abs()
    z_abs = reference_and_abs(layer, x)[1]
    y_abs = gam / sigma * (z_abs + z_abs.mean(dim=dims, keepdim=True)) + gam * xhat.abs() + beta
    dz_abs = (
        gam
        / sigma
        * (
            ga
            + ga.mean(dim=dims, keepdim=True)
            + xhat.abs() * (ga * xhat.abs()).mean(dim=dims, keepdim=True)
        )
    )
    abs_grads = reference_grads(layer, x, dz_abs, absval=True)
    abs_grads["gamma"] = (ga * xhat.abs()).sum(dim=dims)
    abs_grads["beta"] = ga.sum(dim=dims)

    pix = x.shape[0] * x.shape[2] * x.shape[3]  # BN's reduction
    K = layer_K(layer, x.shape)
    assert_bounded(y, yr.detach(), y_abs, U32, K["out"] + pix, "out")
    named = {
        "basis": layer.basis,
        "coeff": layer.coeff,
        "bias": layer.bias,
        "gamma": bn.weight,
        "beta": bn.bias,
    }
    for k, t in named.items():
        assert t.grad is not None, f"no grad for {k}"
        Kk = K.get(k, 0) + K["out"] + pix
        assert_bounded(t.grad, p[k].grad, abs_grads[k], U32, Kk, f"d{k}")


@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
@pytest.mark.parametrize("z_from_output", [False, True], ids=["z_saved", "z_from_out"])
def test_inplace_op_after_layer_is_not_silent(keep_basis, z_from_output, monkeypatch):
    """Where d coeff reads Z back from the output (keep-basis on a GPU: ``z_from_out``, forced
    here on CPU), an in-place op on that output (ReLU(inplace=True)) must be reported by
    autograd, never silently corrupt d coeff. Where Z is saved (the full form; keep-basis on
    a CPU) the same model trains and matches the reference."""
    if z_from_output:
        if not keep_basis:
            pytest.skip("the full form always saves Z")
        real = tb_reference.saves_z
        monkeypatch.setattr(tb_reference, "saves_z", lambda *a: real(*a[:4], False))
        # the GPU's backward: the eager route's autograd.Function, not autograd over the
        # CPU path's own ops (which save Z and nothing of the output)
        monkeypatch.setattr(tb_registry, "autograd_differentiates", lambda *a: False)
    layer = tb.BasisConv2d(
        4, 8, 3, basis_channels=3, padding=1, keep_basis=keep_basis, mode="fused"
    )
    model = nn.Sequential(layer, nn.ReLU(inplace=True))
    x = torch.randn(2, 4, 7, 7)
    y = model(x)
    if z_from_output:
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()
    else:
        y.sum().backward()
        # d/d coeff of sum(relu(y)) = reference backward of the ReLU mask
        mask = (reference_and_abs(layer, x)[0] > 0).double()
        ref = reference_grads(layer, x, mask)
        ref_abs = reference_grads(layer, x, mask, absval=True)
        assert_bounded(
            layer.coeff.grad,
            ref["coeff"],
            ref_abs["coeff"],
            U32,
            layer_K(layer, x.shape)["coeff"],
            "dcoeff",
        )


def _small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        # no bias before BN (its true gradient is 0: relative comparisons would be noise)
        tb.BasisConv2d(3, 8, 3, basis_channels=4, padding=1, bias=False, mode="fused"),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        tb.BasisConv2d(8, 6, 3, basis_channels=3, stride=2, keep_basis=False, mode="fused"),
    )


def test_torch_compile_fullgraph_matches_eager(monkeypatch):
    torch._dynamo.reset()
    eager = _small_model()
    compiled_model = copy.deepcopy(eager)
    x = torch.randn(2, 3, 9, 9)
    g = torch.randn(2, 6, 4, 4)

    y_e = eager(x)
    y_e.backward(g)

    # count calls of the op's implementation: it must run inside the compiled graph (the op is
    # opaque to Inductor), not be traced through or replaced
    calls = []
    real_fwd = tb_reference.forward
    monkeypatch.setattr(
        tb_reference, "forward", lambda *a, **k: calls.append(1) or real_fwd(*a, **k)
    )
    compiled = torch.compile(compiled_model, fullgraph=True, backend="inductor")
    try:
        y_c = compiled(x)
        y_c.backward(g)
    finally:
        torch._dynamo.reset()
    assert len(calls) == 2, f"expected both BasisConv2d ops in the compiled graph, got {calls}"

    # Same fp32 math, different fusion/order in BN: bound from fp32 unit and the longest
    # reduction (second conv: 8*9*(1+3) taps; BN over 2*9*9 pixels).
    K = 8 * 9 * 4 + 2 * 9 * 9
    tol = 8 * U32 * math.sqrt(K)
    assert y_c.shape == y_e.shape
    assert (y_c - y_e).abs().max() <= tol * y_e.abs().max()
    for (name, pe), pc in zip(eager.named_parameters(), compiled_model.parameters()):
        assert pc.grad is not None, f"compiled: no grad for {name}"
        assert (pc.grad - pe.grad).abs().max() <= 4 * tol * pe.grad.abs().max(), name
    # BN running stats were updated identically
    assert torch.allclose(compiled_model[1].running_mean, eager[1].running_mean, rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------
# dtype / device constructor kwargs


@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
def test_float64_layer(keep_basis):
    m = tb.BasisConv2d(
        4,
        10,
        3,
        basis_channels=3,
        padding=1,
        keep_basis=keep_basis,
        mode="fused",
        device="cpu",
        dtype=torch.float64,
    )
    for p in m.parameters():
        assert p.dtype == torch.float64 and p.device.type == "cpu"
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    y = m(x)
    assert y.dtype == torch.float64
    assert_matches_reference(m, x, y)
    y.sum().backward()
    assert x.grad.dtype == torch.float64 and m.coeff.grad.dtype == torch.float64
    assert m.to_conv().weight.dtype == torch.float64


def test_meta_device_layer():
    m = tb.BasisConv2d(4, 10, 3, basis_channels=3, padding=1, mode="fused", device="meta")
    assert all(p.device.type == "meta" for p in m.parameters())
    y = m(torch.empty(2, 4, 7, 7, device="meta"))
    assert y.device.type == "meta" and y.shape == (2, 10, 7, 7)


def test_module_to_dtype():
    m = tb.BasisConv2d(4, 10, 3, basis_channels=3, padding=1).to(torch.float64)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    assert_matches_reference(m, x, m(x))
