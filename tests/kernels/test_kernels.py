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
from helpers import KERNEL_CASES, Case, check_case

import tritonbasis as tb

pytestmark = [
    pytest.mark.kernels,
    pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable"),
]

DEVICE = "cuda" if HAS_CUDA else "cpu"

# A representative subset: every kernel feature once, odd shapes, both forms and formats.
CASES = KERNEL_CASES


@pytest.mark.parametrize("case", CASES, ids=[c.id() for c in CASES])
def test_kernels_match_reference(case):
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set: the kernels cannot run")
    check_case(case, dtype=torch.float32, device=DEVICE, backend="triton")


def test_kernel_path_is_really_used(monkeypatch):
    """Guard against the matrix silently running the torch path under backend='triton'."""
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    from tritonbasis.op import launchers as _triton
    from tritonbasis.op import reference

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


def _patch_plan(monkeypatch, name, value):
    """Replace a helper of the launch plans (tritonbasis.op.launch_plan) and forget the launch
    scalars remembered on a GPU, so the next launch is built with the replacement."""
    from tritonbasis.op import launch_plan

    monkeypatch.setattr(launch_plan, name, value)
    launch_plan.clear_caches()


def test_int64_indexing_path(monkeypatch):
    """The INT64 variants of every kernel (normally only for > 2**31-element offsets)."""
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    _patch_plan(monkeypatch, "_needs_int64", lambda *t: True)
    check_case(
        Case(C_in=6, C_b=7, C_rest=5, stride=2, channels_last=True), device=DEVICE, backend="triton"
    )


