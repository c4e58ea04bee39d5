"""The search's configuration: :class:`SearchConfig` (everything that determines a search's
results, hashed into its state) and :class:`ExperimentConfig` (the model and data the default
experiment runs it on), each field with its help text (``metadata["help"]``, the CLI flag's).

``asdict(SearchConfig)`` is hashed into ``state.json`` (:func:`.state.config_hash`) and stored
there; a field added here is read as its default from a state written before it existed
(:func:`.state.config_diffs`), so old states resume.

The defaults are the experiment recorded in ``docs/experiments.md``: a quarter-width ResNet18
on 16x16 digits, converting every layer at C_b = C_out/16 loses clearly more than the 1 pp
budget, the single-ratio subset search at that C_b stays within it, and the rank ladder
(the default, ``ladder``) gives each layer its own C_b within the same budget."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

from ...nn.spec import BasisSpec
from ..train_config import TrainConfig

__all__ = ["ExperimentConfig", "SearchConfig", "help_texts", "validate"]


def _f(default, help: str, **kw):
    """A dataclass field with its help text (a mutable default through ``default_factory``)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class SearchConfig:
    """Everything that determines a search's results (hashed into its state)."""

    spec: dict = _f(
        {"ratio": 0.0625, "keep_basis": False},
        "the BasisSpec every converted layer gets (a dict: ratio / basis_channels "
        "/ energy, keep_basis, ...)",
    )
    max_drop: float = _f(
        1.0,
        "accuracy budget: the most validation accuracy (percentage "
        "points) the chosen plan may lose",
    )
    baseline_epochs: int = _f(
        8,
        "epochs of the dense baseline (and of every final seed's "
        "dense model); 0: the model's weights are the baseline",
    )
    batch_size: int = _f(128, "training batch size")
    lr: float = _f(0.05, "learning rate of the baseline training")
    schedule: str = _f("cosine", "learning-rate schedule of the baseline training")
    probe_steps: int = _f(20, "fine-tuning steps of one layer's probe")
    probe_lr: float = _f(0.01, "learning rate of the probes' (and verifications') fine-tuning")
    probe_only_converted: bool = _f(
        False, "probes fine-tune only the converted convs and the BN layers"
    )
    probe_groups: bool = _f(
        True,
        "also probe the lighter and the heavier half of the layers "
        "as groups (how additive single-layer drops are)",
    )
    verify_steps: int | None = _f(
        40,
        "fine-tuning steps of a combined probe (a selection "
        "step's verification); none: 2 x probe_steps",
    )
    sensitivity: Literal["loss", "accuracy"] = _f(
        "loss",
        "what ranks the layers' sensitivity: the probe's validation-loss increase "
        "(smooth) or its accuracy drop (moves in steps of one image)",
    )
    selection: Literal["bisect", "greedy"] = _f(
        "bisect",
        "bisect: the longest score-ordered prefix of layers whose combined probe "
        "fits the budget, by bisection over the prefix length; greedy: add layers "
        "while the summed single-layer drops fit, then back off while the combined "
        "probe does not",
    )
    max_backoff: int = _f(
        8,
        "the most over-budget combined probes the selection tolerates "
        "(greedy: back-offs; bisect: failed steps) before it stops",
    )
    gain: Literal["macs", "params", "time"] = _f(
        "macs",
        "what selection maximises per unit of sensitivity; time: the forward+backward time "
        "saved per layer (with the ladder: per layer and rank), measured once on the device "
        "the search runs on and kept in the state, so the plan depends on that device and "
        "its load; macs and params never read a timing",
    )
    final: bool = _f(True, "run the final dense / chosen / naive comparison")
    final_epochs: int = _f(
        4,
        "final: epochs of fine-tuning each converted model gets, "
        "starting from its seed's trained dense model",
    )
    final_lr: float = _f(0.05, "final: learning rate of that fine-tuning (cosine)")
    final_seeds: int = _f(
        3,
        "final: seeds compared (seed, seed+1, ...), each with its own "
        "dense model; the plan is the one searched with `seed`",
    )
    time_batch: int = _f(64, "batch size of the per-layer and whole-model timings")
    time_steps: int = _f(5, "least timed calls (CUDA) or blocks (CPU) per timing")
    time_rounds: int = _f(
        3,
        "final: the dense / chosen / naive step times are measured this "
        "many times, interleaved; the spread of those rounds is the "
        "timing noise the summary states",
    )
    ladder: bool = _f(
        True,
        "rank ladder: choose each layer's C_b among ladder_ratios (or dense) by probes "
        "and verified combined probes, and compare it with the peer rules; off: only the "
        "single-ratio subset search at the spec's C_b (about half the time)",
    )
    ladder_ratios: list[float] = _f(
        [0.0625, 0.125, 0.25, 0.5],
        "ladder: the C_b / C_out rungs each layer may get; a layer is probed from the "
        "mildest rung to harsher ones and stops at the first whose probe loses more than "
        "max_drop",
    )
    peers: bool = _f(
        True,
        "ladder: also find, verify and fine-tune the peer rules' best fitting settings "
        "(uniform ratio, uniform energy threshold, channel threshold, single-ratio subset)",
    )
    peer_energies: list[float] = _f(
        [0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
        "ladder: the energy thresholds the energy peer rule may use (per layer the "
        "smallest C_b whose basis keeps that fraction of the filters' energy)",
    )
    seed: int = _f(0, "seed of the baseline, the probes and the first final seed")
    device: str | None = _f(None, "device (none: CUDA if available, else CPU)")

    def __post_init__(self):
        validate(self)

    def train_config(self, epochs: int, **kw) -> TrainConfig:
        """The baseline's training config (``epochs`` at least 1); ``kw`` overrides."""
        base = dict(
            epochs=max(1, epochs),
            batch_size=self.batch_size,
            lr=self.lr,
            schedule=self.schedule,
            seed=self.seed,
            device=self.device,
        )
        return TrainConfig(**{**base, **kw})

    def probe_train_config(self, steps: int, train_size: int) -> TrainConfig:
        """A probe's fine-tuning: ``steps`` optimizer steps at ``probe_lr``, cosine."""
        return TrainConfig(
            epochs=max(1, math.ceil(steps * self.batch_size / train_size)),
            batch_size=self.batch_size,
            lr=self.probe_lr,
            schedule="cosine",
            seed=self.seed,
            device=self.device,
            max_steps=steps,
        )

    def final_seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.final_seeds)]


