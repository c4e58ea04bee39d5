"""Benchmark harness: the case list, the providers, the timers, the roofline, the end-to-end
model timings and the results files. ``tritonbasis bench`` (the runner) and the
pytest-benchmark tests in ``bench/test_bench_ops.py`` share everything here; ``bench/README.md``
documents the cases, the providers and the results format.

Providers, side by side in one run (every speedup is a ratio of two of them from that run):

* ``dense_cudnn``      -- ``F.conv2d`` with all ``C_out`` filters (``cudnn.benchmark=True``)
* ``unfused_eager``    -- conv over the ``C_b`` basis filters, then the 1x1 combination, in
  PyTorch (:func:`tritonbasis.op.reference.basis_conv2d_reference`)
* ``unfused_compiled`` -- the same pair under ``torch.compile(mode="max-autotune")`` on CUDA
  (``--compile-mode``; on CPU the default mode, recorded in the settings)
* ``weight_mod``       -- ``W = [B; coeff.B]`` then one dense conv
* ``fused``            -- :func:`tritonbasis.basis_conv2d` (the Triton kernels on CUDA; the
  op's torch path on CPU, recorded in the settings)

All in the keep-basis form (``cat(Z, coeff.Z)``), no bias. Directions: ``fwd`` (no grad),
``bwd`` (the gradients of x and of the weights, forward done untimed) and ``fwd+bwd``.

Timing: median and p20/p80 over repetitions after a warm-up (first call: autotune, cuDNN
benchmark, compilation). CUDA: CUDA events around every call with the L2 cache flushed
(a 256 MiB write) before each; small shapes (output <= 2**22 elements) are timed as CUDA-graph
replays for ``fwd`` and ``fwd+bwd`` so launch overhead does not dominate. CPU:
``time.perf_counter``. Inputs rotate over several buffers (enough to exceed the L2 cache on
CUDA) so caches do not flatter repeated calls.

Figures: ``tflops`` on the basis FLOPs (the fused op's registered FLOP formula -- the same
count for every provider, so TFLOP/s compare providers on the same job), ``gbps`` on the
fewest bytes the basis op must move, ``roofline_pct`` = 100 x max(FLOPs/peak, bytes/bandwidth)
/ time with the peak and bandwidth measured in the same run (one large matmul per dtype, one
large copy).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import functools
import json
import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..nn.functional import basis_conv2d
from ..op import reference
from ..op.geometry import MAX_BASIS_CHANNELS, check_inputs, conv_output_size
from ..util.fileio import atomic_write_text

__all__ = [
    "CASES",
    "DIRECTIONS",
    "DTYPES",
    "GROUPS",
    "LAYOUTS",
    "PROVIDERS",
    "RATIOS",
    "RECORD_KEYS",
    "SHAPE_KEYS",
    "Case",
    "Problem",
    "Skip",
    "Timing",
    "Variant",
    "add_arguments",
    "markdown",
    "measure_peaks",
    "parse_choice",
    "parse_ratios",
    "run",
    "run_from_args",
    "select_cases",
    "time_call",
    "variants",
    "write_results",
]

PROVIDERS = ("dense_cudnn", "unfused_eager", "unfused_compiled", "weight_mod", "fused")
DIRECTIONS = ("fwd", "bwd", "fwd+bwd")
DTYPES = ("bfloat16", "float16", "float32")
LAYOUTS = ("channels_last", "contiguous")
RATIOS = (Fraction(1, 8), Fraction(1, 4), Fraction(1, 2))
SHAPE_KEYS = ("N", "C_in", "C_out", "C_b", "H", "W", "k", "stride", "padding", "dilation")
RECORD_KEYS = ("case", "shape", "dtype", "layout", "direction", "provider", "median_ms",
               "p20_ms", "p80_ms", "tflops", "gbps", "roofline_pct")
E2E_VARIANTS = ("dense", "all_3x3", "plan")
FORMAT = "tritonbasis.bench/1"

# Outputs with at most this many elements are "small": fwd and fwd+bwd are timed as CUDA-graph
# replays (ResNet18-CIFAR 256 ch @ 8 px and 512 @ 4 px at batch 256, ResNet-50 14 and 7 px at
# batch 64: 10-50 us per call, where a few us of launch overhead per kernel would dominate).
GRAPH_MAX_OUT_ELEMS = 2**22
L2_FLUSH_BYTES = 256 * 2**20
ROTATE_BYTES = 128 * 2**20  # rotating inputs together exceed this (H100 L2: 50 MB)

# The plan timed end to end when no --plan is given: layers 3 and 4 (the wide, small-image
# layers a sensitivity search usually picks first) at C_b = C_out / 4, keep-basis form.
BUILTIN_PLAN = {"re:layer[34]\\..*conv[12]": {"ratio": 0.25, "keep_basis": True},
                "_default": None}


# --------------------------------------------------------------------------------------------
# Cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One conv layer shape; ``C_b`` comes from a ratio (:meth:`c_b`)."""

    name: str
    group: str
    N: int
    C_in: int
    C_out: int
    H: int
    W: int
    k: int = 3
    stride: int = 1
    padding: int = 1
    dilation: int = 1

    def c_b(self, ratio: Fraction) -> int:
        return max(1, round(self.C_out * ratio))

    def shape(self, c_b: int) -> dict[str, int]:
        return {"N": self.N, "C_in": self.C_in, "C_out": self.C_out, "C_b": c_b, "H": self.H,
                "W": self.W, "k": self.k, "stride": self.stride, "padding": self.padding,
                "dilation": self.dilation}

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple(conv_output_size(n, self.k, self.stride, self.padding, self.dilation)
                     for n in (self.H, self.W))

    def out_elems(self) -> int:
        ho, wo = self.out_hw
        return self.N * self.C_out * ho * wo


def _resnet18_cifar(n: int = 256) -> list[Case]:
    g = "resnet18_cifar"
    cases = [Case(f"r18.layer{i}.3x3.{c}ch.{px}px", g, n, c, c, px, px)
             for i, (c, px) in enumerate([(64, 32), (128, 16), (256, 8), (512, 4)], start=1)]
    for i, (c, px) in enumerate([(64, 32), (128, 16), (256, 8)], start=2):
        # the stride-2 downsampling convs of each stage's first block
        cases.append(Case(f"r18.layer{i}.0.conv1.3x3s2.{c}to{2 * c}.{px}px", g, n, c, 2 * c,
                          px, px, 3, 2, 1))
        cases.append(Case(f"r18.layer{i}.0.downsample.1x1s2.{c}to{2 * c}.{px}px", g, n, c,
                          2 * c, px, px, 1, 2, 0))
    return cases


