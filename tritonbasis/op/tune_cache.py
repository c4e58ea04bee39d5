"""On-disk tuning cache: measured fused-vs-weight timings per layer shape for ``mode="auto"``.

What Triton cannot keep for us. The autotune results of the kernels (the best config of every
launch key) are Triton's: ``triton.autotune(..., cache_results=True)`` stores them in Triton's
cache (``$TRITON_CACHE_DIR``, default ``~/.triton/cache``; see :mod:`.launchers`), so a second
process does not re-tune. An ``autotune-configs.json`` left in the cache folder by an older
version is ignored.

One JSON file in :func:`cache_dir` (``$TRITONBASIS_CACHE_DIR``, else
``$XDG_CACHE_HOME/tritonbasis``, else ``~/.cache/tritonbasis``):

* ``mode-timings.json`` -- one entry per (device name, layer geometry): fused and weight
  medians (ms, forward and forward+backward) and the faster ``mode``, written by
  ``tritonbasis tune`` (:func:`tritonbasis.perf.tune.tune_model`).
  :func:`tritonbasis.nn.choose_mode` uses that ``mode`` when there is an entry, and the FLOP
  model otherwise. Entries measured on a GPU are only used with the same triton version and
  kernel source.

The file is written atomically (temporary file + ``os.replace``) under an advisory lock, so
concurrent processes never read half a file; a file that is not valid cache JSON is ignored
with a warning and rewritten by the next store. ``TRITONBASIS_TUNE_CACHE=0`` switches the
timings off (``mode="auto"`` uses the FLOP model).

Reads happen once per process and file (then from memory); nothing here imports triton or
queries CUDA at import.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

from ..util.fileio import BadFileError, atomic_write_text, load_json

ENV_DIR = "TRITONBASIS_CACHE_DIR"
ENV_ENABLE = "TRITONBASIS_TUNE_CACHE"
TIMINGS_FILE = "mode-timings.json"
FORMAT = "tritonbasis.tune_cache/1"

__all__ = [
    "ENV_DIR",
    "ENV_ENABLE",
    "TIMINGS_FILE",
    "cache_dir",
    "clear_memory",
    "device_name",
    "enabled",
    "geometry_key",
    "lookup_mode",
    "preload",
    "store_timing",
    "summary",
]


def cache_dir() -> Path:
    """Where the cache files live: ``$TRITONBASIS_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/tritonbasis``, else ``~/.cache/tritonbasis``."""
    d = os.environ.get(ENV_DIR)
    if d:
        return Path(d).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tritonbasis"


def enabled() -> bool:
    """False when ``TRITONBASIS_TUNE_CACHE=0``."""
    return os.environ.get(ENV_ENABLE, "1").strip() != "0"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _scalar_tree(v) -> bool:
    """A JSON scalar or a (nested) list of them: what an ident or geometry may hold (a dict
    there made every process crash with ``TypeError: unhashable``)."""
    if isinstance(v, list):
        return all(_scalar_tree(i) for i in v)
    return v is None or isinstance(v, (str, int, float, bool))


def _tupled(v):
    """JSON lists back to (hashable) tuples, recursively."""
    if isinstance(v, list):
        return tuple(_tupled(i) for i in v)
    return v


# --------------------------------------------------------------------------------------------
# One JSON file: {"format": FORMAT, "kind": ..., "entries": {key: entry}}


def _entry_ok(e: dict) -> bool:
    """Fields the lookups index by must be JSON scalars / lists of them; the rest of an entry
    is type-checked where it is read (``_mode_table``)."""
    for k in ("ident", "geometry", "key"):
        if k in e and not (isinstance(e[k], list) and _scalar_tree(e[k])):
            return False
    for k in ("device", "mode", "triton", "src"):
        if k in e and not (e[k] is None or isinstance(e[k], str)):
            return False
    return True


class _Store:
    def __init__(self, filename: str, kind: str):
        self.filename = filename
        self.kind = kind
        self._mem: dict[str, dict[str, dict]] = {}  # path -> entries
        self._index: dict[str, dict[tuple, dict]] = {}  # path -> tuple(ident) -> entry
        self._write_failed: set[str] = set()
        self._warned: set[tuple] = set()
        self._paths: dict[tuple, Path] = {}
        self._lock = threading.Lock()

    def path(self) -> Path:
        # memoised on the variables cache_dir reads: this runs on every kernel launch
        env = (os.environ.get(ENV_DIR), os.environ.get("XDG_CACHE_HOME"))
        p = self._paths.get(env)
        if p is None:
            p = self._paths[env] = cache_dir() / self.filename
        return p

    def _read(self, path: Path) -> dict[str, dict]:
        """Entries in the file; {} (with a warning naming the file) if it is not valid cache
        JSON, whatever it holds or is (binary, wrong types, NaN, a FIFO, a device, a huge
        file: read without blocking, size-capped, util.fileio.load_json); malformed entries
        are dropped with a warning."""
        why: str | None = None
        try:
            data = load_json(path, "tuning cache")
        except FileNotFoundError:
            return {}
        except OSError as e:
            warnings.warn(
                f"tritonbasis: cannot read tuning cache {path} ({e}); ignoring it",
                RuntimeWarning,
                stacklevel=3,
            )
            return {}
        except BadFileError as e:
            data, why = None, f"it {' '.join(e.problem.split())[:160]}"
        else:
            if not isinstance(data, dict):
                why = "top level is not an object"
            elif data.get("format") != FORMAT:
                why = f"format {data.get('format')!r}, expected {FORMAT!r}"
            elif not isinstance(data.get("entries"), dict):
                why = "no 'entries' object"
        good: dict[str, dict] = {}
        if why is None:
            good = {
                k: v for k, v in data["entries"].items() if isinstance(v, dict) and _entry_ok(v)
            }
            if len(good) < len(data["entries"]) and not good:
                why = f"none of its {len(data['entries'])} entries is well-formed"
        if why is not None:
            seen: tuple
            try:
                st = path.stat()
                seen = (str(path), st.st_size, st.st_mtime_ns)
            except OSError:
                seen = (str(path), None, None)
            if seen in self._warned:
                return {}
            self._warned.add(seen)
            warnings.warn(
                f"tritonbasis: ignoring corrupt tuning cache {path} ({why}); it will "
                "be rewritten on the next store",
                RuntimeWarning,
                stacklevel=3,
            )
            return {}
        if len(good) < len(data["entries"]):
            seen = ("entries", str(path), len(data["entries"]))
            if seen not in self._warned:
                self._warned.add(seen)
                warnings.warn(
                    f"tritonbasis: ignoring {len(data['entries']) - len(good)} "
                    f"malformed entries of tuning cache {path}",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return good

    def _set(self, key: str, entries: dict[str, dict]) -> None:
        self._mem[key] = entries
        index = {}
        for e in entries.values():
            ident = e.get("ident")
            if isinstance(ident, list):
                index[_tupled(ident)] = e
        self._index[key] = index

    def entries(self) -> dict[str, dict]:
        path = self.path()
        key = str(path)
        if key not in self._mem:
            with self._lock:
                if key not in self._mem:
                    self._set(key, self._read(path))
        return self._mem[key]

    def get(self, ident: tuple) -> dict | None:
        self.entries()
        return self._index[str(self.path())].get(ident)

    def put(self, ident: tuple, entry: dict, stale=None) -> None:
        """Store ``entry`` under ``ident`` (read-modify-write of the file under a lock, atomic
        replace); ``stale(entry) -> bool`` drops matching entries in the same write. A failed
        write warns once per file and keeps the entry in memory for this process."""
        path = self.path()
        entry = {**entry, "ident": list(ident)}
        skey = json.dumps(list(ident), separators=(",", ":"), sort_keys=True)
        with self._lock:
            entries = dict(self._mem.get(str(path), {}))
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with _file_lock(path):
                    on_disk = self._read(path)
                    entries = {**entries, **on_disk} if on_disk else entries
                    if stale is not None:
                        entries = {k: v for k, v in entries.items() if not stale(v)}
                    entries[skey] = entry
                    _atomic_write(path, {"format": FORMAT, "kind": self.kind, "entries": entries})
            except OSError as e:
                if stale is not None:
                    entries = {k: v for k, v in entries.items() if not stale(v)}
                entries[skey] = entry
                if str(path) not in self._write_failed:
                    self._write_failed.add(str(path))
                    warnings.warn(
                        f"tritonbasis: cannot write tuning cache {path} ({e}); "
                        "keeping results in memory only",
                        RuntimeWarning,
                        stacklevel=3,
                    )
            self._set(str(path), entries)

    def clear_memory(self) -> None:
        with self._lock:
            self._mem.clear()
            self._index.clear()
            self._write_failed.clear()
            self._warned.clear()


@contextlib.contextmanager
def _file_lock(path: Path):
    """Advisory lock on ``path.lock`` (POSIX); a no-op where fcntl does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows: atomic replace only
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_write(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


_TIMINGS = _Store(TIMINGS_FILE, "mode-timings")
# (cache path, device name) -> {geometry tuple: mode}; rebuilt after every timing store.
_MODE_TABLES: dict[tuple[str, str], dict[tuple, str]] = {}
# device name -> the table of the cache directory last used eagerly (what compiled code reads).
_TRACED_VIEW: dict[str, dict[tuple, str]] = {}
# (device type, device index) -> device name, filled by eager calls (read while compiling).
_DEVICE_NAMES: dict[tuple[str, int | None], str] = {}


def clear_memory() -> None:
    """Forget what this process read or stored (the next lookup re-reads the files), as a new
    process would."""
    _TIMINGS.clear_memory()
    _MODE_TABLES.clear()
    _TRACED_VIEW.clear()
    _DEVICE_NAMES.clear()


# --------------------------------------------------------------------------------------------
# Device names


def device_name(device) -> str:
    """The name a device's entries are stored under: the GPU's name
    (``torch.cuda.get_device_name``) for CUDA, ``cpu (<machine>)`` for the CPU."""
    device = torch.device(device)
    k = (device.type, device.index)
    name = _DEVICE_NAMES.get(k)
    if name is None:
        if device.type == "cuda":
            idx = device.index if device.index is not None else torch.cuda.current_device()
            name = torch.cuda.get_device_name(idx)
        elif device.type == "cpu":
            name = f"cpu ({platform.machine() or 'unknown'})"
        else:
            name = device.type
        _DEVICE_NAMES[k] = name
    return name


# --------------------------------------------------------------------------------------------
# Measured fused-vs-weight timings (mode="auto")


def geometry_key(g) -> tuple:
    """The layer-shape part of a timing entry's key, from a :class:`ConvGeometry`."""
    return (
        g.N,
        g.C_in,
        g.H,
        g.W,
        g.C_b,
        g.C_rest,
        g.KH,
        g.KW,
        *g.stride,
        *g.padding,
        *g.dilation,
        bool(g.keep_basis),
    )


def _kernel_identity() -> tuple[str, str] | None:
    """(triton version, source hash of all kernels), or None if triton cannot be imported."""
    try:
        from . import launchers

        return launchers.triton_version(), launchers.source_hash()
    except Exception:
        return None


def store_timing(
    device: str,
    g,
    *,
    fused_ms: dict,
    weight_ms: dict,
    mode: str,
    dtype: str,
    layout: str,
    objective: str,
    kernel: tuple | None = None,
    extra: dict | None = None,
) -> None:
    """Record measured medians (ms; keys ``fwd`` / ``fwd+bwd``) of both modes for layer
    geometry ``g`` on device ``device`` (a name from :func:`device_name`) and the winning
    ``mode``. ``kernel``: (triton version, kernel source hash) the fused timing was made with
    (GPU entries; None for the CPU torch path)."""
    if mode not in ("fused", "weight"):
        raise ValueError(f"mode must be 'fused' or 'weight', got {mode!r}")
    geom = geometry_key(g)
    _TIMINGS.put(
        (device, *geom),
        {
            "device": device,
            "geometry": list(geom),
            "mode": mode,
            "fused_ms": fused_ms,
            "weight_ms": weight_ms,
            "dtype": dtype,
            "layout": layout,
            "objective": objective,
            "triton": kernel[0] if kernel else None,
            "src": kernel[1] if kernel else None,
            "torch": torch.__version__,
            "time": _now(),
            **(extra or {}),
        },
    )
    _MODE_TABLES.clear()
    _TRACED_VIEW.clear()


def _mode_table(name: str) -> dict[tuple, str]:
    key = (str(_TIMINGS.path()), name)
    table = _MODE_TABLES.get(key)
    if table is None:
        table = {}
        ident = None
        for e in _TIMINGS.entries().values():
            if e.get("device") != name or e.get("mode") not in ("fused", "weight"):
                continue
            if e.get("src") is not None:  # measured with the Triton kernels: same ones only
                if ident is None:
                    ident = _kernel_identity() or ("", "")
                if (e.get("triton"), e.get("src")) != ident:
                    continue
            geom = e.get("geometry")
            if isinstance(geom, list):
                table[_tupled(geom)] = e["mode"]
        _MODE_TABLES[key] = table
    _TRACED_VIEW[name] = table
    return table


def preload(device) -> None:
    """Read the timings for ``device`` now, so that code compiled afterwards with
    ``torch.compile`` uses them (while compiling, only what was read before is consulted)."""
    if enabled():
        _mode_table(device_name(device))


def lookup_mode(g, device) -> str | None:
    """The measured faster mode (``"fused"``/``"weight"``) for geometry ``g`` on ``device``,
    or None when the cache has no timing for it (or is off).

    Under ``torch.compile`` this reads only tables already in memory (no file access while
    tracing): call :func:`preload` or run the model eagerly once first."""
    device = torch.device(device)
    if torch.compiler.is_compiling():
        # Traced by dynamo: plain dict reads only (no environment, paths or files).
        name = _DEVICE_NAMES.get((device.type, device.index))
        if name is None:
            return None
        table = _TRACED_VIEW.get(name)
        if table is None:
            return None
        key = geometry_key(g)
        for v in key:
            if not isinstance(v, (int, bool)):  # symbolic shapes: no lookup
                return None
        return table.get(key)
    if not enabled():
        return None
    if not _TIMINGS.entries():
        return None  # nothing measured: no device query at all
    try:
        name = device_name(device)
    except Exception:  # e.g. a CUDA device named on a machine without CUDA
        return None
    return _mode_table(name).get(geometry_key(g))


# --------------------------------------------------------------------------------------------


def summary() -> dict:
    """Where the caches are and what they hold (for ``tritonbasis tune --show``): the timings
    file, and Triton's cache folder that holds the autotune results (``*.autotune.json``)."""
    tim = _TIMINGS.entries()
    by_dev: dict[str, int] = {}
    for e in tim.values():
        by_dev[str(e.get("device"))] = by_dev.get(str(e.get("device")), 0) + 1
    return {
        "dir": str(cache_dir()),
        "enabled": enabled(),
        "autotune": _triton_autotune_cache(),
        "timings": {"file": str(_TIMINGS.path()), "entries": len(tim), "by_device": by_dev},
    }


def _triton_autotune_cache() -> dict:
    """Triton's cache folder and how many autotune results of our kernels it holds."""
    try:
        from triton import knobs

        d = Path(knobs.cache.dir)
    except Exception as e:  # triton absent or without knobs: nothing to report
        return {"dir": None, "why": f"{type(e).__name__}: {e}"}
    n = sum(1 for _ in d.glob("*/basis_conv_*.autotune.json")) if d.is_dir() else 0
    return {"dir": str(d), "entries": n}
