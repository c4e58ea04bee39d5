"""The core needs torch alone: in a process where every extra's modules (numpy, SciPy,
scikit-learn, tqdm, torchvision, matplotlib, onnx...) cannot be imported, the op (forward and
backward against the float64 reference), BasisConv2d, convert / merge and the torch.export
deploy path work; the recipes and the commands that need the [search] extra say so in one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# every module of every extra, and matplotlib ([plots]); test_blocked_is_every_extra
# keeps it in step with tritonbasis.util.extras.EXTRAS
BLOCKED = (
    "numpy", "scipy", "sklearn", "tqdm", "torchvision", "matplotlib",
    "onnx", "onnxscript", "onnxruntime",
)  # fmt: skip

# Swaps sys.meta_path's path finder for one that hides those modules before anything (torch
# included) is imported, as if they were not installed (torch copes without numpy and tqdm),
# then runs the code after it.
BLOCKER = f"""
import importlib.machinery, sys
BLOCKED = {set(BLOCKED)!r}
class NoExtras(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path = [NoExtras if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONWARNINGS"] = "ignore"  # torch warns once that numpy is missing
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=str(ROOT.parent),
    )


def test_blocked_is_every_extra():
    from tritonbasis.util.extras import EXTRAS

    assert {m for mods in EXTRAS.values() for m in mods} <= set(BLOCKED)


def test_blocker_blocks():
    r = _run("import numpy")
    assert r.returncode != 0 and "No module named 'numpy'" in r.stderr, r.stderr


def test_core_runs_without_the_extras():
    r = _run(
        """
        import torch, torch.nn as nn
        import tritonbasis as tb

        torch.manual_seed(0)
        # the op (torch.ops.tritonbasis.*, CPU path), forward and backward vs float64
        for keep in (False, True):
            c_b, c_out = 3, 8
            x = torch.randn(2, 4, 7, 7, requires_grad=True)
            basis = torch.randn(c_b, 4, 3, 3, requires_grad=True)
            coeff = torch.randn(c_out - c_b if keep else c_out, c_b, requires_grad=True)
            y = tb.basis_conv2d(x, basis, coeff, None, padding=1, keep_basis=keep)
            ins = [t.detach().double().requires_grad_() for t in (x, basis, coeff)]
            ref = tb.basis_conv2d_reference(*ins, None, padding=1, keep_basis=keep)
            assert torch.allclose(y.double(), ref, atol=1e-4, rtol=1e-4)
            g = torch.randn_like(ref)
            y.backward(g.float())
            ref.backward(g)
            for a, b in zip((x, basis, coeff), ins):
                assert torch.allclose(a.grad.double(), b.grad, atol=1e-3, rtol=1e-3)

        # BasisConv2d, convert (both forms; keep-basis runs the pivoted QR), merge
        dense = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)
        ).eval()
        plan = {"0": tb.BasisSpec(ratio=0.5), "2": tb.BasisSpec(ratio=0.5, keep_basis=True)}
        cm, report = tb.convert_with_report(dense, plan)
        layers = [m for m in cm.modules() if isinstance(m, tb.BasisConv2d)]
        assert len(layers) == 2 and layers[1].keep_basis, report.table()
        x = torch.randn(2, 3, 8, 8)
        merged = tb.merge(cm)
        assert not any(isinstance(m, tb.BasisConv2d) for m in merged.modules())
        with torch.no_grad():
            y = cm(x)
            assert torch.allclose(merged(x), y, atol=1e-4, rtol=1e-4)
            layer = tb.BasisConv2d(3, 8, 3, basis_channels=2, padding=1)
            assert layer(x).shape == (2, 8, 8, 8)
            # deploy: torch.export keeps the op; decompose lowers it to standard convs
            for m in layers:
                m.mode = "fused"
            ep = tb.deploy.decompose(torch.export.export(cm, (x,)))
            assert torch.allclose(ep.module()(x), y, atol=1e-4, rtol=1e-4)
        try:
            tb.export_onnx(cm, (x,))
        except ImportError as e:
            print("ONNX:", e)

        # the recipes say which extra they need, in one line
        try:
            import tritonbasis.search
        except ModuleNotFoundError as e:
            print("RECIPES:", e)
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        print("CORE OK")
        """
    )
    assert r.returncode == 0, r.stderr
    assert "CORE OK" in r.stdout, r.stdout
    assert "ONNX: torch.onnx.export needs the [onnx] extra" in r.stdout, r.stdout
    assert (
        "RECIPES: tritonbasis.recipes (the search, training, data and models) needs the "
        '[search] extra: pip install "tritonbasis[search]"'
    ) in r.stdout, r.stdout


@pytest.mark.slow
def test_commands_that_need_the_search_extra_say_so_in_one_line():
    code = "from tritonbasis.cli import main; sys.exit(main(sys.argv[1:]))"
    r = _run(code, "search")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.strip() == (
        'tritonbasis search needs the [search] extra: pip install "tritonbasis[search]"'
    ), r.stderr
    r = _run(code, "train", "--epochs", "3")  # its flags are not parsed: still the one line
    assert r.returncode == 1 and r.stderr.strip().startswith("tritonbasis train needs the"), (
        r.stderr
    )
    r = _run(code, "-h")  # every command is still listed
    assert r.returncode == 0, r.stderr
    assert "(needs the [search] extra)" in r.stdout and "demo" in r.stdout, r.stdout
