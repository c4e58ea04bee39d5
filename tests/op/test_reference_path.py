"""The torch (CPU) path of ``tritonbasis.basis_conv2d`` against the float64 reference.

The shape matrix is a seeded *pairwise covering design* over every axis in ``AXES`` (every pair
of values of every two axes occurs in at least one case), plus hand-picked risky cases. The full
product would be ~90k cases; the pairwise design catches every bug that needs at most two axes
to line up (a wrong tap with stride 2 *and* dilation 2, a channels_last stride for C_in=3, ...)
with a few dozen. Invalid geometries are discarded while generating, never skipped at run time.

All comparisons use helpers.assert_bounded: per-element bounds from the dtype's unit roundoff and
the reduction length, against the same math in float64.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
import torch
from helpers import Case, assert_bounded, check_case, reference_with_bounds, unit_for

import tritonbasis as tb
from tritonbasis.nn import choose_mode
from tritonbasis.op.geometry import check_inputs

# "extra" is C_out - C_b. Keep-basis form: Case.C_rest = extra; full form: Case.C_rest = C_out
# = C_b + extra (so the full form always has C_out >= C_b, and extra=0 means C_b = C_out).
AXES: dict[str, tuple] = {
    "C_in": (3, 16, 64),
    "C_b": (1, 5, 16, 48),
    "extra": (0, 3, 64),
    "k": (1, 3, 5),
    "stride": (1, 2),
    "padding": (0, 1, 2),
    "dilation": (1, 2),
    "H": (7, 9, 15),
    "W": (7, 9, 15),
    "bias": (True, False),
    "keep_basis": (True, False),
    "channels_last": (False, True),
    "N": (1, 2),
}


def _case(**v) -> Case:
    keep = v["keep_basis"]
    return Case(
        N=v["N"],
        C_in=v["C_in"],
        H=v["H"],
        W=v["W"],
        C_b=v["C_b"],
        C_rest=v["extra"] if keep else v["C_b"] + v["extra"],
        k=v["k"],
        stride=v["stride"],
        padding=v["padding"],
        dilation=v["dilation"],
        bias=v["bias"],
        keep_basis=keep,
        channels_last=v["channels_last"],
    )


def axis_values(case: Case) -> dict:
    """The AXES coordinates of a case (inverse of _case)."""
    return {
        "C_in": case.C_in,
        "C_b": case.C_b,
        "extra": case.C_out - case.C_b,
        "k": case.k,
        "stride": case.stride,
        "padding": case.padding,
        "dilation": case.dilation,
        "H": case.H,
        "W": case.W,
        "bias": case.bias,
        "keep_basis": case.keep_basis,
        "channels_last": case.channels_last,
        "N": case.N,
    }


def _pairs(values: dict) -> set:
    items = sorted(values.items())
    return {(a, b) for a, b in itertools.combinations(items, 2)}


ALL_PAIRS = {
    ((a, va), (b, vb))
    for a, b in itertools.combinations(sorted(AXES), 2)
    for va in AXES[a]
    for vb in AXES[b]
}


def pairwise_design(seed: int = 20240601, candidates: int = 60) -> list[Case]:
    """Greedy (AETG-style) pairwise covering design. Each step draws ``candidates`` rows, each
    seeded with one still-uncovered pair so the loop always makes progress, keeps only valid
    geometries, and takes the row covering the most uncovered pairs."""
    rng = random.Random(seed)
    uncovered = set(ALL_PAIRS)
    rows: list[Case] = []
    while uncovered:
        pool = sorted(uncovered, key=repr)
        best, best_gain = None, 0
        for _ in range(candidates):
            (a, va), (b, vb) = rng.choice(pool)
            v = {name: rng.choice(vals) for name, vals in AXES.items()}
            v[a], v[b] = va, vb
            case = _case(**v)
            if not case.valid():
                continue
            gain = len(_pairs(v) & uncovered)
            if gain > best_gain:
                best, best_gain = (case, v), gain
        if best is None:
            continue
        rows.append(best[0])
        uncovered -= _pairs(best[1])
    return rows


PAIRWISE = pairwise_design()

# Pairs judged risky, each spelled out (they may also occur in PAIRWISE by chance).
RISKY = [
    # stride 2 with dilation 2: tap offsets and output stride interact
    Case(N=2, C_in=16, H=15, W=15, C_b=5, C_rest=3, k=3, stride=2, padding=2, dilation=2),
    Case(
        N=1,
        C_in=3,
        H=9,
        W=15,
        C_b=16,
        C_rest=64,
        k=5,
        stride=2,
        padding=1,
        dilation=2,
        bias=False,
        channels_last=True,
    ),
    Case(
        N=2,
        C_in=16,
        H=15,
        W=9,
        C_b=5,
        C_rest=8,
        k=3,
        stride=2,
        padding=0,
        dilation=2,
        keep_basis=False,
    ),
    # k=5 with padding 0 on 7x7: 3x3 output, every tap in bounds
    Case(N=2, C_in=16, H=7, W=7, C_b=5, C_rest=3, k=5, stride=1, padding=0),
    Case(
        N=2,
        C_in=3,
        H=7,
        W=7,
        C_b=5,
        C_rest=5,
        k=5,
        stride=2,
        padding=0,
        keep_basis=False,
        channels_last=True,
    ),
    # dilated k=5 on 9x9 without padding: a single output pixel
    Case(
        N=2,
        C_in=16,
        H=9,
        W=9,
        C_b=5,
        C_rest=3,
        k=5,
        stride=1,
        padding=0,
        dilation=2,
        channels_last=True,
    ),
    # C_b = 1 in both forms (a rank-1 layer; full form with C_out = 1)
    Case(N=2, C_in=16, H=9, W=9, C_b=1, C_rest=3, k=3, padding=1),
    Case(N=2, C_in=16, H=9, W=9, C_b=1, C_rest=1, k=3, padding=1, keep_basis=False),
    Case(
        N=2,
        C_in=3,
        H=7,
        W=9,
        C_b=1,
        C_rest=64,
        k=3,
        padding=1,
        keep_basis=False,
        channels_last=True,
    ),
    # C_rest = 0 (keep-basis, C_out = C_b: no combination at all), with and without bias
    Case(N=2, C_in=16, H=9, W=9, C_b=5, C_rest=0, k=3, padding=1),
    Case(
        N=2,
        C_in=3,
        H=7,
        W=7,
        C_b=16,
        C_rest=0,
        k=3,
        stride=2,
        padding=1,
        bias=False,
        channels_last=True,
    ),
    # full form with C_b = C_out (the "no saving" edge)
    Case(N=2, C_in=16, H=9, W=9, C_b=16, C_rest=16, k=3, padding=1, keep_basis=False),
    # channels_last with C_in = 3 (an RGB stem: x is channels_last but C is tiny)
    Case(N=2, C_in=3, H=15, W=15, C_b=16, C_rest=48, k=3, stride=2, padding=1, channels_last=True),
    Case(N=2, C_in=3, H=15, W=15, C_b=5, C_rest=3, k=1, padding=0, channels_last=True),
    # 1x1 projection shortcut with stride 2 (skips every other pixel)
    Case(N=2, C_in=64, H=15, W=15, C_b=16, C_rest=48, k=1, stride=2, padding=0, bias=False),
    # padding 2 with k=1: the border ring of the output sees only zeros (bias-only pixels)
    Case(
        N=2,
        C_in=16,
        H=7,
        W=9,
        C_b=5,
        C_rest=8,
        k=1,
        padding=2,
        keep_basis=False,
        channels_last=True,
    ),
    # stride 2 + dilation 2 + k=5 + padding 2, full form with C_b=48 (not a power of two)
    Case(
        N=1,
        C_in=16,
        H=15,
        W=15,
        C_b=48,
        C_rest=51,
        k=5,
        stride=2,
        padding=2,
        dilation=2,
        keep_basis=False,
    ),
    # non-square input, stride 2, C_in=64, C_rest=64, channels_last
    Case(N=2, C_in=64, H=15, W=7, C_b=16, C_rest=64, k=3, stride=2, padding=1, channels_last=True),
    # C_b = 48 (not a power of two) with dilation 2, padding 2, channels_last
    Case(
        N=2,
        C_in=64,
        H=9,
        W=7,
        C_b=48,
        C_rest=64,
        k=3,
        stride=1,
        padding=2,
        dilation=2,
        channels_last=True,
    ),
    # output-channel permutation (keep-basis conversions keep the original channel order)
    Case(N=2, C_in=16, H=9, W=9, C_b=5, C_rest=11, k=3, stride=2, padding=1, perm=True),
    Case(
        N=2,
        C_in=3,
        H=7,
        W=7,
        C_b=5,
        C_rest=3,
        k=3,
        padding=1,
        channels_last=True,
        bias=False,
        perm=True,
    ),
    Case(N=2, C_in=16, H=7, W=7, C_b=5, C_rest=8, k=1, padding=0, keep_basis=False, perm=True),
]

CASES = PAIRWISE + [c for c in RISKY if c not in PAIRWISE]


# --------------------------------------------------------------------------------------------
# The design itself


def test_every_axis_value_is_covered():
    seen = {name: set() for name in AXES}
    for case in CASES:
        for name, v in axis_values(case).items():
            seen[name].add(v)
    for name, vals in AXES.items():
        missing = set(vals) - seen[name]
        assert not missing, f"axis {name}: values {sorted(missing)} never tested"


def test_design_is_pairwise_covering_and_valid():
    covered = set().union(*(_pairs(axis_values(c)) for c in PAIRWISE))
    assert covered >= ALL_PAIRS, f"{len(ALL_PAIRS - covered)} pairs uncovered"
    assert all(c.valid() for c in CASES)
    ids = [c.id() for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    # the design is the point: far smaller than the product, but not trivially small
    assert 20 <= len(CASES) <= 70, len(CASES)


def test_risky_pairs_present():
    def has(pred):
        return any(pred(c) for c in CASES)

    assert has(lambda c: c.stride == 2 and c.dilation == 2)
    assert has(lambda c: c.k == 5 and c.padding == 0 and c.H == c.W == 7)
    assert has(lambda c: c.C_b == 1 and c.keep_basis) and has(
        lambda c: c.C_b == 1 and not c.keep_basis
    )
    assert has(lambda c: c.keep_basis and c.C_rest == 0)
    assert has(lambda c: c.channels_last and c.C_in == 3)


# --------------------------------------------------------------------------------------------
# Forward + backward of the op on the torch path


@pytest.fixture(params=["conv", "gemm"])
def pointwise(request, monkeypatch):
    """The CPU path computes its pointwise products by 1x1 convs for small outputs and by
    batched GEMMs for large NCHW ones at few threads (op.reference._GEMM_MIN_HW /
    _GEMM_MIN_NUMEL / _GEMM_MAX_THREADS): the tests' small shapes run both."""
    from tritonbasis.op import reference

    limit = 0 if request.param == "gemm" else 1 << 62
    monkeypatch.setattr(reference, "_GEMM_MIN_NUMEL", limit)
    monkeypatch.setattr(reference, "_GEMM_MIN_HW", limit)
    monkeypatch.setattr(reference, "_GEMM_MAX_THREADS", 1 << 30)
    return request.param


