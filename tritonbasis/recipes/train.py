"""Training: SGD with momentum, a per-step cosine or one-cycle schedule, no weight decay on
BatchNorm parameters and biases, bf16 autocast + channels_last on CUDA, tqdm progress,
per-epoch metrics, atomic checkpoints and exact resume; plus evaluation, parameter/MAC counts
and step-time measurement.

Checkpoints hold only tensors and primitive containers (RNG states as tensors, the config as a
plain dict), so they load with ``torch.load(path, weights_only=True)``; they carry a SHA-256 of
their content (key ``"sha256"``, :func:`tritonbasis.util.fileio.save_checkpoint`), checked on
resume: a corrupt or truncated ``last.pt`` is an error naming it, never a silent restart.
Reports are JSON (:meth:`TrainResult.to_json`), never pickle.

Reproducibility: on CPU two runs with the same config, seed and initial model give identical
metrics and weights, and a run interrupted after a checkpoint and resumed ends with the same
weights as an uninterrupted one (the checkpoint carries the torch/python/numpy RNG states and
the shuffling generator's state). On CUDA, atomics in cuDNN and in our backward kernels make
results close but not bitwise equal.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ..nn.layer import BasisConv2d
from ..util.fileio import load_checkpoint, save_checkpoint
from . import distributed as D
from .data import make_loaders

__all__ = [
    "CHECKPOINT_NAME",
    "RESUME_KEYS",
    "SCHEDULES",
    "TrainConfig",
    "TrainResult",
    "count_macs",
    "count_params",
    "evaluate",
    "lr_lambda",
    "measure_step_time",
    "param_groups",
    "train",
]

SCHEDULES = ("cosine", "onecycle")
CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "tritonbasis.train/1"
# Config fields that change the trajectory: resuming under different values would silently
# produce a run that neither config describes, so it is refused. device, amp, log_every and
# num_workers may change between the interrupted and the resumed run (e.g. resume a GPU run
# on another machine).
RESUME_KEYS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "nesterov",
               "schedule", "warmup", "label_smoothing", "seed", "max_steps")
# Per epoch, the first steps are left out of the mean step time: they carry one-off costs
# (allocator growth, cuDNN autotuning, first-touch of weights) rather than steady-state speed.
TIMING_SKIP_STEPS = 2
# one-cycle constants, as torch.optim.lr_scheduler.OneCycleLR's defaults
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4
ONECYCLE_PCT = 0.3


# --------------------------------------------------------------------------------------------
# configuration and results


@dataclass
class TrainConfig:
    """Training hyper-parameters. All fields are JSON primitives.

    * ``epochs``, ``batch_size``, ``lr`` (peak learning rate), ``momentum``, ``weight_decay``
      (not applied to BN parameters and biases, see :func:`param_groups`), ``nesterov``.
    * ``schedule``: ``"cosine"`` (linear warmup from ~0 over ``warmup`` epochs, then cosine
      to 0) or ``"onecycle"`` (cosine rise from lr/25 to lr over ``warmup`` epochs -- 30% of
      the run when ``warmup`` is 0 -- then cosine fall to lr/25e4, as OneCycleLR). Stepped
      every optimizer step.
    * ``warmup``: in epochs (fractions allowed).
    * ``label_smoothing``: for the training loss (evaluation uses plain cross-entropy).
    * ``seed``: seeds torch/python/numpy at the start of :func:`train` and the shuffling
      generator. The model's initial weights are the caller's.
    * ``device``: ``None`` -> ``"cuda"`` if available, else ``"cpu"``.
    * ``amp``: bf16 autocast + channels_last, on CUDA only (ignored on CPU).
    * ``log_every``: steps between progress-bar updates of loss/acc/lr.
    * ``max_steps``: optional cap on the total optimizer steps (quick runs); the schedule
      spans ``min(epochs * steps_per_epoch, max_steps)`` steps and the epoch in which the cap
      is reached ends there (it is still validated and checkpointed).
    * ``num_workers``: DataLoader workers.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: str = "cosine"
    warmup: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    device: str | None = None
    amp: bool = True
    log_every: int = 10
    max_steps: int | None = None
    num_workers: int = 0

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
                f"TrainConfig.schedule must be one of {', '.join(SCHEDULES)}, "
                f"got {self.schedule!r}"
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
    """What :func:`train` returns. ``history`` holds one dict per epoch with ``epoch``
    (1-based), ``steps`` (optimizer steps in that epoch), ``global_step``, ``lr`` (the one the
    epoch's last step used), ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (None without
    val data), ``epoch_time_s`` (train phase, data loading included), ``eval_time_s``,
    ``step_time_ms`` (mean compute time per step: from a batch in hand to the optimizer step
    done, CUDA synchronised, leaving out the epoch's first steps) and ``images_per_s``.
    Accuracies are fractions in [0, 1]."""

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