def _resnet50(n: int = 64) -> list[Case]:
    # the bottleneck 3x3 convs (stride 1) of the four stages at 224 px input
    return [Case(f"r50.layer{i}.3x3.{c}ch.{px}px", "resnet50", n, c, c, px, px)
            for i, (c, px) in enumerate([(64, 56), (128, 28), (256, 14), (512, 7)], start=1)]


def _quick(n: int = 4) -> list[Case]:
    # CPU-sized stand-ins with the same structure: a 3x3, a stride-2 3x3, a stride-2 1x1
    return [Case("quick.3x3.16ch.8px", "quick", n, 16, 16, 8, 8),
            Case("quick.3x3s2.16to32.8px", "quick", n, 16, 32, 8, 8, 3, 2, 1),
            Case("quick.1x1s2.16to32.8px", "quick", n, 16, 32, 8, 8, 1, 2, 0)]


CASES: list[Case] = _resnet18_cifar() + _resnet50() + _quick()
GROUPS: dict[str, list[Case]] = {}
for _c in CASES:
    GROUPS.setdefault(_c.group, []).append(_c)
GROUPS["all"] = [c for c in CASES if c.group != "quick"]
DEFAULT_CASES = "resnet18_cifar,resnet50"


def select_cases(spec: str | Iterable[str] | None = None, quick: bool = False) -> list[Case]:
    """Cases by comma-separated names, group names (``resnet18_cifar``, ``resnet50``,
    ``quick``, ``all``) or shell patterns (``r18.*3x3s2*``). Default: ``quick`` in quick mode,
    else ResNet18-CIFAR + ResNet-50. Unknown names are a ValueError listing the known ones."""
    if spec is None:
        spec = "quick" if quick else DEFAULT_CASES
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    out: list[Case] = []
    for item in filter(None, items):
        if item in GROUPS:
            found = GROUPS[item]
        else:
            found = [c for c in CASES if fnmatch.fnmatchcase(c.name, item)]
        if not found:
            raise ValueError(f"no benchmark case matches {item!r}; groups: "
                             f"{', '.join(sorted(GROUPS))}; cases: "
                             f"{', '.join(c.name for c in CASES)}")
        out += [c for c in found if c not in out]
    if not out:
        raise ValueError("no benchmark cases selected")
    return out


def parse_ratios(spec: str | None, quick: bool = False) -> list[Fraction]:
    """``"1/8,1/4,1/2"`` or ``"0.25"`` -> Fractions in (0, 1]; default all three (1/4 quick)."""
    if spec is None:
        return [Fraction(1, 4)] if quick else list(RATIOS)
    out = []
    for s in spec.split(","):
        try:
            r = Fraction(s.strip()).limit_denominator(1024)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"bad ratio {s!r}: use fractions like 1/4 or decimals") from None
        if not 0 < r <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {s!r}")
        out.append(r)
    return out


def parse_choice(spec: str | None, allowed: tuple[str, ...], default: list[str],
                  what: str) -> list[str]:
    if spec is None:
        return list(default)
    if spec == "all":
        return list(allowed)
    out = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in out if s not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {', '.join(bad)}: use {', '.join(allowed)} or all")
    return out


@dataclasses.dataclass(frozen=True)
class Variant:
    """One (case, C_b, dtype, layout): the tensors every provider and direction share."""

    case: Case
    ratio: Fraction
    dtype: str
    layout: str

    @property
    def c_b(self) -> int:
        return self.case.c_b(self.ratio)

    def shape(self) -> dict[str, int]:
        return self.case.shape(self.c_b)

    def __str__(self) -> str:  # pytest ids
        return f"{self.case.name}-cb{self.c_b}-{self.dtype}-{self.layout}"


def variants(cases, ratios, dtypes, layouts) -> list[Variant]:
    return [Variant(c, r, d, lay) for c in cases for r in ratios for d in dtypes
            for lay in layouts]


# --------------------------------------------------------------------------------------------
# FLOPs and bytes of the basis op (the same for every provider)


def basis_flops(v: Variant, direction: str) -> int:
    from ..op.registry import basis_conv2d_backward_flops, basis_conv2d_flops

    c = v.case
    args = ((c.N, c.C_in, c.H, c.W), (v.c_b, c.C_in, c.k, c.k), (c.C_out - v.c_b, v.c_b),
            (c.stride, c.stride), (c.padding, c.padding), (c.dilation, c.dilation), True)
    fwd = basis_conv2d_flops(*args)
    bwd = basis_conv2d_backward_flops(*args, (True, True, True, False))
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[direction]


def basis_bytes(v: Variant, direction: str) -> int:
    """Fewest bytes the fused basis op moves: fwd reads x and the weights and writes y; bwd
    reads dY, x (for d basis), Z (the first C_b output channels, for d coeff) and the weights,
    and writes dx and the weight gradients."""
    c, cb = v.case, v.c_b
    ho, wo = c.out_hw
    e = torch.empty(0, dtype=getattr(torch, v.dtype)).element_size()
    x = c.N * c.C_in * c.H * c.W
    y = c.N * c.C_out * ho * wo
    z = c.N * cb * ho * wo
    w = cb * c.C_in * c.k * c.k + (c.C_out - cb) * cb
    fwd = (x + y + w) * e
    bwd = (y + x + z + x + 2 * w) * e
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[direction]


# --------------------------------------------------------------------------------------------
# Timing


@dataclasses.dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    method: str


def _stats(ms: list[float], method: str) -> Timing:
    a = np.asarray(ms, dtype=np.float64)
    return Timing(float(np.median(a)), float(np.percentile(a, 20)), float(np.percentile(a, 80)),
                  len(ms), method)


@functools.cache
def _flush_buffer(device_index: int) -> torch.Tensor:
    return torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=f"cuda:{device_index}")


def _noop():
    return None


def _reps_for(est_ms: float, budget_ms: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, math.ceil(budget_ms / max(est_ms, 1e-4)))))


