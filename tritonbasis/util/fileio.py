"""Files, written and read back.

* Atomic writes: a temporary file in the same folder, fsync, ``os.replace``. A reader (or a
  resumed run) sees the old file or the new one, never a partial one; on any error,
  KeyboardInterrupt included, the temporary file is removed. Every checkpoint, state, report,
  plan and cache file of tritonbasis goes through here. An OS error while writing (a full
  disk, a read-only mount, a quota) is a :class:`FileIOError`: one line with the path and the
  OS's reason -- also when ``torch.save`` hides it behind its own C++ message.
* Reading files that may be anything: :func:`read_regular` opens without blocking
  (``O_NONBLOCK``: a FIFO where a file should be does not hang the run), refuses anything but
  a regular file (FIFO, device, directory) and caps the size; :func:`load_json` adds UTF-8,
  a nesting cap and no NaN/Infinity (JSON has no such numbers). Problems are a
  :class:`BadFileError` (a ValueError) naming the file.
* Checksummed checkpoints (below).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

# Size caps of the JSON files tritonbasis reads back: a search state of a 50-layer model is
# ~0.2 MB and a tuning cache of 10,000 layer shapes ~5 MB; a file far above that is not one.
MAX_JSON_BYTES = 64 << 20
# JSON nesting the package's own files never exceed (the search state: 6 levels).
MAX_JSON_DEPTH = 32


class FileIOError(OSError):
    """An OS error on a named file; ``str()`` is one line: what was done, the path and the
    OS's reason (``strerror``)."""

    def __init__(self, err: OSError | int, path: str | os.PathLike, verb: str, note: str = ""):
        code = err if isinstance(err, int) else err.errno
        reason = os.strerror(code) if isinstance(err, int) else (err.strerror or str(err))
        super().__init__(code, reason, str(path))
        self.verb, self.note = verb, note

    def __str__(self) -> str:
        return f"cannot {self.verb} {self.filename!r}: {self.strerror}{self.note}"


class BadFileError(ValueError):
    """A file the package reads is not what it must be (not a regular file, too large, not
    UTF-8 JSON, non-finite numbers, too deeply nested): ``"<what> '<path>' <problem>"``."""

    def __init__(self, what: str, path: str | os.PathLike, problem: str):
        super().__init__(f"{what} {str(path)!r} {problem}")
        self.what, self.path, self.problem = what, str(path), problem


_KEPT = " (nothing was replaced: the previous version of the file, if any, is intact)"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
    """``with atomic_open(p, "w" | "wb") as f: ...`` -- ``p`` appears only if the block ends
    normally; an OS error is a :class:`FileIOError` naming ``p``."""
    path = Path(path)
    try:
        mode_now = os.lstat(path).st_mode
    except OSError:
        mode_now = None
    if mode_now is not None and not (stat.S_ISREG(mode_now) or stat.S_ISLNK(mode_now)):
        # a device, FIFO or folder in the file's place is not replaced by a file
        raise FileIOError(
            OSError(errno.EEXIST, f"it is {_kind(mode_now)}, not a regular file"),
            path,
            "write",
            _KEPT,
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    except OSError as e:
        raise FileIOError(e, path, "write", _KEPT) from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, FileIOError):
            raise FileIOError(e, path, "write", _KEPT) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


