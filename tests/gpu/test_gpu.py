"""GPU tier: the Triton kernels on CUDA, autotuned, in fp32 (TF32 on and off), fp16, bf16, at
the kernel-tier shapes and larger ResNet-like shapes. Skipped, with the reason, without CUDA.

The GPU runbook runs this dtype matrix in two halves (``-m gpu -k bfloat16``, then ``-k "not
bfloat16"``); offsets past 2**31 and the production-shape config sweep are in
tests/gpu/test_gpu_production.py."""

import pytest
import torch
from conftest import HAS_CUDA, HAS_TRITON
from helpers import KERNEL_CASES as SMALL
from helpers import Case, check_case

from tritonbasis.op import registry
from tritonbasis.op.geometry import check_inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (GPU tier)"),
    pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable"),
]

LARGE = [
    Case(N=8, C_in=64, H=32, W=32, C_b=16, C_rest=48, channels_last=True),
    Case(N=8, C_in=128, H=16, W=16, C_b=32, C_rest=96, channels_last=True),
    Case(N=8, C_in=256, H=8, W=8, C_b=64, C_rest=192, stride=1, channels_last=True),
    Case(N=8, C_in=128, H=16, W=16, C_b=64, C_rest=192, stride=2, channels_last=True),
    Case(N=4, C_in=64, H=28, W=28, C_b=16, C_rest=48, channels_last=False, bias=False),
    Case(N=4, C_in=96, H=14, W=14, C_b=128, C_rest=256, channels_last=True, keep_basis=False),
    Case(N=4, C_in=32, H=15, W=15, C_b=48, C_rest=64, k=5, padding=2, dilation=2),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SMALL + LARGE, ids=[c.id() for c in SMALL + LARGE])
def test_gpu_kernels(case, dtype):
    check_case(case, dtype=dtype, device="cuda", backend="triton")


@pytest.mark.parametrize("case", LARGE[:3], ids=[c.id() for c in LARGE[:3]])
def test_gpu_fp32_ieee(case):
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        check_case(case, dtype=torch.float32, device="cuda", backend="triton")
    finally:
        torch.backends.cudnn.allow_tf32 = prev


def test_gpu_auto_picks_triton():
    case = LARGE[0]
    x = case.make(device="cuda")[0]
    g = check_inputs(*case.make(device="cuda"), **{k: v for k, v in case.kwargs().items()})
    assert registry.resolve_backend(x, g) == "triton"
