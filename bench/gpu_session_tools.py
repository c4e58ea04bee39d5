"""The helper commands the GPU-session steps run (bench/gpu_session.py builds the steps):

  python bench/gpu_session_tools.py install [--force]     pip install -e . (--no-deps)
  python bench/gpu_session_tools.py where                 where tritonbasis.kernels imports from
  python bench/gpu_session_tools.py env PATH              environment facts -> JSON
  python bench/gpu_session_tools.py warm [...]            compile the bench shapes' kept configs
  python bench/gpu_session_tools.py autotune-log OUT      the configs Triton's autotuner chose
  python bench/gpu_session_tools.py variants [...]        bench/variants.py, one process each
  python bench/gpu_session_tools.py write-plan PATH       the layer2-4 plan of part 3

(the ncu driver, run and summary are in bench/gpu_ncu.py.) Each runs as its own process
(a step), so it imports torch / tritonbasis only when it needs them: the runner never holds
CUDA.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
HERE = Path(__file__).resolve()
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))
from gpu_ncu import find_ncu  # noqa: E402  (beside this file)

# Layers 2-4 conv1/conv2 (every 3x3 conv outside layer1) at C_b = C_out/4, keep-basis: the
# issue's "all-3x3 of layer2-4" model (the bench's own all_3x3 also converts layer1).
PLAN_L234 = {"re:layer[234]\\..*conv[12]": {"ratio": 0.25, "keep_basis": True}, "_default": None}
# The four ResNet18-CIFAR 3x3 stride-1 cases (tritonbasis bench names).
R18_CASES = (
    "r18.layer1.3x3.64ch.32px",
    "r18.layer2.3x3.128ch.16px",
    "r18.layer3.3x3.256ch.8px",
    "r18.layer4.3x3.512ch.4px",
)
COMMANDS = ("install", "where", "env", "warm", "autotune-log", "variants", "write-plan")


# ------------------------------------------------------------------------------------------
# install, and where the steps import the kernels from


def _pip_install() -> int:
    if os.environ.get("GPU_SESSION_PIP") == "fail":  # the dry run's failed-install simulation
        print("pip install: simulated failure (GPU_SESSION_PIP=fail)", flush=True)
        return 1
    cmd = [PY, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", str(REPO)]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO).returncode


def cmd_install(force: bool) -> int:
    """``pip install --no-build-isolation --no-deps -e .`` (it needs setuptools >= 77 in the
    interpreter's environment: pyproject's SPDX license string). Its exit code is reported,
    never trusted: the runner then checks where the steps import ``tritonbasis.kernels``
    from (:func:`import_check`) and, if that fails, links the kernels into the checkout."""
    if not force and import_check(dict(os.environ))["ok"]:
        print("tritonbasis.kernels already imports from this checkout")
        return 0
    rc = _pip_install()
    print(f"pip install: rc {rc}")
    return rc


WHERE = (
    "import json, os, tritonbasis, tritonbasis.kernels as k; "
    "print(json.dumps({'tritonbasis': os.path.realpath(tritonbasis.__file__), "
    "'kernels': os.path.realpath(k.__file__)}))"
)


def cmd_where() -> int:
    """Print where this process (a script in bench/: ``sys.path[0]`` is bench/) imports
    tritonbasis and its kernels from (JSON)."""
    import tritonbasis.kernels as k

    import tritonbasis

    print(
        json.dumps(
            {
                "tritonbasis": os.path.realpath(tritonbasis.__file__),
                "kernels": os.path.realpath(k.__file__),
            }
        )
    )
    return 0


def import_check(env: dict) -> dict:
    """Import ``tritonbasis.kernels`` the two ways the steps run, with ``env`` and the
    checkout as working directory: ``python -c`` / ``-m`` (``sys.path[0]`` = the checkout, so
    its own ``tritonbasis/`` shadows any installed copy) and a script in bench/
    (``sys.path[0]`` = bench/). OK when both import the kernels of this checkout."""
    out: dict = {"ok": True}
    procs = {"module": [PY, "-c", WHERE], "script": [PY, str(HERE), "where"]}
    running = {
        k: subprocess.Popen(
            c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for k, c in procs.items()
    }
    want = os.path.realpath(REPO / "kernels")
    for k, p in running.items():
        try:
            so, se = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            so, se = "", "timed out"
        try:
            where = json.loads(so.strip().splitlines()[-1])
        except (ValueError, IndexError):
            where = {"error": (se or so).strip().splitlines()[-1:] or ["no output"]}
        ok = "kernels" in where and os.path.dirname(where["kernels"]) == want
        out[k] = {**where, "ok": ok}
        out["ok"] = out["ok"] and ok
    return out


def link_kernels() -> str:
    """The install fallback: ``tritonbasis/kernels -> ../kernels`` in this checkout (as the
    installed package maps it), so ``python -m``/``-c`` from the checkout imports them; the
    runner adds the checkout to PYTHONPATH for scripts. Returns what it did."""
    link = REPO / "tritonbasis" / "kernels"
    if link.is_symlink() or link.exists():
        return f"{link} exists"
    link.symlink_to(Path("..") / "kernels", target_is_directory=True)
    return f"linked {link} -> ../kernels"


# ------------------------------------------------------------------------------------------
# env


def cmd_env(path: str) -> int:
    """Environment facts to ``path`` (JSON): GPU, driver, versions, git commit."""
    import platform

    facts: dict = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    for mod in ("torch", "triton", "numpy", "scipy"):
        try:
            facts[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 -- a missing package is a fact to record
            facts[mod] = f"unavailable: {type(e).__name__}: {e}"
    for mod in ("xdist", "pytest_timeout"):
        facts[f"has_{mod}"] = _has_module(mod)
    try:
        import tritonbasis

        facts["tritonbasis"] = {
            "version": tritonbasis.__version__,
            "file": str(Path(tritonbasis.__file__).parent),
        }
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
        r = subprocess.run(
            [smi, f"--query-gpu={q}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        facts["nvidia_smi"] = {
            "query": q,
            "rc": r.returncode,
            "out": r.stdout.strip(),
            "err": r.stderr.strip()[-500:],
        }
    else:
        facts["nvidia_smi"] = None
    ncu = find_ncu()
    facts["ncu"] = ncu
    if ncu:
        r = subprocess.run([ncu, "--version"], capture_output=True, text=True, timeout=30)
        facts["ncu_version"] = r.stdout.strip().splitlines()[-1:] or r.stderr.strip()[-200:]
    facts["git"] = git_facts()
    _write_json(path, facts)
    print(json.dumps(facts, indent=2, default=str))
    return 0


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def git_facts() -> dict:
    def git(*a):
        r = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, timeout=30)
        return r.stdout.strip() if r.returncode == 0 else None

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"commit": None, "error": str(e)}


def _write_json(path, obj) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------
# warm: the compile tier's jobs for the bench shapes, in parallel, into Triton's cache


def warm_jobs(cases=R18_CASES, ratios=("1/4",), arch: int = 90) -> list[dict]:
    """``tools/compile_report.py --bench``'s compile jobs (every config ``configs.prune``
    keeps, per kernel, at each bench shape) for ``cases`` only."""
    tools = str(REPO / "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import compile_report

    return [
        j
        for j in compile_report._bench_jobs(arch, list(ratios))
        if j["tag"].rsplit(".cb", 1)[0] in cases
    ]


def cmd_warm(a) -> int:
    """Compile the kept configs of the bench shapes in ``--workers`` processes: triton.compile
    writes each binary to Triton's cache (``$TRITON_CACHE_DIR``, default ~/.triton/cache),
    where the launchers' JIT finds it when the compile tier's cache keys equal the runtime's.
    ``--list``: count the jobs only."""
    t0 = time.perf_counter()
    jobs = warm_jobs(tuple(a.cases.split(",")), tuple(a.ratios.split(",")), a.arch)
    by_kernel: dict = {}
    for j in jobs:
        by_kernel[j["name"]] = by_kernel.get(j["name"], 0) + 1
    rec = {
        "jobs": len(jobs),
        "by_kernel": by_kernel,
        "cases": a.cases.split(","),
        "arch": a.arch,
        "listed_only": a.list,
    }
    print(f"{len(jobs)} compile jobs: {by_kernel}", flush=True)
    if not a.list:
        import aot

        for j in jobs:
            j.pop("tag")
            j.pop("split_k")
        reports = aot.compile_many(jobs, a.workers)
        aot.shutdown_workers()
        errors = [
            f"{r['kernel']}/{r['config']}: {r['error'].splitlines()[0][:160]}"
            for r in reports
            if "error" in r
        ]
        rec.update(
            compiled=len(reports) - len(errors),
            errors=errors,
            spills=sum(1 for r in reports if r.get("spills")),
        )
        for e in errors:
            print("error:", e)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    rec["digest"] = {k: rec.get(k) for k in ("jobs", "compiled", "spills", "seconds")}
    rec["digest"]["errors"] = len(rec.get("errors", []))
    if a.out:
        _write_json(a.out, rec)
    print(json.dumps(rec["digest"]))
    return 1 if rec.get("errors") else 0


# ------------------------------------------------------------------------------------------
# autotune-log: what Triton's autotuner chose (its on-disk results, cache_results=True)


def triton_cache_dir() -> Path:
    return Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")


def cmd_autotune_log(out: str) -> int:
    """Every ``*.autotune.json`` in Triton's cache: kernel, key, each config's timing and the
    winner (Triton prints its choice only when it benchmarks, not on a cache hit)."""
    rows = []
    for f in sorted(triton_cache_dir().glob("*/*.autotune.json"), key=os.path.getmtime):
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        timings = doc.get("configs_timings", [])
        if not timings:
            continue
        best = min(timings, key=lambda ct: ct[1] if isinstance(ct[1], (int, float)) else ct[1][0])
        rows.append(
            {
                "kernel": f.name.removesuffix(".autotune.json"),
                "key": doc.get("key"),
                "best": best[0].get("kwargs"),
                "best_warps": best[0].get("num_warps"),
                "best_stages": best[0].get("num_stages"),
                "best_ms": best[1],
                "candidates": [
                    [c.get("kwargs"), c.get("num_warps"), c.get("num_stages"), t]
                    for c, t in timings
                ],
            }
        )
    for r in rows:
        print(
            f"{r['kernel']:34s} key={r['key']} best={r['best']} w{r['best_warps']} "
            f"s{r['best_stages']} {r['best_ms']} ms ({len(r['candidates'])} timed)"
        )
    if not rows:
        print(f"no autotune results in {triton_cache_dir()}")
    _write_json(
        out,
        {
            "cache": str(triton_cache_dir()),
            "results": rows,
            "digest": {"tuned_launch_keys": len(rows)},
        },
    )
    return 0


# ------------------------------------------------------------------------------------------
# variants: bench/variants.py, each variant in its own time-boxed process


VARIANTS = REPO / "bench" / "variants.py"


def _run_boxed(cmd, timeout: float, log) -> tuple[int | None, float, str]:
    """Run ``cmd`` in its own process group for at most ``timeout`` s; (rc or None on
    timeout, wall seconds, output tail)."""
    t0 = time.monotonic()
    with open(log, "w") as f:
        p = subprocess.Popen(
            cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = p.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = None
    tail = Path(log).read_text(errors="replace").strip().splitlines()[-3:]
    return rc, round(time.monotonic() - t0, 1), " | ".join(tail)[-300:]


def cmd_variants(a) -> int:
    """``bench/variants.py --list``, then ``--variant NAME --out DIR/variant-NAME.json`` for
    each variant after the first (the baseline, v2), each in its own process under its share
    of ``--budget``; a failure or timeout is reported and excluded, never fatal (exit 0).
    ``--first-only``: the first variant after the baseline (the dry run's plumbing check)."""
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"variants": {}}
    if not VARIANTS.is_file():
        summary["skipped"] = "bench/variants.py is not in this checkout"
        print(summary["skipped"])
        _write_json(out / "variants.json", {**summary, "digest": summary})
        return 0
    t_end = time.monotonic() + a.budget
    # stdout only: one name per line (warnings on stderr must not become names)
    try:
        r = subprocess.run(
            [PY, str(VARIANTS), "--list"], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        rc, listed, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired:
        rc, listed, err = None, "", "timed out after 60 s"
    (out / "variants-list.log").write_text(listed + err)
    names = [ln.strip() for ln in listed.splitlines() if ln.strip()]
    if rc != 0 or not names:
        summary["error"] = f"--list: rc {rc}: {err.strip()[-300:]}"
        print(summary["error"])
        _write_json(out / "variants.json", {**summary, "digest": summary})
        return 0
    todo = names[1:2] if a.first_only else names[1:]
    summary["baseline"], summary["listed"] = names[0], names
    for i, name in enumerate(todo):
        left = t_end - time.monotonic()
        share = min(a.per_variant, left / (len(todo) - i))
        if share < min(10.0, a.per_variant):  # too little left to start one
            summary["variants"][name] = {"status": "skipped", "reason": "budget spent"}
            continue
        res = out / f"variant-{name}.json"
        cmd = [
            PY,
            str(VARIANTS),
            "--variant",
            name,
            "--out",
            str(res),
            *(["--quick"] if a.quick else []),
        ]
        rc, wall, tail = _run_boxed(cmd, share, out / f"variant-{name}.log")
        rec = {"rc": rc, "wall_s": wall, "timeout_s": round(share, 1)}
        try:
            doc = json.loads(res.read_text())
            rec.update(ok=bool(doc.get("ok")), result=doc)
        except (OSError, ValueError):
            rec.update(ok=False, error=tail)
        rec["status"] = "timeout" if rc is None else "ok" if rc == 0 and rec["ok"] else "failed"
        summary["variants"][name] = rec
        print(
            f"variant {name:12s} {rec['status']:8s} rc={rc} {wall:6.1f} s "
            f"{'' if rec['status'] == 'ok' else rec.get('error', '')[:120]}",
            flush=True,
        )
    summary["digest"] = {n: r["status"] for n, r in summary["variants"].items()}
    _write_json(out / "variants.json", summary)
    return 0


# ------------------------------------------------------------------------------------------


def cmd_write_plan(path: str, quick_path: str | None = None) -> int:
    """The layer2-4 plan to ``path``; with ``quick_path``, also a one-layer plan there (the
    dry run's tune: layer4.1.conv2 only)."""
    from tritonbasis.conversion.plan import save_plan

    what = "layer2-4 conv1/conv2 at C_b = C_out/4, keep-basis (bench/gpu_session.py)"
    save_plan(PLAN_L234, path, meta={"what": what})
    print(f"wrote {path}")
    if quick_path:
        one = {"layer4.1.conv2": PLAN_L234["re:layer[234]\\..*conv[12]"], "_default": None}
        save_plan(one, quick_path, meta={"what": "one layer of it (the dry run's tune)"})
        print(f"wrote {quick_path}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: gpu_session_tools.py {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "write-plan" and len(rest) in (1, 2):
        return cmd_write_plan(*rest)
    if cmd in ("env", "write-plan", "autotune-log"):
        if len(rest) != 1:
            print(f"usage: gpu_session_tools.py {cmd} PATH", file=sys.stderr)
            return 2
        return {"env": cmd_env, "autotune-log": cmd_autotune_log}[cmd](rest[0])
    if cmd == "install":
        return cmd_install(force="--force" in rest)
    if cmd == "where":
        return cmd_where()
    p = argparse.ArgumentParser(prog=f"gpu_session_tools.py {cmd}")
    if cmd == "warm":
        p.add_argument("--cases", default=",".join(R18_CASES))
        p.add_argument("--ratios", default="1/4")
        p.add_argument("--arch", type=int, default=90)
        p.add_argument("--workers", type=int, default=os.cpu_count())
        p.add_argument("--out", default=None, help="summary JSON")
        p.add_argument("--list", action="store_true", help="count the jobs, compile nothing")
        return cmd_warm(p.parse_args(rest))
    p.add_argument("--out", required=True, help="folder for the results")
    p.add_argument("--budget", type=float, default=120.0, help="seconds for all variants")
    p.add_argument("--per-variant", type=float, default=60.0, help="seconds per variant, at most")
    p.add_argument("--quick", action="store_true", help="pass --quick to bench/variants.py")
    p.add_argument("--first-only", action="store_true")
    return cmd_variants(p.parse_args(rest))


if __name__ == "__main__":
    sys.exit(main())
