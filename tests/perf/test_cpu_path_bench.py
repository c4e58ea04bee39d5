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
    res = cpu_path.run(rounds=1, pairs=1, number=1, shapes=[(8, 4, 2)], forms=["keep"])
    assert len(res["rows"]) == 2
    for r in res["rows"]:
        for k in ("ours_ms", "stock_ms", "modules_ms", "ratio", "ratio_modules"):
            assert r[k] > 0, (k, r)
        assert r["ratio"] == pytest.approx(r["stock_ms"] / r["ours_ms"])
    md = cpu_path.markdown(res)
    assert "as modules ms" in md and md.count("| 8ch@4px, N=2 | keep |") == 2