@pytest.mark.parametrize("case", CASES, ids=Case.id)
def test_torch_path_matches_reference(case, pointwise):
    check_case(case, dtype=torch.float32, backend="torch")


FLOAT64_CASES = [
    Case(N=2, C_in=16, H=9, W=15, C_b=5, C_rest=3, k=3, stride=2, padding=2, dilation=2),
    Case(
        N=1,
        C_in=3,
        H=7,
        W=7,
        C_b=5,
        C_rest=16,
        k=5,
        padding=2,
        keep_basis=False,
        channels_last=True,
    ),
    Case(N=2, C_in=16, H=9, W=9, C_b=16, C_rest=0, k=3, padding=1, bias=False),
]


@pytest.mark.parametrize("case", FLOAT64_CASES, ids=Case.id)
def test_torch_path_float64(case, pointwise):
    y = check_case(case, dtype=torch.float64, backend="torch")
    assert y.dtype == torch.float64


GRADCHECK_CASES = [
    Case(N=1, C_in=3, H=7, W=6, C_b=2, C_rest=3, k=3, stride=2, padding=1),
    Case(
        N=1,
        C_in=3,
        H=7,
        W=7,
        C_b=2,
        C_rest=3,
        k=3,
        stride=1,
        padding=2,
        dilation=2,
        bias=False,
        keep_basis=False,
    ),
    Case(N=2, C_in=3, H=5, W=6, C_b=2, C_rest=2, k=3, padding=1, channels_last=True),
    Case(N=1, C_in=2, H=6, W=5, C_b=3, C_rest=0, k=3, stride=2, padding=0, bias=False),
    Case(
        N=1,
        C_in=3,
        H=7,
        W=7,
        C_b=2,
        C_rest=4,
        k=3,
        stride=2,
        padding=1,
        dilation=2,
        keep_basis=False,
        channels_last=True,
    ),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=Case.id)
