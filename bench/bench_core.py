"""First measurement of the fused op (issue: core op). Forward and forward+backward at
ResNet18-CIFAR 3x3 layer shapes, C_b = C_out/4, beside the baselines:

* dense_cudnn   -- F.conv2d with C_out filters (cudnn.benchmark=True, channels_last on CUDA)
* unfused_eager -- F.conv2d with C_b filters, then the 1x1 combination (tritonbasis.reference)
* weight_mod    -- W = [B; coeff.B] then one dense conv
* fused         -- tritonbasis.basis_conv2d (Triton on CUDA, the torch path on CPU)

Speedups are ratios within this one run. Results: bench/results/<device>-<date>-<commit>.json
and .md (never overwritten: a suffix is added). On CPU use --quick (small shapes).

    python bench/bench_core.py               # GPU: bf16, channels_last, batch 256
    python bench/bench_core.py --quick       # CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import tritonbasis as tb
from tritonbasis.reference import basis_conv2d_reference, weight_modified

RESNET18_CIFAR = [(64, 32), (128, 16), (256, 8), (512, 4)]  # (channels, pixels) of 3x3 layers


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _timer(fn, device, warmup, reps):
    """Median, p20, p80 in ms. CUDA events on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else times * 9
    return statistics.median(times), q[1], q[7]


def run(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    fmt = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    torch.backends.cudnn.benchmark = True
    shapes = [(16, 8), (32, 8)] if args.quick else RESNET18_CIFAR
    N = args.batch if not args.quick else 8
    records = []
    for C, px in shapes:
        records += _bench_shape(C, px, N, device, dtype, fmt, args)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "commit": _commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"batch": N, "ratio": args.ratio, "dtype": args.dtype,
                     "layout": args.layout, "cudnn_benchmark": True,
                     "tf32": torch.backends.cudnn.allow_tf32, "warmup": args.warmup,
                     "reps": args.reps, "backend": tb.get_backend(), "quick": args.quick},
        "records": records,
    }


def _bench_shape(C, px, N, device, dtype, fmt, args) -> list[dict]:
    cb = C // args.ratio
    gen = torch.Generator().manual_seed(0)

    def mk(*s, scale=1.0):
        return (torch.randn(*s, generator=gen) * scale).to(device, dtype)

    # rotate inputs so caches do not flatter the repeated calls
    xs = [mk(N, C, px, px).contiguous(memory_format=fmt).requires_grad_() for _ in range(3)]
    basis = mk(cb, C, 3, 3, scale=(C * 9) ** -0.5).requires_grad_()
    coeff = mk(C - cb, cb, scale=cb**-0.5).requires_grad_()
    dense_w = mk(C, C, 3, 3, scale=(C * 9) ** -0.5).contiguous(memory_format=fmt)
    dense_w.requires_grad_()
    it = {"i": 0}

    def nx():
        it["i"] = (it["i"] + 1) % len(xs)
        return xs[it["i"]]

    providers = {
        "dense_cudnn": lambda: F.conv2d(nx(), dense_w, None, 1, 1),
        "unfused_eager": lambda: basis_conv2d_reference(nx(), basis, coeff, None, 1, 1),
        "weight_mod": lambda: weight_modified(nx(), basis, coeff, None, 1, 1),
        "fused": lambda: tb.basis_conv2d(nx(), basis, coeff, None, 1, 1, mode="fused"),
    }
    macs = tb.check_inputs(xs[0], basis, coeff, None, 1, 1, 1, True).macs()
    records = []
    for direction in ("fwd", "fwd+bwd"):
        for name, f in providers.items():
            if direction == "fwd":
                def fn(f=f):
                    with torch.no_grad():
                        f()
            else:
                def fn(f=f):
                    f().sum().backward()
            med, p20, p80 = _timer(fn, device, args.warmup, args.reps)
            basis_flops = 2 * macs["fused"] * (1 if direction == "fwd" else 3)
            records.append({
                "case": f"resnet18_cifar_{C}ch_{px}px",
                "shape": {"N": N, "C_in": C, "C_out": C, "C_b": cb, "H": px, "W": px,
                          "k": 3, "stride": 1, "padding": 1, "dilation": 1},
                "dtype": args.dtype, "layout": args.layout, "direction": direction,
                "provider": name, "median_ms": med, "p20_ms": p20, "p80_ms": p80,
                "tflops": basis_flops / (med * 1e-3) / 1e12,
            })
            print(f"{C:4d}ch {px:3d}px {direction:8s} {name:14s} {med:9.3f} ms")
    return records


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def markdown(res: dict) -> str:
    lines = [f"# bench_core: {res['device']}", "",
             f"torch {res['torch']}, triton {res['triton']}, commit {res['commit']}, "
             f"{res['date']}; {res['settings']}", "",
             "| case | direction | dense_cudnn ms | unfused_eager ms | weight_mod ms | fused ms "
             "| fused vs dense | fused vs unfused | fused TFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in res["records"]:
        by.setdefault((r["case"], r["direction"]), {})[r["provider"]] = r
    for (case, d), p in by.items():
        f = p["fused"]["median_ms"]
        lines.append(
            f"| {case} | {d} | {p['dense_cudnn']['median_ms']:.3f} | "
            f"{p['unfused_eager']['median_ms']:.3f} | {p['weight_mod']['median_ms']:.3f} | "
            f"{f:.3f} | {p['dense_cudnn']['median_ms'] / f:.2f}x | "
            f"{p['unfused_eager']['median_ms'] / f:.2f}x | {p['fused']['tflops']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes (CPU smoke run)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="bfloat16 on CUDA, float32 on CPU by default")
    p.add_argument("--layout", default="channels_last",
                   choices=["channels_last", "contiguous"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--ratio", type=int, default=4, help="C_b = C_out / ratio")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    res = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = res["device"].replace(" ", "_").replace("(", "").replace(")", "")
    stem = f"core-{dev}-{res['date'][:10]}-{res['commit']}"
    i = 0
    while (out / f"{stem}{'-' + str(i) if i else ''}.json").exists():
        i += 1  # never overwrite an earlier result
    stem = f"{stem}{'-' + str(i) if i else ''}"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (out / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))
    print(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
