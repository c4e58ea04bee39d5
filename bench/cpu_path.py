"""The CPU path against the stock pair it replaces: ``BasisConv2d(mode="fused")`` on CPU vs
``F.conv2d(x, basis)`` then the 1x1 ``F.conv2d`` with the coefficients (+ ``torch.cat`` for
the keep-basis form, + the channel gather for a keep-basis layer with an output permutation,
as converted models have), forward (no grad) and forward+backward (``torch.autograd.grad`` of
x and every parameter, so no gradient accumulation on either side). A third provider runs the
same pair as two ``nn.Conv2d`` modules (a module call each), the form a model holds it in.

Shapes (C_b = C_out / 4, 3x3, padding 1, no bias): 128ch@16px batch 64, 256ch@8px batch 64,
64ch@32px batch 32; forms keep-basis, keep-basis with perm, full.

Timer: ``torch.utils.benchmark.Timer.timeit`` (torch's thread count; wall clock, or with
``--threads 1 --cpu-time`` the process's CPU time, which leaves out the time other jobs hold
the core on a shared machine). A round alternates the providers measurement by
measurement (``--pairs`` each, ``--number`` calls per measurement), so a busy spell hits both
alike; the speed ratio (stock time / ours: >= 1 means the basis conv is at least as fast) is
taken per round from the round's medians (likewise modules time / ours), and its median over
``--rounds`` rounds is reported with its min and max. The machine's load average before and
after, torch's thread count and version and the commit are recorded.

    python bench/cpu_path.py                        # writes bench/results/cpu-path-<date>.*
    python bench/cpu_path.py --rounds 3 --pairs 3 --out /tmp/x   # quicker
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark

import tritonbasis as tb

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(128, 16, 64), (256, 8, 64), (64, 32, 32)]  # (C, H = W, N)
FORMS = ["keep", "keep+perm", "full"]


def _case(C: int, H: int, N: int, form: str) -> dict:
    """The layer, the stock pair's tensors (the same values) and the inputs."""
    g = torch.Generator().manual_seed(C * 1000 + H)
    keep = form != "full"
    layer = tb.BasisConv2d(
        C, C, 3, padding=1, bias=False, basis_channels=C // 4, keep_basis=keep, mode="fused"
    )
    perm = None
    if form == "keep+perm":
        perm = torch.randperm(C, generator=g)
        layer.set_out_perm(perm)
    basis = layer.basis.detach().clone().requires_grad_()
    w1 = layer.coeff.detach().clone()[:, :, None, None].requires_grad_()
    x = torch.randn(N, C, H, H, generator=g, requires_grad=True)
    gy = torch.randn(N, C, H, H, generator=g)
    inv = None if perm is None else torch.argsort(perm)

    def stock(x):
        z = F.conv2d(x, basis, padding=1)
        y = F.conv2d(z, w1)
        if keep:
            y = torch.cat([z, y], dim=1)
        if inv is not None:
            y = y.index_select(1, inv)
        return y

    modules = StockModules(basis, w1, keep, inv)
    return {
        "layer": layer,
        "stock": stock,
        "modules": modules,
        "x": x,
        "gy": gy,
        "params": {
            "ours": [x, layer.basis, layer.coeff],
            "stock": [x, basis, w1],
            "modules": [x, modules.conv.weight, modules.comb.weight],
        },
    }


