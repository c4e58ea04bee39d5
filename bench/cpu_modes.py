"""``mode="auto"``'s CPU cost model against measurement: for every distinct conv shape of
``resnet18_cifar`` at several widths and image sizes, ``BasisConv2d`` in ``mode="fused"`` (the
CPU path) and ``mode="weight"`` (one dense conv of the rebuilt weight) are timed on the same
parameters and inputs, and the model's pick (:func:`tritonbasis.nn.modes.decide` with no
timings and no tuning cache) is scored against the faster one per shape.

Shapes: each conv's input as the model runs it (batch ``--batch``, default 64), C_b = C_out/4
(at least 1), keep-basis, float32, NCHW; a shape met at an earlier width or size is not
repeated. Timing: paired single calls as in ``bench/cpu_path.py`` (each iteration calls both
modes once, in a random order; the ratio weight / fused per iteration, median with a 95 %
bootstrap interval), forward+backward (``torch.autograd.grad`` of x, basis and coeff) and
forward (no grad). The score: the summed forward+backward time of the model's picks, of the
per-shape best, of always-weight and always-fused, and the picks more than 10 % slower than
the better mode.

    python bench/cpu_modes.py                  # writes bench/results/cpu-modes-<date>.*
    python bench/cpu_modes.py --widths 0.125 --sizes 8 --iters 5 --out /tmp/x   # quicker
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

import tritonbasis as tb
from tritonbasis.nn import modes
from tritonbasis.op.geometry import check_inputs

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    from cpu_path import _commit, _median_ci, compact_json, write_results
finally:
    sys.path.pop(0)

ROOT = Path(__file__).resolve().parents[1]


def conv_shapes(widths, sizes, batch: int) -> list[dict]:
    """Distinct conv input shapes of resnet18_cifar: (C_in, C_out, k, stride, padding, H)."""
    from tritonbasis.recipes.models import resnet18_cifar

    seen, out = set(), []
    for w in widths:
        model = resnet18_cifar(width=w).eval()
        for px in sizes:
            got = []
            hooks = [
                m.register_forward_pre_hook(lambda m, a, got=got: got.append((m, a[0].shape)))
                for m in model.modules()
                if isinstance(m, torch.nn.Conv2d)
            ]
            with torch.no_grad():
                model(torch.zeros(1, 3, px, px))
            for h in hooks:
                h.remove()
            for m, shape in got:
                key = (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
                key = (*key, shape[-1])
                if key in seen:
                    continue
                seen.add(key)
                out.append(
                    dict(zip(("C_in", "C_out", "k", "stride", "padding", "H"), key), width=w, px=px)
                )
    for s in out:
        s["N"] = batch
        s["C_b"] = max(1, s["C_out"] // 4)
    return out


def _layers(s: dict) -> tuple:
    """The same basis conv in both modes (shared parameter values), an input, a gradient."""
    g = torch.Generator().manual_seed(s["C_in"] * 7919 + s["C_out"] * 31 + s["H"])
    fused, weight = (
        tb.BasisConv2d(
            s["C_in"],
            s["C_out"],
            s["k"],
            stride=s["stride"],
            padding=s["padding"],
            bias=False,
            basis_channels=s["C_b"],
            keep_basis=True,
            mode=mode,
        )
        for mode in ("fused", "weight")
    )
    weight.load_state_dict(fused.state_dict())
    x = torch.randn(s["N"], s["C_in"], s["H"], s["H"], generator=g, requires_grad=True)
    with torch.no_grad():
        y = fused(x)
    gy = torch.randn(y.shape, generator=g)
    return fused, weight, x, gy


def _pick(s: dict, x, layer) -> str:
    """The cost model's choice for this call (no timings, no tuning cache)."""
    geo = check_inputs(
        x, layer.basis, layer.coeff, None, layer.stride, layer.padding, layer.dilation, True
    )
    return modes._model("cpu", geo.C_in, geo.C_b, geo.C_rest, geo.C_out, geo.KH, geo.KW, geo.pixels)


def measure(s: dict, iters: int, warmup: int, rng: random.Random) -> dict:
    fused, weight, x, gy = _layers(s)
    fns = {}
    for name, layer in (("fused", fused), ("weight", weight)):

        def fwd(layer=layer):
            with torch.no_grad():
                layer(x)

        def fwd_bwd(layer=layer):
            torch.autograd.grad(layer(x), (x, layer.basis, layer.coeff), gy)

        fns[name] = {"fwd": fwd, "fwd+bwd": fwd_bwd}
    row = dict(s, pick=_pick(s, x, fused))
    for direction in ("fwd+bwd", "fwd"):
        fs = {n: fns[n][direction] for n in ("fused", "weight")}
        for f in fs.values():
            for _ in range(warmup):
                f()
        ms = {n: [] for n in fs}
        names = list(fs)
        for _ in range(iters):
            rng.shuffle(names)
            for n in names:
                t0 = time.perf_counter()
                fs[n]()
                ms[n].append((time.perf_counter() - t0) * 1e3)
        ratios = [w / f for w, f in zip(ms["weight"], ms["fused"], strict=True)]
        med, lo, hi = _median_ci(ratios, rng)
        row[direction] = {
            "fused_ms": statistics.median(ms["fused"]),
            "weight_ms": statistics.median(ms["weight"]),
            "weight_over_fused": med,
            "ci": [lo, hi],
            "ms": ms,
        }
    return row


