"""GPU session runbook (issue 10): ``bash bench/gpu_session.sh PART [--quick]``.

One part fits one 10-minute device call (``run`` tool, /work/.library/device/README.md):

  1  install, environment facts, GPU test tier, registration probe, quick bench of the four
     ResNet18-CIFAR 3x3 stride-1 shapes (fused, dense_cudnn, unfused_eager, weight_mod)
  2  the same shapes with unfused_compiled (max-autotune), fp16 / fp32 (tf32 on and off)
     samples, the ResNet-50 3x3 shapes
  3  tritonbasis tune, end to end (dense / all 3x3 / built-in plan, and a layer2-4 plan),
     tritonbasis profile with its trace
  4  ncu on the fused forward at 128ch@16px and 256ch@8px (DRAM, L2, tensor pipe)

Every step runs as its own process group under its own timeout, so a hang costs that step
only; the part as a whole keeps to ``--budget`` seconds (default 560 of the call's 600) by
shrinking or skipping the steps that would overrun it. Results go to ``$OUT`` (./gpu-out
when unset): ``part<N>-summary.json`` (rewritten after every step: status, exit code, wall
time, log), ``env.json`` (part 1) and ``part<N>.tar.gz`` with every step's log and outputs.
The device tool returns at most 8 files from ``$OUT``, so the step folder is packed into
the one archive and removed (``--no-pack`` keeps it).

The steps' helper commands (install, env, write-plan, ncu-driver, ncu-summary) are in
``bench/gpu_session_tools.py``; this file builds the steps and runs them.

``--quick`` is the CPU dry run: tiny shapes and the bench's ``--quick`` flags; steps that
need CUDA or ncu are recorded as ``skipped`` with the reason. tests/test_gpu_session.py runs it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # also when loaded by path (tests/test_gpu_session.py)
    sys.path.insert(0, str(HERE))
import gpu_session_tools as tools  # noqa: E402  (the steps' helper commands, next to this file)

REPO = HERE.parent
PY = sys.executable
TOOLS = str(HERE / "gpu_session_tools.py")

# The four ResNet18-CIFAR 3x3 stride-1 shapes the targets are stated on.
R18 = ("r18.layer1.3x3.64ch.32px,r18.layer2.3x3.128ch.16px,"
       "r18.layer3.3x3.256ch.8px,r18.layer4.3x3.512ch.4px")
QUICK_CASE = "quick.3x3.16ch.8px"
PROVIDERS1 = "fused,dense_cudnn,unfused_eager,weight_mod"
# ncu shapes: (name, C, H, C_b) at N = 256, bf16, channels_last, 3x3 s1 p1 (issue 10 part 4).
NCU_SHAPES = (("128ch16px", 128, 16, 32), ("256ch8px", 256, 8, 64))
QUICK_NCU = {"batch": 2, "channels": 8, "size": 6, "cb": 2}
DEFAULT_BUDGET_S = 560.0  # of the device call's 600 s: ~40 s for packing and the transfer
PACK_MARGIN_S = 15.0
MAX_ARCHIVE_BYTES = 15 * 2**20  # the device tool returns files up to 16 MiB each


class Step:
    def __init__(self, name, cmd, timeout, needs=(), env=None, quick_cmd=None,
                 quick_timeout=None, quick_skip=None, note=None):
        self.name, self.cmd, self.timeout, self.needs = name, cmd, timeout, tuple(needs)
        self.env = env or {}
        self.quick_cmd, self.quick_timeout, self.quick_skip = quick_cmd, quick_timeout, quick_skip
        self.note = note


def _install_step(force: bool = False) -> Step:
    # Every part: a machine left idle 30 s goes back, and the next call gets a bare one.
    return Step("install", [PY, TOOLS, "install", *(["--force"] if force else [])], 120,
                quick_skip="already importable (--quick)")


def _tb(*args):
    return [PY, "-m", "tritonbasis", *args]


def _bench(out, *args):
    return _tb("bench", *args, "--out", out)


def _has_cuda() -> bool:
    # In a child process: importing torch here would hold CUDA in the runner for the whole part.
    try:
        r = subprocess.run([PY, "-c", "import torch,sys; sys.exit(0 if torch.cuda.is_available() "
                            "else 1)"], capture_output=True, timeout=120)
        return r.returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


def steps_for(part: int, d: Path, quick: bool) -> list[Step]:
    """The steps of one part; ``d`` is the part's output folder."""
    parts = {1: _part1, 2: _part2, 3: _part3, 4: _part4}
    if part not in parts:
        raise ValueError(f"part must be 1, 2, 3 or 4, got {part}")
    return parts[part](d, quick)