@dataclass
class ExperimentConfig:
    """The model and data the default experiment (:func:`tritonbasis.recipes.search.
    run_experiment`) runs the search on; with :class:`SearchConfig` it is the whole
    experiment of ``docs/experiments.md``."""

    model: str = _f("resnet18_cifar", "model name (tritonbasis.recipes.models)")
    width: float = _f(0.25, "channel width multiplier (0.25: CPU-sized)")
    data: Literal["digits", "cifar10"] = _f("digits", "data set (digits: embedded, no download)")
    data_dir: str | None = _f(None, "CIFAR-10 folder (data cifar10)")
    image_size: int = _f(16, "digits are resized to this many pixels a side")
    val_fraction: float = _f(0.25, "digits: fraction held out for validation (stratified)")
    split_seed: int = _f(0, "digits: seed of the train/validation split")
    ratio: float = _f(0.0625, "C_b / C_out of every converted layer (sets the spec)")
    keep_basis: bool = _f(
        False, "keep-basis form (C_b original filters as the basis) instead of the full SVD form"
    )

    def __post_init__(self):
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ExperimentConfig.ratio must be in (0, 1], got {self.ratio!r}")
        if self.width <= 0 or self.image_size < 1:
            raise ValueError("ExperimentConfig.width must be > 0 and image_size >= 1")

    def spec(self) -> dict:
        return {"ratio": self.ratio, "keep_basis": self.keep_basis}


def help_texts(cls) -> dict[str, str]:
    """``{field: help}`` of a config dataclass (for
    :func:`tritonbasis.util.config_args.add_dataclass_arguments`)."""
    return {f.name: f.metadata["help"] for f in fields(cls)}


def validate(c: SearchConfig) -> None:
    """Every field checked before anything is written (a NaN budget would run the whole
    search and die writing the report; a zero batch size would leave a state that blocks the
    corrected rerun)."""
    BasisSpec.from_dict(c.spec)  # validates
    for name, allowed in (
        ("gain", ("macs", "params", "time")),
        ("sensitivity", ("loss", "accuracy")),
        ("selection", ("bisect", "greedy")),
    ):
        if getattr(c, name) not in allowed:
            raise ValueError(
                f"{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, "
                f"got {getattr(c, name)!r}"
            )

    def number(name, lo, lo_open=False):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"SearchConfig.{name} must be a finite number, got {v!r}")
        if v < lo or (lo_open and v == lo):
            raise ValueError(
                f"SearchConfig.{name} must be {'>' if lo_open else '>='} {lo}, got {v}"
            )

    def integer(name, lo, allow_none=False):
        v = getattr(c, name)
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"SearchConfig.{name} must be an int >= {lo}, got {v!r}")

    number("max_drop", 0)
    for name, hi in (("ladder_ratios", 1.0), ("peer_energies", 1.0)):
        v = getattr(c, name)
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError(f"SearchConfig.{name} must be a non-empty list, got {v!r}")
        for x in v:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= hi:
                raise ValueError(f"SearchConfig.{name} values must be in (0, {hi}], got {x!r}")
    for name in ("lr", "probe_lr", "final_lr"):
        number(name, 0, lo_open=True)
    for name in ("baseline_epochs", "probe_steps", "max_backoff", "seed", "final_epochs"):
        integer(name, 0)
    for name in ("batch_size", "time_batch", "time_steps", "time_rounds", "final_seeds"):
        integer(name, 1)
    integer("verify_steps", 0, allow_none=True)
    # the training configs the stages will build, checked now (schedule, device, ...)
    c.train_config(c.baseline_epochs)
    TrainConfig(epochs=1, batch_size=c.batch_size, lr=c.probe_lr, seed=c.seed, device=c.device)
