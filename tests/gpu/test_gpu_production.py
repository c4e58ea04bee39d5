"""The kernels at production configs (GPU runbook part 1), and the keep-basis d coeff fix.

GPU tests, selected by marker (``pytest tests -m gpu_configs``, ``-m "gpu_int64 or gpu_splitk or
gpu_dcoeff"``), skipped with the reason without CUDA:

* ``gpu_configs``: at the four ResNet18-CIFAR 3x3 stride-1 shapes (batch 256, bf16,
  channels_last, keep-basis with a bias and an output permutation), every config that
  ``configs.prune`` keeps for fwd, fwd_reduce (split-K), grad_z, grad_x and wgrad, forced one at
  a time (the other kernels on their FIXED config); y, dx, d basis, d coeff and d bias against
  float64, and the backward run 5 times: any bit difference is a race.
* ``gpu_int64``: N = 2049 images of 16 x 256 x 256 (the largest offset passes 2**31, so the
  INT64 kernels run; the plan's flags are checked), forward and backward; and INT64 forced on at
  a bench shape, bitwise equal to INT64 off.
* ``gpu_splitk``: 512ch@4px with split-K 1, 2 and 4.
* ``gpu_dcoeff``: keep-basis d coeff with bias 8 and |Z| ~ 0.1, bf16 and fp16.

Everything that needs no GPU runs on CPU too: the accuracy check's calibration and a planted
fault, the d coeff measurement (bf16 through the torch path, fp16 through Triton's interpreter),
the launch plans' Z flags, and opcheck of the op when it returns Z in the keep-basis form.

Accuracy check (``check_close``): every element finite (outputs are allocated from memory
poisoned with NaN first, so an unwritten element shows), ``||a - ref|| / ||ref|| <= 4u`` and
``|a - ref| <= 16u (|ref| + rms(ref))`` elementwise, u the dtype's unit roundoff (2**-8 for
bf16). Calibrated on the bf16 torch path on CPU (``test_check_close_calibration``: at most
2.9e-3 normwise and 1.1e-2 elementwise, 5x under the bounds); a reduction that loses one of 36 K
steps fails it.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from conftest import HAS_CUDA, HAS_TRITON

import tritonbasis as tb
from tritonbasis.op import launch_plan
from tritonbasis.op.geometry import check_inputs

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable")

REPO = Path(__file__).resolve().parents[2]
UNIT = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (production configs)")

# The ResNet18-CIFAR 3x3 stride-1 bench shapes: (name, channels, pixels, C_b = C_out / 4).
R18 = (
    ("64ch32px", 64, 32, 16),
    ("128ch16px", 128, 16, 32),
    ("256ch8px", 256, 8, 64),
    ("512ch4px", 512, 4, 128),
)
BATCH = 256
SWEPT = ("fwd", "fwd_reduce", "grad_z", "grad_x", "wgrad")


def _configs():
    from tritonbasis.kernels import configs

    return configs


# ------------------------------------------------------------------------------------------
# accuracy check


def check_close(name: str, actual: torch.Tensor, ref: torch.Tensor, unit: float) -> dict:
    """Finite, normwise within 4u and elementwise within 16u (|ref| + rms(ref)) of ``ref``;
    returns the two measured ratios."""
    assert actual.shape == ref.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    a = actual.detach().double()
    ref = ref.detach().double().to(a.device)
    bad = int((~torch.isfinite(a)).sum())
    assert bad == 0, f"{name}: {bad} elements not finite (unwritten or overflow)"
    err = (a - ref).abs()
    rms = ref.pow(2).mean().sqrt()
    normwise = (err.norm() / ref.norm().clamp_min(1e-300)).item()
    elem = (err / (ref.abs() + rms).clamp_min(1e-300)).max().item()
    assert normwise <= 4 * unit, f"{name}: normwise error {normwise:.3g} > {4 * unit:.3g}"
    assert elem <= 16 * unit, (
        f"{name}: elementwise error {elem:.3g} x (|ref| + rms) > {16 * unit:.3g}"
    )
    return {"normwise": normwise, "elementwise": elem}


def _make(N, C, H, C_b, dtype, device, seed=0, perm=True, bias=True):
    """(x, basis, coeff, bias, perm, grad): keep-basis, channels_last, unit-scale outputs."""
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(device=device, dtype=dtype)

    cl = torch.channels_last
    x = r(N, C, H, H).contiguous(memory_format=cl)
    basis = r(C_b, C, 3, 3, scale=(9 * C) ** -0.5)
    coeff = r(C - C_b, C_b, scale=C_b**-0.5)
    b = r(C) if bias else None
    p = torch.randperm(C, generator=g).to(device) if perm else None
    grad = r(N, C, H, H).contiguous(memory_format=cl)
    return x, basis, coeff, b, p, grad


def _fwd_bwd(x, basis, coeff, bias, perm, grad, backward_runs=1, poison_bytes=2**30):
    """Output and the gradients (x, basis, coeff, bias if any) through the op (autograd), the
    backward run ``backward_runs`` times on the same graph (a list of gradient tuples); the
    allocator's free memory poisoned before each run."""
    leaves = [t.detach().requires_grad_() for t in (x, basis, coeff, bias) if t is not None]
    with tb.use_backend("triton"):
        _poison(x.device, poison_bytes)
        y = tb.basis_conv2d(
            *leaves[:3], leaves[3] if bias is not None else None, padding=1, perm=perm
        )
        runs = []
        for _ in range(backward_runs):
            _poison(x.device, poison_bytes)
            runs.append(torch.autograd.grad(y, leaves, grad, retain_graph=True))
    return y.detach(), runs


