"""The search's resumable state: ``<out>/state.json``.

It holds the configuration (and its hash, :func:`config_hash`), the model/data identity and
every finished stage's results under ``"stages"``, and is written atomically after every
stage and probe. Read back, it is checked against its one schema (:data:`STATE_SCHEMA`:
types, ranges, and layer names that exist in the model) and against this run's
configuration (a different one is refused, naming the differing fields,
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
from ...util.fileio import (
    BadFileError,
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    load_json,
)
from ...util.schema import Bool, Int, Json, List, Map, Name, Num, Obj, Opt, Str, problems
from .config import SearchConfig
from .peers import RULES

__all__ = [
    "STATE_FORMAT",
    "STATE_SCHEMA",
    "SearchState",
    "SearchStateError",
    "config_hash",
    "default_device",
    "load_baseline",
    "state_problems",
]

STATE_FORMAT = "tritonbasis-search-state/1"


class SearchStateError(RuntimeError):
    """The state folder belongs to another configuration, or is unreadable."""


_REDO = "delete it (the search starts over) or use another --out folder"


class SearchState:
    """``state.json``: the config (and its hash) plus every finished stage's results, checked
    against :func:`state_problems` when read."""

    def __init__(
        self, out: Path, config_hash: str, identity: dict, config: dict | None = None, layers=None
    ):
        self.path = out / "state.json"
        self.out = out
        if self.path.exists() or self.path.is_symlink():
            try:
                doc = load_json(self.path, "search state")
            except BadFileError as e:
                raise SearchStateError(
                    f"search state {str(self.path)!r} is corrupt: it {e.problem}; {_REDO}"
                ) from None
            self.doc = doc
            self.check(layers)
            if doc["config_hash"] != config_hash:
                diffs = config_diffs(doc, config, identity)
                if diffs is None or diffs:
                    what = (
                        f"differs in {', '.join(diffs)}"
                        if diffs
                        else f"state {doc['config_hash'][:12]}, now {config_hash[:12]}"
                    )
                    raise SearchStateError(
                        f"{self.path} was written by a search with a different configuration "
                        f"({what}); use another --out folder, or delete the folder to start "
                        "over"
                    )
        else:
            out.mkdir(parents=True, exist_ok=True)
            self.doc = {
                "format": STATE_FORMAT,
                "config_hash": config_hash,
                "identity": identity,
                "stages": {},
            }
            if config is not None:
                self.doc["config"] = config
            self.save()

    def check(self, layers=None) -> None:
        """Refuse (:class:`SearchStateError`, naming the file and the fields) a document that
        does not match :data:`STATE_SCHEMA`; ``layers``: the model's candidate layers, which
        every layer name in the state must be."""
        found = state_problems(self.doc, layers)
        if found:
            more = f" ({len(found) - 4} more)" if len(found) > 4 else ""
            raise SearchStateError(
                f"search state {str(self.path)!r} is corrupt: {'; '.join(found[:4])}{more}; {_REDO}"
            )

    def get(self, key, default=None):
        return self.doc["stages"].get(key, default)

    def put(self, key, value) -> None:
        self.doc["stages"][key] = value
        self.save()

    def save(self) -> None:
        try:
            text = json.dumps(self.doc, indent=1, allow_nan=False)
        except ValueError:  # JSON has no NaN: say which stage diverged, not json's words
            bad = [k for k, v in self.doc["stages"].items() if not _finite(v)]
            raise FloatingPointError(
                f"the search's {', '.join(bad) or 'state'} results hold a non-finite number "
                "(a training diverged); lower --lr, --probe-lr or --final-lr"
            ) from None
        atomic_write_text(self.path, text)


def _finite(v) -> bool:
    try:
        json.dumps(v, allow_nan=False)
    except ValueError:
        return False
    return True


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


# Fields whose default changed: a state written before the field existed ran with this
# value, not with today's default (the rank ladder became the default search later).
ABSENT_MEANS = {"ladder": False}


def config_diffs(doc: dict, config: dict | None, identity: dict) -> list[str] | None:
    """Names of the fields in which the saved config/identity differs from this run's (after
    :func:`normalized`); None when the state predates stored configs. A field missing from
    the saved config (added to :class:`SearchConfig` after the state was written) reads as
    the value those runs had (its default, or :data:`ABSENT_MEANS`), so old states resume
    unless this run sets that field to something else."""
    saved = doc.get("config")
    if saved is None or config is None:
        return None
    defaults = {**dataclass_defaults(SearchConfig), **ABSENT_MEANS}
    a = normalized({**{k: v for k, v in defaults.items() if k in config}, **saved})
    b = normalized(config)
    diffs = [
        f"{k} (state {a.get(k)!r}, now {b.get(k)!r})"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]
    si = doc.get("identity", {})
    diffs += [
        f"identity.{k} (state {si.get(k)!r}, now {identity.get(k)!r})"
        for k in sorted(set(si) | set(identity))
        if si.get(k) != identity.get(k)
    ]
    return diffs


# The one schema of state.json. Accuracies are fractions, drops percentage points, times
# milliseconds; every layer name must be one of the model's candidate layers (Name("layer")).
# Fields marked optional are absent from states written by earlier versions.
_LAYER = Name("layer", "a candidate layer of this model")
_LAYERS = List(_LAYER, unique=True)
_ACC, _PP, _MS = Num(0, 1), Num(-100, 100), Num(0)
_COUNT = Int(0)
_PROBE = {
    "zero_shot_acc": _ACC,
    "zero_shot_drop": _PP,
    "zero_shot_loss_delta": Num(),
    "probe_acc": _ACC,
    "probe_drop": _PP,
    "probe_loss_delta": Num(),
}
_MODE = Str(("fused", "weight"))
_MODELS = Str(("dense", "chosen", "naive", *RULES))
_PLAN = Map(Int(1), key=_LAYER)  # {layer: C_b}
_SEED = Str(pattern=r"[0-9]{1,9}")
_FINAL = Obj(
    {"val_acc": _ACC, "params": _COUNT, "macs": _COUNT, "train_step_ms": _MS, "infer_ms": _MS},
    {
        "val_acc_sd": Num(0),
        "val_acc_per_seed": List(_ACC),
        "val_loss": Num(0),
        "drop_pp": _PP,
        "drop_sd_pp": Num(0),
        "drop_per_seed_pp": List(_PP),
        "seeds": List(Int(0)),
        "converted": _COUNT,
        "train_step_ms_rounds": List(_MS),
        "infer_ms_rounds": List(_MS),
        "timing_device": Str(),
    },
)
STATE_SCHEMA = Obj(
    {
        "format": Str((STATE_FORMAT,)),
        "config_hash": Str(pattern=r"[0-9a-f]{64}"),
        "identity": Map(Json()),
        "stages": Obj(
            optional={
                "baseline": Obj(
                    {
                        "val_acc": _ACC,
                        "val_loss": Num(0),
                        "params": _COUNT,
                        "macs": _COUNT,
                        "history": List(Map(Opt(Num()))),
                    }
                ),
                "baseline_sha256": Str(pattern=r"[0-9a-f]{64}"),
                # a probe's name: a layer, or "layer@C_b" (a ladder rung; checked below)
                "probe_runs": List(Obj({"world_size": Int(1), "probes": List(Str())})),
                "ladder_probes": Map(
                    Obj(_PROBE, {"rank": _COUNT}), key=Str(pattern=r".+@[0-9]{1,6}")
                ),
                # gain=time with the ladder: per "layer@C_b" its forward+backward timings
                "rung_gains": Map(
                    Obj(
                        {"time_dense_ms": _MS, "time_basis_ms": _MS, "time_saved_ms": Num()},
                        {"time_fused_ms": _MS, "time_weight_ms": _MS, "mode": _MODE},
                    ),
                    key=Str(pattern=r".+@[0-9]{1,6}"),
                ),
                "plan_probes": List(Obj({"plan": List(List(Json(), min_len=2)), **_PROBE})),
                "ladder_selection": Obj(
                    {
                        "plan": _PLAN,
                        "saved": Num(),
                        "verified_drop": _PP,
                        "within_budget": Bool(),
                        "backoffs": _COUNT,
                        "max_drop": Num(0),
                    },
                    {
                        "sequence": List(Map(Json())),
                        "n_steps": _COUNT,
                        "verified_loss_delta": Opt(Num()),
                        "steps": List(Map(Json())),
                    },
                ),
                "ladder_refine": Obj(
                    {
                        "start": _PLAN,
                        "plan": _PLAN,
                        "saved": Num(),
                        "verified_drop": _PP,
                        "within_budget": Bool(),
                        "backoffs": _COUNT,
                    },
                    {"n_steps": _COUNT, "steps": List(Map(Json()))},
                ),
                "peers": Map(
                    Obj(
                        {
                            "rule": Str(RULES),
                            "setting": Map(Json()),
                            "plan": _PLAN,
                            "saved": Num(),
                            "verified_drop": _PP,
                            "fits": Bool(),
                        },
                        {"tried": List(Map(Json())), "macs_saved": _COUNT},
                    ),
                    key=Str(RULES),
                ),
                "probes": Map(Obj(_PROBE, {"rank": _COUNT}), key=_LAYER),
                "groups": List(
                    Obj(
                        {
                            "group": Str(("light", "heavy")),
                            "layers": _LAYERS,
                            **_PROBE,
                            "sum_of_layer_probe_drops": Num(),
                        }
                    )
                ),
                "gains": Map(
                    Obj(
                        {"time_dense_ms": _MS, "time_basis_ms": _MS, "time_saved_ms": Num()},
                        {
                            "time_fused_ms": _MS,
                            "time_weight_ms": _MS,
                            "mode": _MODE,
                            "time_dense_infer_ms": _MS,
                            "time_fused_infer_ms": _MS,
                            "time_weight_infer_ms": _MS,
                            "mode_infer": _MODE,
                        },
                    ),
                    key=_LAYER,
                ),
                "verifications": List(Obj({"layers": _LAYERS, **_PROBE})),
                "selection": Obj(
                    {
                        "chosen": _LAYERS,
                        "predicted_drop": Num(0),
                        "verified_drop": _PP,
                        "within_budget": Bool(),
                        "verifications": List(Obj({"layers": _LAYERS, **_PROBE})),
                        "backoffs": _COUNT,
                        "max_drop": Num(0),
                    },
                    {
                        "method": Str(("bisect", "greedy")),
                        "order": _LAYERS,
                        "verified_loss_delta": Opt(Num()),
                        "steps": List(
                            Obj(
                                {
                                    "n_layers": _COUNT,
                                    "predicted_drop": Num(0),
                                    "verified_drop": _PP,
                                    "verified_loss_delta": Opt(Num()),
                                    "fits": Bool(),
                                }
                            )
                        ),
                    },
                ),
                "final_runs": Map(
                    Map(Obj({"val_acc": _ACC, "val_loss": Num(0)}), key=_MODELS), key=_SEED
                ),
                "final_timing": Map(
                    Obj(
                        {
                            "train_step_ms": List(_MS, min_len=1),
                            "infer_ms": List(_MS, min_len=1),
                            "params": _COUNT,
                            "macs": _COUNT,
                            "timing_device": Str(),
                        }
                    ),
                    key=_MODELS,
                ),
                "final": Map(_FINAL, key=_MODELS),
                "seconds": Num(0),
            }
        ),
    },
    {"config": Map(Json())},
)


def state_problems(doc, layers=None) -> list[str]:
    """What is wrong with a state document against :data:`STATE_SCHEMA` (empty if nothing),
    one line per problem naming its field; ``layers``: the names every layer reference must
    be one of (None: any string). Beyond the types: the chosen layers must be among the
    ranked ones and have a probe, and the stages that hold per-model results must hold all
    three models (dense, chosen, naive)."""
    found = problems(doc, STATE_SCHEMA, {"layer": layers} if layers is not None else None)
    if found or not isinstance(doc, dict):
        return found
    st = doc["stages"]
    sel = st.get("selection")
    if sel is not None:
        ranked = set(sel.get("order", sel["chosen"]))
        found += [
            f"stages.selection.chosen: {f!r} is not in stages.selection.order"
            for f in sel["chosen"]
            if f not in ranked
        ]
        found += [
            f"stages.selection.chosen: {f!r} has no entry in stages.probes"
            for f in sel["chosen"]
            if f not in st.get("probes", {})
        ]
    for name in ("final_timing", "final"):
        if name in st and not {"dense", "chosen", "naive"} <= set(st[name]):
            found.append(f"stages.{name} holds {sorted(st[name])}, not dense, chosen and naive")
    names = None if layers is None else set(layers)
    for i, run in enumerate(st.get("probe_runs", [])):
        for j, p in enumerate(run["probes"]):
            f = p.rsplit("@", 1)[0] if "@" in p else p
            if names is not None and f not in names:
                found.append(f"stages.probe_runs[{i}].probes[{j}]: {p!r} names no candidate layer")
    for key in ("ladder_probes", "rung_gains"):
        for k in st.get(key, {}):
            if names is not None and k.rsplit("@", 1)[0] not in names:
                found.append(f"stages.{key}: {k!r} names no candidate layer")
    return found


def config_hash(config: SearchConfig, identity: dict) -> str:
    blob = json.dumps({"config": asdict(config), "identity": identity}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_baseline(path: Path, state: SearchState, model: torch.nn.Module | None = None) -> dict:
    """``baseline.pt``, checked against the digest the state recorded for it and, given
    ``model``, against its parameter and buffer names and shapes (a file that does not fit
    is a :class:`~tritonbasis.util.fileio.CheckpointError` naming it)."""
    if not path.exists():
        raise SearchStateError(
            f"{state.path} says the baseline is done but {path} is missing; delete "
            f"{state.path.name} to start over, or restore the file"
        )
    sd = load_checkpoint(path, expect_digest=state.get("baseline_sha256"), require_checksum=False)
    if model is not None:
        check_fits(sd, model, path)
    return sd


def check_fits(sd, model: torch.nn.Module, path: Path) -> None:
    """A state_dict read from ``path`` must hold exactly ``model``'s tensors, with their
    shapes."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    why = None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        why = "it is not a state_dict of tensors"
    elif set(sd) != set(want):
        odd = sorted(set(sd) ^ set(want))
        why = f"its keys differ from the model's ({', '.join(map(repr, odd[:3]))})"
    else:
        bad = [k for k in want if tuple(sd[k].shape) != want[k]]
        if bad:
            why = f"{bad[0]!r} has shape {tuple(sd[bad[0]].shape)}, the model's {want[bad[0]]}"
    if why:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit the model: {why}; "
            "delete it to start that stage again, or restore it from a copy"
        )