def _part1(d: Path, quick: bool) -> list[Step]:
    """Part 1: install, env, registration probe, GPU tier, r18 bench, kernel tests."""
    s = str(d)
    q = ["--quick", "--cases", QUICK_CASE]
    return [
        _install_step(force=True),
        Step("env", [PY, TOOLS, "env", str(d.parent / "env.json")], 60),
        Step("probe", [PY, "tools/probe_registration.py"], 60,
             env={"TRITON_INTERPRET": "1"} if quick else {}),
        # test_gpu.py is the marked GPU tier (-m gpu; fp32 IEEE/tf32, fp16, bf16, > 2**31
        # element offsets)
        Step("gpu_tests", [PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           f"--junitxml={s}/gpu_tests.xml", "tests/test_gpu.py"], 120,
             needs=("cuda",)),
        Step("bench_r18", _bench(f"{s}/bench_r18", "--cases", R18, "--ratios", "1/4",
                                 "--directions", "fwd,fwd+bwd", "--providers", PROVIDERS1,
                                 "--compile-mode", "none", "--no-e2e"), 150,
             quick_cmd=_bench(f"{s}/bench_r18", *q, "--directions", "fwd,fwd+bwd",
                              "--providers", PROVIDERS1, "--compile-mode", "none",
                              "--no-e2e"), quick_timeout=90),
        # last, the longest test step, so the part's budget cuts it and not the bench:
        # the kernel and v2-backward tests (unmarked) launching the real kernels on CUDA
        # (on CPU they run the Triton interpreter for minutes, so not in the dry run)
        Step("kernel_tests", [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              f"--junitxml={s}/kernel_tests.xml", "tests/test_kernels.py",
                              "tests/test_backward_v2.py"], 130, needs=("cuda",)),
    ]


def _part2(d: Path, quick: bool) -> list[Step]:
    """Part 2: the compiled provider, fp16 / fp32 samples, ResNet-50 shapes."""
    s = str(d)
    q = ["--quick", "--cases", QUICK_CASE]
    return [
        _install_step(),
        # max-autotune compiles fwd and fwd+bwd graphs per shape (minutes in all); the JSON
        # is rewritten after each variant, so a timeout keeps the shapes already measured.
        Step("bench_r18_compiled",
             _bench(f"{s}/bench_r18_compiled", "--cases", R18, "--ratios", "1/4",
                    "--directions", "fwd,fwd+bwd",
                    "--providers", "fused,dense_cudnn,unfused_compiled",
                    "--compile-mode", "max-autotune", "--no-e2e"), 240,
             # Inductor's C++ build on a 2-core CPU takes minutes: the dry run checks the
             # step's plumbing with the provider off.
             quick_cmd=_bench(f"{s}/bench_r18_compiled", *q, "--directions", "fwd,fwd+bwd",
                              "--providers", "fused,dense_cudnn", "--compile-mode", "none",
                              "--no-e2e"), quick_timeout=90),
        Step("bench_fp16_tf32",
             _bench(f"{s}/bench_fp16_tf32", "--cases",
                    "r18.layer2.3x3.128ch.16px,r18.layer3.3x3.256ch.8px", "--ratios", "1/4",
                    "--dtype", "float16,float32", "--tf32", "on", "--directions",
                    "fwd,fwd+bwd", "--providers", "fused,dense_cudnn,unfused_eager",
                    "--compile-mode", "none", "--no-e2e"), 90, needs=("cuda",)),
        Step("bench_fp32_ieee",
             _bench(f"{s}/bench_fp32_ieee", "--cases", "r18.layer2.3x3.128ch.16px",
                    "--ratios", "1/4", "--dtype", "float32", "--tf32", "off",
                    "--directions", "fwd,fwd+bwd", "--providers",
                    "fused,dense_cudnn,unfused_eager", "--compile-mode", "none",
                    "--no-e2e"), 60, needs=("cuda",)),
        Step("bench_r50", _bench(f"{s}/bench_r50", "--cases", "resnet50", "--ratios", "1/4",
                                 "--directions", "fwd,fwd+bwd", "--providers", PROVIDERS1,
                                 "--compile-mode", "none", "--no-e2e"), 130,
             quick_cmd=_bench(f"{s}/bench_r50", *q, "--directions", "fwd",
                              "--providers", PROVIDERS1, "--compile-mode", "none",
                              "--no-e2e"), quick_timeout=90),
    ]