def test_only_requested_gradients(monkeypatch):
    """With only x requiring grad, no d basis / d coeff / d bias work is launched."""
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    from tritonbasis.op import launchers as _triton

    launched = []
    real = _triton._launch
    monkeypatch.setattr(
        _triton, "_launch", lambda name, *a, **k: (launched.append(name), real(name, *a, **k))[1]
    )
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
    case = Case(N=2, C_in=5, C_b=6, C_rest=7, H=9, W=9)  # 162 pixels: 2 slices on CPU
    grads = []
    for cap in (None, 1):
        if cap == 1:
            _patch_plan(monkeypatch, "_cdiv", lambda a, b: 1 if b == 64 else -(-a // b))
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
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    if HAS_CUDA:
        pytest.skip("with CUDA present the message differs only for CPU tensors; checked above")
    assert "ERR" in r.stdout and "TRITON_INTERPRET=1" in r.stdout, r.stdout + r.stderr


# --------------------------------------------------------------------------------------------
# v2 forward: launch count, split-K (the interpreter forces what a GPU picks for small M)


def _need_kernels():
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set: the kernels cannot run")


# Allocations and views launch nothing; anything else run by aten outside the Triton launches
# (a copy, a fill, a cast) is a kernel launch on a GPU.
_NO_LAUNCH = (
    "empty",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "as_strided",
    "view",
    "_unsafe_view",
    "detach",
    "alias",
    "t",
    "transpose",
    "permute",
    "expand",
    "slice",
    "select",
    "unsqueeze",
    "squeeze",
    "_reshape_alias",
    "lift_fresh",
)


def _count_forward_launches(monkeypatch, *args, **kwargs):
    """(Triton launches by name, aten ops that would launch a GPU kernel) of one forward.
    Counted inside the op's Triton implementation (a dispatch mode outside the custom op sees
    it as one opaque op)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from tritonbasis.op import launchers as _triton

    launched, inside, ops = [], [], []
    real_launch, real_forward = _triton._launch, _triton.forward

    def spy(name, *a, **k):
        launched.append(name)
        inside.append(1)  # the interpreter itself runs torch ops on the arguments: not ours
        try:
            return real_launch(name, *a, **k)
        finally:
            inside.pop()

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if not inside and name not in _NO_LAUNCH:
                ops.append(name)
            return func(*args, **(kwargs or {}))

    def forward(*a, **k):
        with Ops():
            return real_forward(*a, **k)

    monkeypatch.setattr(_triton, "_launch", spy)
    monkeypatch.setattr(_triton, "forward", forward)
    with tb.use_backend("triton"):
        tb.basis_conv2d(*args, **kwargs)
    monkeypatch.setattr(_triton, "_launch", real_launch)
    monkeypatch.setattr(_triton, "forward", real_forward)
    return launched, ops


def test_forward_is_one_launch(monkeypatch):
    """Split-K off (the interpreter's default and every GPU shape with enough M tiles): the
    forward is one Triton launch and, with the basis already C_in-contiguous (channels_last,
    or any 1x1 basis), nothing else; an OIHW 3x3 basis costs one small copy."""
    _need_kernels()
    case = Case(C_in=6, C_b=5, C_rest=7, channels_last=True)
    x, basis, coeff, bias = case.make(device=DEVICE)
    perm = torch.randperm(case.C_out).to(DEVICE)
    kl = basis.contiguous(memory_format=torch.channels_last)
    launched, ops = _count_forward_launches(monkeypatch, x, kl, coeff, bias, padding=1, perm=perm)
    assert launched == ["fwd"] and ops == [], (launched, ops)
    launched, ops = _count_forward_launches(monkeypatch, x, basis, coeff, bias, padding=1)
    assert launched == ["fwd"] and len(ops) == 1, (launched, ops)  # the channels_last copy


SPLIT_CASES = [
    (Case(C_in=20, C_b=17, C_rest=9, H=5, W=5, channels_last=True), 2),  # 2 C_in blocks x 9
    (Case(C_in=6, C_b=5, C_rest=35, stride=2, keep_basis=False, perm=True), 3),  # 9 / 3
    (Case(C_in=6, C_b=7, C_rest=4, k=3, H=4, W=4, bias=False), 4),  # 9 iterations, 4 slices
    (Case(C_in=4, C_b=5, C_rest=3, k=1, padding=0), 2),  # 1 iteration: slice 2 is empty
]


@pytest.mark.parametrize(
    "case,split", SPLIT_CASES, ids=[f"{c.id()}-split{s}" for c, s in SPLIT_CASES]
)
def test_split_k_matches_reference(case, split, monkeypatch):
    """Split-K (fp32 workspace + reduce/epilogue launch) against the float64 reference,
    forward and gradients; 2 launches."""
    _need_kernels()
    _patch_plan(monkeypatch, "fwd_split_k", lambda *a, **k: split)
    check_case(case, dtype=torch.float32, device=DEVICE, backend="triton")
    x, basis, coeff, bias = case.make(device=DEVICE)
    launched, _ = _count_forward_launches(monkeypatch, x, basis, coeff, bias, **case.kwargs())
    assert launched == ["fwd", "fwd_reduce"]


def test_split_k_is_deterministic_and_matches_no_split(monkeypatch):
    _need_kernels()
    case = Case(N=2, C_in=20, C_b=6, C_rest=10, H=6, W=6, channels_last=True)
    x, basis, coeff, bias = case.make(device=DEVICE)
    outs = []
    for split in (1, 3, 3):
        _patch_plan(monkeypatch, "fwd_split_k", lambda *a, _s=split, **k: _s)
        with tb.use_backend("triton"):
            outs.append(tb.basis_conv2d(x, basis, coeff, bias, padding=1))
    assert torch.equal(outs[1], outs[2])  # bitwise, run to run
    # the same sums in another order: fp32 rounding apart, and far from a wrong tap
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_int64_indexing_path_split_k(monkeypatch):
    _need_kernels()
    _patch_plan(monkeypatch, "_needs_int64", lambda *t: True)
    _patch_plan(monkeypatch, "fwd_split_k", lambda *a, **k: 2)
    check_case(
        Case(C_in=6, C_b=5, C_rest=7, stride=2, channels_last=True, keep_basis=False),
        device=DEVICE,
        backend="triton",
    )


def test_split_k_rule():
    """configs.split_k at the benchmark shapes on an H100 (132 SMs): only the small-M late
    layers split, and the workspace stays int32-indexable."""
    pytest.importorskip("triton")
    from tritonbasis.kernels import configs

    assert configs.split_k(256 * 16, 512, 3, 3, 128, 132) == 2  # 512ch@4px
    assert configs.split_k(256 * 16, 256, 3, 3, 128, 132) == 2  # 256->512 s2 (8px -> 4px)
    assert configs.split_k(256 * 64, 256, 3, 3, 64, 132) == 1  # 256ch@8px: 256 tiles
    assert configs.split_k(256 * 16, 256, 1, 1, 128, 132) == 1  # 1x1: 4 K iterations
    assert configs.split_k(16, 512, 3, 3, 128, 132) == 8  # tiny M: capped at 8
    assert configs.split_k(2**23, 4096, 3, 3, 128, 10**6) == 1  # workspace would pass 2**31


def test_autotune_key_buckets_m():
    pytest.importorskip("triton")
    from tritonbasis.kernels import configs

    assert [configs.m_bucket(m) for m in (1, 2, 3, 4096, 4097, 256 * 1024)] == [
        1,
        2,
        4,
        4096,
        8192,
        262144,
    ]
    assert "M" not in configs.KEYS["fwd"] and "M_KEY" in configs.KEYS["fwd"]