def time_call(fn: Callable[[], Any], setup: Callable[[], Any] = _noop, *,
              device: torch.device, warmup_ms: float = 25.0, rep_ms: float = 100.0,
              min_reps: int = 5, max_reps: int = 1000, graph: bool = False,
              graph_step: Callable[[], Any] | None = None) -> Timing:
    """Median and p20/p80 (ms) of ``fn()``; ``setup()`` runs untimed before every call.

    The first call is untimed (it autotunes, benchmarks cuDNN algorithms, compiles), then
    about ``warmup_ms`` of warm-up calls, then about ``rep_ms`` of timed ones (between
    ``min_reps`` and ``max_reps``). CUDA: one pair of CUDA events per call, the L2 cache
    flushed before each; with ``graph=True``, ``graph_step`` (setup and call in one, e.g. a
    rotation inside) is captured several times in one CUDA graph and the replays are timed
    (per call = replay time / calls in the graph). CPU: ``time.perf_counter``."""
    device = torch.device(device)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    setup()
    fn()  # first call: autotune / compile / cudnn.benchmark
    sync()
    # estimate
    t0 = time.perf_counter()
    n_est = 0
    while n_est < 3 and (n_est == 0 or time.perf_counter() - t0 < 0.05):
        setup()
        fn()
        sync()
        n_est += 1
    est = (time.perf_counter() - t0) * 1e3 / n_est
    for _ in range(_reps_for(est, warmup_ms, 1, 100)):
        setup()
        fn()
    sync()
    reps = _reps_for(est, rep_ms, min_reps, max_reps)
    if cuda and graph:
        return _time_graph(graph_step or (lambda: (setup(), fn())), device, est, reps)
    if not cuda:
        ms = []
        for _ in range(reps):
            setup()
            t = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t) * 1e3)
        return _stats(ms, "perf_counter")
    flush = _flush_buffer(device.index if device.index is not None
                          else torch.cuda.current_device())
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        setup()
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    sync()
    return _stats([s.elapsed_time(e) for s, e in zip(starts, ends)], "cuda_events+l2_flush")


def _time_graph(step, device, est_ms, reps) -> Timing:
    calls = int(min(50, max(4, math.ceil(1.0 / max(est_ms, 1e-3)))))
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            step()
    graph.replay()
    torch.cuda.synchronize(device)
    flush = _flush_buffer(device.index if device.index is not None
                          else torch.cuda.current_device())
    reps = max(5, min(reps, 200))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush.zero_()
        starts[i].record()
        graph.replay()
        ends[i].record()
    torch.cuda.synchronize(device)
    del graph
    return _stats([s.elapsed_time(e) / calls for s, e in zip(starts, ends)],
                  f"cuda_graph({calls} calls/replay)+l2_flush")


# --------------------------------------------------------------------------------------------
# Peak rates measured in the same run