def _part3(d: Path, quick: bool) -> list[Step]:
    """Part 3: tune, end to end (built-in plan and the layer2-4 plan), profile."""
    s = str(d)
    plan = f"{s}/plan_layer234.json"
    tiny = ["--width", "0.125", "--image-size", "16"]
    return [
        _install_step(),
        Step("write_plan", [PY, TOOLS, "write-plan", plan], 60),
        # tune first: mode="auto" in the end-to-end models then uses measured timings.
        Step("tune", _tb("tune", "--model", "resnet18_cifar", "--ratio", "0.25",
                         "--keep-basis"), 150,
             quick_cmd=_tb("tune", "--device", "cpu", *tiny, "--batch", "8", "--ratio",
                           "0.25", "--keep-basis", "--warmup-ms", "5", "--rep-ms", "20",
                           "--min-reps", "2"), quick_timeout=120),
        Step("tune_show", _tb("tune", "--show"), 60),
        Step("e2e", _bench(f"{s}/e2e", "--e2e-only"), 130,
             quick_cmd=_bench(f"{s}/e2e", "--quick", "--e2e-only", "--e2e-steps", "1"),
             quick_timeout=90),
        Step("e2e_plan", _bench(f"{s}/e2e_plan", "--e2e-only", "--plan", plan), 100,
             quick_cmd=_bench(f"{s}/e2e_plan", "--quick", "--e2e-only", "--plan", plan,
                              "--e2e-steps", "1"),
             quick_timeout=90),
        Step("profile", _tb("profile", "--ratio", "0.25", "--keep-basis", "--steps", "3",
                            "--warmup", "2", "--nvtx", "--out", f"{s}/profile"), 100,
             quick_cmd=_tb("profile", "--device", "cpu", *tiny, "--batch", "4", "--steps",
                           "1", "--warmup", "1", "--ratio", "0.25", "--keep-basis",
                           "--out", f"{s}/profile"), quick_timeout=90),
    ]


def _part4(d: Path, quick: bool) -> list[Step]:
    """Part 4: ncu on the fused forward at two shapes, and the metric summary."""
    s = str(d)
    ncu = tools.find_ncu() or "ncu"
    steps = [_install_step(), Step("ncu_version", [ncu, "--version"], 30, needs=("ncu",))]
    for name, c, h, cb in NCU_SHAPES:
        drv = [PY, TOOLS, "ncu-driver", "--channels", str(c), "--size", str(h),
               "--cb", str(cb)]
        qdrv = [PY, TOOLS, "ncu-driver", "--device", "cpu",
                *[f"--{k}={v}" for k, v in QUICK_NCU.items()]]
        rep = f"{s}/ncu_{name}"
        steps += [
            # the driver alone: checks the layer runs, prints its median
            # (util.timing.time_fn: do_bench on CUDA)
            Step(f"driver_{name}", drv, 90, quick_cmd=qdrv, quick_timeout=60),
            # --set full: every section (SpeedOfLight's DRAM / L2 throughput, the
            # compute workload's per-pipe utilisation); ~40 replay passes of a
            # 10-100 us kernel is seconds. Clocks left as found (METHOD.md).
            Step(f"ncu_{name}", [ncu, "--clock-control", "none", "--profile-from-start",
                                 "off", "--set", "full", "--target-processes", "all",
                                 "--export", rep, "--force-overwrite", *drv, "--profile"],
                 150, needs=("cuda", "ncu")),
            Step(f"ncu_{name}_raw", [ncu, "--import", f"{rep}.ncu-rep", "--page", "raw",
                                     "--csv"], 40, needs=("ncu",)),
        ]
    steps.append(Step("ncu_summary", [PY, TOOLS, "ncu-summary", s], 30))
    return steps


