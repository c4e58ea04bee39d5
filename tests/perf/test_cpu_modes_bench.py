"""bench/cpu_modes.py (mode="auto"'s CPU cost model against measurement): the shapes it
collects are resnet18_cifar's convs as the model runs them, both modes compute the same
function, and the score adds up what it claims."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
try:
    import cpu_modes
finally:
    sys.path.pop(0)

pytest.importorskip("torchvision")


def test_shapes_are_the_models_distinct_convs():
    shapes = cpu_modes.conv_shapes([0.125], [8], batch=2)
    keys = [(s["C_in"], s["C_out"], s["k"], s["stride"], s["H"]) for s in shapes]
    assert len(keys) == len(set(keys))
    assert (3, 8, 3, 1, 8) in keys  # the stem at 8 px
    assert (8, 16, 1, 2, 8) in keys  # the first downsample, before its stride
    assert all(s["C_b"] == max(1, s["C_out"] // 4) and s["N"] == 2 for s in shapes)


def test_both_modes_compute_the_same_function():
    s = cpu_modes.conv_shapes([0.125], [8], batch=2)[1]
    fused, weight, x, _ = cpu_modes._layers(s)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), weight(x), rtol=1e-4, atol=1e-5)
    assert fused.mode == "fused" and weight.mode == "weight"


def test_tiny_run_and_score():
    s = cpu_modes.conv_shapes([0.125], [8], batch=2)[:2]
    rows = [cpu_modes.measure(x, iters=2, warmup=0, rng=random.Random(0)) for x in s]
    for r in rows:
        assert r["pick"] in ("fused", "weight")
        for d in ("fwd+bwd", "fwd"):
            assert len(r[d]["ms"]["fused"]) == len(r[d]["ms"]["weight"]) == 2
            lo, hi = r[d]["ci"]
            assert lo <= r[d]["weight_over_fused"] <= hi
    sc = cpu_modes.score(rows)["ms"]
    assert sc["best"] <= min(sc["model"], sc["weight"], sc["fused"]) + 1e-9
    assert sc["weight"] == pytest.approx(sum(r["fwd+bwd"]["weight_ms"] for r in rows))