def score(rows: list, direction: str = "fwd+bwd") -> dict:
    """Summed median times of the model's picks, of the per-shape best, of always one mode;
    the picks more than 10 % slower than the other mode."""
    tot = {"model": 0.0, "best": 0.0, "weight": 0.0, "fused": 0.0}
    wrong = []
    for r in rows:
        d = r[direction]
        f, w = d["fused_ms"], d["weight_ms"]
        better = "fused" if f <= w else "weight"
        tot["model"] += f if r["pick"] == "fused" else w
        tot["best"] += f if better == "fused" else w
        tot["weight"] += w
        tot["fused"] += f
        slow = w / f if r["pick"] == "weight" else f / w
        if r["pick"] != better and slow > 1.1:
            wrong.append({"shape": _name(r), "pick": r["pick"], "slower_by": slow})
    return {"ms": tot, "wrong_over_10pct": wrong}


def _name(r: dict) -> str:
    return (
        f"{r['C_in']}->{r['C_out']} {r['k']}x{r['k']}/{r['stride']} @{r['H']}px "
        f"(w {r['width']}, {r['px']}px)"
    )


def markdown(res: dict) -> str:
    sc = res["score"]
    t = sc["ms"]
    lines = [
        f"# mode=auto's CPU cost model vs measurement ({res['date']}, commit {res['commit']})",
        "",
        f"torch {res['torch']}, {res['threads']} threads on {res['cpus']} CPUs; load average "
        f"{res['load_before'][0]:.2f} before, {res['load_after'][0]:.2f} after; batch "
        f"{res['batch']}, C_b = C_out/4, keep-basis, float32, NCHW; {res['iters']} paired "
        "iterations per shape and direction. Ratio = weight time / fused time per iteration "
        "(median [95 %]): > 1 means fused is faster. GLIBC_TUNABLES: "
        f"{res.get('glibc_tunables') or 'unset (glibc defaults)'}.",
        "",
        f"Summed fwd+bwd over {len(res['rows'])} shapes: the model's picks "
        f"{t['model']:.1f} ms ({100 * (t['model'] / t['best'] - 1):+.1f} % over the per-shape "
        f"best {t['best']:.1f} ms); always weight {t['weight']:.1f} ms; always fused "
        f"{t['fused']:.1f} ms. Picks > 10 % slower than the other mode: "
        f"{len(sc['wrong_over_10pct'])}.",
        "",
        "| shape | C_b | model | fwd+bwd fused ms | weight ms | weight/fused | fwd fused ms | "
        "weight ms | weight/fused |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        a, b = r["fwd+bwd"], r["fwd"]
        lines.append(
            f"| {_name(r)} | {r['C_b']} | {r['pick']} | {a['fused_ms']:.2f} | "
            f"{a['weight_ms']:.2f} | {a['weight_over_fused']:.2f} [{a['ci'][0]:.2f}-"
            f"{a['ci'][1]:.2f}] | {b['fused_ms']:.3f} | {b['weight_ms']:.3f} | "
            f"{b['weight_over_fused']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=15, help="paired iterations per shape")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="path stem (default bench/results/cpu-modes-<date>)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rng = random.Random(0)
    res = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "commit": _commit(),
        "date": datetime.date.today().isoformat(),
        "batch": a.batch,
        "iters": a.iters,
        "load_before": os.getloadavg(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "rows": [],
    }
    shapes = conv_shapes(a.widths, a.sizes, a.batch)
    for i, s in enumerate(shapes):
        r = measure(s, a.iters, a.warmup, rng)
        res["rows"].append(r)
        d = r["fwd+bwd"]
        print(
            f"[{i + 1}/{len(shapes)}] {_name(r):40s} C_b {r['C_b']:3d} model {r['pick']:6s} "
            f"fwd+bwd fused {d['fused_ms']:8.2f} weight {d['weight_ms']:8.2f} ms  "
            f"weight/fused {d['weight_over_fused']:.2f}",
            flush=True,
        )
    res["load_after"] = os.getloadavg()
    res["score"] = score(res["rows"])
    res["score_fwd"] = score(res["rows"], "fwd")
    stem = Path(a.out) if a.out else ROOT / "bench" / "results" / f"cpu-modes-{res['date']}"
    print(markdown(res).split("\n\n")[2])
    write_results(stem, _dumps(res), markdown(res))
    return 0


def _dumps(res: dict) -> str:
    """JSON with the per-call times rounded to 0.1 us, each list on one line."""
    for r in res["rows"]:
        for d in ("fwd+bwd", "fwd"):
            r[d]["ms"] = {n: [round(t, 4) for t in v] for n, v in r[d]["ms"].items()}
    return compact_json(res)


if __name__ == "__main__":
    raise SystemExit(main())
