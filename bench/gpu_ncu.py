"""Nsight Compute steps of the GPU session (bench/gpu_session.py builds the steps):

  python bench/gpu_ncu.py driver [--channels C --size H --cb C_b ...] [--profile]
      one fused forward layer: autotune, error vs float64, median time; with --profile one
      more call between cudaProfilerStart/Stop (what ncu --profile-from-start off profiles)
  python bench/gpu_ncu.py run --out FILE.json [--set full --export REP] -- DRIVER_ARGS...
      ncu on the driver: by default only the metrics that decide the forward's next change
      (DECIDING), or --set full; the metrics parsed to FILE.json with a digest
  python bench/gpu_ncu.py summary FOLDER
      the metrics of every ``ncu_*_raw.log`` (``ncu --import ... --page raw --csv``) in FOLDER

No torch import at module level: bench/gpu_session_tools.py imports ``find_ncu`` from here.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
PY = sys.executable

# What decides the forward's next change (bench/NOTES.md, v2 forward): L2 bytes
# and L2 throughput (the 9x activation re-read from L2: lever 1), tensor-pipe activity (wgmma
# busy?), instructions issued per SMSP cycle (issue-bound: lever 3), DRAM as the floor, time.
DECIDING = (
    "gpu__time_duration.sum",
    "lts__t_bytes.sum",
    "lts__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram__bytes_read.sum",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed",
    "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_elapsed",
    "sm__inst_executed_pipe_tensor_op_gmma.sum",
    "smsp__inst_executed.sum",
    "smsp__inst_executed.avg.per_cycle_active",  # issue rate per SMSP: 1.0 = issue-bound
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",
)
# Families picked out of a raw page (names as Nsight Compute 2025 spells them; a family
# matches by prefix so a renamed suffix still shows up).
NCU_KEYS = (
    "gpu__time_duration.sum",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "lts__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram__bytes_read.sum",
    "dram__bytes_write.sum",
    "lts__t_bytes.sum",
    "sm__pipe_tensor",
    "sm__inst_executed_pipe_tensor",
    "smsp__inst_executed",
    "launch__registers_per_thread",
    "launch__grid_size",
    "launch__block_size",
    "sm__warps_active.avg.pct_of_peak",
)


def find_ncu() -> str | None:
    found = shutil.which("ncu")
    if found:
        return found
    # The GPU machine's image ships Nsight Compute under /opt, not always on PATH.
    for pat in (
        "/opt/nvidia/nsight-compute/*/ncu",
        "/usr/local/cuda/bin/ncu",
        "/usr/local/cuda-*/bin/ncu",
    ):
        hits = sorted(glob.glob(pat))
        if hits:
            return hits[-1]
    return None


# ------------------------------------------------------------------------------------------
# driver


def cmd_driver(args) -> int:
    """One fused basis-conv forward layer: autotune, check it against float64, time it, then
    (``--profile``) one call between cudaProfilerStart/Stop (ncu --profile-from-start off
    profiles only that call)."""
    import torch

    import tritonbasis
    from tritonbasis.util.timing import time_fn

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32  # CPU path: fp32/fp64
    n, c, h, cb = args.batch, args.channels, args.size, args.cb
    torch.manual_seed(0)
    # random data, never zeros: zeros run faster and hide unwritten outputs
    x = torch.randn(n, c, h, h, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
    basis = (torch.randn(cb, c, 3, 3, device=dev, dtype=dtype) / (9 * c) ** 0.5).to(
        memory_format=torch.channels_last
    )
    coeff = torch.randn(c - cb, cb, device=dev, dtype=dtype) / cb**0.5

    def call():
        return tritonbasis.basis_conv2d(x, basis, coeff, stride=1, padding=1, mode="fused")

    with torch.no_grad():
        y = call()  # autotune happens here, outside the profiled range
        ref = tritonbasis.op.reference.basis_conv2d_reference(
            x.double(), basis.double(), coeff.double(), None, 1, 1, 1, True
        )
        err = ((y.double() - ref).norm() / ref.norm()).item()
        # the one timer (do_bench on CUDA: events per call, L2 flushed; torch.utils.benchmark
        # on CPU), before cudaProfilerStart: ncu profiles none of these calls
        t = time_fn(
            call,
            device=dev,
            warmup_ms=args.warmup_ms,
            rep_ms=args.rep_ms,
            min_time_s=args.rep_ms / 1e3,
        )
        if args.profile and dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStart()
            call()
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()
    print(
        json.dumps(
            {
                "device": str(dev),
                "dtype": str(dtype),
                "N": n,
                "C": c,
                "H": h,
                "C_b": cb,
                "rel_err_vs_fp64": err,
                "median_ms": t.median_ms,
                "p20_ms": t.p20_ms,
                "p80_ms": t.p80_ms,
                "reps": t.reps,
                "method": t.method,
            }
        )
    )
    # bf16 operands land between 1e-3 and 1e-2; fp32 on CPU far under that
    bound = 2e-2 if dtype == torch.bfloat16 else 1e-4
    if not err <= bound:
        print(f"FAIL: relative error {err:.3g} > {bound}", file=sys.stderr)
        return 1
    return 0


def _driver_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--cb", type=int, default=32)
    p.add_argument("--device", default=None)
    p.add_argument("--warmup-ms", type=float, default=25.0, help="warm-up of the timing")
    p.add_argument("--rep-ms", type=float, default=100.0, help="timed budget")
    p.add_argument(
        "--profile", action="store_true", help="one more call between cudaProfilerStart/Stop"
    )
    return p


# ------------------------------------------------------------------------------------------
# run: ncu with the deciding metrics


def known_metrics(ncu: str, wanted=DECIDING) -> tuple[list[str], list[str]]:
    """(kept, dropped): the metrics of ``wanted`` whose base name (before the first '.') this
    ncu lists for the Hopper chip (gh100); names drift between Nsight Compute versions, and one
    unknown name fails the whole run. If the query fails, all are kept."""
    try:
        r = subprocess.run(
            [ncu, "--query-metrics", "--chip", "gh100"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return list(wanted), []
    bases = {ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()}
    if r.returncode != 0 or len(bases) < 50:
        return list(wanted), []
    kept = [m for m in wanted if m.split(".")[0] in bases]
    return kept, [m for m in wanted if m not in kept]


def parse_raw_csv(text: str) -> list[dict]:
    """Kernels of an ``ncu --csv --page raw`` output (a header row with "Kernel Name", a
    units row, one row per kernel; other lines before it are ignored): name and metrics with
    units."""
    rows = [r for r in csv.reader(text.splitlines()) if r]
    hdr = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
    if hdr is None:
        return []
    names = rows[hdr]
    units = rows[hdr + 1] if hdr + 1 < len(rows) else []
    kernels = []
    for r in rows[hdr + 2 :]:
        if len(r) != len(names):
            continue
        rec = dict(zip(names, r))
        pick = {
            k: f"{v} {units[names.index(k)]}".strip() if units else v
            for k, v in rec.items()
            if any(k.startswith(p) for p in NCU_KEYS)
        }
        kernels.append({"kernel": rec.get("Kernel Name"), "metrics": pick})
    return kernels


def _number(v: str) -> float | None:
    try:
        return float(str(v).split()[0].replace(",", ""))
    except (ValueError, IndexError):
        return None


def digest(kernel: dict) -> dict:
    """The deciding figures of one profiled kernel: time, L2 MB and %, tensor-pipe %,
    instructions per active SMSP cycle (1.0 = issue-bound)."""
    m = {k: _number(v) for k, v in kernel.get("metrics", {}).items()}
    d = {"kernel": kernel.get("kernel")}
    for key, name in (
        ("gpu__time_duration.sum", "time"),
        ("lts__t_bytes.sum", "l2_bytes"),
        ("lts__throughput.avg.pct_of_peak_sustained_elapsed", "l2_pct"),
        ("dram__throughput.avg.pct_of_peak_sustained_elapsed", "dram_pct"),
        ("sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed", "tensor_pct"),
        ("sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_elapsed", "gmma_pct"),
    ):
        if m.get(key) is not None:
            d[name] = m[key]
    if m.get("smsp__inst_executed.avg.per_cycle_active") is not None:
        d["ipc_per_smsp"] = m["smsp__inst_executed.avg.per_cycle_active"]
    if m.get("smsp__inst_executed.sum") is not None:
        d["inst"] = m["smsp__inst_executed.sum"]
    return d


def cmd_run(a, driver_args: list[str]) -> int:
    ncu = find_ncu()
    if ncu is None:
        print("ncu not found", file=sys.stderr)
        return 2
    base = [
        ncu,
        "--clock-control",
        "none",
        "--profile-from-start",
        "off",
        "--target-processes",
        "all",
    ]
    driver = [PY, str(HERE), "driver", *driver_args, "--profile"]
    rec: dict = {"ncu": ncu, "driver": driver}
    if a.set:
        cmds = [base + ["--set", a.set, "--export", a.export, "--force-overwrite"] + driver]
    else:
        kept, dropped = known_metrics(ncu)
        rec.update(metrics=kept, dropped_unknown=dropped)
        # the sections are the fallback when a metric name is refused all the same
        cmds = [
            base + ["--metrics", ",".join(kept), "--csv", "--page", "raw"] + driver,
            base
            + [
                "--section",
                "SpeedOfLight",
                "--section",
                "ComputeWorkloadAnalysis",
                "--metrics",
                "lts__t_bytes.sum,smsp__inst_executed.sum",
                "--csv",
                "--page",
                "raw",
            ]
            + driver,
        ]
    rc = None
    for cmd in cmds:
        print("$ " + " ".join(cmd), flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
        sys.stdout.write(r.stdout[-20000:])
        sys.stderr.write(r.stderr[-5000:])
        rc = r.returncode
        rec.setdefault("attempts", []).append({"rc": rc, "cmd": cmd})
        if a.set:
            break
        kernels = parse_raw_csv(r.stdout)
        if rc == 0 and kernels:
            rec["kernels"] = kernels
            rec["digest"] = [digest(k) for k in kernels]
            break
    if a.out:
        tmp = Path(f"{a.out}.tmp")
        tmp.write_text(json.dumps(rec, indent=1) + "\n")
        os.replace(tmp, a.out)
    for d in rec.get("digest", []):
        print(json.dumps(d))
    return 0 if rc == 0 else 1


# ------------------------------------------------------------------------------------------
# summary of raw-page logs (part 4: ncu --import REP --page raw --csv)


def cmd_summary(folder: str) -> int:
    """Pick the throughput / tensor-pipe metrics out of the ``ncu --page raw --csv`` logs."""
    d = Path(folder)
    out: dict = {}
    for log in sorted(d.glob("ncu_*_raw.log")):
        kernels = parse_raw_csv(log.read_text(errors="replace"))
        out[log.stem] = kernels if kernels else {"error": "no CSV header in the log"}
    if not out:
        print("no ncu raw logs (ncu steps skipped or failed)")
        return 0
    (d / "ncu_summary.json").write_text(json.dumps(out, indent=2) + "\n")
    for stem, ks in out.items():
        print(stem)
        for k in ks if isinstance(ks, list) else [ks]:
            print(f"  {k.get('kernel', k)}")
            for m, v in sorted(k.get("metrics", {}).items()):
                print(f"    {m:70s} {v}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: gpu_ncu.py {driver,run,summary} ..."
    if not argv or argv[0] not in ("driver", "run", "summary"):
        print(usage, file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "driver":
        return cmd_driver(_driver_parser("gpu_ncu.py driver").parse_args(rest))
    if cmd == "summary":
        if len(rest) != 1:
            print("usage: gpu_ncu.py summary FOLDER", file=sys.stderr)
            return 2
        return cmd_summary(rest[0])
    own, driver_args = (
        (rest[: rest.index("--")], rest[rest.index("--") + 1 :]) if "--" in rest else (rest, [])
    )
    p = argparse.ArgumentParser(prog="gpu_ncu.py run")
    p.add_argument("--out", default=None, help="metrics JSON")
    p.add_argument("--set", default=None, help="an ncu section set (e.g. full) instead")
    p.add_argument("--export", default=None, help="report path with --set")
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args(own)
    if a.set and not a.export:
        p.error("--set needs --export")
    return cmd_run(a, driver_args)


if __name__ == "__main__":
    sys.exit(main())
