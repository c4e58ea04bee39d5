"""Training: SGD with momentum, a per-step cosine or one-cycle schedule, no weight decay on
BatchNorm parameters and biases, bf16 autocast + channels_last on CUDA, tqdm progress,
per-epoch metrics, atomic checkpoints and exact resume.

The loop is here, as named steps (:func:`train`: set up, resume, per epoch train / validate /
record / checkpoint, result); the pieces it uses live beside it and are re-exported, so
``tritonbasis.recipes.train`` (and ``tritonbasis.train``) keeps every name it had:

* :mod:`.train_config` -- :class:`TrainConfig`, :class:`TrainResult`, :func:`param_groups`,
  :func:`lr_lambda`, :data:`RESUME_KEYS`;
* :mod:`.checkpoint` -- ``last.pt`` (``torch.load(path, weights_only=True)``-loadable, with a
  SHA-256 checked on resume) and the RNG states it carries;
* :mod:`.evaluation` -- :func:`evaluate` and the per-batch helpers;
* :mod:`.measure` -- :func:`count_params`, :func:`count_macs`, :func:`measure_step_time`.

Reports are JSON (:meth:`TrainResult.to_json`), never pickle.

Reproducibility: on CPU two runs with the same config, seed and initial model give identical
metrics and weights, and a run interrupted after a checkpoint and resumed ends with the same
weights as an uninterrupted one (the checkpoint carries the torch/python/numpy RNG states and
the shuffling generator's state). On CUDA, atomics in cuDNN and in our backward kernels make
results close but not bitwise equal.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..util.fileio import CheckpointError
from . import checkpoint as ckpt_io
from . import distributed as D
from .checkpoint import CHECKPOINT_NAME, HISTORY_KEYS
from .checkpoint import seed_all as _seed_all
from .data import make_loaders
from .evaluation import as_loader, autocast, evaluate, resolve_device, to_device
from .measure import count_macs, count_params, measure_step_time
from .train_config import (
    RESUME_KEYS,
    SCHEDULES,
    TrainConfig,
    TrainResult,
    lr_lambda,
    param_groups,
)

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

# Per epoch, the first steps are left out of the mean step time: they carry one-off costs
# (allocator growth, cuDNN autotuning, first-touch of weights) rather than steady-state speed.
# (The loop's own per-step timing is a record of the run, not a benchmark: the benchmark
# number of a step is measure_step_time's, through util.timing.time_fn.)
TIMING_SKIP_STEPS = 2


@dataclass
class _Run:
    """The moving parts of one training run (built by :func:`_set_up`; :func:`_resume` and
    the epochs advance ``history``, ``start_epoch`` and ``global_step``)."""

    cfg: TrainConfig
    model: nn.Module
    device: torch.device
    use_amp: bool
    train_size: int
    train_loader: DataLoader
    val_data: Any
    val_loader: DataLoader | None
    ddp: D.DDPTraining | None
    progress: bool
    steps_per_epoch: int
    total_steps: int
    n_epochs: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    ckpt_path: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    global_step: int = 0
    resumed_from: int | None = None


def train(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset | DataLoader | None,
    config: TrainConfig | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    distributed: bool = False,
) -> TrainResult:
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
    cfg = _checked_config(config, train_data, resume, checkpoint_dir)
    run = _set_up(model, train_data, val_data, cfg, checkpoint_dir, progress, distributed)
    if resume:
        _resume(run)
    net = run.ddp.wrap(model) if run.ddp else model
    with _cudnn_benchmark(run.device):
        for epoch in range(run.start_epoch, run.n_epochs):
            row = _train_epoch(run, net, epoch)
            t_eval = time.perf_counter()
            row["val_loss"], row["val_acc"] = _validate(run)
            row["eval_time_s"] = time.perf_counter() - t_eval
            run.history.append(_ordered_row(row))
            _log_epoch(run, epoch, row)
            _save_checkpoint(run, epoch)
    return _result(run)


# --------------------------------------------------------------------------------------------
# set-up and resume


def _checked_config(config, train_data, resume: bool, checkpoint_dir) -> TrainConfig:
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
    return cfg


def _set_up(
    model, train_data, val_data, cfg: TrainConfig, checkpoint_dir, progress: bool, distributed: bool
) -> _Run:
    """Seed, place the model, build the loaders (DDP: this rank's slice of every global
    batch), the step counts, the optimizer, the schedule and the loss. The order is the
    RNG-draw order a resumed run relies on: do not reorder."""
    device = resolve_device(cfg.device)
    use_amp = cfg.amp and device.type == "cuda"
    _seed_all(cfg.seed)
    model.to(device)
    if use_amp:
        model.to(memory_format=torch.channels_last)
    train_loader, _ = make_loaders(
        train_data, None, cfg.batch_size, cfg.num_workers, seed=cfg.seed, device=device
    )
    val_loader = as_loader(val_data, cfg.batch_size, device, cfg.num_workers)
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
    optimizer = torch.optim.SGD(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )
    return _Run(
        cfg=cfg,
        model=model,
        device=device,
        use_amp=use_amp,
        train_size=len(train_data),
        train_loader=train_loader,
        val_data=val_data,
        val_loader=val_loader,
        ddp=ddp,
        progress=progress,
        steps_per_epoch=spe,
        total_steps=total_steps,
        n_epochs=math.ceil(total_steps / spe),
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps, spe)),
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        ckpt_path=(Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None),
    )


def _resume(run: _Run) -> None:
    """Continue from ``last.pt`` if it exists (under DDP rank 0 reads it and broadcasts):
    weights, optimizer, schedule, history, step counters and every RNG state, after checking
    that the checkpoint belongs to this run (config, data size, model)."""
    path = run.ckpt_path

    def read():  # anything in its place (a FIFO, a dangling link) is read, and refused
        return ckpt_io.load(path) if (path.exists() or path.is_symlink()) else None

    ckpt = run.ddp.read_checkpoint(read) if run.ddp else read()
    if ckpt is None:
        return
    ckpt_io.check_resume_config(ckpt["config"], run.cfg, path)
    if ckpt["train_size"] != run.train_size or ckpt["steps_per_epoch"] != run.steps_per_epoch:
        raise ValueError(
            f"cannot resume from {str(path)!r}: it was trained on "
            f"{ckpt['train_size']} samples ({ckpt['steps_per_epoch']} steps/epoch), this "
            f"run has {run.train_size} ({run.steps_per_epoch} steps/epoch)"
        )
    try:
        run.model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(
            f"cannot resume from {str(path)!r}: its weights do not fit this model ({e})"
        ) from e
    for part, restore in (
        ("optimizer state", lambda: run.optimizer.load_state_dict(ckpt["optimizer"])),
        ("scheduler state", lambda: run.scheduler.load_state_dict(ckpt["scheduler"])),
        ("RNG states", lambda: ckpt_io.set_rng_state(ckpt["rng"], run.train_loader.generator)),
    ):
        try:
            restore()
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"cannot resume from {str(path)!r}: its {part} does not fit this run "
                f"({type(e).__name__}: {' '.join(str(e).split())[:120]})"
            ) from None
    run.history = list(ckpt["history"])
    run.start_epoch, run.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
    run.resumed_from = run.start_epoch
    if run.progress:
        tqdm.write(f"resumed from {path} at epoch {run.start_epoch}/{run.n_epochs}")


@contextlib.contextmanager
def _cudnn_benchmark(device: torch.device):
    """cuDNN benchmark mode on CUDA for the run, the previous setting restored after."""
    prev = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = prev


# --------------------------------------------------------------------------------------------
# one epoch


def _train_epoch(run: _Run, net: nn.Module, epoch: int) -> dict[str, Any]:
    """One pass of optimizer steps (the last epoch may stop at ``max_steps``); the epoch's
    train metrics (summed over the ranks under DDP)."""
    cfg, device = run.cfg, run.device
    steps_this = min(run.steps_per_epoch, run.total_steps - epoch * run.steps_per_epoch)
    if run.ddp:
        run.ddp.start_epoch(cfg.seed, epoch)
    run.model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, step_ms, step_lr = 0, [], None
    bar = tqdm(
        total=steps_this,
        desc=f"epoch {epoch + 1}/{run.n_epochs}",
        disable=not run.progress,
        leave=False,
        dynamic_ncols=True,
    )
    t_epoch = time.perf_counter()
    for i, (x, y) in enumerate(run.train_loader):
        if i >= steps_this:
            break
        t0 = time.perf_counter()
        x, y = to_device(x, y, device, run.use_amp)
        out, loss, step_lr = _step(run, net, x, y)
        if i >= min(TIMING_SKIP_STEPS, steps_this - 1):
            step_ms.append((time.perf_counter() - t0) * 1e3)
        loss_sum += loss.detach().double() * y.numel()
        correct += (out.detach().argmax(1) == y).sum()
        seen += y.numel()
        bar.update(1)
        if (i + 1) % cfg.log_every == 0 or i + 1 == steps_this:
            bar.set_postfix(
                loss=f"{float(loss_sum) / seen:.4f}",
                acc=f"{int(correct) / seen:.3f}",
                lr=f"{step_lr:.3g}",
            )
    bar.close()
    epoch_time = time.perf_counter() - t_epoch
    if run.ddp:  # metrics over the global batches; rank 0's BN statistics everywhere
        loss_sum, correct, seen = run.ddp.sum(loss_sum, correct, seen)
        run.ddp.sync_buffers(run.model)
    train_loss, train_acc = float(loss_sum) / seen, int(correct) / seen
    if not math.isfinite(train_loss):
        raise FloatingPointError(
            f"training loss became {train_loss} in epoch {epoch + 1} (step "
            f"{run.global_step}); lower the learning rate (lr={cfg.lr})"
        )
    mean_ms = float(np.mean(step_ms))
    return {
        "epoch": epoch + 1,
        "steps": steps_this,
        "global_step": run.global_step,
        "lr": float(step_lr),
        "train_loss": train_loss,
        "train_acc": train_acc,
        "epoch_time_s": epoch_time,
        "step_time_ms": mean_ms,
        "images_per_s": cfg.batch_size / (mean_ms / 1e3),
    }


def _step(run: _Run, net: nn.Module, x, y):
    """One optimizer step on a batch already on the device: ``(logits, loss, the lr the step
    used)``, CUDA synchronised so the caller's clock sees the step done."""
    with autocast(run.device, run.use_amp):
        out = net(x)
        loss = run.criterion(out, y)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    step_lr = run.optimizer.param_groups[0]["lr"]  # the lr this step used
    run.scheduler.step()
    run.global_step += 1
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    return out, loss, step_lr


