"""The output-channel permutation ``perm`` is validated where it enters the op: every bad form
is a clear ValueError before anything runs (a non-permutation would give wrong output or write
out of bounds in the Triton kernels), a non-contiguous valid perm works.

Runs on the torch path and, without CUDA, on the Triton kernels through the interpreter.
"""

import os

import pytest
import torch
from conftest import HAS_CUDA, HAS_TRITON
from helpers import Case

import tritonbasis as tb
from tritonbasis.op import geometry as _checks

DEVICE = "cuda" if HAS_CUDA else "cpu"
CASE = Case(C_in=3, C_b=3, C_rest=5, H=6, W=6)  # C_out = 8, keep-basis, bias
FWD = torch.ops.tritonbasis.basis_conv2d.default
BWD = torch.ops.tritonbasis.basis_conv2d_backward.default


def _inputs():
    return CASE.make(device=DEVICE)


def _op(perm, backend="torch", with_bias=True):
    x, basis, coeff, bias = _inputs()
    bias = bias if with_bias else None
    with tb.use_backend(backend):
        return FWD(x, basis, coeff, bias, perm, [1, 1], [1, 1], [1, 1], True, False)


def _backends():
    out = ["torch"]
    if HAS_TRITON and (HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1"):
        out.append("triton")
    return out


BAD = {
    # name: (perm, error type, message pattern)
    "two_dims": (lambda: torch.arange(8).view(2, 4), ValueError, r"perm must have shape \(8,\)"),
    "too_short": (lambda: torch.arange(7), ValueError, r"perm must have shape \(8,\)"),
    "too_long": (lambda: torch.arange(9), ValueError, r"perm must have shape \(8,\)"),
    "float": (lambda: torch.arange(8.0), ValueError, "int64 or int32"),
    "int16": (lambda: torch.arange(8, dtype=torch.int16), ValueError, "int64 or int32"),
    "bool": (lambda: torch.ones(8, dtype=torch.bool), ValueError, "int64 or int32"),
    "duplicate": (
        lambda: torch.tensor([0, 1, 2, 3, 4, 5, 6, 6]),
        ValueError,
        r"permutation of range\(8\): value 6 appears more than once",
    ),
    "negative": (
        lambda: torch.tensor([0, 1, 2, 3, 4, 5, 6, -1]),
        ValueError,
        r"value -1 is outside 0\.\.7",
    ),
    "too_large": (
        lambda: torch.tensor([0, 1, 2, 3, 4, 5, 6, 8]),
        ValueError,
        r"value 8 is outside 0\.\.7",
    ),
    "int32_duplicate": (
        lambda: torch.tensor([7, 7, 0, 1, 2, 3, 4, 5], dtype=torch.int32),
        ValueError,
        "appears more than once",
    ),
    # a strided view of 16 values whose every other element is not a permutation
    "strided_not_a_perm": (lambda: torch.arange(16)[::2], ValueError, "outside 0..7"),
    "other_device": (lambda: torch.arange(8, device="meta"), ValueError, "perm is on meta"),
}


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("name", list(BAD))
def test_bad_perm_is_a_clear_error_before_launch(name, backend, monkeypatch):
    make, err, pattern = BAD[name]
    perm = make()
    if perm.device.type != "meta":
        perm = perm.to(DEVICE)
    from tritonbasis.op import launchers as _triton
    from tritonbasis.op import reference

    launched = []
    monkeypatch.setattr(reference, "forward", lambda *a, **k: launched.append("torch"))
    monkeypatch.setattr(_triton, "forward", lambda *a, **k: launched.append("triton"))
    with pytest.raises(err, match=pattern):
        _op(perm, backend)
    # and through the public functional API (both modes)
    x, basis, coeff, bias = _inputs()
    for mode in ("fused", "weight"):
        with pytest.raises(err, match=pattern):
            tb.basis_conv2d(x, basis, coeff, bias, padding=1, perm=perm, mode=mode)
    assert launched == []


def test_bad_perm_in_backward_op():
    x, basis, coeff, bias = _inputs()
    out = torch.zeros(2, 8, 6, 6, device=DEVICE)
    bad = torch.tensor([0, 1, 2, 3, 4, 5, 6, 6], device=DEVICE)
    with pytest.raises(ValueError, match="appears more than once"):
        BWD(
            torch.ones_like(out),
            x,
            basis,
            coeff,
            out,
            out.new_empty(0),
            bias,
            bad,
            [1, 1],
            [1, 1],
            [1, 1],
            True,
            [True, True, True, True],
        )


def test_dtype_error_is_also_a_type_error():
    # older callers caught TypeError for a float perm
    with pytest.raises(TypeError, match="int64 or int32"):
        _op(torch.arange(8.0).to(DEVICE))


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_non_contiguous_perm_equals_contiguous(backend, dtype):
    g = torch.Generator().manual_seed(3)
    p = torch.randperm(8, generator=g).to(dtype).to(DEVICE)
    strided = torch.stack([p, p.flip(0)], 1)[:, 0]  # stride 2
    assert not strided.is_contiguous()
    y_strided, _ = _op(strided, backend, with_bias=False)
    y_plain, _ = _op(strided.contiguous(), backend, with_bias=False)
    torch.testing.assert_close(y_strided, y_plain, rtol=0, atol=0)
    # and it really is the permuted output: channel perm[c] holds computed channel c
    y_none, _ = _op(None, backend, with_bias=False)
    torch.testing.assert_close(y_plain[:, strided.long()], y_none, rtol=0, atol=0)


def test_value_check_runs_once_per_tensor_and_version(monkeypatch):
    """The value check (a sort and a host read: a sync on CUDA) runs on a perm's first use and
    again only after an in-place change."""
    calls = []
    real = torch.sort
    monkeypatch.setattr(torch, "sort", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    perm = torch.randperm(8).to(DEVICE)
    for _ in range(3):
        _op(perm)
    assert len(calls) == 1
    with torch.no_grad():
        perm[0], perm[1] = perm[1].clone(), perm[0].clone()  # still a permutation
    _op(perm)
    assert len(calls) == 2
    with torch.no_grad():
        perm[0] = perm[1]  # now a duplicate: caught although this tensor passed before
    with pytest.raises(ValueError, match="appears more than once"):
        _op(perm)


def test_check_perm_skips_values_of_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.empty(8, dtype=torch.int64)
        _checks.check_perm(fake, 8)  # no values to check: metadata only, no error
        with pytest.raises(ValueError, match=r"perm must have shape \(8,\)"):
            _checks.check_perm(torch.empty(7, dtype=torch.int64), 8)


@pytest.mark.parametrize("how", ["data", "numpy"])
@pytest.mark.parametrize("route", ["layer", "functional", "op", "compiled"])
def test_perm_edited_behind_the_version_counter_is_caught_on_cpu(how, route):
    """The contract (README "API"): on CPU the values are checked on every call, so a perm
    edited after its first use through ``.data`` or ``.numpy()`` (writes that do not bump the
    version counter) is refused -- never used unchecked -- through every entry point; a
    still-valid edit is used (the output follows the new permutation)."""
    torch._dynamo.reset()
    layer = tb.BasisConv2d(4, 6, 3, padding=1, basis_channels=2, mode="fused")
    layer.set_out_perm(torch.randperm(6))
    perm = layer.out_perm
    x = torch.randn(2, 4, 5, 5)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    call = {
        "layer": lambda: layer(x),
        "functional": lambda: tb.basis_conv2d(
            x, layer.basis, layer.coeff, layer.bias, padding=1, perm=perm
        ),
        "op": lambda: torch.ops.tritonbasis.basis_conv2d(
            x, layer.basis, layer.coeff, layer.bias, perm, [1, 1], [1, 1], [1, 1], True, False
        )[0],
        "compiled": lambda: compiled(x),
    }[route]
    try:
        call()  # checked once and remembered
        version = perm._version

        def write(i, v):
            if how == "data":
                perm.data[i] = v
            else:
                perm.numpy()[i] = v

        # a valid edit (swap two channels): used, and the output follows it
        a, b = int(perm[0]), int(perm[1])
        write(0, b)
        write(1, a)
        assert perm._version == version  # the writes went around the version counter
        want = tb.basis_conv2d_reference(
            x, layer.basis, layer.coeff, layer.bias, padding=1, perm=perm.clone()
        )
        torch.testing.assert_close(call(), want, rtol=1e-5, atol=1e-5)
        # an invalid edit (a duplicate): refused
        write(0, int(perm[1]))
        with pytest.raises(ValueError, match="appears more than once"):
            call()
        write(0, 99)
        with pytest.raises(ValueError, match="value 99 is outside 0..5"):
            call()
    finally:
        torch._dynamo.reset()
