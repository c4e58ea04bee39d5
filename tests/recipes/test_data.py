"""Data: the embedded digits (sizes, stratified split, normalisation, determinism), CIFAR-10
from a local folder (a fake folder in torchvision's exact on-disk format), clear errors for
missing data, and the loaders."""

import math
import os
import pickle
import urllib.request

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from tritonbasis.recipes.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    cifar10,
    digits,
    get_data,
    make_loaders,
)

# --------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def raw_digits():
    d = load_digits()
    return d.images.astype(np.float32), d.target


def test_digits_sizes_and_shapes(raw_digits):
    images, _ = raw_digits
    assert len(images) == 1797
    train, val = digits()
    assert len(train) + len(val) == 1797
    assert len(val) == math.ceil(0.25 * 1797)  # sklearn rounds the test share up
    assert train.images.shape[1:] == (3, 32, 32) and val.images.shape[1:] == (3, 32, 32)
    assert train.images.dtype == torch.float32 and train.targets.dtype == torch.int64
    x, y = train[0]
    assert x.shape == (3, 32, 32) and y.ndim == 0
    assert train.num_classes == 10 and set(train.targets.tolist()) == set(range(10))
    t1, v1 = digits(size=20, channels=1, val_fraction=0.5)
    assert t1.images.shape[1:] == (1, 20, 20) and len(v1) == math.ceil(0.5 * 1797)


def test_digits_channels_repeat_and_normalisation():
    train, val = digits(size=16, channels=3)
    x = train.images
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    # normalised with the train split's own statistics
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)
    # the val split uses the same (train) statistics, so its mean is near, not exactly, zero
    back = val.images * val.std + val.mean
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5


def test_digits_are_the_real_images(raw_digits):
    """At size 8 (no resize) un-normalising gives back the bundled pixels exactly: /16 scaling,
    labels attached to the right images."""
    images, labels = raw_digits
    lookup = {}
    for img, lab in zip(images, labels):
        lookup.setdefault(img.tobytes(), set()).add(int(lab))
    for split in digits(size=8, channels=1):
        pix = (split.images * split.std + split.mean) * 16
        assert torch.allclose(pix, pix.round(), atol=1e-4)
        pix = pix.round().numpy().astype(np.float32)[:, 0]
        for img, lab in zip(pix, split.targets.tolist()):
            assert lab in lookup[img.tobytes()]


def test_digits_resize_is_bilinear(raw_digits):
    import torch.nn.functional as F

    t8, _ = digits(size=8, channels=1)
    t24, _ = digits(size=24, channels=1)
    up = F.interpolate(
        t8.images * t8.std + t8.mean, size=(24, 24), mode="bilinear", align_corners=False
    )
    assert torch.allclose(up, t24.images * t24.std + t24.mean, atol=1e-5)


@pytest.mark.parametrize("val_fraction", [0.25, 0.2, 0.5])
def test_digits_split_is_stratified(raw_digits, val_fraction):
    _, labels = raw_digits
    train, val = digits(size=8, val_fraction=val_fraction)
    full = np.bincount(labels, minlength=10)
    vc = np.bincount(val.targets.numpy(), minlength=10)
    tc = np.bincount(train.targets.numpy(), minlength=10)
    assert np.array_equal(vc + tc, full)
    # each class's share of the val split equals the overall share to within one sample
    assert np.all(np.abs(vc - full * val_fraction) <= 1), (vc, full * val_fraction)


def test_digits_deterministic():
    a_train, a_val = digits(size=8, seed=3)
    b_train, b_val = digits(size=8, seed=3)
    assert torch.equal(a_train.images, b_train.images)
    assert torch.equal(a_val.targets, b_val.targets)
    c_train, _ = digits(size=8, seed=4)
    assert not torch.equal(a_train.targets, c_train.targets)


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="val_fraction"):
        digits(val_fraction=1.0)
    with pytest.raises(ValueError, match="size"):
        digits(size=0)
    with pytest.raises(ValueError, match="channels"):
        digits(channels=0)


# --------------------------------------------------------------------------------------------
# CIFAR-10 from a local folder

N_PER_BATCH, N_TEST = 4, 6