def _reference(x, basis, coeff, bias, perm, grad):
    """float64 output and gradients (on the tensors' device; NCHW, which cuDNN runs in
    float64)."""
    leaves = [
        t.detach().double().contiguous().requires_grad_()
        for t in (x, basis, coeff, bias)
        if t is not None
    ]
    y = tb.basis_conv2d_reference(
        *leaves[:3], leaves[3] if bias is not None else None, padding=1, perm=perm
    )
    return y.detach(), torch.autograd.grad(y, leaves, grad.double().contiguous())


def _poison(device, nbytes: int = 2**30) -> None:
    """Fill the allocator's free memory with NaN (0xFF bytes) so that an output element a kernel
    never writes reads NaN: the next allocations (up to ``nbytes`` in all) are carved from
    these cached blocks."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        big = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(255)
        small = [torch.empty(2**20, dtype=torch.uint8, device=device).fill_(255) for _ in range(16)]
        del big, small


NAMES = ("dx", "dbasis", "dcoeff", "dbias")


# ------------------------------------------------------------------------------------------
# CPU: the check itself


@pytest.mark.slow
def test_check_close_calibration():
    """The bf16 torch path (the kernels' rounding points: Z rounded once, fp32 accumulation)
    at the four shapes with a smaller batch stays 5x inside the bounds; a forward missing one
    of its 36 K steps in one 64-pixel tile, and an unwritten (NaN) element, fail."""
    worst = {"normwise": 0.0, "elementwise": 0.0}
    for (_, C, H, C_b), N in zip(R18, (2, 4, 8, 16)):
        x, basis, coeff, bias, perm, grad = _make(N, C, H, C_b, torch.bfloat16, "cpu")
        with tb.use_backend("torch"):
            leaves = [t.clone().requires_grad_() for t in (x, basis, coeff, bias)]
            y = tb.basis_conv2d(*leaves, padding=1, perm=perm)
            got = torch.autograd.grad(y, leaves, grad)
        ry, rg = _reference(x, basis, coeff, bias, perm, grad)
        for name, a, r in zip(("y", *NAMES), (y, *got), (ry, *rg)):
            m = check_close(name, a, r, UNIT[torch.bfloat16])
            worst = {k: max(worst[k], m[k]) for k in worst}
    assert worst["normwise"] < 4 * UNIT[torch.bfloat16] / 4
    assert worst["elementwise"] < 16 * UNIT[torch.bfloat16] / 4

    # planted faults at 256ch@8px (36 K steps of 64 channels): a tile missing one step
    x, basis, coeff, bias, perm, grad = _make(8, 256, 8, 64, torch.bfloat16, "cpu")
    ry, _ = _reference(x, basis, coeff, bias, perm, grad)
    x_wrong = x.clone()
    x_wrong[0, :64, 2:4, :] = 0  # one 64-channel block of the rows 2-3 taps read: 16 pixels
    with tb.use_backend("torch"), torch.no_grad():
        y_wrong = tb.basis_conv2d(x_wrong, basis, coeff, bias, padding=1, perm=perm)
    with pytest.raises(AssertionError, match="error"):
        check_close("y", y_wrong, ry, UNIT[torch.bfloat16])
    y_nan = ry.clone()
    y_nan[3, 5, 1, 2] = float("nan")
    with pytest.raises(AssertionError, match="not finite"):
        check_close("y", y_nan, ry, UNIT[torch.bfloat16])


# ------------------------------------------------------------------------------------------
# CPU: the keep-basis d coeff with a large bias (bench/dcoeff_bias.py)


@functools.cache
def _dcoeff_script():
    spec = importlib.util.spec_from_file_location("dcoeff_bias", REPO / "bench" / "dcoeff_bias.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check_dcoeff(r: dict) -> None:
    # the error the old path had (Z read back from the rounded output) must be visible here,
    # else this test could not tell the two paths apart
    assert r["op_from_out"] > 5 * r["op_default"], r
    # with Z saved, d coeff is as good as the unfused pair's (which has the exact conv Z)
    assert r["op_default"] <= 2 * r["unfused"] + UNIT[getattr(torch, r["dtype"])], r


@pytest.mark.parametrize("dtype,backend", [("bfloat16", "torch"), ("float16", "triton")])
def test_dcoeff_large_bias_cpu(dtype, backend):
    """bias 8, |Z| ~ 0.1: d coeff through the op (torch path in bf16; the Triton kernels in the
    interpreter in fp16, which handles no bf16) vs float64, Z saved vs Z read back."""
    if backend == "triton" and HAS_CUDA:
        pytest.skip("the GPU variant is test_dcoeff_large_bias_gpu")
    r = _dcoeff_script().measure(
        "cpu", getattr(torch, dtype), backend, 8.0, 0.1, (2, 16, 6, 6, 4, 12)
    )
    _check_dcoeff(r)


def test_launch_plans_save_z_for_16bit_bias():
    """Keep-basis with a bias in a 16-bit dtype stores Z in the forward's epilogue (no extra
    launch) and grad_z reads it; fp32 or no bias reads Z back from the output."""
    for dtype, bias, store in (
        (torch.bfloat16, True, True),
        (torch.float16, True, True),
        (torch.bfloat16, False, False),
        (torch.float32, True, False),
    ):
        x, basis, coeff, b, perm, grad = _make(2, 32, 6, 8, dtype, "meta", bias=bias)
        g = check_inputs(x, basis, coeff, b, 1, 1, 1, True, perm)
        for need_z in (False, True):  # the backward below gets the need_z=True forward
            fwd, (y, z) = launch_plan.plan_forward(x, basis, coeff, b, perm, g, need_z, sms=132)
            assert [lc.kernel for lc in fwd] == ["fwd"]
            assert fwd[0].consts["STORE_Z"] is (store and need_z), (dtype, bias, need_z)
            assert z.dim() == (4 if store and need_z else 1)
        mask = (True, True, True, bias)
        bwd, _ = launch_plan.plan_backward(grad, x, basis, coeff, y, z, b, perm, g, mask, sms=132)
        assert len(bwd) == 4
        (gz,) = [lc for lc in bwd if lc.kernel == "grad_z"]
        assert gz.consts["Z_FROM_OUT"] is (not store)
        assert gz.args[3] is (z if store else y)  # z_ptr


def test_op_returns_z_for_keep_basis_16bit_bias():
    """The op's fake and real outputs agree when it saves Z in the keep-basis form."""
    x, basis, coeff, b, perm, _ = _make(2, 8, 5, 3, torch.bfloat16, "cpu")
    args = (x, basis, coeff, b, perm, [1, 1], [1, 1], [1, 1], True, True)
    out, z = torch.ops.tritonbasis.basis_conv2d(*args)
    assert z.shape == (2, 3, 5, 5)
    torch.testing.assert_close(z, torch.nn.functional.conv2d(x, basis, padding=1))
    torch.library.opcheck(torch.ops.tritonbasis.basis_conv2d.default, args)


