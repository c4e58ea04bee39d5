"""Data: scikit-learn's bundled handwritten digits (the embedded default, no download) and
CIFAR-10 from a local folder.

Nothing here touches the network unless the caller passes ``download=True`` to :func:`cifar10`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = [
    "CIFAR10_MEAN",
    "CorruptDataError",
    "CIFAR10_STD",
    "DATASETS",
    "TensorData",
    "cifar10",
    "digits",
    "get_data",
    "make_loaders",
]

# Per-channel mean/std of the CIFAR-10 training images in [0, 1] (the usual published values).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")

DATASETS = ("digits", "cifar10")


class TensorData(TensorDataset):
    """An in-memory ``(images, targets)`` dataset: ``.tensors`` as TensorDataset, plus
    ``.images`` (N, C, H, W) float32, ``.targets`` (N,) int64, ``.num_classes`` and the
    normalisation that was applied (``.mean``/``.std``, shape (1, C, 1, 1), or None):
    ``images * std + mean`` gives back the pixels in [0, 1]."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        num_classes: int,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ):
        super().__init__(images, targets)
        self.num_classes = int(num_classes)
        self.mean, self.std = mean, std

    @property
    def images(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def targets(self) -> torch.Tensor:
        return self.tensors[1]


def digits(
    size: int = 32, channels: int = 3, val_fraction: float = 0.25, seed: int = 0
) -> tuple[TensorData, TensorData]:
    """scikit-learn's bundled digits (1,797 real 8x8 grey images of 0-9, shipped inside the
    scikit-learn wheel) as ``(train, val)`` in-memory datasets.

    Pixels (0..16) are scaled to [0, 1], resized to ``size x size`` by bilinear interpolation,
    repeated to ``channels`` channels and normalised with the mean/std of the *train* split.
    The split is stratified by class (``train_test_split(..., stratify=y,
    random_state=seed)``), so it is fixed for a given seed and every class keeps its
    proportion in both halves. No augmentation.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")

    d = load_digits()
    images = np.asarray(d.images, dtype=np.float32) / 16.0  # (1797, 8, 8), values 0..16
    labels = np.asarray(d.target, dtype=np.int64)
    idx_train, idx_val = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=seed
    )
    x = torch.from_numpy(images)[:, None]  # (N, 1, 8, 8)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.repeat(1, channels, 1, 1)
    y = torch.from_numpy(labels)
    it, iv = torch.from_numpy(idx_train), torch.from_numpy(idx_val)
    x_train, x_val = x[it], x[iv]
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    x_train = ((x_train - mean) / std).contiguous()
    x_val = ((x_val - mean) / std).contiguous()
    return (TensorData(x_train, y[it], 10, mean, std), TensorData(x_val, y[iv], 10, mean, std))


# The official batch files are 30.7 MB each (batches.meta: 158 bytes); a file far larger is
# not one of them, and torchvision would hash all of it before saying so.
_CIFAR10_MAX_BYTES = 64 << 20


class CorruptDataError(RuntimeError, ValueError):
    """Data files that are there but are not the data set (a ValueError for the CLI's one
    line; a RuntimeError as torchvision's own integrity error)."""


def _missing_cifar10(root: Path) -> list[str]:
    folder = root / _CIFAR10_FOLDER
    return [f for f in _CIFAR10_FILES if not (folder / f).is_file()]


def _oversized_cifar10(root: Path) -> list[str]:
    folder = root / _CIFAR10_FOLDER
    return [f for f in _CIFAR10_FILES if (folder / f).stat().st_size > _CIFAR10_MAX_BYTES]


def _how_to_get_cifar10(root: Path) -> str:
    return (
        f"Get the data with the Python API, `tritonbasis.recipes.data.cifar10({str(root)!r}, "
        f"download=True)` (the CLI never downloads), or download {CIFAR10_URL} yourself and "
        f"extract it in {str(root)!r} so that "
        f"{str(root / _CIFAR10_FOLDER)!r} holds data_batch_1..5, test_batch and batches.meta."
    )


def cifar10(
    data_dir: str | os.PathLike, train: bool = True, augment: bool = True, download: bool = False
) -> Dataset:
    """CIFAR-10 (torchvision's loader) from ``data_dir`` -- the folder holding
    ``cifar-10-batches-py/`` (passing that folder itself also works).

    Train split with ``augment=True``: RandomCrop(32, padding=4) and RandomHorizontalFlip, then
    ToTensor and normalisation with :data:`CIFAR10_MEAN`/:data:`CIFAR10_STD`; otherwise only
    ToTensor and normalisation. ``download=False`` (the default) never touches the network: a
    missing folder or missing batch files raise ``FileNotFoundError`` naming the folder and how
    to get the data.
    """
    import torchvision
    from torchvision import transforms as T

    root = Path(data_dir).expanduser()
    if root.name == _CIFAR10_FOLDER:
        root = root.parent
    if not download:
        if not root.is_dir():
            raise FileNotFoundError(
                f"CIFAR-10 data folder {str(root)!r} does not exist. " + _how_to_get_cifar10(root)
            )
        missing = _missing_cifar10(root)
        if missing:
            raise FileNotFoundError(
                f"CIFAR-10 data folder {str(root)!r} has no complete "
                f"{_CIFAR10_FOLDER}/ (missing: {', '.join(missing)}). " + _how_to_get_cifar10(root)
            )
        big = _oversized_cifar10(root)
        if big:
            raise CorruptDataError(
                f"CIFAR-10 files in {str(root / _CIFAR10_FOLDER)!r} are not the data set "
                f"({', '.join(big)}: larger than any CIFAR-10 file). " + _how_to_get_cifar10(root)
            )
    else:
        root.mkdir(parents=True, exist_ok=True)

    norm = [T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    if train and augment:
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *norm])
    else:
        tf = T.Compose(norm)
    try:
        return torchvision.datasets.CIFAR10(str(root), train=train, transform=tf, download=download)
    except RuntimeError as e:  # torchvision's md5 check: files there but corrupted/other data
        raise CorruptDataError(
            f"CIFAR-10 files in {str(root / _CIFAR10_FOLDER)!r} failed torchvision's integrity "
            f"check ({e}). " + _how_to_get_cifar10(root)
        ) from e


def get_data(
    name: str, data_dir: str | os.PathLike | None = None, **kw: Any
) -> tuple[Dataset, Dataset, int, dict]:
    """``(train, val, num_classes, info)`` for ``"digits"`` or ``"cifar10"``.

    * ``digits``: keyword args of :func:`digits` (``size``, ``channels``, ``val_fraction``,
      ``seed``); ``data_dir`` is ignored (the data ships with scikit-learn).
    * ``cifar10``: ``data_dir`` is required; keyword args ``augment`` (train split only) and
      ``download``; ``val`` is the 10,000-image test split.

    ``info`` is a JSON-ready dict: name, num_classes, train_size, val_size, input_shape
    ``[C, H, W]``, source, and the normalisation (mean/std).
    """
    if name == "digits":
        train, val = digits(**kw)
        info = {
            "name": "digits",
            "source": "sklearn.datasets.load_digits (bundled, 1,797 8x8 images)",
            "num_classes": 10,
            "train_size": len(train),
            "val_size": len(val),
            "input_shape": list(train.images.shape[1:]),
            "normalisation": "per-channel mean/std of the train split",
            "val_fraction": kw.get("val_fraction", 0.25),
            "seed": kw.get("seed", 0),
        }
        return train, val, 10, info
    if name == "cifar10":
        if data_dir is None:
            raise ValueError(
                "cifar10 needs data_dir: the folder holding cifar-10-batches-py/ "
                f"(or pass download=True with a data_dir to fetch {CIFAR10_URL})"
            )
        augment = kw.pop("augment", True)
        download = kw.pop("download", False)
        if kw:
            raise TypeError(f"unexpected keyword arguments for cifar10: {', '.join(kw)}")
        train = cifar10(data_dir, train=True, augment=augment, download=download)
        val = cifar10(data_dir, train=False, augment=False, download=False)
        info = {
            "name": "cifar10",
            "source": str(Path(data_dir).expanduser()),
            "num_classes": 10,
            "train_size": len(train),
            "val_size": len(val),
            "input_shape": [3, 32, 32],
            "augment": bool(augment),
            "mean": list(CIFAR10_MEAN),
            "std": list(CIFAR10_STD),
        }
        return train, val, 10, info
    raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")


def make_loaders(
    train: Dataset,
    val: Dataset | None,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    *,
    device: torch.device | str | None = None,
) -> tuple[DataLoader, DataLoader | None]:
    """``(train_loader, val_loader)``.

    The train loader shuffles with its own ``torch.Generator`` seeded with ``seed`` (so the
    order is reproducible and its state can be checkpointed: ``loader.generator``), and drops
    the last incomplete batch when the set holds at least one full batch (no tiny, noisy last
    step; BatchNorm never sees a batch of one). The val loader keeps order and every sample.
    ``pin_memory`` only when the target device is CUDA (``device=None``: CUDA if available).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if device is None:
        pin = torch.cuda.is_available()
    else:
        pin = torch.device(device).type == "cuda"
    g = torch.Generator()
    g.manual_seed(int(seed))
    common = dict(num_workers=num_workers, pin_memory=pin, persistent_workers=num_workers > 0)
    train_loader = DataLoader(
        train,
        batch_size=batch_size,
        shuffle=True,
        generator=g,
        drop_last=len(train) >= batch_size,
        **common,
    )
    val_loader = None
    if val is not None:
        val_loader = DataLoader(val, batch_size=batch_size, shuffle=False, **common)
    return train_loader, val_loader
