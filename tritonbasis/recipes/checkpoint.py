"""Training checkpoints and the RNG state they carry.

``last.pt`` holds only tensors and primitive containers (RNG states as tensors, the config as a
plain dict), so it loads with ``torch.load(path, weights_only=True)``; it carries a SHA-256 of
its content (key ``"sha256"``, :func:`tritonbasis.util.fileio.save_checkpoint`), checked on
resume: a corrupt or truncated file is an error naming it, never a silent restart. The RNG
states (torch, CUDA, python, numpy and the shuffling generator's) are what makes a resumed run
bitwise equal to an uninterrupted one on CPU.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..util.fileio import CheckpointError, load_checkpoint, save_checkpoint
from ..util.schema import Int, Is, Json, List, Map, Num, Obj, Opt, SchemaError, Str
from ..util.schema import check as check_schema
from .train_config import RESUME_KEYS, TrainConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CHECKPOINT_SCHEMA",
    "HISTORY_KEYS",
    "check_resume_config",
    "load",
    "rng_state",
    "save",
    "seed_all",
    "set_rng_state",
]

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "tritonbasis.train/1"
# a history row's keys, in the order the loop records them (saved in last.pt and the result)
HISTORY_KEYS = (
    "epoch",
    "steps",
    "global_step",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "epoch_time_s",
    "eval_time_s",
    "step_time_ms",
    "images_per_s",
)
_TENSOR = Is(torch.Tensor, "a tensor")
_STATE_DICT = Is(dict, "an object")  # optimizer / scheduler: checked by their load_state_dict
# What a training checkpoint holds (its non-tensor part is what a hand-made file gets wrong;
# the checksum already catches a damaged one). Other keys are allowed and ignored.
CHECKPOINT_SCHEMA = Obj(
    {
        "format": Str((CHECKPOINT_FORMAT,)),
        "epoch": Int(0),
        "global_step": Int(0),
        "model": Map(_TENSOR),
        "optimizer": _STATE_DICT,
        "scheduler": _STATE_DICT,
        # a row may hold a non-finite validation loss (a diverged model): numbers, not finite ones
        "history": List(Obj({k: Opt(Is((int, float), "a number")) for k in HISTORY_KEYS})),
        "config": Map(Json()),
        "train_size": Int(1),
        "steps_per_epoch": Int(1),
        "rng": Obj(
            {
                "torch": _TENSOR,
                "cuda": List(_TENSOR),
                "python": Obj({"version": Int(), "state": _TENSOR, "gauss": Opt(Num())}),
                "numpy": Obj(
                    {
                        "kind": Str(),
                        "keys": _TENSOR,
                        "pos": Int(0),
                        "has_gauss": Int(0, 1),
                        "cached_gaussian": Num(),
                    }
                ),
                "loader": Opt(_TENSOR),
            }
        ),
    },
    extra=Is(object, "anything"),
)


def seed_all(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    """Every RNG state a training run draws from, as tensors and primitives (python's
    624-word Mersenne state and numpy's keys as int64 tensors)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "loader": generator.get_state() if generator is not None else None,
    }


def set_rng_state(s: dict[str, Any], generator: torch.Generator | None) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only on a machine with as many
    GPUs)."""
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    py = s["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = s["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    if generator is not None and s["loader"] is not None:
        generator.set_state(s["loader"])


def save(obj: dict[str, Any], path: Path) -> None:
    """Checkpoint write: :func:`tritonbasis.util.fileio.save_checkpoint` (temporary file,
    fsync, rename; a SHA-256 of the content stored inside and checked by :func:`load`)."""
    save_checkpoint({"format": CHECKPOINT_FORMAT, **obj}, path)


def load(path: Path) -> dict[str, Any]:
    """Read and verify ``last.pt``: a truncated, corrupt or tampered file is a
    :class:`tritonbasis.util.fileio.CheckpointError` (a ValueError) naming it, never a silent
    restart or a resume from wrong weights."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a tritonbasis training checkpoint")
    try:
        check_schema(ckpt, CHECKPOINT_SCHEMA, f"checkpoint {str(path)!r} is malformed")
    except SchemaError as e:
        raise CheckpointError(f"{e}; delete it to start again, or restore it from a copy") from None
    return ckpt


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse a resume whose config differs from the checkpoint's in :data:`RESUME_KEYS`."""
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {getattr(cfg, k)!r}"
        for k in RESUME_KEYS
        if saved.get(k) != getattr(cfg, k)
    ]
    if diffs:
        raise ValueError(
            f"cannot resume from {str(path)!r}: its training config differs in fields that "
            f"change the run ({'; '.join(diffs)}). Resume with the same settings, or start a "
            f"new run (resume=False or another checkpoint folder)."
        )