# ------------------------------------------------------------------------------------------
# the runner


def _run_step(step: Step, cmd, timeout: float, log: Path, env: dict) -> dict:
    t0 = time.monotonic()
    with open(log, "w") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        try:
            p = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
        except OSError as e:
            f.write(f"could not start: {e}\n")
            return {"status": "failed", "rc": None, "wall_s": 0.0, "reason": str(e)}
        try:
            rc = p.wait(timeout=timeout)
            status = "ok" if rc == 0 else "failed"
            reason = None
        except subprocess.TimeoutExpired:
            # the whole process group: pytest workers, ncu's target, compile workers
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc, status, reason = p.returncode, "timeout", f"killed after {timeout:.0f} s"
            f.write(f"\n[gpu_session] {reason}\n")
    return {"status": status, "rc": rc, "wall_s": round(time.monotonic() - t0, 2),
            "reason": reason}


def _tail(path: Path, n: int = 1) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-160:]


def run_part(part: int, out: Path, quick: bool, budget: float, pack: bool) -> int:
    t_start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    d = out / f"part{part}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if quick:
        # the dry run must not write the user's tuning cache
        env.setdefault("TRITONBASIS_CACHE_DIR", str(d / "tune-cache"))
    cuda = _has_cuda()
    ncu = tools.find_ncu()
    steps = steps_for(part, d, quick)
    summary = {"format": "tritonbasis.gpu_session/1", "part": part, "quick": quick,
               "out": str(out), "python": PY, "cuda": cuda, "ncu": ncu, "budget_s": budget,
               "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "git": tools.git_facts(), "complete": False, "steps": []}
    spath = out / f"part{part}-summary.json"

    def save():
        spath.write_text(json.dumps(summary, indent=2) + "\n")

    for st in steps:
        left = budget - (time.monotonic() - t_start) - PACK_MARGIN_S
        rec = _step_record(st, part, d, quick, left, budget, {"cuda": cuda, "ncu": ncu}, env)
        if (st.name == "install" and rec["status"] != "skipped" and tools.SHIM.is_dir()
                and not tools.importable("tritonbasis.kernels")):
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tools.SHIM),
                                                              env.get("PYTHONPATH")]))
            summary["pythonpath_fallback"] = str(tools.SHIM)
        summary["steps"].append(rec)
        save()
    summary["wall_s"] = round(time.monotonic() - t_start, 1)
    summary["complete"] = True
    _print_table(summary, d)
    if pack:
        _pack_part(d, out / f"part{part}.tar.gz", f"part{part}", summary)
    save()
    print(f"[gpu_session] summary: {spath}")
    bad = [s["name"] for s in summary["steps"] if s["status"] in ("failed", "timeout")]
    return 1 if bad else 0


def _step_record(st: Step, part: int, d: Path, quick: bool, left: float, budget: float,
                 have: dict, env: dict) -> dict:
    """Run one step (or record why it is skipped: a missing need, the dry run, the part's
    budget spent) and return its summary record; ``left``: seconds of the budget left."""
    rec = {"name": st.name, "timeout_s": st.timeout, "needs": list(st.needs),
           "log": f"part{part}/{st.name}.log"}
    missing = [n for n in st.needs if not have.get(n)]
    cmd, timeout = st.cmd, st.timeout
    if quick and st.quick_cmd is not None:
        cmd, timeout = st.quick_cmd, st.quick_timeout or st.timeout
    if missing:
        rec.update(status="skipped", rc=None, wall_s=0.0,
                   reason="no CUDA" if "cuda" in missing else "ncu not found")
    elif quick and st.quick_skip and tools.importable("tritonbasis.kernels"):
        rec.update(status="skipped", rc=None, wall_s=0.0, reason=st.quick_skip)
    elif left < 10:
        rec.update(status="skipped", rc=None, wall_s=0.0,
                   reason=f"part budget spent ({budget:.0f} s)")
    else:
        timeout = min(timeout, left)
        rec["timeout_s"] = round(timeout, 1)
        rec["cmd"] = [str(c) for c in cmd]
        print(f"[gpu_session] part {part} step {st.name} (timeout {timeout:.0f} s) ...",
              flush=True)
        rec.update(_run_step(st, cmd, timeout, d / f"{st.name}.log", {**env, **st.env}))
    if rec["status"] == "skipped":
        (d / f"{st.name}.log").write_text(f"skipped: {rec['reason']}\n")
    return rec