# ------------------------------------------------------------------------------------------
# GPU: every kept config at the production shapes


@functools.lru_cache(maxsize=4)
def _production(shape_name: str):
    _, C, H, C_b = next(s for s in R18 if s[0] == shape_name)
    data = _make(BATCH, C, H, C_b, torch.bfloat16, "cuda", seed=C)
    return data, _reference(*data)


def _kept(kernel: str, lc) -> list[str]:
    """Names of the configs the autotuner would consider for launch ``lc`` (its early prune:
    ``configs.prune`` over ``launchers.prune_input`` of the launch's named arguments)."""
    from tritonbasis.kernels import KERNELS

    from tritonbasis.op.launchers import prune_input

    configs = _configs()
    params = [p.name for p in KERNELS[kernel].params if not p.is_constexpr]
    named = {**dict(zip(params, lc.args)), **lc.consts}
    kept = configs.prune(kernel, list(configs.CONFIGS[kernel].values()), prune_input(kernel, named))
    return [n for n, c in configs.CONFIGS[kernel].items() if c in kept]


def _launches(x, basis, coeff, bias, perm, grad) -> dict:
    """Every launch of one forward + backward (all gradients), by kernel name."""
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    g = check_inputs(x, basis, coeff, bias, 1, 1, 1, True, perm)
    fwd, (y, z) = launch_plan.plan_forward(x, basis, coeff, bias, perm, g, True, sms)
    mask = (True, True, True, bias is not None)
    bwd, _ = launch_plan.plan_backward(grad, x, basis, coeff, y, z, bias, perm, g, mask, sms)
    return {lc.kernel: lc for lc in fwd + bwd}


