"""Peak rates measured in the same run as the benchmark (the roofline's denominators): one
large matmul per dtype (TFLOP/s) and one large copy (GB/s, read + write bytes), each timed by
:func:`tritonbasis.util.timing.time_fn` like every provider."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ...util.timing import time_fn
from .providers import short_error

__all__ = ["measure_peaks"]


def measure_peaks(
    device: torch.device,
    dtypes: Iterable[str],
    quick: bool = False,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
) -> dict:
    """Matmul TFLOP/s per dtype (always bfloat16 too) and copy GB/s (read + write bytes),
    each the median of repeated timings on this device now. CUDA: 8192^3 and 1 GiB; CPU:
    1024^3 and 64 MiB (512^3 and 16 MiB quick)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    timing = dict(
        device=device,
        warmup_ms=warmup_ms,
        rep_ms=rep_ms,
        min_time_s=rep_ms / 1e3,
        min_reps=3 if quick else 10,
    )
    n = 8192 if cuda else (512 if quick else 1024)
    out: dict[str, Any] = {"matmul_n": n, "matmul_tflops": {}, "errors": {}}
    for name in dict.fromkeys(["bfloat16", *dtypes]):
        dtype = getattr(torch, name)
        try:
            g = torch.Generator(device=device).manual_seed(0)
            a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
            b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
            t = time_fn(lambda a=a, b=b: torch.mm(a, b), **timing)
            out["matmul_tflops"][name] = 2 * n**3 / (t.median_ms * 1e-3) / 1e12
            del a, b
        except Exception as e:  # e.g. a dtype without a matmul on this device
            out["matmul_tflops"][name] = None
            out["errors"][f"matmul_{name}"] = short_error(e)
    nbytes = 2**30 if cuda else (2**24 if quick else 2**26)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = time_fn(lambda dst=dst, src=src: dst.copy_(src), **timing)
    out["copy_bytes"] = nbytes
    out["copy_gbps"] = 2 * nbytes / (t.median_ms * 1e-3) / 1e9
    out["method"] = t.method
    del src, dst
    if not out["errors"]:
        del out["errors"]
    return out