def _pack_part(d: Path, arc: Path, arcname: str, summary: dict) -> None:
    """Pack the step folder into one archive (the device tool returns at most 8 files) and
    remove the folder; over MAX_ARCHIVE_BYTES, the largest files are left out and listed."""
    _pack(d, arc, arcname)
    if arc.stat().st_size > MAX_ARCHIVE_BYTES:
        # the device tool drops a file over 16 MiB whole: leave the largest files out
        # (a long profiler trace, say) rather than lose every log
        big = sorted((p for p in d.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        left = []
        while big and arc.stat().st_size > MAX_ARCHIVE_BYTES:
            f = big.pop()
            left.append(f"{f.relative_to(d)} ({f.stat().st_size / 1e6:.1f} MB)")
            f.unlink()
            _pack(d, arc, arcname)
        summary["left_out"] = left
        print(f"[gpu_session] archive over {MAX_ARCHIVE_BYTES >> 20} MiB: left out {left}")
    shutil.rmtree(d)
    summary["archive"] = arc.name
    print(f"[gpu_session] packed {arc} ({arc.stat().st_size / 1e6:.2f} MB)")


def _pack(d: Path, arc: Path, arcname: str) -> None:
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(d, arcname=arcname)


def _print_table(summary: dict, d: Path) -> None:
    # bench steps: the Markdown's "fused vs each provider" table first (the device reply
    # carries only the end of the output, so the table of steps comes last)
    for st in summary["steps"]:
        for md in sorted(d.glob(f"{st['name']}/*.md")):
            lines = md.read_text().splitlines()
            i = next((k for k, ln in enumerate(lines) if "fused vs" in ln.lower()), None)
            if i is not None:
                end = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("#")),
                           len(lines))
                print(f"--- {st['name']}: {md.name}")
                print("\n".join(ln for ln in lines[i:end] if ln.strip())[:3000])
    print(f"\npart {summary['part']}{' (quick)' if summary['quick'] else ''}: "
          f"cuda={summary['cuda']} ncu={summary['ncu'] or '-'} wall={summary['wall_s']} s")
    print(f"{'step':24s} {'status':8s} {'rc':>4s} {'wall_s':>8s}  note")
    for s in summary["steps"]:
        note = s.get("reason") or ""
        if s["status"] in ("failed", "timeout"):
            note = (note + " " + _tail(d / f"{s['name']}.log")).strip()
        rc = "" if s.get("rc") is None else str(s["rc"])
        print(f"{s['name']:24s} {s['status']:8s} {rc:>4s} {s['wall_s']:8.1f}  {note[:110]}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="bench/gpu_session.sh",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("part", type=int, choices=(1, 2, 3, 4))
    p.add_argument("--quick", action="store_true",
                   help="CPU dry run: tiny shapes; CUDA/ncu steps recorded as skipped")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-out",
                   help="output folder (default $OUT, else ./gpu-out)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                   help=f"seconds for the whole part (default {DEFAULT_BUDGET_S:.0f})")
    p.add_argument("--no-pack", action="store_true",
                   help="keep part<N>/ instead of packing it into part<N>.tar.gz")
    a = p.parse_args(argv)
    return run_part(a.part, Path(a.out).resolve(), a.quick, a.budget, not a.no_pack)


if __name__ == "__main__":
    sys.exit(main())