def _validate(run: _Run) -> tuple[float | None, float | None]:
    """``(val_loss, val_acc)`` after an epoch, or ``(None, None)`` without validation data
    (DDP: every rank evaluates a shard, the sums are all-reduced)."""
    if run.val_loader is None:
        return None, None
    if run.ddp:
        return run.ddp.evaluate(run.model, run.val_data, run.cfg.batch_size, amp=run.use_amp)
    return evaluate(run.model, run.val_loader, run.device, amp=run.use_amp)


def _ordered_row(row: dict[str, Any]) -> dict[str, Any]:
    """The history row in :data:`.checkpoint.HISTORY_KEYS` order (saved in last.pt and the
    JSON result)."""
    return {k: row[k] for k in HISTORY_KEYS}


def _log_epoch(run: _Run, epoch: int, row: dict[str, Any]) -> None:
    if not run.progress:
        return
    v = (
        f", val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
        if row["val_loss"] is not None
        else ""
    )
    tqdm.write(
        f"epoch {epoch + 1}/{run.n_epochs}: train loss {row['train_loss']:.4f} acc "
        f"{row['train_acc']:.4f}{v}, {row['epoch_time_s']:.1f} s, "
        f"{row['step_time_ms']:.1f} ms/step"
    )


def _save_checkpoint(run: _Run, epoch: int) -> None:
    """``last.pt`` after epoch ``epoch`` (0-based), by rank 0 alone under DDP."""
    if run.ckpt_path is None or (run.ddp is not None and not run.ddp.is_main):
        return
    ckpt_io.save(
        {
            "epoch": epoch + 1,
            "global_step": run.global_step,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "history": run.history,
            "config": run.cfg.to_dict(),
            "train_size": run.train_size,
            "steps_per_epoch": run.steps_per_epoch,
            "rng": ckpt_io.rng_state(run.train_loader.generator),
        },
        run.ckpt_path,
    )


def _result(run: _Run) -> TrainResult:
    with_val = [h for h in run.history if h["val_acc"] is not None]
    best = max(with_val, key=lambda h: h["val_acc"]) if with_val else None
    last = run.history[-1] if run.history else None
    return TrainResult(
        history=run.history,
        final_val_loss=last["val_loss"] if last else None,
        final_val_acc=last["val_acc"] if last else None,
        best_val_acc=best["val_acc"] if best else None,
        best_epoch=best["epoch"] if best else None,
        params=count_params(run.model),
        checkpoint_path=str(run.ckpt_path) if run.ckpt_path is not None else None,
        config=run.cfg.to_dict(),
        device=str(run.device),
        amp=run.use_amp,
        steps=run.global_step,
        resumed_from_epoch=run.resumed_from,
    )
