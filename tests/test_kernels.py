"""Kernel tier: the Triton forward and backward kernels against the float64 reference.

Without CUDA they run through Triton's interpreter (TRITON_INTERPRET=1, set by conftest before
the kernels are imported): tiny shapes, fp32, the FIXED configs. With CUDA the same tests
launch the real kernels.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import HAS_CUDA, HAS_TRITON
from helpers import Case, check_case

import tritonbasis as tb

pytestmark = [
    pytest.mark.kernels,
    pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable"),
]

DEVICE = "cuda" if HAS_CUDA else "cpu"

# A representative subset: every kernel feature once, odd shapes, both forms and formats.
CASES = [
    Case(),  # 3x3, pad 1, bias, keep-basis, C_b=5 (padded to 16), C_in=4
    Case(C_in=3, C_b=1, C_rest=3, H=9, W=9, bias=False),  # C_b = 1, C_in = 3
    Case(C_in=16, C_b=16, C_rest=64, stride=2, padding=1, channels_last=True),  # stride 2, NHWC
    Case(C_in=5, C_b=5, C_rest=9, k=5, padding=2, dilation=2, H=15, W=9, keep_basis=False),
    Case(C_in=4, C_b=5, C_rest=0, k=1, padding=0),  # C_out = C_b: nothing to combine
    Case(C_in=20, C_b=17, C_rest=20, k=3, stride=2, padding=0, dilation=2, H=15, W=15,
         keep_basis=False, channels_last=True, bias=False),  # C_in and C_b span 2 blocks
    Case(N=3, C_in=6, C_b=3, C_rest=35, k=3, stride=2, padding=2, H=7, W=9),  # C_rest > 2 blocks
    Case(C_in=8, C_b=40, C_rest=8, k=3, padding=1, H=7, W=7, channels_last=True),  # C_b > 32
    # output-channel permutation (keep-basis conversion of a trained conv), both formats/forms
    Case(C_in=5, C_b=6, C_rest=21, stride=2, perm=True),
    Case(C_in=4, C_b=3, C_rest=5, channels_last=True, bias=False, perm=True),
    Case(C_in=4, C_b=3, C_rest=7, keep_basis=False, perm=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id() for c in CASES])
def test_kernels_match_reference(case):
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set: the kernels cannot run")
    check_case(case, dtype=torch.float32, device=DEVICE, backend="triton")


def test_kernel_path_is_really_used(monkeypatch):
    """Guard against the matrix silently running the torch path under backend='triton'."""
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    from tritonbasis import _triton, reference

    calls = []
    monkeypatch.setattr(reference, "forward", lambda *a, **k: calls.append("torch"))
    real = _triton.forward

    def spy(*a, **k):
        calls.append("triton")
        return real(*a, **k)

    monkeypatch.setattr(_triton, "forward", spy)
    x, basis, coeff, bias = Case().make(device=DEVICE)
    with tb.use_backend("triton"):
        tb.basis_conv2d(x, basis, coeff, bias, padding=1)
    assert calls == ["triton"]


def test_int64_indexing_path(monkeypatch):
    """The INT64 variants of every kernel (normally only for > 2**31-element offsets)."""
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    from tritonbasis import _triton

    monkeypatch.setattr(_triton, "_needs_int64", lambda *t: True)
    check_case(Case(C_in=6, C_b=7, C_rest=5, stride=2, channels_last=True), device=DEVICE,
               backend="triton")


def test_only_requested_gradients(monkeypatch):
    """With only x requiring grad, no d basis / d coeff / d bias work is launched."""
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    from tritonbasis import _triton

    launched = []
    real = _triton._launch
    monkeypatch.setattr(_triton, "_launch",
                        lambda name, *a, **k: (launched.append(name), real(name, *a, **k))[1])
    x, basis, coeff, bias = Case().make(device=DEVICE)
    x.requires_grad_()
    with tb.use_backend("triton"):
        tb.basis_conv2d(x, basis, coeff, bias, padding=1).sum().backward()
    assert launched == ["fwd", "grad_z", "grad_x"]
    assert x.grad is not None and basis.grad is None and coeff.grad is None


def test_wgrad_split_reduction_matches_single_slice(monkeypatch):
    """d basis / d coeff with the pixel reduction split in slices == one slice."""
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    from tritonbasis import _triton

    case = Case(N=2, C_in=5, C_b=6, C_rest=7, H=9, W=9)  # 162 pixels: 2 slices on CPU
    grads = []
    for cap in (None, 1):
        if cap == 1:
            monkeypatch.setattr(_triton, "_cdiv", lambda a, b: 1 if b == 64 else -(-a // b))
        x, basis, coeff, bias = case.make(device=DEVICE, requires_grad=True)
        with tb.use_backend("triton"):
            tb.basis_conv2d(x, basis, coeff, bias, **case.kwargs()).square().sum().backward()
        grads.append((basis.grad.clone(), coeff.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_forced_triton_on_cpu_without_interpreter_is_a_clear_error(tmp_path):
    """In a process without TRITON_INTERPRET the kernels are GPU-compiled: forcing them on CPU
    tensors must say what to do, not crash inside Triton."""
    code = textwrap.dedent(
        """
        import torch, tritonbasis as tb
        x = torch.randn(1, 3, 5, 5); b = torch.randn(2, 3, 3, 3); c = torch.randn(2, 2)
        with tb.use_backend("triton"):
            try:
                tb.basis_conv2d(x, b, c)
            except RuntimeError as e:
                print("ERR", e)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    if HAS_CUDA:
        pytest.skip("with CUDA present the message differs only for CPU tensors; checked above")
    assert "ERR" in r.stdout and "TRITON_INTERPRET=1" in r.stdout, r.stdout + r.stderr
