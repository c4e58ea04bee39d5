"""The search's resumable state: ``<out>/state.json``.

It holds the configuration (and its hash, :func:`config_hash`), the model/data identity and
every finished stage's results under ``"stages"``, and is written atomically after every
stage and probe. Read back, it is checked against its schema (:func:`state_problems`) and
against this run's configuration (a different one is refused, naming the differing fields,
compared as resolved values: ``device=None`` equals the device it resolves to). The baseline
weights (``baseline.pt``) are a plain state_dict whose digest is recorded here.

Format ``tritonbasis-search-state/1``: states written before the search became a package read
and resume unchanged (same keys, same hash of the same config).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from ...util.config_args import dataclass_defaults
from ...util.fileio import atomic_write_text, load_checkpoint
from .config import SearchConfig

__all__ = ["STATE_FORMAT", "SearchState", "SearchStateError", "config_hash", "default_device",
           "load_baseline", "state_problems"]

STATE_FORMAT = "tritonbasis-search-state/1"


class SearchStateError(RuntimeError):
    """The state folder belongs to another configuration, or is unreadable."""


class SearchState:
    """``state.json``: the config (and its hash) plus every finished stage's results, checked
    against :func:`state_problems` when read."""

    def __init__(self, out: Path, config_hash: str, identity: dict, config: dict | None = None):
        self.path = out / "state.json"
        self.out = out
        if self.path.exists():
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:  # ValueError: JSON and UnicodeDecodeError
                raise SearchStateError(
                    f"{self.path} is corrupt ({' '.join(str(e).split())[:120]}); delete it or "
                    "use another --out folder"
                ) from None
            if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
                raise SearchStateError(f"{self.path} is not a tritonbasis search state")
            problems = state_problems(doc)
            if problems:
                raise SearchStateError(
                    f"{self.path} is corrupt (does not match the search-state schema: "
                    f"{'; '.join(problems[:4])}); delete it or use another --out folder")
            if doc["config_hash"] != config_hash:
                diffs = config_diffs(doc, config, identity)
                if diffs is None or diffs:
                    what = (f"differs in {', '.join(diffs)}" if diffs else
                            f"state {doc['config_hash'][:12]}, now {config_hash[:12]}")
                    raise SearchStateError(
                        f"{self.path} was written by a search with a different configuration "
                        f"({what}); use another --out folder, or delete the folder to start "
                        "over")
            self.doc = doc
        else:
            out.mkdir(parents=True, exist_ok=True)
            self.doc = {"format": STATE_FORMAT, "config_hash": config_hash,
                        "identity": identity, "stages": {}}
            if config is not None:
                self.doc["config"] = config
            self.save()

    def get(self, key, default=None):
        return self.doc["stages"].get(key, default)

    def put(self, key, value) -> None:
        self.doc["stages"][key] = value
        self.save()

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.doc, indent=1, allow_nan=False))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def normalized(config: dict) -> dict:
    """A config dict as it will run: ``device=None`` is the device it resolves to (so an
    explicit ``--device cpu`` equals the default on a CPU machine)."""
    c = dict(config)
    dev = c.get("device")
    with contextlib.suppress(RuntimeError, TypeError, ValueError):
        c["device"] = str(torch.device(dev)) if dev is not None else default_device()
    return c


def config_diffs(doc: dict, config: dict | None, identity: dict) -> list[str] | None:
    """Names of the fields in which the saved config/identity differs from this run's (after
    :func:`normalized`); None when the state predates stored configs. A field missing from
    the saved config (added to :class:`SearchConfig` after the state was written) reads as
    its default, so old states resume unless this run sets that field to something else."""
    saved = doc.get("config")
    if saved is None or config is None:
        return None
    defaults = dataclass_defaults(SearchConfig)
    a = normalized({**{k: v for k, v in defaults.items() if k in config}, **saved})
    b = normalized(config)
    diffs = [f"{k} (state {a.get(k)!r}, now {b.get(k)!r})" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    si = doc.get("identity", {})
    diffs += [f"identity.{k} (state {si.get(k)!r}, now {identity.get(k)!r})"
              for k in sorted(set(si) | set(identity)) if si.get(k) != identity.get(k)]
    return diffs


_NUM = (int, float)
# stage -> (type, {field: type}) of each value (per-layer dicts for probes/gains)
_PROBE_FIELDS = {"zero_shot_acc": _NUM, "zero_shot_drop": _NUM, "zero_shot_loss_delta": _NUM,
                 "probe_acc": _NUM, "probe_drop": _NUM, "probe_loss_delta": _NUM}
_GAIN_FIELDS = {"time_dense_ms": _NUM, "time_basis_ms": _NUM, "time_saved_ms": _NUM}
_BASELINE_FIELDS = {"val_acc": _NUM, "val_loss": _NUM, "params": int, "macs": int,
                    "history": list}
_SELECTION_FIELDS = {"chosen": list, "predicted_drop": _NUM, "verified_drop": _NUM,
                     "within_budget": bool, "verifications": list, "backoffs": int,
                     "max_drop": _NUM}


def _fields_problems(where: str, d, fields: dict) -> list[str]:
    if not isinstance(d, dict):
        return [f"{where} is {type(d).__name__}, not an object"]
    out = []
    for k, t in fields.items():
        v = d.get(k)
        if k not in d:
            out.append(f"{where} lacks {k!r}")
        elif isinstance(v, bool) and t is not bool:
            out.append(f"{where}.{k} is a bool")
        elif not isinstance(v, t):
            out.append(f"{where}.{k} is {type(v).__name__}")
    return out


def state_problems(doc: dict) -> list[str]:
    """What is wrong with a state document (empty if it matches the schema). A hand-written
    check: a malformed state used to fail deep in the search with a KeyError or TypeError."""
    p = []
    if not isinstance(doc.get("config_hash"), str):
        p.append("'config_hash' is not a string")
    if not isinstance(doc.get("identity"), dict):
        p.append("'identity' is not an object")
    if "config" in doc and not isinstance(doc["config"], dict):
        p.append("'config' is not an object")
    st = doc.get("stages")
    if not isinstance(st, dict):
        return p + ["'stages' is not an object"]
    if "baseline" in st:
        p += _fields_problems("baseline", st["baseline"], _BASELINE_FIELDS)
    if "baseline_sha256" in st and not isinstance(st["baseline_sha256"], str):
        p.append("baseline_sha256 is not a string")
    for name, fields in (("probes", _PROBE_FIELDS), ("gains", _GAIN_FIELDS)):
        if name in st:
            if not isinstance(st[name], dict):
                p.append(f"{name} is not an object")
            else:
                for k, v in st[name].items():
                    p += _fields_problems(f"{name}[{k!r}]", v, fields)
    for name in ("groups", "verifications"):
        if name in st:
            if not isinstance(st[name], list):
                p.append(f"{name} is not a list")
                continue
            for i, v in enumerate(st[name]):
                p += _fields_problems(f"{name}[{i}]", v, {**_PROBE_FIELDS, "layers": list})
    if "selection" in st:
        p += _fields_problems("selection", st["selection"], _SELECTION_FIELDS)
    if "final" in st:
        if not isinstance(st["final"], dict):
            p.append("final is not an object")
        else:
            for k, v in st["final"].items():
                if k not in ("dense", "chosen", "naive"):
                    continue
                p += _fields_problems(f"final[{k!r}]", v, {"val_acc": _NUM, "params": int,
                                                           "macs": int})
    if "seconds" in st and (isinstance(st["seconds"], bool)
                            or not isinstance(st["seconds"], _NUM)):
        p.append("seconds is not a number")
    return p


def config_hash(config: SearchConfig, identity: dict) -> str:
    blob = json.dumps({"config": asdict(config), "identity": identity}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_baseline(path: Path, state: SearchState) -> dict:
    """``baseline.pt``, checked against the digest the state recorded for it."""
    if not path.is_file():
        raise SearchStateError(
            f"{state.path} says the baseline is done but {path} is missing; delete "
            f"{state.path.name} to start over, or restore the file")
    return load_checkpoint(path, expect_digest=state.get("baseline_sha256"),
                           require_checksum=False)