class _WriteRecorder:
    """The file object torch.save writes to, remembering the first OS error: torch's zip
    writer turns it into ``RuntimeError: [enforce fail at inline_container.cc] unexpected
    pos``, which names neither the cause nor the file."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, b):
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        return self.f.flush()


def _out_of_space(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False
    return st.f_bavail == 0 or st.f_favail == 0


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    path = Path(path)
    with atomic_open(path, "wb") as f:
        rec = _WriteRecorder(f)
        try:
            torch.save(obj, rec)
        except RuntimeError:
            if rec.error is not None:
                raise rec.error from None
            if _out_of_space(path.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
            raise


# --------------------------------------------------------------------------------------------
# Reading files that may be anything


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike, what: str) -> tuple[int, os.stat_result]:
    """``(fd, stat)`` of ``path`` opened read-only without blocking, after checking that it
    is a regular file (:class:`BadFileError` naming ``what`` and the path otherwise; a missing
    file is ``FileNotFoundError``, another OS error a :class:`FileIOError`). The caller
    closes ``fd``."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise BadFileError(what, path, "is a directory, not a file") from None
    except OSError as e:
        raise FileIOError(e, path, f"read {what}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadFileError(what, path, f"is {_kind(st.st_mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: reads never block anyway
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_regular(path: str | os.PathLike, what: str, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of regular file ``path`` (:func:`open_regular`), at most ``max_bytes`` of
    them (a larger file is a :class:`BadFileError`)."""
    fd, st = open_regular(path, what)
    try:
        if st.st_size > max_bytes:
            raise BadFileError(
                what,
                path,
                f"is {st.st_size:,} bytes, more than the {max_bytes:,} such a file can be",
            )
        chunks, n = [], 0
        while True:
            try:
                b = os.read(fd, min(1 << 20, max_bytes + 1 - n))
            except OSError as e:
                raise FileIOError(e, path, f"read {what}") from None
            if not b:
                return b"".join(chunks)
            chunks.append(b)
            n += len(b)
            if n > max_bytes:
                raise BadFileError(what, path, f"grew past {max_bytes:,} bytes while being read")
    finally:
        os.close(fd)


def _deeper_than(doc: Any, max_depth: int) -> bool:
    """Whether ``doc``'s lists/objects nest deeper than ``max_depth`` (an explicit stack: no
    recursion however deep the document)."""
    stack = [(doc, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            if d > max_depth:
                return True
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


def _no_constant(name: str):
    raise ValueError(f"it holds {name}, which is not a JSON number (numbers must be finite)")


def load_json(
    path: str | os.PathLike,
    what: str,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse the JSON file ``path`` (:func:`read_regular`): UTF-8, at most ``max_depth``
    levels of nesting, no NaN/Infinity; every problem a :class:`BadFileError` naming
    ``what`` and the path."""
    raw = read_regular(path, what, max_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadFileError(
            what, path, f"is not a text (UTF-8) file (byte {e.start} is {raw[e.start]:#04x})"
        ) from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except RecursionError:  # nested ~1000 levels deep: json's own guard
        doc, deep = None, True
    except ValueError as e:
        msg = " ".join(str(e).split())[:160]
        raise BadFileError(what, path, f"is not valid JSON ({msg})") from None
    else:
        deep = _deeper_than(doc, max_depth)
    if deep:
        raise BadFileError(what, path, f"nests deeper than {max_depth} levels")
    return doc


# --------------------------------------------------------------------------------------------
# Checksummed checkpoints. torch.save's zip archive is not verified on load (a checkpoint with
# 50 flipped bytes in fc.weight loaded silently and "resumed" to a model scoring 22% instead of
# 96%), so every checkpoint dict carries a SHA-256 over its content, checked on load. The digest
# covers the tensors' dtype, shape and bytes and every primitive value, walked in a fixed order,
# so it does not depend on how torch lays the archive out. ~0.1 s per 45 MB of tensors.

CHECKSUM_KEY = "sha256"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is truncated, or fails its checksum."""


def _feed(h, obj) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            # view as bytes (works for every dtype, bf16 included)
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"P{obj!r}".encode())


def content_digest(obj: Any) -> str:
    """SHA-256 (hex) over a checkpoint's tensors and primitive values."""
    import hashlib

    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def save_checkpoint(obj: dict, path: str | os.PathLike) -> str:
    """Atomically save a checkpoint dict with its content digest under ``"sha256"`` (still a
    plain dict of tensors and primitives: ``torch.load(path, weights_only=True)`` reads it).
    Returns the digest."""
    if not isinstance(obj, dict):
        raise TypeError(f"a checkpoint must be a dict, got {type(obj).__name__}")
    body = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
    digest = content_digest(body)
    atomic_torch_save({**body, CHECKSUM_KEY: digest}, path)
    return digest


def load_checkpoint(
    path: str | os.PathLike, *, expect_digest: str | None = None, require_checksum: bool = True
) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, verified: an unreadable or truncated
    file, or content that does not match its stored digest (or ``expect_digest``), raises
    :class:`CheckpointError` naming the file. The ``"sha256"`` key is removed from the result.
    ``require_checksum=False`` accepts a dict without one (files written before checksums)."""
    import torch

    path = Path(path)
    how = "delete it to start that stage again, or restore it from a copy"
    try:
        # a FIFO / device / directory in its place is refused before torch reads (and blocks)
        fd, _ = open_regular(path, "checkpoint")
    except BadFileError as e:
        raise CheckpointError(f"{e}; {how}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors: RuntimeError, UnpicklingError, OSError, ...
        first = " ".join(str(e).split())[:160]
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or truncated ({type(e).__name__}: {first}); {how}"
        ) from None
    if isinstance(obj, dict) and CHECKSUM_KEY in obj:
        stored = obj.pop(CHECKSUM_KEY)
        actual = content_digest(obj)
        if stored != actual or (expect_digest is not None and actual != expect_digest):
            raise CheckpointError(
                f"checkpoint {str(path)!r} fails its checksum (content changed after it was "
                f"written: disk or copy corruption?); {how}"
            )
    elif expect_digest is not None:
        if content_digest(obj) != expect_digest:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not match the checksum recorded when it was "
                f"written; {how}"
            )
    elif require_checksum:
        raise CheckpointError(
            f"checkpoint {str(path)!r} carries no checksum (not written by "
            f"this version of tritonbasis?); {how}"
        )
    return obj