class StockModules(torch.nn.Module):
    """The same pair as a model holds it: two ``nn.Conv2d`` (+ cat, + gather), with copies of
    the given weights; what a user who writes the pair as layers runs (a module call each)."""

    def __init__(self, basis, w1, keep: bool, inv):
        super().__init__()
        self.conv = torch.nn.Conv2d(basis.shape[1], basis.shape[0], 3, padding=1, bias=False)
        self.comb = torch.nn.Conv2d(w1.shape[1], w1.shape[0], 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(basis)
            self.comb.weight.copy_(w1)
        self.keep = keep
        self.register_buffer("inv", inv)

    def forward(self, x):
        z = self.conv(x)
        y = self.comb(z)
        if self.keep:
            y = torch.cat([z, y], dim=1)
        if self.inv is not None:
            y = y.index_select(1, self.inv)
        return y


def _callables(c: dict) -> dict:
    fns = {"ours": c["layer"], "stock": c["stock"], "modules": c["modules"]}
    out = {}
    for name, f in fns.items():

        def fwd(f=f):
            with torch.no_grad():
                f(c["x"])

        def fwd_bwd(f=f, ps=c["params"][name]):
            torch.autograd.grad(f(c["x"]), ps, c["gy"])

        out[name] = {"fwd": fwd, "fwd+bwd": fwd_bwd}
    return out


def _round_ms(fns: dict, pairs: int, number: int, cpu_time: bool) -> dict:
    """One round: ``pairs`` alternating measurements of each provider (``Timer.timeit(number)``:
    stock, ours, stock, ours, ...), so a busy spell of a shared machine hits both alike;
    the median per provider, in ms."""
    kw = {"timer": time.process_time} if cpu_time else {}
    timers = {
        n: benchmark.Timer(
            stmt="fn()", globals={"fn": f}, num_threads=torch.get_num_threads(), **kw
        )
        for n, f in fns.items()
    }
    got = {n: [] for n in fns}
    for _ in range(pairs):
        for n, t in timers.items():
            got[n].append(t.timeit(number).median * 1e3)
    return {n: statistics.median(v) for n, v in got.items()}


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(
    rounds: int = 5,
    pairs: int = 5,
    number: int = 3,
    shapes=SHAPES,
    forms=FORMS,
    cpu_time: bool = False,
) -> dict:
    res = {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "timer": "process CPU time" if cpu_time else "wall clock",
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "commit": _commit(),
        "date": datetime.date.today().isoformat(),
        "rounds": rounds,
        "pairs_per_round": pairs,
        "calls_per_measurement": number,
        "load_before": os.getloadavg(),
        # glibc malloc settings: its dynamic mmap threshold makes some output-sized
        # allocations fresh mmaps (page faults on first touch, ~8k per fwd+bwd call at
        # 128ch@16px) depending on the order of earlier frees; fixed thresholds remove that
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "rows": [],
    }
    for C, H, N in shapes:
        for form in forms:
            c = _case(C, H, N, form)
            fns = _callables(c)
            for direction in ("fwd", "fwd+bwd"):
                times = {"ours": [], "stock": [], "modules": []}
                for _ in range(rounds):
                    fs = {n: fns[n][direction] for n in ("stock", "ours", "modules")}
                    for name, ms in _round_ms(fs, pairs, number, cpu_time).items():
                        times[name].append(ms)
                ratios = [s / o for s, o in zip(times["stock"], times["ours"])]
                ratios_m = [m / o for m, o in zip(times["modules"], times["ours"])]
                row = {
                    "C": C,
                    "H": H,
                    "N": N,
                    "C_b": C // 4,
                    "form": form,
                    "direction": direction,
                    "ours_ms": statistics.median(times["ours"]),
                    "stock_ms": statistics.median(times["stock"]),
                    "ratio": statistics.median(ratios),
                    "ratio_min": min(ratios),
                    "ratio_max": max(ratios),
                    "modules_ms": statistics.median(times["modules"]),
                    "ratio_modules": statistics.median(ratios_m),
                    "ratio_modules_min": min(ratios_m),
                    "ratio_modules_max": max(ratios_m),
                    "ours_ms_rounds": times["ours"],
                    "stock_ms_rounds": times["stock"],
                    "modules_ms_rounds": times["modules"],
                }
                res["rows"].append(row)
                print(
                    f"{C:4d}ch@{H}px N={N:<3d} {form:10s} {direction:8s} ours "
                    f"{row['ours_ms']:8.2f} ms  stock {row['stock_ms']:8.2f} ms  "
                    f"ratio {row['ratio']:.2f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})  "
                    f"modules {row['modules_ms']:8.2f} ms  ratio {row['ratio_modules']:.2f}",
                    flush=True,
                )
    res["load_after"] = os.getloadavg()
    return res


def markdown(res: dict) -> str:
    lines = [
        f"# CPU path vs the stock pair ({res['date']}, commit {res['commit']})",
        "",
        f"torch {res['torch']}, {res['threads']} threads on {res['cpus']} CPUs "
        f"({res['machine']}); load average {res['load_before'][0]:.2f} before, "
        f"{res['load_after'][0]:.2f} after; {res['timer']}; {res['rounds']} rounds, each "
        f"{res['pairs_per_round']} alternating measurements per provider of "
        f"{res['calls_per_measurement']} calls. Ratio = stock time / BasisConv2d time, per round, "
        "median (min-max) over rounds: >= 1 means the basis conv is at least as fast. "
        "C_b = C_out/4, 3x3, padding 1, no bias, float32, NCHW. GLIBC_TUNABLES: "
        f"{res.get('glibc_tunables') or 'unset (glibc defaults)'}. Stock pair: `F.conv2d` "
        "twice (+ cat, + gather); as modules: the same in two `nn.Conv2d` (a module call "
        "each, as a model holds them).",
        "",
        "| shape | form | direction | BasisConv2d ms | stock pair ms | ratio | as modules ms "
        "| ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        mod = "| |"
        if "modules_ms" in r:
            mod = (
                f"| {r['modules_ms']:.2f} | {r['ratio_modules']:.2f} "
                f"({r['ratio_modules_min']:.2f}-{r['ratio_modules_max']:.2f}) |"
            )
        lines.append(
            f"| {r['C']}ch@{r['H']}px, N={r['N']} | {r['form']} | {r['direction']} | "
            f"{r['ours_ms']:.2f} | {r['stock_ms']:.2f} | {r['ratio']:.2f} "
            f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) {mod}"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pairs", type=int, default=5, help="alternating measurements per round")
    p.add_argument("--number", type=int, default=3, help="calls per measurement")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's own choice)",
    )
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="time by the process's CPU time (needs --threads 1): on a shared "
        "machine this leaves out the time other jobs hold the core",
    )
    p.add_argument(
        "--out",
        default=None,
        help="path stem of the .json / .md (default bench/results/cpu-path-<date>)",
    )
    a = p.parse_args(argv)
    if a.cpu_time and a.threads != 1:
        p.error("--cpu-time needs --threads 1 (CPU time sums over threads)")
    if a.threads:
        torch.set_num_threads(a.threads)
    res = run(a.rounds, a.pairs, a.number, cpu_time=a.cpu_time)
    stem = Path(a.out) if a.out else ROOT / "bench" / "results" / f"cpu-path-{res['date']}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(res, indent=1)), (".md", markdown(res))):
        tmp = stem.with_name(stem.name + suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, stem.with_name(stem.name + suffix))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