# --------------------------------------------------------------------------------------------
# building blocks


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones once); ``trainable_only`` counts those with
    ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


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


def _loader(data, batch_size: int, device: torch.device, num_workers: int = 0):
    if data is None or isinstance(data, DataLoader):
        return data
    if not isinstance(data, Dataset):
        raise TypeError(f"expected a Dataset or DataLoader, got {type(data).__name__}")
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=device.type == "cuda")


def _autocast(device: torch.device, enabled: bool):
    if enabled:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    nb = device.type == "cuda"
    x = x.to(device, non_blocking=nb)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=nb)


@torch.no_grad()
def evaluate(model: nn.Module, data_or_loader, device=None, batch_size: int = 256, *,
             amp: bool = False) -> tuple[float, float]:
    """``(mean cross-entropy loss, accuracy in [0, 1])`` of ``model`` on a Dataset or
    DataLoader. ``device=None`` uses the model's device; otherwise the model is moved there.
    The model is put in eval mode and its previous mode restored. ``amp``: bf16 autocast
    (CUDA only)."""
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device)
    loader = _loader(data_or_loader, batch_size, device)
    use_amp = amp and device.type == "cuda"
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    try:
        for x, y in loader:
            x, y = _to_device(x, y, device, use_amp)
            with _autocast(device, use_amp):
                out = model(x)
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            n += y.numel()
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate() got an empty dataset")
    return float(loss_sum) / n, int(correct) / n


# --------------------------------------------------------------------------------------------
# counting and timing


