"""Atomic file writes: write a temporary file in the same folder, fsync, ``os.replace``. A
reader (or a resumed run) sees the old file or the new one, never a partial one; on any error,
KeyboardInterrupt included, the temporary file is removed. Every checkpoint, state, report,
plan and cache file of tritonbasis goes through here."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
    """``with atomic_open(p, "w" | "wb") as f: ...`` -- ``p`` appears only if the block ends
    normally."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


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


def load_checkpoint(path: str | os.PathLike, *, expect_digest: str | None = None,
                    require_checksum: bool = True) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, verified: an unreadable or truncated
    file, or content that does not match its stored digest (or ``expect_digest``), raises
    :class:`CheckpointError` naming the file. The ``"sha256"`` key is removed from the result.
    ``require_checksum=False`` accepts a dict without one (files written before checksums)."""
    import torch

    path = Path(path)
    how = ("delete it to start that stage again, or restore it from a copy")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # zip/pickle errors: RuntimeError, UnpicklingError, OSError, ...
        first = " ".join(str(e).split())[:160]
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or truncated ({type(e).__name__}: {first}); "
            f"{how}") from None
    if isinstance(obj, dict) and CHECKSUM_KEY in obj:
        stored = obj.pop(CHECKSUM_KEY)
        actual = content_digest(obj)
        if stored != actual or (expect_digest is not None and actual != expect_digest):
            raise CheckpointError(
                f"checkpoint {str(path)!r} fails its checksum (content changed after it was "
                f"written: disk or copy corruption?); {how}")
    elif expect_digest is not None:
        if content_digest(obj) != expect_digest:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not match the checksum recorded when it was "
                f"written; {how}")
    elif require_checksum:
        raise CheckpointError(f"checkpoint {str(path)!r} carries no checksum (not written by "
                              f"this version of tritonbasis?); {how}")
    return obj