def test_gradcheck_float64(case, pointwise):
    inputs = case.make(dtype=torch.float64, requires_grad=True)
    x, basis, coeff, bias = inputs

    def f(x, basis, coeff, bias):
        return tb.basis_conv2d(x, basis, coeff, bias, **case.kwargs())

    with tb.use_backend("torch"):
        assert torch.autograd.gradcheck(f, (x, basis, coeff, bias), eps=1e-6, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Other modes, partial requires_grad, memory formats


def run_and_check(case: Case, mode: str, dtype=torch.float32, requires=None):
    """Like helpers.check_case, for any ``mode`` and any subset of inputs requiring grad
    (``requires``: names among x, basis, coeff, bias; None = all)."""
    names = ("x", "basis", "coeff", "bias")
    inputs = case.make(dtype=dtype)
    want = set(names) if requires is None else set(requires)
    for name, t in zip(names, inputs):
        if t is not None and name in want:
            t.requires_grad_()
    with tb.use_backend("torch"):
        y = tb.basis_conv2d(*inputs, **case.kwargs(), mode=mode)
        g_out = torch.randn(
            y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64
        ).to(dtype)
        if y.requires_grad:
            y.backward(g_out)
    want_fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=want_fmt), f"{mode}: output format should be {want_fmt}"
    assert y.dtype == dtype
    (ry, rg), (ay, ag) = reference_with_bounds(case, inputs, g_out)
    unit = unit_for(dtype, "cpu")
    K = case.reduction_lengths()
    assert_bounded(y, ry, ay, unit, K["out"], f"{mode} out")
    for name, t in zip(names, inputs):
        if t is None:
            continue
        if name in want:
            assert t.grad is not None, f"{mode}: no gradient for {name}"
            assert_bounded(t.grad, rg[name], ag[name], unit, K[name], f"{mode} d{name}")
        else:
            assert t.grad is None, f"{mode}: gradient for {name} was not requested"
    return inputs, y


