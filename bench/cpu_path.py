"""The CPU path against the stock pair it replaces: ``BasisConv2d(mode="fused")`` on CPU vs
``F.conv2d(x, basis)`` then the 1x1 ``F.conv2d`` with the coefficients (+ ``torch.cat`` for
the keep-basis form, + the channel gather for a keep-basis layer with an output permutation,
as converted models have), forward (no grad) and forward+backward (``torch.autograd.grad`` of
x and every parameter, so no gradient accumulation on either side). A third provider runs the
same pair as two ``nn.Conv2d`` modules (a module call each), the form a model holds it in.

Shapes (C_b = C_out / 4, 3x3, padding 1, no bias): 128ch@16px batch 64, 256ch@8px batch 64,
64ch@32px batch 32; forms keep-basis, keep-basis with perm, full.

Timer: paired single calls. An iteration calls every provider once, in a fresh random order
(``time.perf_counter``, or with ``--threads 1 --cpu-time`` the process's CPU time, which
leaves out the time other jobs hold the core on a shared machine), so each ratio compares calls
made within milliseconds of each other and a busy spell or a slower phase of a shared VM hits
every provider alike. The speed ratio (stock time / ours: >= 1 means the basis conv is at least
as fast) is taken per iteration; reported: its median over all iterations with a 95 %
bootstrap interval of that median, and the per-round medians' min and max (``--rounds``
rounds of ``--iters`` iterations). An A/A control -- the stock pair timed against itself as a
fourth provider -- shows the method's own spread beside every row. The machine's load average
before and after, torch's thread count and version, glibc's malloc settings and the commit are
recorded.

    python bench/cpu_path.py                        # writes bench/results/cpu-path-<date>.*
    python bench/cpu_path.py --rounds 3 --iters 20 --out /tmp/x   # quicker
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import tritonbasis as tb
from tritonbasis.util.fileio import atomic_write_text

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


PROVIDERS = ("ours", "stock", "modules", "stock_aa")


def _callables(c: dict) -> dict:
    fns = {"ours": c["layer"], "stock": c["stock"], "modules": c["modules"], "stock_aa": c["stock"]}
    params = dict(c["params"], stock_aa=c["params"]["stock"])
    out = {}
    for name, f in fns.items():

        def fwd(f=f):
            with torch.no_grad():
                f(c["x"])

        def fwd_bwd(f=f, ps=params[name]):
            torch.autograd.grad(f(c["x"]), ps, c["gy"])

        out[name] = {"fwd": fwd, "fwd+bwd": fwd_bwd}
    return out


def _paired_ms(fns: dict, iters: int, rng: random.Random, cpu_time: bool) -> dict:
    """``iters`` iterations, each calling every provider once in a fresh random order: the
    times in ms, per provider, in iteration order (so entry i of two providers pair up)."""
    clock = time.process_time if cpu_time else time.perf_counter
    got = {n: [] for n in fns}
    names = list(fns)
    for _ in range(iters):
        rng.shuffle(names)
        for n in names:
            t0 = clock()
            fns[n]()
            got[n].append((clock() - t0) * 1e3)
    return got


def _median_ci(values: list, rng: random.Random, boots: int = 1000) -> tuple:
    """The median and a 95 % bootstrap interval of it (percentile method)."""
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(boots))
    return statistics.median(values), meds[int(0.025 * boots)], meds[int(0.975 * boots) - 1]


def _ratio_stats(num: list, den: list, per_round: int, rng: random.Random) -> dict:
    """Per-iteration ratios num/den: median, 95 % interval, per-round medians' min and max."""
    r = [a / b for a, b in zip(num, den, strict=True)]
    med, lo, hi = _median_ci(r, rng)
    rounds = [statistics.median(r[i : i + per_round]) for i in range(0, len(r), per_round)]
    return {"median": med, "ci": [lo, hi], "round_min": min(rounds), "round_max": max(rounds)}


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
    iters: int = 40,
    shapes=SHAPES,
    forms=FORMS,
    cpu_time: bool = False,
    warmup: int = 3,
    seed: int = 0,
) -> dict:
    rng = random.Random(seed)
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
        "iters_per_round": iters,
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
                fs = {n: fns[n][direction] for n in PROVIDERS}
                for f in fs.values():
                    for _ in range(warmup):
                        f()
                times = {n: [] for n in PROVIDERS}
                for _ in range(rounds):
                    for name, ms in _paired_ms(fs, iters, rng, cpu_time).items():
                        times[name].extend(ms)
                ours = _ratio_stats(times["stock"], times["ours"], iters, rng)
                mods = _ratio_stats(times["modules"], times["ours"], iters, rng)
                aa = _ratio_stats(times["stock"], times["stock_aa"], iters, rng)
                row = {
                    "C": C,
                    "H": H,
                    "N": N,
                    "C_b": C // 4,
                    "form": form,
                    "direction": direction,
                    "ours_ms": statistics.median(times["ours"]),
                    "stock_ms": statistics.median(times["stock"]),
                    "modules_ms": statistics.median(times["modules"]),
                    "ratio": ours["median"],
                    "ratio_ci": ours["ci"],
                    "ratio_min": ours["round_min"],
                    "ratio_max": ours["round_max"],
                    "ratio_modules": mods["median"],
                    "ratio_modules_ci": mods["ci"],
                    "ratio_modules_min": mods["round_min"],
                    "ratio_modules_max": mods["round_max"],
                    "aa": aa["median"],
                    "aa_ci": aa["ci"],
                    "ms": times,
                }
                res["rows"].append(row)
                print(
                    f"{C:4d}ch@{H}px N={N:<3d} {form:10s} {direction:8s} ours "
                    f"{row['ours_ms']:8.2f} ms  stock {row['stock_ms']:8.2f} ms  "
                    f"ratio {row['ratio']:.3f} ({ours['ci'][0]:.3f}-{ours['ci'][1]:.3f})  "
                    f"modules {row['ratio_modules']:.3f}  A/A {row['aa']:.3f} "
                    f"({aa['ci'][0]:.3f}-{aa['ci'][1]:.3f})",
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
        f"{res['load_after'][0]:.2f} after; {res['timer']}; {res['rounds']} rounds of "
        f"{res['iters_per_round']} iterations, each calling every provider once in a random "
        "order. Ratio = stock time / BasisConv2d time per iteration: median over all "
        "iterations [95 % bootstrap interval] and the per-round medians' (min-max); >= 1 means "
        "the basis conv is at least as fast. A/A: the stock pair against itself, the method's "
        "own spread. C_b = C_out/4, 3x3, padding 1, no bias, float32, NCHW. GLIBC_TUNABLES: "
        f"{res.get('glibc_tunables') or 'unset (glibc defaults)'}. Stock pair: `F.conv2d` "
        "twice (+ cat, + gather); as modules: the same in two `nn.Conv2d` (a module call "
        "each, as a model holds them).",
        "",
        "| shape | form | direction | BasisConv2d ms | stock pair ms | ratio | as modules ms "
        "| ratio | A/A |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lo, hi = r["ratio_ci"]
        mlo, mhi = r["ratio_modules_ci"]
        alo, ahi = r["aa_ci"]
        lines.append(
            f"| {r['C']}ch@{r['H']}px, N={r['N']} | {r['form']} | {r['direction']} | "
            f"{r['ours_ms']:.2f} | {r['stock_ms']:.2f} | {r['ratio']:.3f} [{lo:.3f}-{hi:.3f}] "
            f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {r['modules_ms']:.2f} | "
            f"{r['ratio_modules']:.3f} [{mlo:.3f}-{mhi:.3f}] | {r['aa']:.3f} "
            f"[{alo:.3f}-{ahi:.3f}] |"
        )
    return "\n".join(lines) + "\n"


def _dumps(res: dict) -> str:
    """JSON, indented, with each list of numbers on one line (the per-call times: 800 per
    row) and times rounded to 0.1 us."""
    for r in res["rows"]:
        r["ms"] = {n: [round(t, 4) for t in v] for n, v in r["ms"].items()}
    return compact_json(res)


def write_results(stem: Path, json_text: str, md_text: str) -> None:
    """``<stem>.json`` and ``<stem>.md``, each written atomically."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json_text), (".md", md_text)):
        atomic_write_text(stem.with_name(stem.name + suffix), text)
    print(f"wrote {stem}.json and .md")


def compact_json(obj) -> str:
    """``json.dumps(obj, indent=1)`` with every list of numbers on one line."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[\s*([-0-9.e+,\s]+?)\s*\]", lambda m: "[" + " ".join(m[1].split()) + "]", text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--iters", type=int, default=40, help="iterations per round (each: every provider once)"
    )
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
    res = run(a.rounds, a.iters, cpu_time=a.cpu_time)
    stem = Path(a.out) if a.out else ROOT / "bench" / "results" / f"cpu-path-{res['date']}"
    write_results(stem, _dumps(res), markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
