"""Evaluation, and the per-batch helpers that the training loop, the evaluation and the
step-time measurement share (device choice, loaders, bf16 autocast, moving a batch).

Its own module so that :mod:`.train` and :mod:`.distributed` (whose DDP evaluation shards
the validation set and calls :func:`evaluate` per shard) both import it, instead of each
other.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

__all__ = ["autocast", "as_loader", "evaluate", "resolve_device", "to_device"]


def resolve_device(device) -> torch.device:
    """``None`` -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def as_loader(data, batch_size: int, device: torch.device, num_workers: int = 0):
    """A DataLoader (in order, no shuffling) over a Dataset; a DataLoader or None as given."""
    if data is None or isinstance(data, DataLoader):
        return data
    if not isinstance(data, Dataset):
        raise TypeError(f"expected a Dataset or DataLoader, got {type(data).__name__}")
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled``, else a no-op context."""
    if enabled:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    """A batch on ``device`` (non-blocking from pinned memory on CUDA), images channels_last
    when asked."""
    nb = device.type == "cuda"
    x = x.to(device, non_blocking=nb)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=nb)


@torch.no_grad()
def evaluate(
    model: nn.Module, data_or_loader, device=None, batch_size: int = 256, *, amp: bool = False
) -> tuple[float, float]:
    """``(mean cross-entropy loss, accuracy in [0, 1])`` of ``model`` on a Dataset or
    DataLoader. ``device=None`` uses the model's device; otherwise the model is moved there.
    The model is put in eval mode and its previous mode restored. ``amp``: bf16 autocast
    (CUDA only)."""
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device)
    loader = as_loader(data_or_loader, batch_size, device)
    use_amp = amp and device.type == "cuda"
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    try:
        for x, y in loader:
            x, y = to_device(x, y, device, use_amp)
            with autocast(device, use_amp):
                out = model(x)
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            n += y.numel()
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate() got an empty dataset")
    return float(loss_sum) / n, int(correct) / n