def _full_shape(input_shape: Iterable[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W), got {input_shape!r}")
    return shape


def count_macs(model: nn.Module, input_shape: Iterable[int], *, device="meta",
               fused: bool = True) -> int:
    """Multiply-accumulates of one forward pass, from ``torch.utils.flop_counter``
    (MACs = FLOPs / 2: convolutions, linear layers and ``torch.ops.tritonbasis.basis_conv2d``,
    whose registered formula counts ``C_b*C_in*k^2 + C_rest*C_b`` per output pixel;
    element-wise ops, BN and pooling are not counted).

    ``input_shape``: ``(C, H, W)`` (batch 1) or ``(N, C, H, W)``. ``device="meta"`` (default)
    counts on shape-only tensors through ``torch.func.functional_call`` -- no compute, no copy
    of the model; pass ``"cpu"`` (or the model's device) to run it for real. The model is run
    in eval mode; its modules' modes are restored.

    ``fused=True`` counts every BasisConv2d as the fused op (the method's arithmetic) whatever
    mode it would run in; ``fused=False`` counts what the modules run as configured (a layer
    in ``"weight"`` mode then costs its dense conv plus building ``W``).
    """
    shape = _full_shape(input_shape)
    device = torch.device(device)
    ref = next(model.parameters(), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    modes = {m: m.training for m in model.modules()}
    basis_modes = {m: m.mode for m in model.modules() if isinstance(m, BasisConv2d)}
    try:
        model.eval()
        if fused:
            for m in basis_modes:
                m.mode = "fused"
        x = torch.zeros(shape, device=device, dtype=dtype)
        counter = FlopCounterMode(display=False)
        with torch.no_grad():
            if device.type == "meta":
                state = {k: torch.empty_like(v, device="meta")
                         for k, v in list(model.named_parameters(remove_duplicate=False))
                         + list(model.named_buffers(remove_duplicate=False))}
                with counter:
                    torch.func.functional_call(model, state, (x,))
            else:
                with counter:
                    model(x)
    finally:
        for m, mode in basis_modes.items():
            m.mode = mode
        for m, t in modes.items():
            m.training = t
    return int(counter.get_total_flops()) // 2


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {"median": float(np.median(a)), "p20": float(np.percentile(a, 20)),
            "p80": float(np.percentile(a, 80))}


def measure_step_time(model: nn.Module, input_shape: Iterable[int], steps: int = 20,
                      device=None, *, warmup: int = 3, amp: bool = True,
                      lr: float = 0.01) -> dict[str, Any]:
    """Time a training step (forward, cross-entropy on random labels, backward, SGD with
    momentum step) and an inference forward (eval mode, ``inference_mode``), each ``steps``
    times after ``warmup`` untimed ones, on random inputs of ``input_shape`` ``(N, C, H, W)``
    (``(C, H, W)`` means batch 1). CUDA is synchronised around every timed call.

    Runs on a deep copy of the model (the caller's weights, BN statistics and grads are
    untouched). ``amp``: bf16 autocast + channels_last, on CUDA only, as :func:`train`.
    ``device=None``: CUDA if available. Returns a JSON-ready dict: ``train_step_ms`` and
    ``infer_ms`` (medians) with ``_p20``/``_p80``, ``train_images_per_s``,
    ``infer_images_per_s``, and what was measured (shape, device, dtype, layout, torch
    version, CPU threads)."""
    if not isinstance(steps, int) or steps < 1 or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got {steps}, {warmup}")
    shape = _full_shape(input_shape)
    device = _resolve_device(device)
    use_amp = amp and device.type == "cuda"
    m = copy.deepcopy(model).to(device)
    if use_amp:
        m = m.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    m.eval()
    with torch.no_grad():
        num_classes = m(x[:1].to(device)).shape[-1]
    y = torch.randint(0, num_classes, (shape[0],), generator=g)
    x, y = _to_device(x, y, device, use_amp)
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with _autocast(device, use_amp):
            loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.inference_mode(), _autocast(device, use_amp):
            m(x)

    def timed(fn) -> list[float]:
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(steps):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    m.train()
    tr = _percentiles(timed(train_step))
    m.eval()
    inf = _percentiles(timed(infer_step))
    p = next(m.parameters())
    return {
        "train_step_ms": tr["median"], "train_step_ms_p20": tr["p20"],
        "train_step_ms_p80": tr["p80"],
        "infer_ms": inf["median"], "infer_ms_p20": inf["p20"], "infer_ms_p80": inf["p80"],
        "train_images_per_s": shape[0] / (tr["median"] / 1e3),
        "infer_images_per_s": shape[0] / (inf["median"] / 1e3),
        "input_shape": list(shape), "steps": steps, "warmup": warmup,
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else "cpu"),
        "dtype": "bfloat16 (autocast)" if use_amp else str(p.dtype).replace("torch.", ""),
        "channels_last": use_amp, "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------------
# RNG state and checkpoints (tensors and primitive containers only: weights_only=True loads)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": str(np_state[0]),
                  "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "loader": generator.get_state() if generator is not None else None,
    }


def _set_rng_state(s: dict[str, Any], generator: torch.Generator | None) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    py = s["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = s["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    if generator is not None and s["loader"] is not None:
        generator.set_state(s["loader"])


def _atomic_save(obj: Any, path: Path) -> None:
    """Checkpoint write: see :mod:`tritonbasis._io` (temporary file, fsync, rename; a SHA-256
    of the content stored inside and checked by :func:`_load_checkpoint`)."""
    save_checkpoint(obj, path)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and verify ``last.pt``: a truncated, corrupt or tampered file is a
    :class:`tritonbasis.util.fileio.CheckpointError` (a ValueError) naming it, never a silent
    restart or a resume from wrong weights."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a tritonbasis training checkpoint")
    missing = [k for k in ("epoch", "global_step", "model", "optimizer", "scheduler", "history",
                           "config", "train_size", "steps_per_epoch", "rng") if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}")
    return ckpt


def _check_resume_config(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {getattr(cfg, k)!r}"
             for k in RESUME_KEYS if saved.get(k) != getattr(cfg, k)]
    if diffs:
        raise ValueError(
            f"cannot resume from {str(path)!r}: its training config differs in fields that "
            f"change the run ({'; '.join(diffs)}). Resume with the same settings, or start a "
            f"new run (resume=False or another checkpoint folder)."
        )


# --------------------------------------------------------------------------------------------
# the training loop


def train(model: nn.Module, train_data: Dataset, val_data: Dataset | DataLoader | None,
          config: TrainConfig | None = None, *, checkpoint_dir: str | os.PathLike | None = None,
          resume: bool = False, progress: bool = True,
          distributed: bool = False) -> TrainResult:
    """Train ``model`` in place on ``train_data`` (a Dataset of ``(image, label)``), validating
    on ``val_data`` (Dataset, DataLoader or None) after every epoch.

    SGD (momentum, optional Nesterov) over :func:`param_groups`, the per-step schedule of
    :func:`lr_lambda`, cross-entropy with ``label_smoothing``; on CUDA with ``config.amp``,
    bf16 autocast and channels_last (and cuDNN benchmark mode, restored afterwards). Global
    RNGs are seeded with ``config.seed`` at the start (not on resume: they are restored).

    ``checkpoint_dir``: after every epoch, ``<dir>/last.pt`` is written atomically with the
    model, optimizer and scheduler state, epoch, global step, history, RNG states (torch,
    CUDA, python, numpy, the shuffling generator) and the config dict.
    ``resume=True`` (needs ``checkpoint_dir``) continues from that file when it exists
    (otherwise starts fresh); a checkpoint whose config differs in :data:`RESUME_KEYS`, whose
    data has another size, or whose weights do not fit the model is refused with a
    ``ValueError``. ``progress``: tqdm bars and per-epoch summary lines.

    ``distributed=True`` (every rank of a torchrun job calls it): DistributedDataParallel with
    ``batch_size`` as the global batch split over the ranks, rank 0 alone writing checkpoints
    and reading them on resume -- see :mod:`tritonbasis.distributed` for what equals the
    single-process run.

    Raises ``FloatingPointError`` if the training loss becomes non-finite.
    """
    cfg = config if config is not None else TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (the folder holding last.pt)")
    if isinstance(train_data, DataLoader) or not isinstance(train_data, Dataset):
        raise TypeError(
            "train_data must be a Dataset (train() builds its own seeded loader so that "
            f"shuffling can be checkpointed), got {type(train_data).__name__}"
        )
    device = _resolve_device(cfg.device)
    use_amp = cfg.amp and device.type == "cuda"
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None

    _seed_all(cfg.seed)
    model.to(device)
    if use_amp:
        model.to(memory_format=torch.channels_last)
    train_loader, _ = make_loaders(train_data, None, cfg.batch_size, cfg.num_workers,
                                   seed=cfg.seed, device=device)
    val_loader = _loader(val_data, cfg.batch_size, device, cfg.num_workers)
    ddp = None
    if distributed:  # this rank's slice of every global batch (tritonbasis.distributed)
        ddp = D.DDPTraining(cfg.batch_size, len(train_data), device)
        train_loader = ddp.loader(train_loader)
        progress = progress and ddp.is_main
    spe = len(train_loader)
    if spe == 0:
        raise ValueError("train_data is empty")
    total_steps = cfg.epochs * spe
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    n_epochs = math.ceil(total_steps / spe)

    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                momentum=cfg.momentum, nesterov=cfg.nesterov)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps, spe))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    history: list[dict[str, Any]] = []
    start_epoch, global_step, resumed_from = 0, 0, None
    ckpt = None
    if resume and ckpt_path is not None:
        def read():
            return _load_checkpoint(ckpt_path) if ckpt_path.is_file() else None

        ckpt = ddp.read_checkpoint(read) if ddp else read()  # under DDP: rank 0 reads
    if ckpt is not None:
        _check_resume_config(ckpt["config"], cfg, ckpt_path)
        if ckpt["train_size"] != len(train_data) or ckpt["steps_per_epoch"] != spe:
            raise ValueError(
                f"cannot resume from {str(ckpt_path)!r}: it was trained on "
                f"{ckpt['train_size']} samples ({ckpt['steps_per_epoch']} steps/epoch), this "
                f"run has {len(train_data)} ({spe} steps/epoch)"
            )
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise ValueError(
                f"cannot resume from {str(ckpt_path)!r}: its weights do not fit this model "
                f"({e})"
            ) from e
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history = list(ckpt["history"])
        start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        resumed_from = start_epoch
        _set_rng_state(ckpt["rng"], train_loader.generator)
        if progress:
            tqdm.write(f"resumed from {ckpt_path} at epoch {start_epoch}/{n_epochs}")

    net = ddp.wrap(model) if ddp else model
    prev_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        for epoch in range(start_epoch, n_epochs):
            steps_this = min(spe, total_steps - epoch * spe)
            if ddp:
                ddp.start_epoch(cfg.seed, epoch)
            model.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen, step_ms = 0, []
            bar = tqdm(total=steps_this, desc=f"epoch {epoch + 1}/{n_epochs}",
                       disable=not progress, leave=False, dynamic_ncols=True)
            t_epoch = time.perf_counter()
            for i, (x, y) in enumerate(train_loader):
                if i >= steps_this:
                    break
                t0 = time.perf_counter()
                x, y = _to_device(x, y, device, use_amp)
                with _autocast(device, use_amp):
                    out = net(x)
                    loss = criterion(out, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step_lr = optimizer.param_groups[0]["lr"]  # the lr this step used
                scheduler.step()
                global_step += 1
                _sync(device)
                if i >= min(TIMING_SKIP_STEPS, steps_this - 1):
                    step_ms.append((time.perf_counter() - t0) * 1e3)
                loss_sum += loss.detach().double() * y.numel()
                correct += (out.detach().argmax(1) == y).sum()
                seen += y.numel()
                bar.update(1)
                if (i + 1) % cfg.log_every == 0 or i + 1 == steps_this:
                    bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}",
                                    acc=f"{int(correct) / seen:.3f}",
                                    lr=f"{step_lr:.3g}")
            bar.close()
            epoch_time = time.perf_counter() - t_epoch
            if ddp:  # metrics over the global batches; rank 0's BN statistics everywhere
                loss_sum, correct, seen = ddp.sum(loss_sum, correct, seen)
                ddp.sync_buffers(model)
            train_loss, train_acc = float(loss_sum) / seen, int(correct) / seen
            if not math.isfinite(train_loss):
                raise FloatingPointError(
                    f"training loss became {train_loss} in epoch {epoch + 1} (step "
                    f"{global_step}); lower the learning rate (lr={cfg.lr})"
                )
            t_eval = time.perf_counter()
            val_loss = val_acc = None
            if val_loader is not None:
                val_loss, val_acc = (
                    ddp.evaluate(model, val_data, cfg.batch_size, amp=use_amp) if ddp
                    else evaluate(model, val_loader, device, amp=use_amp))
            mean_ms = float(np.mean(step_ms))
            row = {
                "epoch": epoch + 1, "steps": steps_this, "global_step": global_step,
                "lr": float(step_lr),
                "train_loss": train_loss, "train_acc": train_acc,
                "val_loss": val_loss, "val_acc": val_acc,
                "epoch_time_s": epoch_time, "eval_time_s": time.perf_counter() - t_eval,
                "step_time_ms": mean_ms, "images_per_s": cfg.batch_size / (mean_ms / 1e3),
            }
            history.append(row)
            if progress:
                v = (f", val loss {val_loss:.4f} acc {val_acc:.4f}" if val_loss is not None
                     else "")
                tqdm.write(f"epoch {epoch + 1}/{n_epochs}: train loss {train_loss:.4f} acc "
                           f"{train_acc:.4f}{v}, {epoch_time:.1f} s, {mean_ms:.1f} ms/step")
            if ckpt_path is not None and (ddp is None or ddp.is_main):
                _atomic_save({
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch + 1,
                    "global_step": global_step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "config": cfg.to_dict(),
                    "train_size": len(train_data),
                    "steps_per_epoch": spe,
                    "rng": _rng_state(train_loader.generator),
                }, ckpt_path)
    finally:
        torch.backends.cudnn.benchmark = prev_benchmark

    with_val = [h for h in history if h["val_acc"] is not None]
    best = max(with_val, key=lambda h: h["val_acc"]) if with_val else None
    last = history[-1] if history else None
    return TrainResult(
        history=history,
        final_val_loss=last["val_loss"] if last else None,
        final_val_acc=last["val_acc"] if last else None,
        best_val_acc=best["val_acc"] if best else None,
        best_epoch=best["epoch"] if best else None,
        params=count_params(model),
        checkpoint_path=str(ckpt_path) if ckpt_path is not None else None,
        config=cfg.to_dict(),
        device=str(device),
        amp=use_amp,
        steps=global_step,
        resumed_from_epoch=resumed_from,
    )
