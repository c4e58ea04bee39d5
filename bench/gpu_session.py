"""GPU session runbook: ``bash bench/gpu_session.sh PART|next [--quick]`` (bench/README.md).

A lent GPU gives a session 15 minutes of device time in all, the machine's start (a few
minutes) included, and one command runs at most 10 minutes. So part 1 fits 8 minutes (the
default ``--budget``, 480 s) and answers the decisive questions first; parts 2-4 hold the rest;
``next`` continues where the previous window stopped (a state file records what ran).

  1  install (and where the steps import the kernels from), env, warm (the compile tier's
     kept configs of the four ResNet18-CIFAR 3x3 stride-1 shapes, compiled in parallel into
     Triton's cache), bench_r18 (fused vs cuDNN, fwd and fwd+bwd), autotune_log (the configs
     the autotuner chose), configs (every kept config forced at production shapes against
     float64, backward 5x bitwise), ncu on the fused forward (256ch@8px, 128ch@16px: the
     deciding metrics only), extra (INT64 at N = 2049, split-K 1/2/4, large-bias d coeff),
     variants (bench/variants.py), kernel_tests (fixed configs), each cut by the budget
  2  warm, the max-autotune baseline, fp16 / fp32 samples, the ResNet-50 shapes, the GPU
     tier in bf16
  3  tune twice, end to end (built-in plan and the layer2-4 plan), profile, registration probe
  4  ncu --set full at two shapes, the rest of the GPU tier's dtype matrix

Every step runs as its own process group under its own timeout, so a hang costs that step
only; the part keeps to ``--budget`` by shortening or skipping the steps that would overrun
it. Results go to ``$OUT`` after EVERY step (the device tool returns at most 8 files):
``part<N>-summary.json`` (status, exit code, wall time, a digest of the results per step),
``part<N>.tar.gz`` (the step folder: logs, bench JSON/Markdown, junit XML, ncu metrics),
``env.json`` and ``gpu-session-state.json`` (what ran, for ``next``). The step folder itself
lives under ``--work`` (a temporary folder), outside ``$OUT``.

``--quick`` is the CPU dry run: tiny shapes and the bench's ``--quick`` flags; steps that need
CUDA or ncu are recorded as ``skipped`` with the reason. tests/perf/test_gpu_session.py runs it.
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
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # also when loaded by path (tests/perf/test_gpu_session.py)
    sys.path.insert(0, str(HERE))
import gpu_digest as digests  # noqa: E402  (beside this file)
import gpu_ncu  # noqa: E402
import gpu_session_tools as tools  # noqa: E402
from gpu_parts import (  # noqa: E402, F401  (re-exported: tests and callers use them here)
    NCU_SHAPES,
    PROVIDERS1,
    QUICK_CASE,
    R18,
    Step,
    steps_for,
)

REPO = HERE.parent
PY = sys.executable
# Of the 600 s a device call may run: part 1 in 480 s leaves room for packing and the transfer,
# and with the machine's start (1-3 min) keeps a 15-minute session's first call under ~11 min.
DEFAULT_BUDGET_S = 480.0
PACK_MARGIN_S = 10.0
MAX_ARCHIVE_BYTES = 15 * 2**20  # the device tool returns files up to 16 MiB each
MAX_PARTS_PER_CALL = 3  # 2 files per part + env.json + state: the tool's 8 files
STATE_NAME = "gpu-session-state.json"
DEFAULT_STATE = REPO / "bench" / "results" / STATE_NAME


# ------------------------------------------------------------------------------------------
# the runner


def _run_step(step: Step, cmd, timeout: float, log: Path, env: dict) -> dict:
    t0 = time.monotonic()
    with open(log, "w") as f:
        f.write(f"$ {' '.join(str(c) for c in cmd)}\n")
        f.flush()
        try:
            p = subprocess.Popen(
                cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
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
    return {"status": status, "rc": rc, "wall_s": round(time.monotonic() - t0, 2), "reason": reason}


def _tail(path: Path, n: int = 1) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-160:]


class Session:
    """One call: parts run in order under one budget, ``$OUT`` rewritten after every step."""

    def __init__(self, out: Path, work: Path, quick: bool, budget: float, pack: bool, state: dict):
        self.out, self.work, self.quick, self.budget, self.pack = out, work, quick, budget, pack
        self.t0 = time.monotonic()
        self.state = state
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        # the dry run treats the machine as CPU-only and never probes it
        self.cuda = False if quick else _has_cuda()
        self.ncu = gpu_ncu.find_ncu()
        self.setup_done: set[str] = set()
        self.install: dict | None = None
        self.summaries: list[dict] = []

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0) - PACK_MARGIN_S

    def run_part(self, part: int, only: set[str] | None = None) -> dict:
        d = self.work / f"part{part}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        if self.quick:  # the dry run must not write the user's tuning cache
            self.env.setdefault("TRITONBASIS_CACHE_DIR", str(self.work / "tune-cache"))
        summary = {
            "format": "tritonbasis.gpu_session/2",
            "part": part,
            "quick": self.quick,
            "out": str(self.out),
            "python": PY,
            "cuda": self.cuda,
            "ncu": self.ncu,
            "budget_s": self.budget,
            "git": tools.git_facts(),
            "complete": False,
            "started": _now(),
            "steps": [],
        }
        self.summaries.append(summary)
        for st in steps_for(part, d, self.quick):
            if only is not None and st.name not in only and not st.setup:
                continue
            if st.setup and st.name in self.setup_done:
                continue
            rec = self._step(st, part, d)
            if st.setup:  # once per call, whatever it did: same machine, same result
                self.setup_done.add(st.name)
            if st.name == "install":
                summary["install"] = self.install = self._check_import(rec["status"])
            summary["steps"].append(rec)
            self._record(part, rec)
            self._save(part, d, summary)
        summary["wall_s"] = round(time.monotonic() - self.t0, 1)
        summary["complete"] = True
        self._save(part, d, summary)
        return summary

    def _check_import(self, install_status: str) -> dict:
        """Where the steps import tritonbasis.kernels from (both ways they run); if not from
        this checkout, the fallback: link tritonbasis/kernels and put the checkout on
        PYTHONPATH (for scripts), then check again."""
        if "tritonbasis_import" in self.setup_done:  # once per call: same machine, same env
            return self.install
        rec = {"pip": install_status, "check": tools.import_check(self.env), "mode": "as is"}
        if not rec["check"]["ok"]:
            rec["fallback"] = tools.link_kernels()
            self.env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(REPO), self.env.get("PYTHONPATH")])
            )
            rec["mode"] = "link + PYTHONPATH"
            rec["check_after"] = tools.import_check(self.env)
        self.setup_done.add("tritonbasis_import")
        print(
            f"[gpu_session] tritonbasis.kernels import: {rec['mode']}, ok="
            f"{rec.get('check_after', rec['check'])['ok']}",
            flush=True,
        )
        return rec

    def _step(self, st: Step, part: int, d: Path) -> dict:
        """Run one step (or record why it is skipped: a missing need, the dry run, the
        part's budget spent, ``skip_if``) and return its summary record."""
        left = self.left()
        rec = {
            "name": st.name,
            "timeout_s": st.timeout,
            "needs": list(st.needs),
            "log": f"part{part}/{st.name}.log",
        }
        have = {"cuda": self.cuda, "ncu": self.ncu}
        missing = [n for n in st.needs if not have.get(n)]
        cmd, timeout = st.cmd, st.timeout
        if self.quick and st.quick_cmd is not None:
            cmd, timeout = st.quick_cmd, st.quick_timeout or st.timeout
        why = st.skip_if() if st.skip_if else None
        if missing:
            why = "no CUDA" if "cuda" in missing else "ncu not found"
        elif self.quick and st.quick_skip:
            why = st.quick_skip
        elif why is None and left < 10:
            why = f"part budget spent ({self.budget:.0f} s)"
        if why is not None:
            rec.update(status="skipped", rc=None, wall_s=0.0, reason=why)
            (d / f"{st.name}.log").write_text(f"skipped: {why}\n")
            return rec
        timeout = min(timeout, left)
        rec["timeout_s"] = round(timeout, 1)
        rec["cmd"] = [str(c) for c in cmd]
        print(f"[gpu_session] part {part} step {st.name} (timeout {timeout:.0f} s) ...", flush=True)
        rec.update(_run_step(st, cmd, timeout, d / f"{st.name}.log", {**self.env, **st.env}))
        if st.digest is not None:
            try:
                rec["digest"] = st.digest(d, d / f"{st.name}.log")
            except Exception as e:  # noqa: BLE001 -- a digest never stops the session
                rec["digest"] = {"error": f"{type(e).__name__}: {e}"}
        print(
            f"[gpu_session]   {st.name}: {rec['status']} rc={rec['rc']} "
            f"{rec['wall_s']:.1f} s {json.dumps(rec.get('digest'))[:300]}",
            flush=True,
        )
        return rec

    def _record(self, part: int, rec: dict) -> None:
        steps = self.state.setdefault("parts", {}).setdefault(str(part), {})
        steps[rec["name"]] = {
            "status": rec["status"],
            "wall_s": rec["wall_s"],
            "reason": rec.get("reason"),
            "quick": self.quick,
            "when": _now(),
            "commit": tools.git_facts().get("commit"),
        }

    def _save(self, part: int, d: Path, summary: dict) -> None:
        """Everything to ``$OUT`` now: the summary, the state and (unless --no-pack) the
        step folder's archive, each written to a temporary name and renamed."""
        if (d / "env.json").is_file():  # the env step's facts, also as a file of their own
            shutil.copyfile(d / "env.json", self.out / "env.json")
        if self.pack:
            _pack_part(d, self.out / f"part{part}.tar.gz", f"part{part}", summary)
        tools._write_json(self.out / f"part{part}-summary.json", summary)
        tools._write_json(self.out / STATE_NAME, self.state)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _has_cuda() -> bool:
    # No driver, no CUDA: skip the 2-3 s torch import of the probe below.
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidiactl").exists():
        return False
    # In a child process: importing torch here would hold CUDA in the runner for the whole call.
    try:
        r = subprocess.run(
            [PY, "-c", "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"],
            capture_output=True,
            timeout=120,
        )
        return r.returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


def _pack_part(d: Path, arc: Path, arcname: str, summary: dict) -> None:
    """The step folder as one archive (the device tool returns at most 8 files); over
    MAX_ARCHIVE_BYTES the largest files are left out (and listed), not the archive."""
    files = sorted((p for p in d.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    left: list[str] = []
    tmp = arc.with_name(arc.name + ".tmp")
    while True:
        with tarfile.open(tmp, "w:gz") as tf:
            tf.add(
                d,
                arcname=arcname,
                filter=lambda ti: (
                    None if any(ti.name == f"{arcname}/{x.split(' (')[0]}" for x in left) else ti
                ),
            )
        if tmp.stat().st_size <= MAX_ARCHIVE_BYTES or not files:
            break
        f = files.pop()
        left.append(f"{f.relative_to(d)} ({f.stat().st_size / 1e6:.1f} MB)")
    os.replace(tmp, arc)
    if left:
        summary["left_out"] = left
    summary["archive"] = arc.name


def _print_report(summaries: list[dict], work: Path) -> None:
    """The digests, then a table of the steps per part (the device reply carries only the last
    12,000 characters of the output)."""
    for summary in summaries:
        for s in summary["steps"]:
            if s.get("digest"):
                print(
                    f"--- part {summary['part']} {s['name']}: {digests.render(s['digest'])[:2500]}"
                )
    for summary in summaries:
        print(
            f"\npart {summary['part']}{' (quick)' if summary['quick'] else ''}: "
            f"cuda={summary['cuda']} ncu={summary['ncu'] or '-'} "
            f"wall={summary.get('wall_s')} s install={summary.get('install', {}).get('mode')}"
        )
        print(f"{'step':24s} {'status':8s} {'rc':>4s} {'wall_s':>8s}  note")
        for s in summary["steps"]:
            note = s.get("reason") or ""
            if s["status"] in ("failed", "timeout"):
                note = (note + " " + _tail(work / s["log"])).strip()
            rc = "" if s.get("rc") is None else str(s["rc"])
            print(f"{s['name']:24s} {s['status']:8s} {rc:>4s} {s['wall_s']:8.1f}  {note[:110]}")


def load_state(path: Path | None) -> dict:
    if path is not None and path.is_file():
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") == "tritonbasis.gpu_session_state/1":
                return doc
        except ValueError:
            pass
        print(f"[gpu_session] ignoring {path}: not a session state file")
    return {"format": "tritonbasis.gpu_session_state/1", "parts": {}}


def pending(state: dict, part: int, quick: bool) -> list[str]:
    """Steps of ``part`` (setup steps aside) not yet done in this kind of run: ``ok`` in a GPU
    window (a step skipped there, for the budget say, stays pending); ``ok`` or ``skipped`` in
    a dry run (whose CUDA steps never run). Dry-run records never count for a GPU window."""
    done = state.get("parts", {}).get(str(part), {})
    ok = ("ok", "skipped") if quick else ("ok",)
    names = [s.name for s in steps_for(part, Path("part"), quick) if not s.setup]
    return [
        n
        for n in names
        if not (done.get(n, {}).get("status") in ok and done[n].get("quick") == quick)
    ]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="bench/gpu_session.sh", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "part",
        choices=("1", "2", "3", "4", "next"),
        help="a part, or next: the first parts with steps not yet ok in --state",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="CPU dry run: tiny shapes; CUDA/ncu steps recorded as skipped",
    )
    p.add_argument(
        "--out",
        default=os.environ.get("OUT") or "gpu-out",
        help="output folder (default $OUT, else ./gpu-out)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds for the whole call (default {DEFAULT_BUDGET_S:.0f})",
    )
    p.add_argument(
        "--steps",
        default=None,
        help="comma list: run only these steps of the part (setup steps always)",
    )
    p.add_argument(
        "--state",
        default=None,
        help=f"what earlier windows ran (default {DEFAULT_STATE.relative_to(REPO)} "
        "if present); the updated state goes to OUT",
    )
    p.add_argument("--work", default=None, help="step folders (default: a temporary folder)")
    p.add_argument(
        "--no-pack",
        action="store_true",
        help="keep the step folders under --work instead of archiving them",
    )
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work).resolve() if a.work else Path(tempfile.mkdtemp(prefix="tb-gpu-session-"))
    state_path = Path(a.state) if a.state else (DEFAULT_STATE if DEFAULT_STATE.is_file() else None)
    sess = Session(out, work, a.quick, a.budget, not a.no_pack, load_state(state_path))
    only = set(a.steps.split(",")) if a.steps else None
    if a.part == "next":
        todo = {part: set(pending(sess.state, part, a.quick)) for part in (1, 2, 3, 4)}
        plan = [(part, names & only if only else names) for part, names in todo.items() if names][
            :MAX_PARTS_PER_CALL
        ]
        if not plan:
            print("[gpu_session] every part's steps are recorded ok: nothing to run")
    else:
        plan = [(int(a.part), only)]
    for part, todo in plan:
        if sess.summaries and sess.left() < 60:
            print(f"[gpu_session] budget spent before part {part}: the next window continues")
            break
        sess.run_part(part, todo)
    _print_report(sess.summaries, work)
    print(f"[gpu_session] results in {out} (state: {STATE_NAME})")
    if a.no_pack:
        print(f"[gpu_session] step folders kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    # a failed pip install whose fallback imports the kernels is not a failure of the call
    fell_back = bool(sess.install and sess.install.get("check_after", {}).get("ok"))
    bad = [
        s["name"]
        for sm in sess.summaries
        for s in sm["steps"]
        if s["status"] in ("failed", "timeout") and not (s["name"] == "install" and fell_back)
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
