"""The one timer: library timers, not hand-written loops.

* CUDA: :func:`triton.testing.do_bench` (CUDA events, the L2 cache flushed before every call,
  warm-up and repetitions by time) or :func:`triton.testing.do_bench_cudagraph` (the calls
  captured in a CUDA graph: no launch overhead in the number);
* CPU (and CUDA without triton): :class:`torch.utils.benchmark.Timer`'s ``blocked_autorange``
  (thread count pinned, blocks of calls until ``min_time_s``, CUDA synchronised).

Every caller (the benchmark harness, ``tritonbasis tune``, the search's per-layer timings, the
training-step measurement, ``tritonbasis demo``) goes through :func:`time_fn`, so a number in
one report means what it means in another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Timing", "time_fn"]


@dataclass(frozen=True)
class Timing:
    """Per-call time in milliseconds: median and the 20th/80th percentiles, how many calls
    were timed, and how (``method``)."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _triton_testing():
    try:
        import triton.testing as tt
    except Exception:  # triton absent or broken: the torch timer still works
        return None
    return tt


def time_fn(fn: Callable[[], Any], *, device: torch.device | str = "cpu",
            min_time_s: float = 0.2, warmup_ms: float = 25.0, rep_ms: float = 100.0,
            cuda_graph: bool = False) -> Timing:
    """Time ``fn()`` (no arguments; rotate inputs inside it if needed).

    The first call runs untimed (it autotunes, compiles, picks cuDNN algorithms). CUDA:
    ``warmup_ms`` / ``rep_ms`` of calls through ``triton.testing`` (``cuda_graph``: graph
    replays); CPU: blocks of calls for at least ``min_time_s`` through
    ``torch.utils.benchmark``, the percentiles taken over the blocks' per-call means."""
    device = torch.device(device)
    fn()  # untimed first call
    tt = _triton_testing() if device.type == "cuda" else None
    if tt is not None:
        with torch.cuda.device(device):
            torch.cuda.synchronize()
            q = [0.5, 0.2, 0.8]
            if cuda_graph:
                med, p20, p80 = tt.do_bench_cudagraph(fn, rep=rep_ms, quantiles=q)
                method = "triton.testing.do_bench_cudagraph"
            else:
                med, p20, p80 = tt.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=q)
                method = "triton.testing.do_bench (CUDA events, L2 flushed)"
        # do_bench sizes its repetitions from rep_ms; report that count approximately
        reps = max(1, round(rep_ms / max(med, 1e-6)))
        return Timing(float(med), float(p20), float(p80), reps, method)
    from torch.utils.benchmark import Timer

    m = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_time_s)
    per_call = np.asarray(m.times, dtype=np.float64) * 1e3
    return Timing(float(m.median * 1e3), float(np.percentile(per_call, 20)),
                  float(np.percentile(per_call, 80)), int(len(m.raw_times) * m.number_per_run),
                  f"torch.utils.benchmark blocked_autorange ({torch.get_num_threads()} threads)")
