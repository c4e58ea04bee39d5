"""Worker processes of the compile tier (``tools/aot.py``): a process that runs the Triton
interpreter (TRITON_INTERPRET=1, the test session without CUDA) cannot compile, so compiles
run in ``python tools/aot.py --worker`` processes started without that variable.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

AOT = Path(__file__).resolve().with_name("aot.py")


class CompileError(RuntimeError):
    """A compile that failed in a worker process (the message carries the worker's error)."""


class Worker:
    """One ``python tools/aot.py --worker`` process, TRITON_INTERPRET removed from its
    environment: one JSON job per line on stdin, one JSON result per line on stdout.
    A subprocess rather than multiprocessing: spawn would re-import the caller's ``__main__``
    and fork would inherit the interpreted triton."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(AOT), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=env,
            text=True,
            bufsize=1,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _stderr_tail(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-3000:]

    def call(self, job: dict) -> dict:
        job = {**job, "shape": dataclasses.asdict(job["shape"])} if "shape" in job else job
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:
            line = ""
        if not line:
            self.proc.wait(timeout=60)
            raise CompileError(
                f"compile worker exited with {self.proc.returncode}:\n{self._stderr_tail()}"
            )
        msg = json.loads(line)
        if "error" in msg:
            raise CompileError(msg["error"])
        return msg["report"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


_WORKERS: list[Worker] = []


def workers(n: int) -> list[Worker]:
    """``n`` live worker processes, started on first use and reused."""
    _WORKERS[:] = [w for w in _WORKERS if w.alive()]
    while len(_WORKERS) < n:
        _WORKERS.append(Worker())
    return _WORKERS[:n]


def shutdown_workers() -> None:
    """End the worker processes this module started (if any); also run at exit."""
    while _WORKERS:
        _WORKERS.pop().close()


atexit.register(shutdown_workers)


def serve(compile_fn, shape_cls) -> None:
    """The worker's loop: one JSON job per stdin line (``shape`` as a dict of ``shape_cls``),
    ``compile_fn(**job)``'s report (or the error) as one JSON line on stdout."""
    out = sys.stdout
    sys.stdout = sys.stderr  # whatever triton prints must not corrupt the protocol
    for line in sys.stdin:
        job = json.loads(line)
        try:
            if "shape" in job:
                job["shape"] = shape_cls(**job["shape"])
            msg = {"report": compile_fn(**job)}
        except Exception as e:
            msg = {"error": f"{type(e).__name__}: {e}"[:8000]}
        out.write(json.dumps(msg) + "\n")
        out.flush()
