"""The case list shared by ``tritonbasis bench`` (the runner) and the pytest-benchmark tests in
this folder. The cases, providers and directions live in :mod:`tritonbasis.perf.bench` (the
runner is installed with the package and cannot import this folder); this module picks the
subset the pytest-benchmark tests run, from environment variables:

==============================  =============================================================
``TRITONBASIS_BENCH_QUICK``     ``1``: quick CPU-sized cases; ``0``: full; default: quick
                                without CUDA, full with it
``TRITONBASIS_BENCH_CASES``     as ``tritonbasis bench --cases`` (names, groups, patterns)
``TRITONBASIS_BENCH_RATIOS``    C_b / C_out, e.g. ``1/8,1/4,1/2`` (default 1/4)
``TRITONBASIS_BENCH_DTYPES``    default ``bfloat16`` on CUDA, ``float32`` on CPU; ``all``
``TRITONBASIS_BENCH_LAYOUTS``   default ``channels_last``; ``all``
``TRITONBASIS_BENCH_PROVIDERS`` default all five
``TRITONBASIS_BENCH_DIRECTIONS`` default ``fwd,bwd,fwd+bwd``
``TRITONBASIS_BENCH_COMPILE``   torch.compile mode of unfused_compiled (default max-autotune on
                                CUDA, default on CPU; ``none`` skips it)
==============================  =============================================================
"""

from __future__ import annotations

import os

import torch

from tritonbasis.perf.bench import (  # noqa: F401  (re-exported: the shared list)
    CASES,
    DIRECTIONS,
    DTYPES,
    GROUPS,
    LAYOUTS,
    PROVIDERS,
    Case,
    Variant,
    parse_choice,
    parse_ratios,
    select_cases,
    variants,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _env(name: str) -> str | None:
    v = os.environ.get(name)
    return v if v not in (None, "") else None


def quick() -> bool:
    q = _env("TRITONBASIS_BENCH_QUICK")
    return DEVICE.type != "cuda" if q is None else q != "0"


def compile_mode() -> str | None:
    m = _env("TRITONBASIS_BENCH_COMPILE") or (
        "max-autotune" if DEVICE.type == "cuda" else "default"
    )
    return None if m == "none" else m


def selected() -> list[tuple[Variant, str, str]]:
    """(variant, provider, direction) triples, variant-major (so one variant's tensors serve
    all its providers and directions)."""
    q = quick()
    cases = select_cases(_env("TRITONBASIS_BENCH_CASES"), q)
    ratios = parse_ratios(_env("TRITONBASIS_BENCH_RATIOS") or "1/4", q)
    dtypes = parse_choice(
        _env("TRITONBASIS_BENCH_DTYPES"),
        DTYPES,
        ["bfloat16" if DEVICE.type == "cuda" else "float32"],
        "dtype",
    )
    layouts = parse_choice(_env("TRITONBASIS_BENCH_LAYOUTS"), LAYOUTS, ["channels_last"], "layout")
    providers = parse_choice(
        _env("TRITONBASIS_BENCH_PROVIDERS"), PROVIDERS, list(PROVIDERS), "provider"
    )
    directions = parse_choice(
        _env("TRITONBASIS_BENCH_DIRECTIONS"), DIRECTIONS, list(DIRECTIONS), "direction"
    )
    return [
        (v, p, d)
        for v in variants(cases, ratios, dtypes, layouts)
        for d in directions
        for p in providers
    ]
