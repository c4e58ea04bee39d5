"""Guards for long commands: fail before any work, one writer per output folder, one-line
errors.

* :func:`check_writable` -- create the output folder and write a 4 KiB probe file in it, so
  that a read-only mount, a full disk or a path through a file fails before hours of work,
  not at the first checkpoint; a dangling symlink, a file or a FIFO in its place is named.
* :class:`RunLock` -- ``<out>/.tritonbasis.lock`` created with ``O_CREAT | O_EXCL`` (atomic on
  local file systems) holding pid, host and start time. A second process on the same folder is
  refused while the holder lives. Stale, and taken over with a message: a lock whose pid is
  dead on this host (a killed run), one whose pid no process can have (<= 0, above pid_max,
  not an integer), and (Linux) one whose live pid belongs to another program now (no
  tritonbasis command, started after the lock was written, or the lock predates the boot). A
  lock from another host cannot be checked and is refused (its message says how to remove
  it); a FIFO, device, folder or symlink in the lock's place is refused, never read.
* argparse ``type=`` functions (:func:`positive_int`, :func:`finite_float`, ...): a bad value
  is refused at parse time (exit 2, one line) before anything is written; counts stop at
  2**31 - 1 and numbers at float32's range (beyond them torch fails with a traceback).
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
import re
import socket
import sys
import tempfile
from pathlib import Path

from ..util.fileio import BadFileError, FileIOError, open_regular

LOCK_NAME = ".tritonbasis.lock"
_LOCK_MAX_BYTES = 4096  # a lock holds ~150 bytes of JSON
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
    """Create ``out`` (and parents) and write/remove a 4 KiB probe file in it; raise
    :class:`OutputNotWritableError` naming the folder and why otherwise. Works for root too (a
    read-only mount refuses root as well; ``os.access`` would say yes)."""
    out = Path(out)
    why = _not_a_folder(out)
    if why is not None:
        raise OutputNotWritableError(
            f"output folder {str(out)!r} is not writable: {why}; choose another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=str(out))
        try:  # a block of data, not just a name: a full disk still creates empty files
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        why = e.strerror or str(e)
        where = f" ({e.filename!r})" if e.filename and str(e.filename) != str(out) else ""
        raise OutputNotWritableError(
            f"output folder {str(out)!r} is not writable ({why}{where}); choose another --out"
        ) from None
    return out


def _not_a_folder(out: Path) -> str | None:
    """Why ``out`` (or the nearest path above it that exists) cannot be a folder to write
    in, or None: a dangling symlink (say where it points), a file, a FIFO, a device."""
    p = out
    while True:
        it = "it" if p == out else f"{str(p)!r} above it"
        if p.is_symlink() and not p.exists():
            return (
                f"{it} is a symlink to {os.readlink(p)!r}, which does not exist (create "
                "that folder or remove the link)"
            )
        if p.exists():
            if p.is_dir():
                return None
            kind = "a file" if p.is_file() else "not a folder (a FIFO, device or socket)"
            return f"{it} is {kind}"
        if p.parent == p:
            return None
        p = p.parent


# Linux's largest possible pid (PID_MAX_LIMIT on 64-bit kernels); /proc/sys/kernel/pid_max
# gives this machine's own limit.
_PID_MAX_LIMIT = 1 << 22


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _PID_MAX_LIMIT


def _valid_pid(pid) -> bool:
    """A pid a process can have: an int (not a bool) in [1, the largest pid]."""
    return isinstance(pid, int) and not isinstance(pid, bool) and 1 <= pid <= _PID_MAX_LIMIT


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds; Linux's /proc), or None."""
    boot = _boot_time()
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat_line.rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return None if boot is None else boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _reused(pid: int, started: float) -> bool:
    """Whether live pid ``pid`` cannot be the process that wrote a lock at ``started`` (epoch
    seconds): it is no tritonbasis command, and the lock predates this machine's boot or the
    process started after the lock was written (a pid reused since). Linux's /proc only;
    False wherever it cannot tell."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:]
    except OSError:
        return False
    if any(b"tritonbasis" in a for a in args):  # -m tritonbasis, .../bin/tritonbasis
        return False
    boot, begun = _boot_time(), _process_start(pid)
    return (boot is not None and started < boot - 60) or (
        begun is not None and begun > started + 2.0
    )


def _pid_alive(pid: int) -> bool:
    if not _valid_pid(pid) or pid > _pid_max():
        return False  # 0 and -1 would signal a whole process group / every process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _started(holder: dict) -> float | None:
    try:
        return dt.datetime.fromisoformat(str(holder.get("started"))).timestamp()
    except (TypeError, ValueError, OverflowError):
        return None


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
        return json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": self.command,
                "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
        )

    def _read_holder(self) -> dict | None:
        """The lock's content, or None while it is not a whole JSON object (empty or being
        written)."""
        try:
            doc = json.loads(self._raw() or b"")
        except (ValueError, RecursionError):
            return None
        return doc if isinstance(doc, dict) else None

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
        raise RunLockedError(
            f"could not take the lock {str(self.path)!r} (another process keeps creating it)"
        )

    def _raw(self) -> bytes | None:
        """The lock file's bytes (None if it is gone or unreadable); anything but a regular
        file in its place is refused (reading a FIFO would wait forever)."""
        if self.path.is_symlink():
            raise RunLockedError(
                f"lock file {str(self.path)!r} is a symlink, not a lock "
                "tritonbasis wrote; remove it or use another --out"
            )
        try:
            fd, _ = open_regular(self.path, "lock file")
        except BadFileError as e:
            raise RunLockedError(
                f"{e}: it is not a lock tritonbasis wrote; remove it or use another --out"
            ) from None
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                return f.read(_LOCK_MAX_BYTES + 1)  # more is no lock of ours: unreadable
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
                    f"right now ({self.path.name} is being written)"
                )
            self.log(
                f"tritonbasis: taking over an unreadable lock file {str(self.path)!r} "
                f"({age:.0f} s old)"
            )
        elif not _valid_pid(holder.get("pid")) or not isinstance(holder.get("host"), str):
            # a whole lock whose pid no process can have (0 and -1 would make os.kill signal
            # a process group / every process and say "alive"): no live run holds it
            self.log(
                f"tritonbasis: taking over the stale lock {str(self.path)!r}: its pid "
                f"{str(holder.get('pid'))[:40]} (host {str(holder.get('host'))[:40]}) "
                "cannot belong to a live process"
            )
        elif holder["host"] == here:
            pid, started = holder["pid"], _started(holder)
            alive = pid != os.getpid() and _pid_alive(pid)
            reused = alive and started is not None and _reused(pid, started)
            if alive and not reused:
                raise RunLockedError(
                    f"output folder {str(self.out)!r} is in use by another tritonbasis "
                    f"{holder.get('command') or 'process'} (pid {pid}, started "
                    f"{holder.get('started', '?')}); wait for it to finish or use another --out"
                )
            why = "its pid now belongs to another process" if reused else "no longer running"
            self.log(
                f"tritonbasis: taking over the stale lock of pid {pid} ({why}, started "
                f"{holder.get('started', '?')}) in {str(self.out)!r}"
            )
        else:
            raise RunLockedError(
                f"output folder {str(self.out)!r} is locked by pid {holder.get('pid')} on host "
                f"{holder.get('host')!r} (started {holder.get('started', '?')}); this host "
                f"cannot check whether it still runs. If it does not, delete "
                f"{str(self.path)!r}"
            )
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
        try:
            holder = self._read_holder()
        except RunLockedError:  # something else than our lock file is there now: leave it
            return
        # only remove our own lock (a takeover after a long stall must not be undone)
        if holder is None or (
            holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()
        ):
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


# Settings become float32 inside torch (a learning rate of 1e308 raised "value cannot be
# converted to type float without overflow" from deep inside the optimizer).
FLOAT32_MAX = 3.4028234663852886e38


def _float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {s!r}")
    if abs(v) > FLOAT32_MAX:
        raise argparse.ArgumentTypeError(f"{s!r} is beyond float32's range (3.4e38)")
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


# Counts and sizes stop at int32's largest: beyond it torch fails unpacking them ("Overflow
# when unpacking long long", a traceback) long before it could run that much.
INT_MAX = 2**31 - 1
positive_int = _bounded(
    _int, lambda v: 1 <= v <= INT_MAX, f">= 1 (at most {INT_MAX})", "positive_int"
)
# data-loader worker processes (each a process: a huge count is a fork bomb, not a setting)
workers_int = _bounded(_int, lambda v: 0 <= v <= 256, "in [0, 256]", "workers_int")
nonneg_int = _bounded(_int, lambda v: 0 <= v <= INT_MAX, f">= 0 (at most {INT_MAX})", "nonneg_int")
finite_float = _bounded(_float, lambda v: True, "finite", "finite_float")
positive_float = _bounded(_float, lambda v: v > 0, "> 0", "positive_float")
nonneg_float = _bounded(_float, lambda v: v >= 0, ">= 0", "nonneg_float")
unit_ratio = _bounded(_float, lambda v: 0 < v <= 1, "in (0, 1]", "unit_ratio")  # C_b / C_out
# a channel width multiplier (recipes.models.MAX_WIDTH: 64 x 512 channels in the last stage)
width_float = _bounded(_float, lambda v: 0 < v <= 64, "in (0, 64]", "width_float")


def readable_file(s: str) -> str:
    """An existing, readable regular file (a plan JSON), checked without reading it: a FIFO
    or a device in its place is refused here instead of blocking the command."""
    p = Path(s).expanduser()
    try:
        fd, _ = open_regular(p, "file")
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"file not found: {s!r}") from None
    except BadFileError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {s!r}: {e.strerror or e}") from None
    os.close(fd)
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

    types: list[type[BaseException]] = [
        ValueError,
        OSError,
        RunLockedError,
        CheckpointError,
        FloatingPointError,
    ]
    with contextlib.suppress(ImportError):
        from ..recipes.search import SearchStateError

        types.append(SearchStateError)
    return tuple(types)


def out_of_memory(e: BaseException) -> str | None:
    """The one line for an allocation that failed (``MemoryError``, torch's CPU allocator or
    CUDA out of memory: sizes from the arguments, e.g. a huge ``--width``), else None."""
    text = " ".join(str(e).split())
    if isinstance(e, MemoryError) or (
        isinstance(e, RuntimeError)
        and (
            "can't allocate memory" in text
            or "out of memory" in text.lower()
            or "Storage size calculation overflowed" in text
        )
    ):
        tried = re.search(r"tried to allocate ([0-9.,]+ ?[KMGT]?i?B|[0-9]+ bytes)", text)
        size = f" (tried to allocate {tried.group(1)})" if tried else ""
        return (
            f"out of memory{size}: the model, batch or image size asked for is too large "
            "for this machine"
        )
    return None


def debug_enabled(argv=None) -> bool:
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0") or (
        argv is not None and "--debug" in argv
    )


def one_line(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if (
        isinstance(e, OSError)
        and e.errno is not None
        and e.filename is not None
        and not isinstance(e, (OutputNotWritableError, FileIOError))
    ):
        msg = f"{e.strerror or errno.errorcode.get(e.errno, e.errno)}: {e.filename!r}"
    if isinstance(e, KeyError):
        msg = f"missing key {msg}"
    return " ".join(msg.split())