def _write_fake_cifar10(root):
    """torchvision's on-disk CIFAR-10: ``cifar-10-batches-py/`` with pickled dicts
    data_batch_1..5 and test_batch (``data``: uint8 (n, 3072) rows in CHW order, ``labels``)
    and batches.meta (``label_names``). Returns {file: (data, labels)}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = N_TEST if name == "test_batch" else N_PER_BATCH
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int((i + j) % 10) for j in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        out[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{k}" for k in range(10)]}, f)
    return out


@pytest.fixture
def no_network(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("tried to use the network")

    import torchvision.datasets.utils as tvu

    monkeypatch.setattr(urllib.request, "urlopen", boom)
    monkeypatch.setattr(tvu, "download_url", boom)
    monkeypatch.setattr(tvu, "download_and_extract_archive", boom)


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch, no_network):
    """A fake CIFAR-10 folder that torchvision's real loader reads.

    torchvision checks every file's md5 against the official archive
    (``CIFAR10._check_integrity`` and ``_load_meta`` call ``check_integrity(path, md5)``), which
    fake files cannot pass. We replace only that md5 comparison -- the module-level
    ``torchvision.datasets.cifar.check_integrity`` -- by its file-exists half; everything else
    (reading the pickles, reshaping to HWC, PIL conversion, transforms) is torchvision's own
    code. ``test_cifar10_corrupted_files`` runs the unpatched check on the same files."""
    import torchvision.datasets.cifar as tvcifar

    files = _write_fake_cifar10(tmp_path)
    monkeypatch.setattr(tvcifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    return tmp_path, files


def _expected(raw_row):
    x = torch.from_numpy(raw_row.reshape(3, 32, 32).astype(np.float32) / 255)
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    return (x - mean) / std


def test_cifar10_fake_folder_loads(fake_cifar):
    root, files = fake_cifar
    test = cifar10(root, train=False)
    assert len(test) == N_TEST
    for i in range(N_TEST):
        x, y = test[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert y == files["test_batch"][1][i]
        assert torch.allclose(x, _expected(files["test_batch"][0][i]), atol=1e-5)
    plain = cifar10(root, train=True, augment=False)
    assert len(plain) == 5 * N_PER_BATCH
    assert torch.allclose(plain[N_PER_BATCH][0], _expected(files["data_batch_2"][0][0]), atol=1e-5)
    # the batches folder itself is accepted too
    assert len(cifar10(root / "cifar-10-batches-py", train=False)) == N_TEST


def test_cifar10_augmentation(fake_cifar):
    """Every augmented image is one of the 2 x 9 x 9 flips/shifts of the zero-padded
    original (RandomCrop(32, padding=4) + RandomHorizontalFlip), normalised; and augmentation
    actually varies the image."""
    root, files = fake_cifar
    aug = cifar10(root, train=True, augment=True)
    raw = files["data_batch_1"][0][1].reshape(3, 32, 32)
    padded = np.zeros((3, 40, 40), dtype=np.uint8)
    padded[:, 4:36, 4:36] = raw
    candidates = []
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy : dy + 32, dx : dx + 32]
            candidates += [crop, crop[:, :, ::-1]]
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    seen = set()
    torch.manual_seed(0)
    for _ in range(12):
        x, y = aug[1]
        assert x.shape == (3, 32, 32) and y == files["data_batch_1"][1][1]
        pix = ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        match = [k for k, c in enumerate(candidates) if np.array_equal(pix, c)]
        assert match, "augmented image is not a crop/flip of the padded original"
        seen.add(match[0])
    assert len(seen) > 1


def test_cifar10_missing_folder_is_clear(tmp_path, no_network):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="does not exist") as e:
        cifar10(missing)
    assert str(missing) in str(e.value) and "download" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="missing: data_batch_1") as e:
        cifar10(empty, train=False)
    assert str(empty) in str(e.value)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        get_data("cifar10", data_dir=missing)


def test_cifar10_corrupted_files(tmp_path, no_network):
    """The same fake files without the patched md5 check fail torchvision's integrity check;
    the error names the folder."""
    _write_fake_cifar10(tmp_path)
    with pytest.raises(RuntimeError, match="integrity") as e:
        cifar10(tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value)


def test_get_data(fake_cifar):
    root, _ = fake_cifar
    train, val, n, info = get_data("cifar10", data_dir=root)
    assert (len(train), len(val), n) == (5 * N_PER_BATCH, N_TEST, 10)
    assert info["input_shape"] == [3, 32, 32] and info["augment"] is True
    train, val, n, info = get_data("digits", size=12, channels=1)
    assert n == 10 and info["input_shape"] == [1, 12, 12]
    assert info["train_size"] == len(train) and info["val_size"] == len(val)
    with pytest.raises(ValueError, match="data_dir"):
        get_data("cifar10")
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        get_data("mnist")
    with pytest.raises(TypeError, match="size"):
        get_data("cifar10", data_dir=root, size=8)


# --------------------------------------------------------------------------------------------
# loaders


def _order(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_make_loaders_seeded_shuffle():
    train, val = digits(size=8)
    a, va = make_loaders(train, val, 64, seed=1)
    b, _ = make_loaders(train, val, 64, seed=1)
    c, _ = make_loaders(train, val, 64, seed=2)
    first = _order(a)
    assert first == _order(b) and first != _order(c)
    assert _order(a) != first  # a new permutation each epoch
    assert len(a) == len(train) // 64  # incomplete last batch dropped
    assert _order(va) == val.targets.tolist()  # val: every sample, in order
    assert not a.pin_memory and not va.pin_memory  # CPU target
    small = torch.utils.data.Subset(train, range(10))
    s, _ = make_loaders(small, None, 64)
    assert len(s) == 1  # a set smaller than one batch keeps its only batch
    with pytest.raises(ValueError, match="batch_size"):
        make_loaders(train, val, 0)