def measure_peaks(device: torch.device, dtypes: Iterable[str], quick: bool = False,
                  warmup_ms: float = 25.0, rep_ms: float = 100.0) -> dict:
    """Matmul TFLOP/s per dtype (always bfloat16 too) and copy GB/s (read + write bytes),
    each the median of repeated timings on this device now."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = 8192 if cuda else (512 if quick else 1024)
    out: dict[str, Any] = {"matmul_n": n, "matmul_tflops": {}, "errors": {}}
    for name in dict.fromkeys(["bfloat16", *dtypes]):
        dtype = getattr(torch, name)
        try:
            g = torch.Generator(device=device).manual_seed(0)
            a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
            b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
            t = time_call(lambda a=a, b=b: torch.mm(a, b), device=device, warmup_ms=warmup_ms,
                          rep_ms=rep_ms, min_reps=3 if quick else 10)
            out["matmul_tflops"][name] = 2 * n**3 / (t.median_ms * 1e-3) / 1e12
            del a, b
        except Exception as e:  # e.g. a dtype without a matmul on this device
            out["matmul_tflops"][name] = None
            out["errors"][f"matmul_{name}"] = _short(e)
    nbytes = 2**30 if cuda else (2**24 if quick else 2**26)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = time_call(lambda dst=dst, src=src: dst.copy_(src), device=device,
                  warmup_ms=warmup_ms, rep_ms=rep_ms, min_reps=3 if quick else 10)
    out["copy_bytes"] = nbytes
    out["copy_gbps"] = 2 * nbytes / (t.median_ms * 1e-3) / 1e9
    del src, dst
    if not out["errors"]:
        del out["errors"]
    return out


def _short(e: BaseException, n: int = 300) -> str:
    s = f"{type(e).__name__}: {e}".strip().splitlines()[0] if str(e) else type(e).__name__
    return s[:n]


# --------------------------------------------------------------------------------------------
# Providers


class Skip(Exception):
    """This provider/direction cannot be measured here; the message says why."""


def _fmt(layout: str) -> torch.memory_format:
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


class Problem:
    """Tensors of one :class:`Variant` on a device and, per provider and direction, the
    ``(setup, fn)`` pair to time: ``setup()`` (untimed) rotates the input and, for ``bwd``,
    runs the forward; ``fn()`` is the measured work."""

    def __init__(self, v: Variant, device, *, compile_mode: str | None = "max-autotune",
                 rotate: int | None = None, seed: int = 0):
        self.v = v
        self.device = torch.device(device)
        self.compile_mode = compile_mode
        c, cb = v.case, v.c_b
        dtype = getattr(torch, v.dtype)
        fmt = _fmt(v.layout)
        gen = torch.Generator(device=self.device).manual_seed(seed)

        def mk(*shape, scale=1.0, grad=False):
            t = torch.randn(*shape, device=self.device, dtype=dtype, generator=gen) * scale
            if len(shape) == 4:
                t = t.contiguous(memory_format=fmt)
            return t.requires_grad_(grad)

        ho, wo = c.out_hw
        x_bytes = c.N * c.C_in * c.H * c.W * torch.empty(0, dtype=dtype).element_size()
        if rotate is None:
            rotate = (min(16, max(2, math.ceil(ROTATE_BYTES / max(x_bytes, 1))))
                      if self.device.type == "cuda" else 2)
        self.xs = [mk(c.N, c.C_in, c.H, c.W, grad=True) for _ in range(rotate)]
        self.dys = [mk(c.N, c.C_out, ho, wo) for _ in range(rotate)]
        fan = c.C_in * c.k * c.k
        self.basis = mk(cb, c.C_in, c.k, c.k, scale=fan**-0.5, grad=True)
        self.coeff = mk(c.C_out - cb, cb, scale=cb**-0.5, grad=True)
        self.dense_w = mk(c.C_out, c.C_in, c.k, c.k, scale=fan**-0.5, grad=True)
        self.conv = dict(stride=c.stride, padding=c.padding, dilation=c.dilation)
        self.i = 0
        self._y = None
        self._compiled = None

    # -- the providers: x -> y
    def forward_fn(self, provider: str) -> Callable[[torch.Tensor], torch.Tensor]:
        v, kw = self.v, self.conv
        if provider == "dense_cudnn":
            return lambda x: F.conv2d(x, self.dense_w, None, **kw)
        if provider == "unfused_eager":
            return lambda x: reference.basis_conv2d_reference(x, self.basis, self.coeff, None,
                                                              **kw)
        if provider == "weight_mod":
            return lambda x: reference.weight_modified(x, self.basis, self.coeff, None, **kw)
        if provider == "unfused_compiled":
            if self.compile_mode is None:
                raise Skip("unfused_compiled disabled (--compile-mode none)")
            if self._compiled is None:
                torch.compiler.reset()  # one case's graphs at a time (dynamo's cache limit)
                mode = None if self.compile_mode == "default" else self.compile_mode
                self._compiled = torch.compile(
                    _unfused_pair, mode=mode, fullgraph=True, dynamic=False)
            comp = self._compiled
            return lambda x: comp(x, self.basis, self.coeff, v.case.stride, v.case.padding,
                                  v.case.dilation)
        if provider == "fused":
            why = fused_unavailable(self.xs[0], self.basis, self.coeff, self.conv)
            if why:
                raise Skip(why)
            return lambda x: basis_conv2d(x, self.basis, self.coeff, None, mode="fused", **kw)
        raise ValueError(f"unknown provider {provider!r}: use {', '.join(PROVIDERS)}")

    def params(self, provider: str) -> list[torch.Tensor]:
        if provider == "dense_cudnn":
            return [self.dense_w]
        return [self.basis, self.coeff]

    def _next(self) -> int:
        self.i = (self.i + 1) % len(self.xs)
        return self.i

    def runner(self, provider: str, direction: str):
        """``(setup, fn, graph_step)``: ``graph_step`` (rotation + call in one, for CUDA-graph
        capture) is None where the direction cannot be captured (bwd: its forward is setup)."""
        f = self.forward_fn(provider)
        params = self.params(provider)
        compiled = provider == "unfused_compiled"

        def begin():
            if compiled and self.device.type == "cuda":
                mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
                if mark is not None:
                    mark()

        if direction == "fwd":
            def fn():
                with torch.no_grad():
                    return f(self.xs[self.i])

            def step():
                self._next()
                return fn()

            return (lambda: (begin(), self._next())), fn, step
        if direction == "bwd":
            def setup():
                begin()
                i = self._next()
                self._y = f(self.xs[i])

            def fn():
                return torch.autograd.grad(self._y, [self.xs[self.i], *params],
                                           self.dys[self.i])

            return setup, fn, None
        if direction == "fwd+bwd":
            def fn():
                x = self.xs[self.i]
                return torch.autograd.grad(f(x), [x, *params], self.dys[self.i])

            def step():
                self._next()
                return fn()

            return (lambda: (begin(), self._next())), fn, step
        raise ValueError(f"unknown direction {direction!r}: use {', '.join(DIRECTIONS)}")

    def release(self) -> None:
        self._y = None
        self._compiled = None


def _unfused_pair(x, basis, coeff, stride, padding, dilation):
    return reference.basis_conv2d_reference(x, basis, coeff, None, stride, padding, dilation)


def fused_unavailable(x, basis, coeff, conv: dict) -> str | None:
    """Why the ``fused`` provider would not measure the fused kernel here (None: it would)."""
    from ..op.registry import resolve_backend

    g = check_inputs(x, basis, coeff, None, conv["stride"], conv["padding"], conv["dilation"],
                     True)
    if x.device.type != "cuda":
        return None  # CPU: the op's torch path, stated in the settings
    if g.C_b > MAX_BASIS_CHANNELS:
        return (f"C_b={g.C_b} > {MAX_BASIS_CHANNELS}: the fused kernel does not run this shape "
                "(the op would fall back to the torch path; mode='auto' picks weight)")
    try:
        backend = resolve_backend(x, g)
    except Exception as e:
        return f"the Triton backend cannot run: {_short(e)}"
    if backend != "triton":
        return "the op would run its torch path here, not the Triton kernels " \
               "(TRITONBASIS_BACKEND or an unsupported dtype)"
    return None


def fused_implementation(device: torch.device) -> str:
    from ..op.registry import get_backend, triton_import_error

    if device.type != "cuda":
        return "torch path of the op (conv over C_b filters + 1x1 conv; hand-written backward)"
    err = triton_import_error()
    return (f"Triton kernels (backend={get_backend()})" if err is None
            else f"torch path: triton unavailable ({err})")


# --------------------------------------------------------------------------------------------
# One measurement -> one record


def make_record(v: Variant, direction: str, provider: str, t: Timing, peaks: dict) -> dict:
    flops = basis_flops(v, direction)
    nbytes = basis_bytes(v, direction)
    s = t.median_ms * 1e-3
    peak = (peaks.get("matmul_tflops") or {}).get(v.dtype)
    bw = peaks.get("copy_gbps")
    roof = None
    if peak and bw:
        floor_s = max(flops / (peak * 1e12), nbytes / (bw * 1e9))
        roof = 100.0 * floor_s / s
    return {"case": v.case.name, "shape": v.shape(), "dtype": v.dtype, "layout": v.layout,
            "direction": direction, "provider": provider, "median_ms": t.median_ms,
            "p20_ms": t.p20_ms, "p80_ms": t.p80_ms, "tflops": flops / s / 1e12,
            "gbps": nbytes / s / 1e9, "roofline_pct": roof}


def use_graph(v: Variant, direction: str, device: torch.device, cuda_graphs: str) -> bool:
    if device.type != "cuda" or direction == "bwd" or cuda_graphs == "off":
        return False
    return cuda_graphs == "on" or v.case.out_elems() <= GRAPH_MAX_OUT_ELEMS


def bench_variant(v: Variant, device, providers, directions, peaks, *, compile_mode,
                  cuda_graphs="auto", warmup_ms=25.0, rep_ms=100.0, min_reps=5,
                  log=print) -> tuple[list[dict], list[dict], list[dict]]:
    """All providers x directions of one variant: (records, skipped, notes)."""
    device = torch.device(device)
    records, skipped, notes = [], [], []
    prob = Problem(v, device, compile_mode=compile_mode)
    try:
        for direction in directions:
            for provider in providers:
                where = {"case": v.case.name, "C_b": v.c_b, "dtype": v.dtype,
                         "layout": v.layout, "direction": direction, "provider": provider}
                try:
                    setup, fn, step = prob.runner(provider, direction)
                    graph = use_graph(v, direction, device, cuda_graphs) and step is not None
                    if (graph and provider == "unfused_compiled"
                            and compile_mode in ("max-autotune", "reduce-overhead")):
                        # Inductor captures its own CUDA graphs in these modes; a capture
                        # inside ours would nest graphs
                        graph = False
                        notes.append({**where, "note": f"timed with CUDA events: "
                                      f"mode={compile_mode!r} replays Inductor's own CUDA "
                                      "graphs"})
                    try:
                        t = time_call(fn, setup, device=device, warmup_ms=warmup_ms,
                                      rep_ms=rep_ms, min_reps=min_reps, graph=graph,
                                      graph_step=step)
                    except Skip:
                        raise
                    except Exception as e:
                        if not graph:
                            raise
                        # capture failed (e.g. a provider that syncs): time without a graph
                        notes.append({**where, "note": f"CUDA graph capture failed "
                                      f"({_short(e)}); timed with CUDA events"})
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        t = time_call(fn, setup, device=device, warmup_ms=warmup_ms,
                                      rep_ms=rep_ms, min_reps=min_reps)
                except Skip as e:
                    skipped.append({**where, "reason": str(e)})
                    log(f"  skip {provider:16s} {direction:8s} {e}")
                    continue
                except Exception as e:  # never lose a whole run to one provider
                    skipped.append({**where, "reason": f"error: {_short(e)}"})
                    log(f"  FAIL {provider:16s} {direction:8s} {_short(e)}")
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                        torch.cuda.empty_cache()
                    continue
                rec = make_record(v, direction, provider, t, peaks)
                records.append(rec)
                if t.method != "perf_counter" and not t.method.startswith("cuda_events"):
                    notes.append({**where, "note": f"timed as {t.method}"})
                roof = rec["roofline_pct"]
                log(f"  {provider:16s} {direction:8s} {t.median_ms:9.4f} ms "
                    f"[{t.p20_ms:.4f}, {t.p80_ms:.4f}] {rec['tflops']:8.3f} TFLOP/s "
                    f"{rec['gbps']:8.1f} GB/s "
                    f"{'' if roof is None else f'{roof:5.1f}% roofline'}")
    finally:
        prob.release()
        del prob
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records, skipped, notes


# --------------------------------------------------------------------------------------------
# End to end: resnet18_cifar training step and inference


def _e2e_models(width: float, ratio: float, plan, num_classes: int = 10):
    from ..conversion.convert import convert
    from ..nn.spec import BasisSpec
    from ..recipes.models import resnet18_cifar

    torch.manual_seed(0)
    dense = resnet18_cifar(num_classes=num_classes, width=width)
    all3 = convert(dense, BasisSpec(ratio=ratio, keep_basis=True, init="random"),
                   filter_fn=lambda m, fqn: tuple(m.kernel_size) == (3, 3))
    planned = convert(dense, plan)
    return {"dense": dense, "all_3x3": all3, "plan": planned}


def _mode_counts(model, input_shape, device) -> dict:
    """How many BasisConv2d layers mode='auto' runs fused / weight at an input of
    ``input_shape`` ``(N, C, H, W)`` (the batch matters: the cost model counts pixels)."""
    from ..nn.layer import BasisConv2d
    from ..util.probe import module_calls

    n = int(input_shape[0])
    counts = {"fused": 0, "weight": 0}
    for call in module_calls(model, input_shape, (BasisConv2d,)).values():
        # the decision reads metadata only: a stride-0 view stands in for the batch
        x = torch.empty(1, device=device).expand(n, *call.in_shape)
        counts[call.module.resolved_mode(x)] += 1
    return counts


def bench_end_to_end(device, *, quick: bool, plan=None, plan_label: str = "builtin",
                     ratio: float = 0.25, steps: int | None = None, batch: int | None = None,
                     width: float | None = None, image_size: int | None = None,
                     log=print) -> tuple[list[dict], dict]:
    """Training step (forward, loss, backward, SGD) and inference of resnet18_cifar, dense vs
    every 3x3 conv converted (C_b = ratio C_out, keep-basis, mode auto) vs ``plan``, with bf16
    autocast + channels_last on CUDA (:func:`tritonbasis.recipes.train.measure_step_time`)."""
    from ..recipes.train import count_macs, measure_step_time

    device = torch.device(device)
    cuda = device.type == "cuda"
    batch = batch or (256 if not quick else 8)
    width = width or (1.0 if not quick else 0.125)
    image_size = image_size or (32 if not quick else 16)
    steps = steps or (20 if not quick else 2)
    shape = (batch, 3, image_size, image_size)
    models = _e2e_models(width, ratio, plan if plan is not None else BUILTIN_PLAN)
    records, info = [], {"batch": batch, "width": width, "image_size": image_size,
                         "steps": steps, "ratio_all_3x3": ratio, "plan": plan_label,
                         "plan_spec": _jsonable_plan(plan if plan is not None else BUILTIN_PLAN),
                         "amp": "bf16 autocast + channels_last" if cuda else "off (CPU: fp32)",
                         "variants": {}}
    for name, model in models.items():
        macs = count_macs(model, (3, image_size, image_size))
        try:
            t = measure_step_time(model, shape, steps=steps, device=device,
                                  warmup=3 if not quick else 1, amp=True)
        except Exception as e:
            info["variants"][name] = {"error": _short(e)}
            log(f"  e2e {name}: FAIL {_short(e)}")
            continue
        from ..nn.layer import BasisConv2d

        n_basis = sum(isinstance(m, BasisConv2d) for m in model.modules())
        dev_model = model.to(device)
        modes = _mode_counts(dev_model, shape, device) if n_basis else {}
        info["variants"][name] = {"basis_layers": n_basis, "auto_modes": modes,
                                  "macs_per_image": macs,
                                  "params": sum(p.numel() for p in model.parameters())}
        dtype = "bfloat16" if cuda else "float32"
        layout = "channels_last" if cuda else "contiguous"
        for direction, key, mult in (("fwd", "infer_ms", 1), ("fwd+bwd", "train_step_ms", 3)):
            med = t[key]
            records.append({
                "case": "e2e.resnet18_cifar",
                "shape": {"N": batch, "C_in": 3, "C_out": 10, "C_b": None, "H": image_size,
                          "W": image_size, "k": None, "stride": None, "padding": None,
                          "dilation": None},
                "dtype": dtype, "layout": layout, "direction": direction, "provider": name,
                "median_ms": med, "p20_ms": t[key + "_p20"], "p80_ms": t[key + "_p80"],
                "tflops": 2 * mult * macs * batch / (med * 1e-3) / 1e12,
                "gbps": None, "roofline_pct": None})
        log(f"  e2e {name:8s} train step {t['train_step_ms']:9.3f} ms  inference "
            f"{t['infer_ms']:9.3f} ms  ({n_basis} basis layers, auto modes {modes})")
    return records, info


def _jsonable_plan(plan) -> Any:
    if isinstance(plan, dict):
        return {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in plan.items()}
    return str(plan)


# --------------------------------------------------------------------------------------------
# Provenance and output files


def _repo_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def git_commit() -> tuple[str, bool | None]:
    """(short commit, dirty?) of the checkout this package runs from; ("unknown", None)
    outside a git checkout."""
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, cwd=_repo_dir(), timeout=30)
        if r.returncode != 0 or not r.stdout.strip():
            return "unknown", None
        d = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, cwd=_repo_dir(), timeout=30)
        return r.stdout.strip(), bool(d.stdout.strip()) if d.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def device_description(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({_cpu_model()}, {torch.get_num_threads()} threads)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return s or "unknown"


def claim_result_paths(out_dir, device: torch.device, date: str, commit: str) -> tuple[Path,
                                                                                       Path]:
    """``<out>/<gpu>-<date>-<commit>.json`` and ``.md``, with ``-1``, ``-2``, ... appended
    when taken; the .json is created exclusively so two runs never pick the same name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = slug(torch.cuda.get_device_name(device)) if device.type == "cuda" else "cpu"
    stem = f"{dev}-{date}-{commit}"
    for i in range(10000):
        name = stem if i == 0 else f"{stem}-{i}"
        j, m = out / f"{name}.json", out / f"{name}.md"
        if m.exists():
            continue
        try:
            fd = os.open(j, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return j, m
    raise RuntimeError(f"no free result name for {stem} in {out}")


def write_results(res: dict, json_path: Path, md_path: Path | None = None) -> None:
    atomic_write_text(Path(json_path), json.dumps(res, indent=1) + "\n")
    if md_path is not None:
        atomic_write_text(Path(md_path), markdown(res))


# --------------------------------------------------------------------------------------------
# Markdown


def _f(v, spec=".3f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(res: dict) -> str:
    s = res["settings"]
    peaks = s.get("peaks", {})
    mm = ", ".join(f"{k} {_f(v, '.1f')}" for k, v in peaks.get("matmul_tflops", {}).items())
    lines = [
        f"# tritonbasis bench: {res['device']}", "",
        f"torch {res['torch']}, triton {res['triton']}, commit {res['commit']}"
        f"{' (dirty tree)' if s.get('git_dirty') else ''}, {res['date']}"
        f"{'' if s.get('complete') else ' -- INCOMPLETE (run stopped early)'}", "",
        f"* mode: {'quick' if s.get('quick') else 'full'}; dtypes {', '.join(s['dtypes'])}; "
        f"layouts {', '.join(s['layouts'])}; C_b/C_out {', '.join(s['ratios'])}; "
        f"keep-basis form, no bias",
        f"* fp32: {s['fp32_precision']} (cudnn.allow_tf32={s['tf32']['cudnn']}, "
        f"matmul.allow_tf32={s['tf32']['matmul']}); cudnn.benchmark={s['cudnn_benchmark']}",
        f"* measured peaks: matmul TFLOP/s {mm}; copy {_f(peaks.get('copy_gbps'), '.1f')} GB/s",
        f"* timing: {s['timing']['method']}",
        f"* fused = {s['fused_implementation']}; unfused_compiled = "
        f"torch.compile(mode={s['compile_mode']!r})",
        "* ratio columns: how many times faster this row's provider is than the column's "
        "(column ms / row ms, same run); TFLOP/s on basis FLOPs; roofline % = "
        "max(FLOPs/peak, bytes/bandwidth) / time", "",
    ]
    ops = [r for r in res["records"] if not r["case"].startswith("e2e.")]
    e2e = [r for r in res["records"] if r["case"].startswith("e2e.")]
    providers = [p for p in PROVIDERS if any(r["provider"] == p for r in ops)]
    groups: dict[tuple, dict[str, dict]] = {}
    for r in ops:
        k = (r["case"], r["shape"]["C_b"], r["dtype"], r["layout"], r["direction"])
        groups.setdefault(k, {})[r["provider"]] = r
    if "fused" in providers and groups:
        others = [p for p in providers if p != "fused"]
        lines += ["## fused vs each provider", "",
                  "| case | C_b | dtype | layout | dir | fused ms | "
                  + " | ".join(f"× {p}" for p in others) + " | fused roofline % |",
                  "|---" * (7 + len(others)) + "|"]
        for (case, cb, dtype, layout, d), p in groups.items():
            f = p.get("fused")
            if f is None:
                continue
            ratios = [(_f(p[o]["median_ms"] / f["median_ms"], ".2f") if o in p else "–")
                      for o in others]
            lines.append(f"| {case} | {cb} | {dtype} | {layout} | {d} | "
                         f"{f['median_ms']:.4f} | " + " | ".join(ratios)
                         + f" | {_f(f['roofline_pct'], '.3g')} |")
        lines.append("")
    if groups:
        lines += ["## all providers", "",
                  "| case | C_b | dtype | layout | dir | provider | ms (p20–p80) | TFLOP/s | "
                  "GB/s | roofline % | " + " | ".join(f"÷ {p}" for p in providers) + " |",
                  "|---" * (10 + len(providers)) + "|"]
        for (case, cb, dtype, layout, d), p in groups.items():
            for name in providers:
                r = p.get(name)
                if r is None:
                    continue
                ratios = [(_f(p[o]["median_ms"] / r["median_ms"], ".2f") if o in p else "–")
                          for o in providers]
                lines.append(
                    f"| {case} | {cb} | {dtype} | {layout} | {d} | {name} | "
                    f"{r['median_ms']:.4f} ({r['p20_ms']:.4f}–{r['p80_ms']:.4f}) | "
                    f"{r['tflops']:.3g} | {r['gbps']:.3g} | {_f(r['roofline_pct'], '.3g')} | "
                    + " | ".join(ratios) + " |")
        lines.append("")
    if e2e:
        info = s.get("e2e", {})
        lines += ["## end to end: resnet18_cifar", "",
                  f"batch {info.get('batch')}, width {info.get('width')}, "
                  f"{info.get('image_size')} px, {info.get('amp')}; all_3x3 = every 3x3 conv at "
                  f"C_b = {info.get('ratio_all_3x3')} C_out (keep-basis, mode auto); plan = "
                  f"{info.get('plan')}", "",
                  "| model | direction | ms (p20–p80) | × dense | basis layers | auto modes |",
                  "|---|---|---|---|---|---|"]
        dense = {r["direction"]: r["median_ms"] for r in e2e if r["provider"] == "dense"}
        for r in e2e:
            v = info.get("variants", {}).get(r["provider"], {})
            d = dense.get(r["direction"])
            what = "train step" if r["direction"] == "fwd+bwd" else "inference"
            lines.append(f"| {r['provider']} | {what} | {r['median_ms']:.3f} "
                         f"({r['p20_ms']:.3f}–{r['p80_ms']:.3f}) | "
                         f"{_f(d / r['median_ms'] if d else None, '.2f')} | "
                         f"{v.get('basis_layers', '–')} | {v.get('auto_modes', '–')} |")
        lines.append("")
    if s.get("skipped"):
        lines += ["## not measured", "", "| case | C_b | dtype | layout | dir | provider | why |",
                  "|---|---|---|---|---|---|---|"]
        for k in s["skipped"]:
            lines.append(f"| {k.get('case')} | {k.get('C_b', '–')} | {k.get('dtype', '–')} | "
                         f"{k.get('layout', '–')} | {k.get('direction', '–')} | "
                         f"{k.get('provider', '–')} | {k['reason']} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The runner


def add_arguments(p) -> None:
    """The ``tritonbasis bench`` options (argparse)."""
    p.add_argument("--quick", action="store_true",
                   help="small shapes, few repetitions, tiny end-to-end model (CPU smoke run)")
    p.add_argument("--cases", default=None,
                   help="comma list of case names, groups (resnet18_cifar, resnet50, quick, "
                        "all) or patterns (default: resnet18_cifar,resnet50; quick with "
                        "--quick); --list shows them")
    p.add_argument("--ratios", default=None,
                   help="C_b/C_out, comma list (default 1/8,1/4,1/2; 1/4 with --quick)")
    p.add_argument("--dtype", default=None,
                   help="comma list of bfloat16, float16, float32, or all (default bfloat16 on "
                        "CUDA, float32 on CPU)")
    p.add_argument("--layout", default=None,
                   help="channels_last, contiguous, or all (default channels_last)")
    p.add_argument("--providers", default=None,
                   help=f"comma list of {', '.join(PROVIDERS)} (default all)")
    p.add_argument("--directions", default=None,
                   help="comma list of fwd, bwd, fwd+bwd (default all)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--tf32", choices=["on", "off"], default="on",
                   help="fp32 convolutions and matmuls on TF32 tensor cores (default on, "
                        "PyTorch's conv default; stated in the results)")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode of unfused_compiled (default max-autotune on CUDA, "
                        "default on CPU; 'none' skips the provider)")
    p.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default="auto",
                   help="time fwd/fwd+bwd as CUDA-graph replays: auto = outputs <= 2**22 "
                        "elements")
    p.add_argument("--warmup-ms", type=float, default=None, help="warm-up per measurement")
    p.add_argument("--rep-ms", type=float, default=None, help="timed budget per measurement")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end model timings")
    p.add_argument("--e2e-only", action="store_true", help="only the end-to-end timings")
    p.add_argument("--plan", default=None,
                   help="plan JSON for the end-to-end 'plan' model (default: a built-in plan, "
                        "layers 3-4 at C_b = C_out/4)")
    p.add_argument("--e2e-ratio", type=float, default=0.25,
                   help="C_b/C_out of the all-3x3 model (default 0.25)")
    p.add_argument("--e2e-steps", type=int, default=None,
                   help="timed steps end to end (20; 2 quick)")
    p.add_argument("--out", default="bench/results",
                   help="results folder (default bench/results); files are never overwritten")
    p.add_argument("--list", action="store_true", help="list the cases and exit")


def run_from_args(args, log=print) -> int:
    if args.list:
        for c in CASES:
            ho, wo = c.out_hw
            log(f"{c.name:44s} {c.group:15s} N={c.N:<4d} {c.C_in:4d}->{c.C_out:<4d} "
                f"{c.k}x{c.k} s{c.stride} p{c.padding} {c.H}x{c.W} -> {ho}x{wo}")
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    cuda = device.type == "cuda"
    try:
        cases = select_cases(args.cases, args.quick)
        ratios = parse_ratios(args.ratios, args.quick)
        dtypes = parse_choice(args.dtype, DTYPES, ["bfloat16" if cuda else "float32"],
                               "dtype")
        layouts = parse_choice(args.layout, LAYOUTS, ["channels_last"], "layout")
        providers = parse_choice(args.providers, PROVIDERS, list(PROVIDERS), "provider")
        directions = parse_choice(args.directions, DIRECTIONS, list(DIRECTIONS), "direction")
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if args.no_e2e and args.e2e_only:
        raise SystemExit("give --no-e2e or --e2e-only, not both")
    plan, plan_label = None, "builtin (layers 3-4 conv1/conv2 at C_b = C_out/4, keep-basis)"
    if args.plan:
        from ..conversion.plan import load_plan

        plan, plan_label = load_plan(args.plan), str(args.plan)
    if not cuda and not args.quick and not args.e2e_only and args.cases is None:
        log("note: the full ResNet cases at batch 256/64 on a CPU take a long time; "
            "--quick runs CPU-sized cases")
    compile_mode = args.compile_mode or ("max-autotune" if cuda else "default")
    if compile_mode == "none":
        compile_mode = None
    res = run(device=device, cases=cases, ratios=ratios, dtypes=dtypes, layouts=layouts,
              providers=providers, directions=directions, quick=args.quick,
              tf32=args.tf32 == "on", compile_mode=compile_mode, cuda_graphs=args.cuda_graphs,
              warmup_ms=args.warmup_ms, rep_ms=args.rep_ms, ops=not args.e2e_only,
              e2e=not args.no_e2e, plan=plan, plan_label=plan_label,
              e2e_ratio=args.e2e_ratio, e2e_steps=args.e2e_steps, out=args.out, log=log)
    log("")
    log(markdown(res))
    log(f"wrote {res['settings']['files']['json']} and .md")
    return 0


def run(*, device, cases: list[Case], ratios, dtypes, layouts, providers=PROVIDERS,
        directions=DIRECTIONS, quick: bool = False, tf32: bool = True,
        compile_mode: str | None = "max-autotune", cuda_graphs: str = "auto",
        warmup_ms: float | None = None, rep_ms: float | None = None, ops: bool = True,
        e2e: bool = True, plan=None, plan_label: str = "builtin", e2e_ratio: float = 0.25,
        e2e_steps: int | None = None, out="bench/results", log=print) -> dict:
    """Run the benchmark and write ``<out>/<gpu>-<date>-<commit>.json`` and ``.md`` (the JSON
    is rewritten after every variant, so a stopped run keeps what it measured, marked
    ``settings.complete = false``). Returns the results dict."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    warmup_ms = warmup_ms if warmup_ms is not None else (5.0 if quick else 25.0)
    rep_ms = rep_ms if rep_ms is not None else (20.0 if quick else 100.0)
    min_reps = 3 if quick else 10
    now = dt.datetime.now(dt.timezone.utc)
    commit, dirty = git_commit()
    json_path, md_path = claim_result_paths(out, device, now.strftime("%Y-%m-%d"), commit)
    saved = {"cudnn_benchmark": torch.backends.cudnn.benchmark,
             "cudnn_tf32": torch.backends.cudnn.allow_tf32,
             "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        res = {
            "device": device_description(device),
            "torch": torch.__version__,
            "triton": _triton_version(),
            "commit": commit,
            "date": now.isoformat(timespec="seconds"),
            "settings": {
                "format": FORMAT, "quick": quick, "complete": False, "device": str(device),
                "git_dirty": dirty, "cases": [c.name for c in cases],
                "ratios": [str(r) for r in ratios], "dtypes": list(dtypes),
                "layouts": list(layouts), "providers": list(providers),
                "directions": list(directions), "keep_basis": True, "bias": False,
                "cudnn_benchmark": True, "tf32": {"cudnn": tf32, "matmul": tf32},
                "fp32_precision": "tf32" if (tf32 and cuda) else "ieee",
                "compile_mode": compile_mode if compile_mode else "none (skipped)",
                "compile_mode_note": (
                    None if cuda or compile_mode in (None, "max-autotune")
                    else "CPU run: Inductor's default mode (max-autotune tunes GPU GEMM/conv "
                         "templates; on a CPU it only adds compile time)"),
                "fused_implementation": fused_implementation(device),
                "backend": _backend(),
                "autotune": os.environ.get("TRITONBASIS_AUTOTUNE", "1") != "0",
                "cpu_threads": torch.get_num_threads(),
                "timing": {
                    "method": ("CUDA events per call, L2 flushed (256 MiB) before each; fwd and "
                               "fwd+bwd of outputs <= 2**22 elements as CUDA-graph replays "
                               f"(--cuda-graphs {cuda_graphs})" if cuda
                               else "time.perf_counter per call"),
                    "statistic": "median, p20, p80 over repetitions after warm-up",
                    "warmup_ms": warmup_ms, "rep_ms": rep_ms, "min_reps": min_reps,
                    "cuda_graphs": cuda_graphs if cuda else "n/a (CPU)",
                    "cuda_graph_max_out_elems": GRAPH_MAX_OUT_ELEMS,
                    "l2_flush_bytes": L2_FLUSH_BYTES if cuda else None,
                    "rotating_inputs": f">= 2 buffers, together >= {ROTATE_BYTES >> 20} MiB "
                                       "on CUDA" if cuda else "2 buffers"},
                "figures": {
                    "tflops": "basis FLOPs (the fused op's FLOP formula) / median, for every "
                              "provider",
                    "gbps": "fewest bytes of the basis op / median",
                    "roofline_pct": "100 * max(FLOPs / peak(dtype), bytes / bandwidth) / "
                                    "median, peak and bandwidth measured in this run"},
                "peaks": {}, "skipped": [], "notes": [],
                "files": {"json": str(json_path), "md": str(md_path)},
            },
            "records": [],
        }
        s = res["settings"]
        write_results(res, json_path)
        log(f"tritonbasis bench on {res['device']} (torch {res['torch']}, triton "
            f"{res['triton']}, commit {commit}) -> {json_path}")
        if ops:
            s["peaks"] = measure_peaks(device, dtypes, quick, warmup_ms, rep_ms)
            log(f"peaks: matmul TFLOP/s {s['peaks']['matmul_tflops']}, copy "
                f"{s['peaks']['copy_gbps']:.1f} GB/s")
            for v in variants(cases, ratios, dtypes, layouts):
                log(f"{v.case.name} C_b={v.c_b} {v.dtype} {v.layout}")
                recs, skipped, notes = bench_variant(
                    v, device, providers, directions, s["peaks"], compile_mode=compile_mode,
                    cuda_graphs=cuda_graphs, warmup_ms=warmup_ms, rep_ms=rep_ms,
                    min_reps=min_reps, log=log)
                res["records"] += recs
                s["skipped"] += skipped
                s["notes"] += notes
                write_results(res, json_path)
        if e2e:
            log("end to end: resnet18_cifar")
            try:
                recs, info = bench_end_to_end(device, quick=quick, plan=plan,
                                              plan_label=plan_label, ratio=e2e_ratio,
                                              steps=e2e_steps, log=log)
                res["records"] += recs
                s["e2e"] = info
            except Exception as e:
                s["skipped"].append({"case": "e2e.resnet18_cifar",
                                     "reason": f"error: {_short(e)}"})
                log(f"  e2e FAIL {_short(e)}")
        s["complete"] = True
        write_results(res, json_path, md_path)
        return res
    finally:
        torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]
        torch.backends.cudnn.allow_tf32 = saved["cudnn_tf32"]
        torch.backends.cuda.matmul.allow_tf32 = saved["matmul_tf32"]


def _triton_version() -> str | None:
    try:
        import triton
    except Exception:
        return None
    return triton.__version__


def _backend() -> str:
    from ..op.registry import get_backend

    return get_backend()
