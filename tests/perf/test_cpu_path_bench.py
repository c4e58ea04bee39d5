"""bench/cpu_path.py (the CPU path against the stock pair it replaces): every provider computes
the same function and the same gradients as the layer it is timed against (a baseline that
computed something else would make every ratio meaningless), and a tiny run writes its rows
and a markdown table with every provider."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import UNIT, assert_bounded

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
try:
    import cpu_path
finally:
    sys.path.pop(0)


@pytest.mark.parametrize("form", cpu_path.FORMS)
def test_every_provider_computes_the_layers_function_and_gradients(form):
    c = cpu_path._case(16, 6, 3, form)
    x = c["x"]
    outs, grads = {}, {}
    for name, f in (("ours", c["layer"]), ("stock", c["stock"]), ("modules", c["modules"])):
        y = f(x)
        outs[name] = y
        g = torch.autograd.grad(y, c["params"][name], c["gy"])
        # the 1x1 weight's gradient as (C_rest or C_out, C_b) whatever its shape
        grads[name] = [g[0], g[1], g[2].reshape(g[2].shape[0], -1)]
    ref, ref_abs = outs["ours"].detach().double(), outs["ours"].detach().double().abs() + 1
    K = 16 * 9 * (1 + 4)
    for name in ("stock", "modules"):
        assert_bounded(outs[name].detach(), ref, ref_abs, UNIT[torch.float32], K, name)
        for i, (a, b) in enumerate(zip(grads[name], grads["ours"])):
            scale = b.double().abs() + b.double().abs().max()
            assert_bounded(a, b.double(), scale, UNIT[torch.float32], K * 6 * 6, f"{name} d{i}")


def test_tiny_run_reports_every_provider(capsys):
    res = cpu_path.run(rounds=2, iters=3, shapes=[(8, 4, 2)], forms=["keep"], warmup=1)
    assert len(res["rows"]) == 2
    for r in res["rows"]:
        for k in ("ours_ms", "stock_ms", "modules_ms", "ratio", "ratio_modules", "aa"):
            assert r[k] > 0, (k, r)
        for n in cpu_path.PROVIDERS:
            assert len(r["ms"][n]) == 6  # rounds x iters single calls, paired by position
        per_iter = [s / o for s, o in zip(r["ms"]["stock"], r["ms"]["ours"], strict=True)]
        assert r["ratio"] == pytest.approx(sorted(per_iter)[2] / 2 + sorted(per_iter)[3] / 2)
        lo, hi = r["ratio_ci"]
        assert min(per_iter) <= lo <= r["ratio"] <= hi <= max(per_iter)
        assert r["ratio_min"] <= r["ratio_max"]
    md = cpu_path.markdown(res)
    assert "as modules ms" in md and "A/A" in md and md.count("| 8ch@4px, N=2 | keep |") == 2


def test_ratio_stats_pair_by_iteration():
    """The ratio is taken per iteration (paired calls), not from two separate medians: a
    provider twice as slow in every iteration gives exactly 0.5, whatever the drift."""
    import random

    ours = [1.0, 4.0, 2.0, 8.0]
    stock = [t / 2 for t in ours]
    st = cpu_path._ratio_stats(stock, ours, 2, random.Random(0))
    assert st["median"] == st["ci"][0] == st["ci"][1] == 0.5
    assert st["round_min"] == st["round_max"] == 0.5
