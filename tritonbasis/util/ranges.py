"""Profiler ranges: a ``record_function`` range, and an NVTX range on CUDA when asked."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def layer_range(name: str, nvtx: bool = False) -> Iterator[None]:
    """A ``record_function`` range (and an NVTX range if ``nvtx``) named ``name``."""
    with torch.profiler.record_function(name):
        if nvtx:
            torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            if nvtx:
                torch.cuda.nvtx.range_pop()
