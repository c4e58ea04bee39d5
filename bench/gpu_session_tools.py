"""The helper commands the GPU-session steps run (bench/gpu_session.py builds the steps):

  python bench/gpu_session_tools.py install [--force]    pip install -e . (or a copy)
  python bench/gpu_session_tools.py env PATH             environment facts -> JSON
  python bench/gpu_session_tools.py write-plan PATH      the layer2-4 plan of part 3
  python bench/gpu_session_tools.py ncu-driver [...]     one fused forward layer for ncu
  python bench/gpu_session_tools.py ncu-summary FOLDER   metrics from the ncu raw CSV logs

Each runs as its own process (a step), so it imports torch / tritonbasis only when it needs
them: the runner never holds CUDA.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
# Layers 2-4 conv1/conv2 (every 3x3 conv outside layer1) at C_b = C_out/4, keep-basis: the
# issue's "all-3x3 of layer2-4" model (the bench's own all_3x3 also converts layer1).
PLAN_L234 = {"re:layer[234]\\..*conv[12]": {"ratio": 0.25, "keep_basis": True},
             "_default": None}
COMMANDS = ("install", "env", "write-plan", "ncu-driver", "ncu-summary")


def find_ncu() -> str | None:
    found = shutil.which("ncu")
    if found:
        return found
    # The device image ships Nsight Compute under /opt (KINDS.md); not always on PATH.
    for pat in ("/opt/nvidia/nsight-compute/*/ncu", "/usr/local/cuda/bin/ncu",
                "/usr/local/cuda-*/bin/ncu"):
        hits = sorted(glob.glob(pat))
        if hits:
            return hits[-1]
    return None


def importable(mod: str, pythonpath: str | None = None) -> bool:
    # from "/" so the repository folder itself is not on sys.path
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    try:
        r = subprocess.run([PY, "-c", f"import {mod}"], capture_output=True, cwd="/", env=env,
                           timeout=120)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


SHIM = Path("/tmp/tritonbasis-site")


def _pip_install() -> int:
    cmd = [PY, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", str(REPO)]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO).returncode


def cmd_install(force: bool) -> int:
    """``pip install --no-build-isolation --no-deps -e .`` unless ``tritonbasis.kernels``
    already imports (``force``: always). If pip fails (the build needs setuptools >= 77 in
    the interpreter's environment), copy the package to /tmp/tritonbasis-site with
    kernels/ as tritonbasis/kernels; the runner then puts that folder on PYTHONPATH."""
    if not force and importable("tritonbasis.kernels"):
        print("tritonbasis.kernels already importable")
        return 0
    rc = _pip_install()
    if rc == 0 and importable("tritonbasis.kernels"):
        return 0
    print(f"pip install: rc {rc}; falling back to a copy of the package at {SHIM}", flush=True)
    if SHIM.exists():
        shutil.rmtree(SHIM)
    shutil.copytree(REPO / "tritonbasis", SHIM / "tritonbasis")
    shutil.copytree(REPO / "kernels", SHIM / "tritonbasis" / "kernels")
    ok = importable("tritonbasis.kernels", pythonpath=str(SHIM))
    print(f"copy importable: {ok}")
    return 0 if ok else 1


def cmd_env(path: str) -> int:
    """Environment facts to ``path`` (JSON): GPU, driver, versions, git commit."""
    import platform

    facts: dict = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   "python": platform.python_version(), "executable": sys.executable,
                   "platform": platform.platform(), "cpu_count": os.cpu_count()}
    for mod in ("torch", "triton", "numpy", "scipy"):
        try:
            facts[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 -- a missing package is a fact to record
            facts[mod] = f"unavailable: {type(e).__name__}: {e}"
    try:
        import tritonbasis

        facts["tritonbasis"] = {"version": tritonbasis.__version__,
                                "file": str(Path(tritonbasis.__file__).parent)}
    except Exception as e:  # noqa: BLE001
        facts["tritonbasis"] = f"unavailable: {type(e).__name__}: {e}"
    try:
        import torch

        facts["cuda_available"] = torch.cuda.is_available()
        facts["torch_cuda"] = torch.version.cuda
        facts["cudnn"] = torch.backends.cudnn.version()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            facts["device"] = torch.cuda.get_device_name(0)
            facts["capability"] = list(torch.cuda.get_device_capability(0))
            facts["sm_count"] = p.multi_processor_count
            facts["memory_gib"] = round(p.total_memory / 2**30, 2)
            facts["l2_mb"] = round(getattr(p, "L2_cache_size", 0) / 1e6, 1) or None
        else:
            facts["device"] = "cpu"
    except Exception as e:  # noqa: BLE001
        facts["torch_error"] = f"{type(e).__name__}: {e}"
    smi = shutil.which("nvidia-smi")
    if smi:
        q = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit"
        r = subprocess.run([smi, f"--query-gpu={q}", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        facts["nvidia_smi"] = {"query": q, "rc": r.returncode, "out": r.stdout.strip(),
                               "err": r.stderr.strip()[-500:]}
    else:
        facts["nvidia_smi"] = None
    ncu = find_ncu()
    facts["ncu"] = ncu
    if ncu:
        r = subprocess.run([ncu, "--version"], capture_output=True, text=True, timeout=30)
        facts["ncu_version"] = r.stdout.strip().splitlines()[-1:] or r.stderr.strip()[-200:]
    facts["git"] = git_facts()
    Path(path).write_text(json.dumps(facts, indent=2, default=str) + "\n")
    print(json.dumps(facts, indent=2, default=str))
    return 0


def git_facts() -> dict:
    def git(*a):
        r = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True,
                           timeout=30)
        return r.stdout.strip() if r.returncode == 0 else None

    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"commit": None, "error": str(e)}


def cmd_write_plan(path: str) -> int:
    from tritonbasis.conversion.plan import save_plan

    save_plan(PLAN_L234, path, meta={"what": "layer2-4 conv1/conv2 at C_b = C_out/4, keep-basis "
                                             "(bench/gpu_session.py)"})
    print(f"wrote {path}")
    return 0


def cmd_ncu_driver(args) -> int:
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
    # random data, never zeros (METHOD.md: zeros run faster and hide unwritten outputs)
    x = torch.randn(n, c, h, h, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
    basis = (torch.randn(cb, c, 3, 3, device=dev, dtype=dtype) / (9 * c) ** 0.5).to(
        memory_format=torch.channels_last)
    coeff = torch.randn(c - cb, cb, device=dev, dtype=dtype) / cb ** 0.5

    def call():
        return tritonbasis.basis_conv2d(x, basis, coeff, stride=1, padding=1, mode="fused")

    with torch.no_grad():
        y = call()  # autotune happens here, outside the profiled range
        ref = tritonbasis.op.reference.basis_conv2d_reference(
            x.double(), basis.double(), coeff.double(), None, 1, 1, 1, True)
        err = ((y.double() - ref).norm() / ref.norm()).item()
        # the one timer (do_bench on CUDA: events per call, L2 flushed; torch.utils.benchmark
        # on CPU), before cudaProfilerStart: ncu profiles none of these calls
        t = time_fn(call, device=dev, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms,
                    min_time_s=args.rep_ms / 1e3)
        if args.profile and dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStart()
            call()
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()
    print(json.dumps({"device": str(dev), "dtype": str(dtype), "N": n, "C": c, "H": h, "C_b": cb,
                      "rel_err_vs_fp64": err, "median_ms": t.median_ms, "p20_ms": t.p20_ms,
                      "p80_ms": t.p80_ms, "reps": t.reps, "method": t.method,
                      "backend": tritonbasis.get_backend()
                      if hasattr(tritonbasis, "get_backend") else None}))
    # bf16 operands land between 1e-3 and 1e-2 (METHOD.md); fp32 on CPU far under that
    bound = 2e-2 if dtype == torch.bfloat16 else 1e-4
    if not err <= bound:
        print(f"FAIL: relative error {err:.3g} > {bound}", file=sys.stderr)
        return 1
    return 0


# Metric families read from ncu's raw page (names as Nsight Compute 2025 spells them; a
# family matches by prefix so a renamed suffix still shows up in the summary).
NCU_KEYS = ("gpu__time_duration.sum", "dram__throughput.avg.pct_of_peak_sustained_elapsed",
            "lts__throughput.avg.pct_of_peak_sustained_elapsed",
            "sm__throughput.avg.pct_of_peak_sustained_elapsed",
            "dram__bytes_read.sum", "dram__bytes_write.sum", "lts__t_bytes.sum",
            # tensor pipes: hmma (mma.sync) and, on Hopper, gmma (wgmma) cycles / instructions
            "sm__pipe_tensor", "sm__inst_executed_pipe_tensor", "launch__registers_per_thread",
            "launch__grid_size", "launch__block_size", "sm__warps_active.avg.pct_of_peak")


def cmd_ncu_summary(folder: str) -> int:
    """Pick the throughput / tensor-pipe metrics out of the ``ncu --page raw --csv`` logs."""
    import csv

    d = Path(folder)
    out: dict = {}
    for log in sorted(d.glob("ncu_*_raw.log")):
        rows = [r for r in csv.reader(log.read_text(errors="replace").splitlines()) if r]
        hdr = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
        if hdr is None:
            out[log.stem] = {"error": "no CSV header in the log"}
            continue
        names, units = rows[hdr], rows[hdr + 1] if hdr + 1 < len(rows) else []
        kernels = []
        for r in rows[hdr + 2:]:
            rec = dict(zip(names, r))
            pick = {k: v for k, v in rec.items() if any(k.startswith(p) for p in NCU_KEYS)}
            pick = {k: f"{v} {units[names.index(k)]}".strip() if units else v
                    for k, v in pick.items()}
            kernels.append({"kernel": rec.get("Kernel Name"), "metrics": pick})
        out[log.stem] = kernels
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
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: gpu_session_tools.py {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd in ("env", "write-plan", "ncu-summary"):
        if len(rest) != 1:
            print(f"usage: gpu_session_tools.py {cmd} PATH", file=sys.stderr)
            return 2
        return {"env": cmd_env, "write-plan": cmd_write_plan,
                "ncu-summary": cmd_ncu_summary}[cmd](rest[0])
    if cmd == "install":
        return cmd_install(force="--force" in rest)
    p = argparse.ArgumentParser(prog="gpu_session_tools.py ncu-driver")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--cb", type=int, default=32)
    p.add_argument("--device", default=None)
    p.add_argument("--warmup-ms", type=float, default=25.0, help="warm-up of the timing")
    p.add_argument("--rep-ms", type=float, default=100.0, help="timed budget")
    p.add_argument("--profile", action="store_true",
                   help="one more call between cudaProfilerStart/Stop")
    return cmd_ncu_driver(p.parse_args(rest))


if __name__ == "__main__":
    sys.exit(main())
