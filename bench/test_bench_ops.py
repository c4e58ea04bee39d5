"""pytest-benchmark tests over the shared case list (bench/cases.py -> tritonbasis.perf.bench).

Not part of the test suite (``python -m pytest`` collects only ``tests/``); run explicitly:

    pytest bench/ --benchmark-only                       # quick cases on CPU, full on CUDA
    TRITONBASIS_BENCH_CASES=resnet18_cifar pytest bench/ --benchmark-only \\
        --benchmark-json bench/results/pytest-benchmark.json

Each test times one (case, C_b, dtype, layout) x provider x direction with
``benchmark.pedantic``: the callable is the runner's own (``Problem.timed``: the input
rotates inside the call; for ``bwd`` the forward graphs are built once beforehand), with CUDA
synchronised inside the timed call; tests are grouped by case and direction so
pytest-benchmark's table puts the providers side by side. Shapes, dtype, layout and the basis
FLOPs / bytes go into ``extra_info``. ``tritonbasis bench`` is the runner with
``triton.testing.do_bench`` (L2 flushed) / ``do_bench_cudagraph``, the measured roofline and
the results files; this is the same work under pytest-benchmark's statistics.
"""

from __future__ import annotations

import cases
import pytest
import torch

from tritonbasis.perf import bench as tbb

SELECTED = cases.selected()
_state: dict = {}


def _problem(v: tbb.Variant) -> tbb.Problem:
    if _state.get("variant") != v:
        old = _state.pop("problem", None)
        if old is not None:
            old.release()
        _state["variant"] = v
        _state["problem"] = tbb.Problem(v, cases.DEVICE, compile_mode=cases.compile_mode())
    return _state["problem"]


def _sync():
    if cases.DEVICE.type == "cuda":
        torch.cuda.synchronize(cases.DEVICE)


@pytest.mark.parametrize(
    ("variant", "provider", "direction"), SELECTED, ids=[f"{v}-{p}-{d}" for v, p, d in SELECTED]
)
def test_basis_conv(benchmark, variant, provider, direction):
    prob = _problem(variant)
    try:
        fn = prob.timed(provider, direction)
    except tbb.Skip as e:
        pytest.skip(str(e))
    for _ in range(3):  # autotune, cuDNN benchmark, compile: before any timed round
        fn()
    _sync()

    def timed():
        fn()
        _sync()

    benchmark.group = f"{variant} {direction}"
    benchmark.extra_info.update(
        {
            "case": variant.case.name,
            "shape": variant.shape(),
            "dtype": variant.dtype,
            "layout": variant.layout,
            "direction": direction,
            "provider": provider,
            "basis_flops": tbb.basis_flops(variant, direction),
            "basis_bytes": tbb.basis_bytes(variant, direction),
            "device": str(cases.DEVICE),
        }
    )
    rounds = 20 if cases.quick() else 50
    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=2, iterations=1)
