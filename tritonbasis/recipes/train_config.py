"""The training run's configuration and result, and what the configuration determines: the
SGD parameter groups and the per-step learning-rate schedule.

All :class:`TrainConfig` fields are JSON primitives (checkpoints store ``to_dict()``), and
:data:`RESUME_KEYS` names the ones a resume must match.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

__all__ = ["RESUME_KEYS", "SCHEDULES", "TrainConfig", "TrainResult", "lr_lambda", "param_groups"]

SCHEDULES = ("cosine", "onecycle")
# Config fields that change the trajectory: resuming under different values would silently
# produce a run that neither config describes, so it is refused. device, amp, log_every and
# num_workers may change between the interrupted and the resumed run (e.g. resume a GPU run
# on another machine).
RESUME_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "nesterov",
    "schedule",
    "warmup",
    "label_smoothing",
    "seed",
    "max_steps",
)
# one-cycle constants, as torch.optim.lr_scheduler.OneCycleLR's defaults
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4
ONECYCLE_PCT = 0.3


@dataclass
class TrainConfig:
    """Training hyper-parameters. All fields are JSON primitives; each field's
    ``metadata["help"]`` is its ``tritonbasis train`` flag's help (util.config_args).

    * ``epochs``, ``batch_size``, ``lr`` (peak learning rate), ``momentum``, ``weight_decay``
      (not applied to BN parameters and biases, see :func:`param_groups`), ``nesterov``.
    * ``schedule``: ``"cosine"`` (linear warmup from ~0 over ``warmup`` epochs, then cosine
      to 0) or ``"onecycle"`` (cosine rise from lr/25 to lr over ``warmup`` epochs -- 30% of
      the run when ``warmup`` is 0 -- then cosine fall to lr/25e4, as OneCycleLR). Stepped
      every optimizer step.
    * ``warmup``: in epochs (fractions allowed).
    * ``label_smoothing``: for the training loss (evaluation uses plain cross-entropy).
    * ``seed``: seeds torch/python/numpy at the start of ``train()`` and the shuffling
      generator. The model's initial weights are the caller's.
    * ``device``: ``None`` -> ``"cuda"`` if available, else ``"cpu"``.
    * ``amp``: bf16 autocast + channels_last, on CUDA only (ignored on CPU).
    * ``log_every``: steps between progress-bar updates of loss/acc/lr.
    * ``max_steps``: optional cap on the total optimizer steps (quick runs); the schedule
      spans ``min(epochs * steps_per_epoch, max_steps)`` steps and the epoch in which the cap
      is reached ends there (it is still validated and checkpointed).
    * ``num_workers``: DataLoader workers.
    """

    epochs: int = field(default=10, metadata={"help": "training epochs"})
    batch_size: int = field(default=128, metadata={"help": "batch size (per process)"})
    # 0.05: what `tritonbasis train` has always run (and what SearchConfig.lr trains with);
    # checkpoints store it and a resume must match it (RESUME_KEYS)
    lr: float = field(default=0.05, metadata={"help": "peak learning rate"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum, in [0, 1)"})
    weight_decay: float = field(
        default=5e-4, metadata={"help": "weight decay (not on BN parameters and biases)"}
    )
    nesterov: bool = field(default=True, metadata={"help": "Nesterov momentum"})
    schedule: str = field(
        default="cosine",
        metadata={
            "help": "learning-rate schedule: cosine (linear warmup, cosine to 0) or onecycle"
        },
    )
    warmup: float = field(default=0.0, metadata={"help": "warmup in epochs (fractions allowed)"})
    label_smoothing: float = field(
        default=0.0, metadata={"help": "label smoothing of the training loss, in [0, 1)"}
    )
    seed: int = field(default=0, metadata={"help": "seeds torch/python/numpy and the shuffling"})
    device: str | None = field(
        default=None, metadata={"help": "cpu or cuda (default: cuda if available)"}
    )
    amp: bool = field(
        default=True, metadata={"help": "bf16 autocast + channels_last on CUDA (ignored on CPU)"}
    )
    log_every: int = field(default=10, metadata={"help": "steps between progress-bar updates"})
    max_steps: int | None = field(default=None, metadata={"help": "cap on optimizer steps"})
    num_workers: int = field(default=0, metadata={"help": "data loader workers"})

    def __post_init__(self):
        def pos_int(name, v, allow_none=False, allow_zero=False):
            if v is None and allow_none:
                return
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
                kind = "a non-negative" if allow_zero else "a positive"
                raise ValueError(f"TrainConfig.{name} must be {kind} int, got {v!r}")

        pos_int("epochs", self.epochs)
        pos_int("batch_size", self.batch_size)
        pos_int("seed", self.seed, allow_zero=True)
        pos_int("log_every", self.log_every)
        pos_int("max_steps", self.max_steps, allow_none=True)
        pos_int("num_workers", self.num_workers, allow_zero=True)
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"TrainConfig.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        for name in ("lr", "momentum", "weight_decay", "warmup", "label_smoothing"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"TrainConfig.{name} must be a finite number, got {v!r}")
            setattr(self, name, float(v))
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"TrainConfig.momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("TrainConfig.nesterov=True needs momentum > 0")
        if self.weight_decay < 0 or self.warmup < 0:
            raise ValueError("TrainConfig.weight_decay and warmup must be >= 0")
        if self.warmup >= self.epochs:
            raise ValueError(
                f"TrainConfig.warmup={self.warmup} epochs must be < epochs={self.epochs}"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if self.device is not None:
            self.device = str(torch.device(self.device))
        self.nesterov = bool(self.nesterov)
        self.amp = bool(self.amp)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclass
class TrainResult:
    """What :func:`tritonbasis.recipes.train.train` returns. ``history`` holds one dict per
    epoch with ``epoch`` (1-based), ``steps`` (optimizer steps in that epoch), ``global_step``,
    ``lr`` (the one the epoch's last step used), ``train_loss``, ``train_acc``, ``val_loss``,
    ``val_acc`` (None without val data), ``epoch_time_s`` (train phase, data loading
    included), ``eval_time_s``, ``step_time_ms`` (mean compute time per step: from a batch in
    hand to the optimizer step done, CUDA synchronised, leaving out the epoch's first steps)
    and ``images_per_s``. Accuracies are fractions in [0, 1]."""

    history: list[dict[str, Any]]
    final_val_loss: float | None
    final_val_acc: float | None
    best_val_acc: float | None
    best_epoch: int | None
    params: int
    checkpoint_path: str | None
    config: dict[str, Any]
    device: str
    amp: bool
    steps: int
    resumed_from_epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        """The result as JSON (strict: non-finite numbers are an error, not ``NaN``)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainResult:
        return cls(**d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """SGD parameter groups: ``"decay"`` (weight decay ``weight_decay``) for parameters with
    ndim >= 2 -- conv and linear weights, BasisConv2d's ``basis`` and ``coeff`` -- and
    ``"no_decay"`` (0) for ndim <= 1 -- BatchNorm weights/biases and every bias. Frozen
    parameters are left out; empty groups are dropped."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": float(weight_decay)},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def lr_lambda(config: TrainConfig, total_steps: int, steps_per_epoch: int):
    """The schedule as a multiplier of ``config.lr`` for optimizer step ``s`` (0-based)."""
    total = max(1, int(total_steps))
    if config.schedule == "cosine":
        w = min(int(round(config.warmup * steps_per_epoch)), total - 1)

        def f(s: int) -> float:
            if s < w:
                return (s + 1) / (w + 1)
            t = (s - w) / max(1, total - w)
            return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

        return f
    # onecycle
    if config.warmup > 0:
        up = min(max(1, int(round(config.warmup * steps_per_epoch))), total - 1)
    else:
        up = max(1, int(round(ONECYCLE_PCT * total)))
    lo = 1.0 / ONECYCLE_DIV
    end = lo / ONECYCLE_FINAL_DIV

    def cos_interp(a: float, b: float, t: float) -> float:
        return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))

    def g(s: int) -> float:
        if s < up:
            return cos_interp(lo, 1.0, s / up)
        return cos_interp(1.0, end, (s - up) / max(1, total - 1 - up))

    return g