SWEEP = [(s[0], k, n) for s in R18 for k in SWEPT for n in _configs().CONFIGS[k]]


@pytest.mark.gpu_configs
@needs_cuda
@pytest.mark.parametrize("shape,kernel,cfg", SWEEP, ids=["-".join(c) for c in SWEEP])
def test_kept_config_at_production_shape(shape, kernel, cfg, monkeypatch):
    data, (ry, rgrads) = _production(shape)
    lcs = _launches(*data)
    if kernel not in lcs:
        pytest.skip(f"{kernel} is not launched at {shape}")
    if cfg not in _kept(kernel, lcs[kernel]):
        pytest.skip(f"prune drops {kernel}/{cfg} at {shape}")
    configs = _configs()
    monkeypatch.setenv("TRITONBASIS_AUTOTUNE", "0")  # every kernel on configs.FIXED ...
    monkeypatch.setitem(configs.FIXED, kernel, configs.CONFIGS[kernel][cfg])  # ... this one forced
    _poison(data[0].device)
    y, runs = _fwd_bwd(*data, backward_runs=5)
    unit = UNIT[torch.bfloat16]
    check_close("y", y, ry, unit)
    for name, a, r in zip(NAMES, runs[0], rgrads):
        check_close(name, a, r, unit)
    for i, again in enumerate(runs[1:], 2):
        for name, a, b in zip(NAMES, runs[0], again):
            assert torch.equal(a, b), f"{name}: backward run {i} differs bitwise from run 1"


# ------------------------------------------------------------------------------------------
# GPU: offsets past 2**31, split-K, d coeff with a large bias


@pytest.mark.gpu_int64
@pytest.mark.xdist_group("int64")  # ~40 GB each: one worker runs both, one after the other
@needs_cuda
@pytest.mark.parametrize("bias", [True, False], ids=["bias_z_saved", "nobias_z_from_out"])
def test_int64_offsets_fwd_bwd(bias, monkeypatch):
    """2049 x 16 x 256 x 256 bf16 (2**31 + 2**20 elements): every kernel runs its INT64
    variant. The gradient is nonzero on images 0, N-2 and N-1 only, so the float64 reference
    on those three images gives every gradient exactly; images between must get dx == 0."""
    free, _ = torch.cuda.mem_get_info()
    if free < 48 * 2**30:  # x, grad 4.3 GB each, outputs ~13 GB, two 12 GB poison blocks
        pytest.skip(f"needs ~48 GiB free GPU memory, have {free / 2**30:.1f}")
    monkeypatch.setenv("TRITONBASIS_AUTOTUNE", "0")  # FIXED configs: 5 compiles, no tuning
    N, C, H, C_b = 2049, 16, 256, 8
    x, basis, coeff, b, perm, _ = _make(4, C, H, C_b, torch.bfloat16, "cuda", bias=bias)
    x = torch.randn(N, C, H, H, device="cuda", dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last
    )
    assert x.numel() > 2**31
    meta = [None if t is None else torch.empty_like(t, device="meta") for t in (x, b, perm)]
    lcs = _launches(
        meta[0],
        basis.to("meta"),
        coeff.to("meta"),
        meta[1],
        meta[2],
        torch.empty((N, C, H, H), device="meta", dtype=x.dtype),
    )
    for k in ("fwd", "grad_z", "grad_x", "wgrad"):
        assert lcs[k].consts["INT64"] is True, k
    idx = torch.tensor([0, N - 2, N - 1], device="cuda")
    grad = torch.zeros_like(x, memory_format=torch.channels_last)
    grad[idx] = torch.randn(3, C, H, H, device="cuda", dtype=x.dtype)
    y, (grads,) = _fwd_bwd(x, basis, coeff, b, perm, grad, poison_bytes=12 * 2**30)
    ry, rgrads = _reference(x[idx], basis, coeff, b, perm, grad[idx])
    unit = UNIT[torch.bfloat16]
    check_close("y[0, N-2, N-1]", y[idx], ry, unit)
    check_close("dx[0, N-2, N-1]", grads[0][idx], rgrads[0], unit)
    for name, a, r in zip(NAMES[1:], grads[1:], rgrads[1:]):
        check_close(name, a, r, unit)
    dx = grads[0]
    assert torch.isfinite(dx).all(), "dx: unwritten (NaN) elements"
    assert not dx[1 : N - 2].any(), "dx must be 0 where the gradient is 0"
    del y, grads, dx, grad