# every third case of the matrix (still covers both forms, both formats, strides, dilations)
WEIGHT_CASES = CASES[::3] + [c for c in RISKY if c.C_rest == 0 or c.C_b == 1]


@pytest.mark.parametrize("case", WEIGHT_CASES, ids=Case.id)
def test_weight_mode_matches_reference(case):
    run_and_check(case, "weight")


# auto picks "weight" for the stem-like first case and "fused" for the second (CPU cost model);
# a test below asserts that, so both branches of auto are compared with the reference here.
AUTO_CASES = [
    Case(N=2, C_in=3, H=15, W=15, C_b=16, C_rest=48, k=3, padding=1),
    # N=3: the CPU cost model (tritonbasis.nn.modes) needs >= 16M MACs saved per call at C_b=16
    Case(N=3, C_in=64, H=15, W=15, C_b=16, C_rest=48, k=3, padding=1, channels_last=True),
    Case(N=2, C_in=16, H=9, W=9, C_b=5, C_rest=16, k=3, stride=2, padding=1, keep_basis=False),
]


@pytest.mark.parametrize("case", AUTO_CASES, ids=Case.id)
def test_auto_mode_matches_reference(case):
    run_and_check(case, "auto")


def test_auto_cases_exercise_both_decisions():
    picks = set()
    for case in AUTO_CASES:
        x, basis, coeff, bias = case.make()
        g = check_inputs(
            x, basis, coeff, bias, case.stride, case.padding, case.dilation, case.keep_basis
        )
        picks.add(choose_mode(g, x.device))
    assert picks == {"fused", "weight"}


