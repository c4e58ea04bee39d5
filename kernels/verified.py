"""Which kernel variants a GPU run has passed for correctness (``verified.json`` beside this
file). The launchers pick a v3 forward variant by default only where an entry matches the GPU
they run on: the same variant, compute capability and Triton version, and the same kernel
source (``source_hash``: the variant's module, the records and the pruning; any edit of those
needs a new GPU run). Everything else runs v2.

An entry (written from the JSON of ``python bench/variants.py --variant NAME --out FILE`` on
the GPU, by ``python tools/record_verified.py FILE``)::

    {"variant": "fwd_halo", "gpu": "NVIDIA H200", "capability": "9.0", "triton": "3.6.0",
     "source_hash": "...", "commit": "...", "date": "2026-12-04", "max_err": {...}}

The file holds ``{"entries": [...]}``; empty, nothing but v2 runs by default.
"""

from __future__ import annotations

import json
from pathlib import Path

PATH = Path(__file__).with_name("verified.json")
MATCH = ("variant", "capability", "triton", "source_hash")


def load(path: Path = PATH) -> list[dict]:
    """The entries of ``path`` (none if it is missing)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected {{'entries': [...]}}")
    return entries


def passed(
    entries: list[dict], variant: str, capability: str, triton: str, source_hash: str
) -> bool:
    """Whether an entry verifies ``variant`` for this capability ("9.0"), Triton version and
    kernel source."""
    want = dict(zip(MATCH, (variant, capability, triton, source_hash)))
    return any(all(e.get(k) == v for k, v in want.items()) for e in entries)


def add(entry: dict, path: Path = PATH) -> None:
    """Append ``entry`` (it must name every field of :data:`MATCH`), replacing an entry for
    the same variant, capability, Triton and source; written atomically."""
    from tritonbasis.util.fileio import atomic_write_text

    missing = [k for k in MATCH if not entry.get(k)]
    if missing:
        raise ValueError(f"entry lacks {missing}")
    keep = [e for e in load(path) if any(e.get(k) != entry[k] for k in MATCH)]
    atomic_write_text(str(path), json.dumps({"entries": [*keep, entry]}, indent=1) + "\n")
