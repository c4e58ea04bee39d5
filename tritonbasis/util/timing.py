"""The one timer: library timers, not hand-written loops.

* CUDA: :func:`triton.testing.do_bench` (CUDA events around every call, triton's 256 MiB L2
  flush buffer zeroed before each, warm-up and repetitions sized by time) or
  :func:`triton.testing.do_bench_cudagraph` (the calls captured in one CUDA graph and the
  graph replayed: no launch overhead in the number, no L2 flush);
* CPU (and CUDA without triton): :class:`torch.utils.benchmark.Timer`'s ``blocked_autorange``
  (thread count pinned, blocks of calls until ``min_time_s``, CUDA synchronised).

Every caller (the benchmark harness and its peak measurements, ``tritonbasis tune``, the
search's per-layer timings, the training-step measurement, ``tritonbasis demo``) goes through
:func:`time_fn`, so a number in one report means what it means in another. There is no
per-call setup hook: a caller that rotates inputs (or needs the forward of a backward done
beforehand) does that inside ``fn`` or before the call.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["GRAPH_REPLAYS", "Timing", "time_fn"]

# do_bench_cudagraph times this many replays of its one graph (a constant inside triton 3.6
# and 3.8); time_fn sizes the graph to rep_ms / GRAPH_REPLAYS of calls so a graph timing
# spends about rep_ms timed, like do_bench.
GRAPH_REPLAYS = 10


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


def _quantiles(ms, reps: int, method: str) -> Timing:
    # linear interpolation between order statistics (numpy.percentile's default)
    a = torch.as_tensor(list(ms), dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    p20, med, p80 = torch.quantile(a, q).tolist()
    return Timing(float(med), float(p20), float(p80), int(reps), method)


def time_fn(
    fn: Callable[[], Any],
    *,
    device: torch.device | str = "cpu",
    min_time_s: float = 0.2,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    cuda_graph: bool = False,
    min_reps: int = 1,
) -> Timing:
    """Time ``fn()`` (no arguments; rotate inputs inside it if needed).

    The first call runs untimed (it autotunes, compiles, picks cuDNN algorithms). CUDA:
    ``warmup_ms`` / ``rep_ms`` of calls through ``triton.testing.do_bench``, at least
    ``min_reps`` timed calls (a second ``do_bench`` tops a short first one up);
    ``cuda_graph``: ``do_bench_cudagraph``, a graph of ~``rep_ms / GRAPH_REPLAYS`` of calls
    replayed ``GRAPH_REPLAYS`` times, each replay one sample (replay time / calls). CPU:
    blocks of calls for at least ``min_time_s`` through ``torch.utils.benchmark``, at least
    ``min_reps`` blocks (fewer: re-timed as ``min_reps`` smaller blocks); the percentiles are
    over the blocks' per-call means."""
    device = torch.device(device)
    fn()  # untimed first call
    tt = _triton_testing() if device.type == "cuda" else None
    if tt is not None:
        with torch.cuda.device(device):
            torch.cuda.synchronize()
            if cuda_graph:
                return _cuda_graph(tt, fn, rep_ms)
            return _cuda_events(tt, fn, warmup_ms, rep_ms, min_reps)
    return _blocked(fn, min_time_s, min_reps, device)


def _cuda_events(tt, fn, warmup_ms: float, rep_ms: float, min_reps: int) -> Timing:
    # return_mode="all": every call's time, so reps is exact and the percentiles are ours
    ms = list(tt.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all"))
    for _ in range(3):  # do_bench sizes by time: a call longer than rep_ms gets 1 repetition
        if len(ms) >= min_reps:
            break
        more = (min_reps - len(ms)) * statistics.median(ms) * 1.25
        ms += list(tt.do_bench(fn, warmup=0, rep=more, return_mode="all"))
    return _quantiles(
        ms, len(ms), "triton.testing.do_bench (CUDA events per call, L2 flushed before each)"
    )


def _cuda_graph(tt, fn, rep_ms: float) -> Timing:
    rep = rep_ms / GRAPH_REPLAYS
    ms = list(tt.do_bench_cudagraph(fn, rep=rep, return_mode="all"))
    # the graph holds int(rep / estimate) calls (triton's rule); the estimate is not returned,
    # so the count below is the same rule on the measured median
    calls = max(1, int(rep / max(statistics.median(ms), 1e-6)))
    return _quantiles(
        ms,
        calls * len(ms),
        f"triton.testing.do_bench_cudagraph ({len(ms)} replays of a graph of "
        f"~{calls} calls, no L2 flush)",
    )


def _blocked(fn, min_time_s: float, min_reps: int, device: torch.device) -> Timing:
    from torch.utils.benchmark import Timer

    threads = torch.get_num_threads()
    timer = Timer("fn()", globals={"fn": fn}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_time_s)
    per_call, number = list(m.times), m.number_per_run  # seconds per call, one per block
    if len(per_call) < min_reps:
        # blocked_autorange sizes blocks for timer overhead <= 0.01%, so a short budget can
        # end after one block: time min_reps blocks of a min_reps-th of the calls instead
        # (about the same time again, rather than min_reps - 1 more full blocks)
        number = max(1, number * len(per_call) // min_reps)
        per_call = [timer.timeit(number).times[0] for _ in range(min_reps)]
    n = len(per_call) * number
    where = "" if device.type == "cpu" else ", CUDA synchronised: triton unavailable"
    return _quantiles(
        [t * 1e3 for t in per_call],
        n,
        f"torch.utils.benchmark blocked_autorange ({threads} threads{where})",
    )
