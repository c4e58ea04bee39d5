"""Plans: fully qualified conv name (or ``re:`` pattern, or ``_default``) -> :class:`BasisSpec`
or None. The JSON contract between the sensitivity search and conversion, plain enough to edit
by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..nn.spec import BasisSpec, as_spec
from ..util.fileio import atomic_write_text

__all__ = ["load_plan", "lookup", "normalize_plan", "save_plan"]


def normalize_plan(plan) -> dict[str, BasisSpec | None]:
    """A plan dict with every value a BasisSpec or None; keys checked (regexes compile)."""
    if not isinstance(plan, dict):
        raise TypeError(f"a plan must be a dict of name -> spec, got {type(plan).__name__}")
    out = {}
    for k, v in plan.items():
        if not isinstance(k, str):
            raise TypeError(f"plan keys must be strings, got {k!r}")
        if k.startswith("re:"):
            try:
                re.compile(k[3:])
            except re.error as e:
                raise ValueError(f"plan key {k!r} is not a valid regex: {e}") from None
        try:
            out[k] = as_spec(v)
        except (TypeError, ValueError) as e:
            raise type(e)(f"plan entry {k!r}: {e}") from None
    return out


def lookup(plan: dict[str, BasisSpec | None], fqn: str) -> tuple[bool, BasisSpec | None, str]:
    """(matched, spec, key): exact name first, then the first matching ``re:`` key (full
    match, in plan order), then ``_default``."""
    if fqn in plan:
        return True, plan[fqn], fqn
    for k, v in plan.items():
        if k.startswith("re:") and re.fullmatch(k[3:], fqn):
            return True, v, k
    if "_default" in plan:
        return True, plan["_default"], "_default"
    return False, None, ""


def save_plan(plan, path, meta: dict | None = None) -> Path:
    """Write a plan as JSON (atomically): ``{"plan": {name: spec-dict | null}, "meta": {...}}``."""
    plan = normalize_plan(plan)
    doc = {
        "format": "tritonbasis-plan/1",
        "plan": {k: (None if v is None else v.to_dict()) for k, v in plan.items()},
    }
    if meta:
        doc["meta"] = meta
    path = Path(path)
    atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return path


def load_plan(path) -> dict[str, BasisSpec | None]:
    """Read a plan JSON (either the ``save_plan`` document or a bare ``{name: spec}`` dict)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"plan file {path} is a directory, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"plan file not found: {path}")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"plan file {path} is not a text (UTF-8 JSON) file") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"plan file {path} is not valid JSON: {e}") from None
    plan = doc["plan"] if isinstance(doc, dict) and "plan" in doc else doc
    try:
        return normalize_plan(plan)
    except (TypeError, ValueError) as e:
        raise ValueError(f"plan file {path}: {e}") from None
