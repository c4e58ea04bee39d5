"""The search's configuration: :class:`SearchConfig` and its validation.

``asdict(SearchConfig)`` is hashed into ``state.json`` (:func:`.state.config_hash`) and stored
there: a field added here is a configuration difference for every state written before it
(the resume is refused, naming the field), unless :mod:`.state` learns to read a missing field
as its default."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...nn.spec import BasisSpec
from ..train_config import TrainConfig

__all__ = ["SearchConfig", "validate"]


@dataclass
class SearchConfig:
    """Everything that determines a search's results (hashed into its state)."""

    spec: dict = field(default_factory=lambda: {"ratio": 0.25})
    max_drop: float = 0.5  # percentage points of validation accuracy
    baseline_epochs: int = 10  # 0: the model's weights are the trained baseline
    batch_size: int = 128
    lr: float = 0.05
    schedule: str = "cosine"
    probe_steps: int = 30
    probe_lr: float = 0.01
    probe_only_converted: bool = False  # fine-tune only the converted conv + BN layers
    probe_groups: bool = True
    verify_steps: int | None = None  # combined-probe fine-tuning (default 2 x probe_steps)
    max_backoff: int = 8
    gain: str = "macs"  # what selection maximises per unit of sensitivity: macs|params|time
    final: bool = True  # train chosen and naive models for the full budget
    time_batch: int = 64
    time_steps: int = 5
    seed: int = 0
    device: str | None = None

    def __post_init__(self):
        validate(self)

    def train_config(self, epochs: int, **kw) -> TrainConfig:
        """The baseline's and the final models' training config (``epochs`` at least 1)."""
        return TrainConfig(epochs=max(1, epochs), batch_size=self.batch_size, lr=self.lr,
                           schedule=self.schedule, seed=self.seed, device=self.device, **kw)

    def probe_train_config(self, steps: int, train_size: int) -> TrainConfig:
        """A probe's fine-tuning: ``steps`` optimizer steps at ``probe_lr``, cosine."""
        return TrainConfig(epochs=max(1, math.ceil(steps * self.batch_size / train_size)),
                           batch_size=self.batch_size, lr=self.probe_lr, schedule="cosine",
                           seed=self.seed, device=self.device, max_steps=steps)


def validate(c: SearchConfig) -> None:
    """Every field checked before anything is written (a NaN budget used to run the whole
    search and die writing the report; a zero batch size left a state that blocked the
    corrected rerun)."""
    BasisSpec.from_dict(c.spec)  # validates
    if c.gain not in ("macs", "params", "time"):
        raise ValueError(f"gain must be macs, params or time, got {c.gain!r}")

    def number(name, lo, lo_open=False):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"SearchConfig.{name} must be a finite number, got {v!r}")
        if v < lo or (lo_open and v == lo):
            raise ValueError(f"SearchConfig.{name} must be {'>' if lo_open else '>='} {lo}, "
                             f"got {v}")

    def integer(name, lo, allow_none=False):
        v = getattr(c, name)
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"SearchConfig.{name} must be an int >= {lo}, got {v!r}")

    number("max_drop", 0)
    number("lr", 0, lo_open=True)
    number("probe_lr", 0, lo_open=True)
    for name in ("baseline_epochs", "probe_steps", "max_backoff", "seed"):
        integer(name, 0)
    for name in ("batch_size", "time_batch", "time_steps"):
        integer(name, 1)
    integer("verify_steps", 0, allow_none=True)
    # the training configs the stages will build, checked now (schedule, device, ...)
    c.train_config(c.baseline_epochs)
    TrainConfig(epochs=1, batch_size=c.batch_size, lr=c.probe_lr, seed=c.seed, device=c.device)