@pytest.mark.gpu_int64
@pytest.mark.xdist_group("int64")
@needs_cuda
def test_int64_forced_is_bitwise_equal(monkeypatch):
    """At 256ch@8px the INT64 variants (forced) give the int32 ones' bits."""
    monkeypatch.setenv("TRITONBASIS_AUTOTUNE", "0")
    data = _make(BATCH, 256, 8, 64, torch.bfloat16, "cuda")
    y32, (g32,) = _fwd_bwd(*data)
    monkeypatch.setattr(launch_plan, "_needs_int64", lambda *t: True)
    launch_plan.clear_caches()
    assert _launches(*data)["wgrad"].consts["INT64"] is True
    y64, (g64,) = _fwd_bwd(*data)
    assert torch.equal(y32, y64)
    for name, a, b in zip(NAMES, g32, g64):
        assert torch.equal(a, b), name


def _ulp_bf16(v: torch.Tensor) -> torch.Tensor:
    """bf16's spacing at |v| (8 significant bits): 2**(exponent - 8) with v = m 2**e, m in
    [0.5, 1)."""
    e = torch.frexp(v.float().abs().clamp_min(2.0**-120)).exponent
    return torch.ldexp(torch.ones_like(v, dtype=torch.float32), e - 8)


@pytest.mark.gpu_splitk
@needs_cuda
def test_split_k_1_2_4(monkeypatch):
    """512ch@4px, C_b 128 (split-K 2 on 132 SMs): split 1, 2 and 4 each match float64, and
    the basis channels (Z + bias, rounded once) agree within 2 bf16 ulps across splits."""
    monkeypatch.setenv("TRITONBASIS_AUTOTUNE", "0")
    x, basis, coeff, b, perm, _ = data = _make(BATCH, 512, 4, 128, torch.bfloat16, "cuda")
    ry, _ = _reference(*data)
    ys = {}
    for split in (1, 2, 4):
        monkeypatch.setattr(launch_plan, "fwd_split_k", lambda *a, s=split, **k: s)
        launch_plan.clear_caches()
        kernels = [k for k in _launches(*data)]
        assert ("fwd_reduce" in kernels) is (split > 1)
        _poison(x.device)
        with torch.no_grad(), tb.use_backend("triton"):
            ys[split] = tb.basis_conv2d(x, basis, coeff, b, padding=1, perm=perm)
        check_close(f"y split {split}", ys[split], ry, UNIT[torch.bfloat16])
    basis_ch = perm[:128]
    ref = ys[1][:, basis_ch].float()
    for split in (2, 4):
        diff = (ys[split][:, basis_ch].float() - ref).abs()
        worst = (diff / _ulp_bf16(ref)).max().item()
        assert worst <= 2, f"split {split}: basis channels differ by {worst} ulps from split 1"


@pytest.mark.gpu_dcoeff
@needs_cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dcoeff_large_bias_gpu(dtype, monkeypatch):
    """bias 8, |Z| ~ 0.1 on the GPU kernels: d coeff with Z saved is as good as the unfused
    pair's; the old path (Z read back from the output) is the 5x-worse one."""
    monkeypatch.setenv("TRITONBASIS_AUTOTUNE", "0")
    r = _dcoeff_script().measure(
        "cuda", getattr(torch, dtype), "triton", 8.0, 0.1, (32, 64, 16, 16, 16, 48)
    )
    _check_dcoeff(r)
    assert math.isfinite(r["op_default"])
