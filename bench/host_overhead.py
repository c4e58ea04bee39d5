"""Host (Python) overhead per call of the basis op, on CPU with tiny tensors.

At 1x16x8x8 the convolutions themselves take a few microseconds, so what is timed is mostly
the Python between the call and the kernels: validation, backend choice, the custom-op
dispatch, autograd setup. On a GPU that time is paid at every layer of every step (the kernels
are queued asynchronously; a step is host-bound when the layers' Python is slower than their
kernels).

Cases (x = 1x16x8x8 float32, basis (4, 16, 3, 3), coeff (12, 4) (keep-basis) or (16, 4) (full),
padding 1), each under ``torch.no_grad()`` and with grad enabled (parameters and x requiring
grad; forward only):

* ``stock_pair``: ``F.conv2d(x, basis, padding=1)`` then ``F.conv2d(z, coeff[:, :, None, None])``
  (the full form's two stock ops);
* ``stock_pair_cat``: the same plus the ``torch.cat`` the keep-basis form needs;
* ``functional_keep`` / ``functional_full``: ``tb.basis_conv2d(..., mode="fused")`` (in plain
  eager this is the eager route, ``tritonbasis.op.eager``: an ``autograd.Function`` around the
  op's forward/backward bodies; no custom-op dispatch);
* ``eager_route``: ``tritonbasis.op.eager.basis_conv2d`` with the geometry validated beforehand
  (keep-basis): the route alone, without ``basis_conv2d``'s validation and mode handling;
* ``layer_fused`` / ``layer_auto``: ``BasisConv2d(16, 16, 3, basis_channels=4, padding=1)``
  (no bias, to compare with the stock pair) with ``mode="fused"`` / ``"auto"``;
* ``raw_op``: ``torch.ops.tritonbasis.basis_conv2d`` called directly (the op route, which
  ``basis_conv2d`` takes under torch.compile / export / tracing / dispatch modes);
* ``floor_op``: the stock pair + cat inside a bare custom op of the same schema (see
  :func:`_floor_op`): the cost of the custom-op route itself.

Timer: ``torch.utils.benchmark.Timer(...).blocked_autorange(min_run_time=...)``, one thread
(``torch.set_num_threads(1)``). The machine may be shared: every case is timed ``--repeats``
times, interleaved with the others, and the run with the lowest median is kept (its IQR is
reported with it); the load average (``os.getloadavg``) is printed before and after.

    python bench/host_overhead.py                 # table
    python bench/host_overhead.py --json out.json # also the numbers
    python bench/host_overhead.py --profile functional_keep  # cProfile of 10k calls
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys

import torch
import torch.nn.functional as F
from torch.utils import benchmark

import tritonbasis as tb
from tritonbasis.op import eager
from tritonbasis.op.geometry import check_inputs


def _inputs(grad: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 8, 8, generator=g)
    basis = torch.randn(4, 16, 3, 3, generator=g) / 12
    coeff = torch.randn(12, 4, generator=g) / 2
    coeff_full = torch.randn(16, 4, generator=g) / 2
    layers = {}
    for mode in ("fused", "auto"):
        m = tb.BasisConv2d(16, 16, 3, basis_channels=4, padding=1, bias=False, mode=mode)
        m.requires_grad_(grad)
        layers[mode] = m
    for t in (x, basis, coeff, coeff_full):
        t.requires_grad_(grad)
    return {
        "x": x,
        "basis": basis,
        "coeff": coeff,
        "coeff_full": coeff_full,
        "layer_fused": layers["fused"],
        "layer_auto": layers["auto"],
    }


_FLOOR = None


def _floor_op():
    """``hostprobe::pair``: the stock pair + cat inside a ``torch.library.custom_op`` with the
    same 10-argument schema, a fake and an autograd registration as
    ``tritonbasis::basis_conv2d`` (its backward is never run here) -- what the custom-op
    route costs before any tritonbasis code runs: the floor under ``raw_op``."""
    global _FLOOR
    if _FLOOR is not None:
        return _FLOOR

    @torch.library.custom_op("hostprobe::pair", mutates_args=())
    def pair(
        x: torch.Tensor,
        basis: torch.Tensor,
        coeff: torch.Tensor,
        bias: torch.Tensor | None,
        perm: torch.Tensor | None,
        stride: list[int],
        padding: list[int],
        dilation: list[int],
        keep_basis: bool,
        need_z: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.conv2d(x, basis, None, stride, padding, dilation)
        return torch.cat([z, F.conv2d(z, coeff[:, :, None, None])], dim=1), x.new_empty(0)

    @pair.register_fake
    def _(x, basis, coeff, bias, perm, stride, padding, dilation, keep_basis, need_z):
        n, _, h, w = x.shape
        return x.new_empty(n, basis.shape[0] + coeff.shape[0], h, w), x.new_empty(0)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:3])

    pair.register_autograd(lambda ctx, g, _gz: (None,) * 10, setup_context=setup)
    _FLOOR = torch.ops.hostprobe.pair.default
    return _FLOOR


def cases(grad: bool) -> dict:
    """name -> zero-argument callable (one forward call)."""
    v = _inputs(grad)
    x, basis, coeff, coeff_full = v["x"], v["basis"], v["coeff"], v["coeff_full"]
    w1 = coeff[:, :, None, None]
    op = torch.ops.tritonbasis.basis_conv2d
    floor = _floor_op()
    g = check_inputs(x, basis, coeff, None, 1, 1, 1, True)

    def stock_pair():
        return F.conv2d(F.conv2d(x, basis, padding=1), w1)

    def stock_pair_cat():
        z = F.conv2d(x, basis, padding=1)
        return torch.cat([z, F.conv2d(z, w1)], dim=1)

    return {
        "stock_pair": stock_pair,
        "stock_pair_cat": stock_pair_cat,
        "functional_keep": lambda: tb.basis_conv2d(
            x, basis, coeff, None, 1, 1, 1, True, mode="fused"
        ),
        "functional_full": lambda: tb.basis_conv2d(
            x, basis, coeff_full, None, 1, 1, 1, False, mode="fused"
        ),
        "eager_route": lambda: eager.basis_conv2d(x, basis, coeff, None, None, g, False),
        "layer_fused": lambda: v["layer_fused"](x),
        "layer_auto": lambda: v["layer_auto"](x),
        "raw_op": lambda: op(x, basis, coeff, None, None, [1, 1], [1, 1], [1, 1], True, False),
        "floor_op": lambda: floor(x, basis, coeff, None, None, [1, 1], [1, 1], [1, 1], True, False),
    }


def time_once(fn, grad: bool, min_run_time: float) -> dict:
    """One blocked_autorange run: median and IQR in us."""
    with torch.enable_grad() if grad else torch.no_grad():
        fn()  # warm: first-call work (perm checks, memo fills) is not per-call cost
        t = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=1)
        m = t.blocked_autorange(min_run_time=min_run_time)
    return {
        "median_us": m.median * 1e6,
        "iqr_us": m.iqr * 1e6,
        "runs": len(m.times),
        "calls": m.number_per_run * len(m.times),
    }


def run(min_run_time: float = 0.2, repeats: int = 5, only=None) -> dict:
    """Every case ``repeats`` times, interleaved (case 1, 2, ..., then again), so a slow phase
    of a shared machine hits every case alike; each case keeps its lowest-median run."""
    torch.set_num_threads(1)
    out = {
        "load_before": os.getloadavg(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "repeats": repeats,
        "min_run_time_s": min_run_time,
        "rows": {},
    }
    todo = {}
    for grad in (False, True):
        for name, fn in cases(grad).items():
            if not only or name in only:
                todo[f"{name}/{'grad' if grad else 'no_grad'}"] = (fn, grad)
    for _ in range(repeats):
        for key, (fn, grad) in todo.items():
            row = time_once(fn, grad, min_run_time)
            best = out["rows"].get(key)
            if best is None or row["median_us"] < best["median_us"]:
                out["rows"][key] = row
    out["load_after"] = os.getloadavg()
    return out


def table(res: dict) -> str:
    lines = [
        f"torch {res['torch']}, python {res['python']}, 1 thread; load average "
        f"{res['load_before'][0]:.2f} before, {res['load_after'][0]:.2f} after",
        f"{'case':28s} {'median us':>10s} {'IQR us':>8s} {'vs stock':>9s}  (stock: the pair, "
        "+ cat for the keep-basis cases)",
    ]
    for key, r in res["rows"].items():
        name, grad = key.split("/")
        base = "stock_pair" if name in ("stock_pair", "functional_full") else "stock_pair_cat"
        stock = res["rows"].get(f"{base}/{grad}")
        diff = f"{r['median_us'] - stock['median_us']:+9.1f}" if stock else ""
        lines.append(f"{key:28s} {r['median_us']:10.1f} {r['iqr_us']:8.1f} {diff}")
    return "\n".join(lines)


def profile(name: str, calls: int = 10_000, grad: bool = False, top: int = 30) -> None:
    torch.set_num_threads(1)
    fn = cases(grad)[name]
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        fn()
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(calls):
            fn()
        pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(top)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--min-run-time", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", nargs="*", default=None, help="case names (without /grad)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    p.add_argument("--profile", default=None, help="cProfile 10k calls of this case instead")
    p.add_argument("--grad", action="store_true", help="with --profile: grad enabled")
    a = p.parse_args(argv)
    if a.profile:
        profile(a.profile, grad=a.grad)
        return 0
    res = run(a.min_run_time, a.repeats, a.only)
    print(table(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
