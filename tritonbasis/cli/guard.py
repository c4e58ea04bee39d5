"""Guards for long commands: fail before any work, one writer per output folder, one-line
errors.

* :func:`check_writable` -- create the output folder and a probe file in it, so that a
  read-only mount or a path through a regular file fails before hours of work, not at the
  first checkpoint.
* :class:`RunLock` -- ``<out>/.tritonbasis.lock`` created with ``O_CREAT | O_EXCL`` (atomic on
  local file systems) holding pid, host and start time. A second process on the same folder is
  refused while the holder lives; a lock whose pid is dead on this host is stale (a killed run)
  and is taken over with a message. A lock from another host cannot be checked and is refused
  (its message says how to remove it).
* argparse ``type=`` functions (:func:`positive_int`, :func:`finite_float`, ...): a bad value
  is refused at parse time (exit 2, one line) before anything is written.
* :data:`KNOWN_ERRORS`: exception types our code raises on purpose; the CLI prints them as
  ``tritonbasis: error: <message>`` (no traceback unless ``--debug`` or
  ``TRITONBASIS_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import json
import math
import os
import socket
import sys
import tempfile
from pathlib import Path

LOCK_NAME = ".tritonbasis.lock"
DEBUG_ENV = "TRITONBASIS_DEBUG"
# A lock file with no readable content yet may belong to a process between its O_EXCL create
# and its write (microseconds); only one older than this is treated as left over.
UNREADABLE_LOCK_GRACE_S = 10.0


class RunLockedError(RuntimeError):
    """The output folder is held by another live process."""


class OutputNotWritableError(OSError):
    """The output folder cannot be created or written."""


# --------------------------------------------------------------------------------------------
# output folder


def check_writable(out: str | os.PathLike) -> Path:
    """Create ``out`` (and parents) and write/remove a probe file in it; raise
    :class:`OutputNotWritableError` naming the folder otherwise. Works for root too (a
    read-only mount refuses root as well; ``os.access`` would say yes)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=str(out))
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = e.strerror or str(e)
        raise OutputNotWritableError(
            f"output folder {str(out)!r} is not writable ({why}); choose another --out"
        ) from None
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


class RunLock:
    """``with RunLock(out, command="search"): ...`` -- see the module docstring. ``log``
    receives the stale-lock takeover message (stderr by default)."""

    def __init__(self, out: str | os.PathLike, command: str = "", log=None):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.command = command
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self._held = False

    def _payload(self) -> str:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "command": self.command,
                           "started": dt.datetime.now(dt.timezone.utc).isoformat(
                               timespec="seconds")})

    def _read_holder(self) -> dict | None:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("pid"), int):
            return None
        return doc

    def acquire(self) -> RunLock:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing()
                continue
            except OSError as e:
                raise OutputNotWritableError(
                    f"cannot create the lock file {str(self.path)!r} "
                    f"({e.strerror or e}); choose another --out"
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self._payload())
                f.flush()
                os.fsync(f.fileno())
            self._held = True
            return self
        raise RunLockedError(f"could not take the lock {str(self.path)!r} (another process "
                             "keeps creating it)")

    def _raw(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def _handle_existing(self) -> None:
        seen = self._raw()
        holder = self._read_holder()
        here = socket.gethostname()
        if holder is None:
            try:
                import time

                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return  # released meanwhile: try again
            if age < UNREADABLE_LOCK_GRACE_S:
                raise RunLockedError(
                    f"output folder {str(self.out)!r} is being locked by another process "
                    f"right now ({self.path.name} is being written)")
            self.log(f"tritonbasis: taking over an unreadable lock file {str(self.path)!r} "
                     f"({age:.0f} s old)")
        elif holder.get("host") == here:
            pid = holder["pid"]
            if pid != os.getpid() and _pid_alive(pid):
                raise RunLockedError(
                    f"output folder {str(self.out)!r} is in use by another tritonbasis "
                    f"{holder.get('command') or 'process'} (pid {pid}, started "
                    f"{holder.get('started', '?')}); wait for it to finish or use another --out")
            self.log(f"tritonbasis: taking over the stale lock of pid {pid} (no longer "
                     f"running, started {holder.get('started', '?')}) in {str(self.out)!r}")
        else:
            raise RunLockedError(
                f"output folder {str(self.out)!r} is locked by pid {holder.get('pid')} on host "
                f"{holder.get('host')!r} (started {holder.get('started', '?')}); this host "
                f"cannot check whether it still runs. If it does not, delete "
                f"{str(self.path)!r}")
        # Two processes may find the same stale lock: remove it only if it is still the file we
        # judged (the other one may have replaced it with its own live lock meanwhile).
        if self._raw() != seen:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        holder = self._read_holder()
        # only remove our own lock (a takeover after a long stall must not be undone)
        if holder is None or (holder.get("pid") == os.getpid()
                              and holder.get("host") == socket.gethostname()):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------------------------
# argparse types (a ValueError/ArgumentTypeError here becomes "argument --x: ..." and exit 2)


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None


def _float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {s!r}")
    return v


def _bounded(parse, ok, rule: str, name: str):
    """An argparse type: ``parse`` the string, then require ``ok(value)`` ("must be RULE")."""

    def check(s: str):
        v = parse(s)
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {v}")
        return v

    check.__name__ = name  # argparse names the type in some messages
    return check


positive_int = _bounded(_int, lambda v: v >= 1, ">= 1", "positive_int")
nonneg_int = _bounded(_int, lambda v: v >= 0, ">= 0", "nonneg_int")
finite_float = _bounded(_float, lambda v: True, "finite", "finite_float")
positive_float = _bounded(_float, lambda v: v > 0, "> 0", "positive_float")
nonneg_float = _bounded(_float, lambda v: v >= 0, ">= 0", "nonneg_float")
unit_ratio = _bounded(_float, lambda v: 0 < v <= 1, "in (0, 1]", "unit_ratio")  # C_b / C_out


def readable_file(s: str) -> str:
    """An existing, readable regular file (a plan JSON)."""
    p = Path(s).expanduser()
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{s!r} is a directory, not a file")
    if not p.exists():
        raise argparse.ArgumentTypeError(f"file not found: {s!r}")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {s!r}: {e.strerror or e}") from None
    return str(p)


def device_arg(s: str) -> str:
    import torch

    try:
        d = torch.device(s)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device: {s!r} (cpu or cuda)") from None
    if d.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"device must be cpu or cuda, got {s!r}")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{s!r}: CUDA is not available on this machine")
    return str(d)


# --------------------------------------------------------------------------------------------
# errors


def known_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "your input or your files", not "a bug": shown as one line."""
    from ..util.fileio import CheckpointError

    types: list[type[BaseException]] = [ValueError, OSError, RunLockedError, CheckpointError,
                                        FloatingPointError]
    with contextlib.suppress(ImportError):
        from ..recipes.search import SearchStateError

        types.append(SearchStateError)
    return tuple(types)


def debug_enabled(argv=None) -> bool:
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0") or (
        argv is not None and "--debug" in argv)


def one_line(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.errno is not None and e.filename is not None \
            and not isinstance(e, OutputNotWritableError):
        msg = f"{e.strerror or errno.errorcode.get(e.errno, e.errno)}: {e.filename!r}"
    if isinstance(e, KeyError):
        msg = f"missing key {msg}"
    return " ".join(msg.split())