PARTIAL_CASES = [
    Case(N=2, C_in=16, H=9, W=9, C_b=5, C_rest=11, k=3, stride=2, padding=1, keep_basis=False),
    Case(N=2, C_in=16, H=9, W=9, C_b=5, C_rest=6, k=3, padding=1, channels_last=True),
]
SUBSETS = [
    ("coeff",),
    ("x",),
    ("basis",),
    ("bias",),
    ("x", "coeff"),
    ("basis", "coeff"),
    ("x", "basis", "bias"),
]


@pytest.mark.parametrize("requires", SUBSETS, ids="+".join)
@pytest.mark.parametrize("case", PARTIAL_CASES, ids=Case.id)
def test_partial_requires_grad(case, requires, pointwise):
    run_and_check(case, "fused", requires=requires)


@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
def test_no_grad_with_params_requiring_grad(keep_basis):
    """Under no_grad the full form must not need Z for d coeff; the result is still right and
    carries no graph."""
    case = Case(N=2, C_in=16, H=9, W=9, C_b=5, C_rest=8, k=3, padding=1, keep_basis=keep_basis)
    inputs = case.make(requires_grad=True)
    with tb.use_backend("torch"), torch.no_grad():
        y = tb.basis_conv2d(*inputs, **case.kwargs())
    assert not y.requires_grad and y.grad_fn is None
    (ry, _), (ay, _) = reference_with_bounds(case, inputs)
    assert_bounded(
        y, ry, ay, unit_for(torch.float32, "cpu"), case.reduction_lengths()["out"], "out"
    )


FORMAT_CASES = [
    Case(N=2, C_in=16, H=9, W=9, C_b=5, C_rest=3, k=3, stride=2, padding=1),
    Case(N=2, C_in=3, H=7, W=9, C_b=5, C_rest=8, k=3, padding=1, keep_basis=False),
    Case(N=2, C_in=16, H=9, W=9, C_b=5, C_rest=0, k=1, padding=0),
]


@pytest.mark.parametrize("mode", ["fused", "weight"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("case", FORMAT_CASES, ids=Case.id)
def test_output_and_grad_follow_input_memory_format(case, channels_last, mode, pointwise):
    case = replace(case, channels_last=channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    other = torch.contiguous_format if channels_last else torch.channels_last
    x, basis, coeff, bias = case.make(requires_grad=True)
    with tb.use_backend("torch"):
        y = tb.basis_conv2d(x, basis, coeff, bias, **case.kwargs(), mode=mode)
        assert y.is_contiguous(memory_format=fmt)
        # every shape here has C > 1 and Ho*Wo > 1, so the two formats are distinguishable
        assert not y.is_contiguous(memory_format=other)
        y.backward(torch.ones_like(y))
    assert x.grad.is_contiguous(memory_format=fmt)
    assert basis.grad.shape == basis.shape and coeff.grad.shape == coeff.shape


def test_inputs_not_mutated():
    case = Case(N=2, C_in=16, H=9, W=9, C_b=5, C_rest=3, k=3, padding=1, channels_last=True)
    inputs = case.make(requires_grad=True)
    before = [t.detach().clone() for t in inputs]
    with tb.use_backend("torch"):
        tb.basis_conv2d(*inputs, **case.kwargs()).sum().backward()
    for b, t in zip(before, inputs):
        assert torch.equal(b, t.detach())
