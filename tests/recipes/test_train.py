"""Training: learning on the embedded digits, parameter groups, atomic checkpoints that load
with weights_only=True, exact resume after an interruption, config checks on resume, seeded
reproducibility, MAC counting of basis layers, timing and JSON reports."""

import copy
import json
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

import tritonbasis as tb
from tritonbasis.recipes.data import digits
from tritonbasis.recipes.models import resnet18_cifar
from tritonbasis.recipes.train import (
    RESUME_KEYS,
    TrainConfig,
    TrainResult,
    count_macs,
    count_params,
    evaluate,
    lr_lambda,
    measure_step_time,
    param_groups,
    train,
)

TIMING_KEYS = {"epoch_time_s", "eval_time_s", "step_time_ms", "images_per_s"}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs single-threaded (conftest's ``one_thread``)."""


@pytest.fixture(scope="module")
def digits8():
    """Digits at 8x8 (no resize), 3 channels."""
    return digits(size=8)


class NoisyData(Dataset):
    """Adds noise drawn from torch's global RNG on every access, like a random augmentation:
    a run then depends on the RNG state, so a resume that did not restore it would diverge."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x + 0.1 * torch.randn(x.shape), y


def _tiny(seed=0, basis_layer=True):
    """resnet18_cifar at width 1/16 (4..32 channels); optionally layer2.0.conv1 (4 -> 8, 3x3,
    stride 2) replaced by a BasisConv2d with 2 basis filters, so the basis op trains too."""
    torch.manual_seed(seed)
    m = resnet18_cifar(width=1 / 16)
    if basis_layer:
        m.layer2[0].conv1 = tb.BasisConv2d(
            4, 8, 3, basis_channels=2, stride=2, padding=1, bias=False, mode="fused"
        )
    return m


def _metrics(history):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def _small_cfg(**kw):
    base = dict(
        epochs=3,
        batch_size=32,
        lr=0.05,
        warmup=0.5,
        label_smoothing=0.1,
        seed=7,
        device="cpu",
        log_every=4,
    )
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------------------------
# learning


@pytest.mark.parametrize("basis", [False, True], ids=["dense", "with-basis-layers"])
def test_learns_digits(basis):
    """A width-1/8 ResNet18 (dense, or with every stride-2 stage's first 3x3 conv replaced by
    a BasisConv2d at C_b = C_out/4) on 16x16 digits, 3 epochs.

    Threshold: val accuracy >= 0.5. Chance is 0.10 (10 balanced classes; the largest class is
    46 of the 450 val images, so a constant prediction scores <= 0.103), and the binomial
    spread of a guessing model over 450 images is sqrt(0.1*0.9/450) = 0.014, so 0.5 is ~28
    standard deviations above anything that does not learn, while a working pipeline on these
    easy images ends far above it: margin for other platforms' float rounding and seeds."""
    train_set, val_set = digits(size=16)
    torch.manual_seed(0)
    m = resnet18_cifar(width=0.125)
    if basis:
        for s in (2, 3, 4):
            old = getattr(m, f"layer{s}")[0].conv1
            c = old.out_channels
            getattr(m, f"layer{s}")[0].conv1 = tb.BasisConv2d(
                old.in_channels, c, 3, basis_channels=c // 4, stride=2, padding=1, bias=False
            )
    r = train(
        m,
        train_set,
        val_set,
        TrainConfig(epochs=3, batch_size=64, lr=0.05, warmup=0.5, device="cpu"),
        progress=False,
    )
    assert len(r.history) == 3 and r.steps == 3 * (len(train_set) // 64)
    assert r.final_val_acc >= 0.5, r.history
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.final_val_loss < math.log(10)  # below the loss of a uniform prediction
    assert r.params == count_params(m)


# --------------------------------------------------------------------------------------------
# parameter groups


def test_param_groups_exclude_bn_and_bias():
    m = _tiny()
    m.fc.bias.requires_grad_(False)  # frozen parameters are left out
    m.layer3[0].conv1 = tb.BasisConv2d(8, 16, 3, basis_channels=4, stride=2, padding=1, bias=True)
    groups = param_groups(m, 5e-4)
    by_name = {g["name"]: g for g in groups}
    assert by_name["decay"]["weight_decay"] == 5e-4
    assert by_name["no_decay"]["weight_decay"] == 0.0
    decay = {id(p) for p in by_name["decay"]["params"]}
    no_decay = {id(p) for p in by_name["no_decay"]["params"]}
    bn_names = {
        f"{n}.{s}"
        for n, mod in m.named_modules()
        if isinstance(mod, nn.BatchNorm2d)
        for s in ("weight", "bias")
    }
    for name, p in m.named_parameters():
        if not p.requires_grad:
            assert id(p) not in decay | no_decay, name
        elif name in bn_names or name.endswith(".bias"):
            assert id(p) in no_decay, name
        else:
            assert id(p) in decay, name
    assert id(m.layer3[0].conv1.basis) in decay and id(m.layer3[0].conv1.coeff) in decay
    assert id(m.layer3[0].conv1.bias) in no_decay
    assert len(decay) + len(no_decay) == sum(p.requires_grad for p in m.parameters())


# --------------------------------------------------------------------------------------------
# checkpoints and resume


def test_checkpoint_loads_weights_only(tmp_path, digits8):
    train_set, val_set = digits8
    data = Subset(train_set, range(128))
    m = _tiny()
    cfg = _small_cfg(epochs=1, weight_decay=1e-3)
    r = train(m, data, val_set, cfg, checkpoint_dir=tmp_path, progress=False)
    assert r.checkpoint_path == str(tmp_path / "last.pt")
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["format"] == "tritonbasis.train/1" and isinstance(ck["sha256"], str)
    assert ck["epoch"] == 1 and ck["global_step"] == r.steps == 4
    assert ck["config"] == cfg.to_dict() and isinstance(ck["config"], dict)
    assert all(torch.equal(ck["model"][k], v) for k, v in m.state_dict().items())
    assert isinstance(ck["rng"]["torch"], torch.Tensor)
    assert ck["history"] == r.history
    groups = ck["optimizer"]["param_groups"]
    assert [(g["name"], g["weight_decay"]) for g in groups] == [("decay", 1e-3), ("no_decay", 0.0)]
    assert ck["scheduler"]["last_epoch"] == 4


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch, digits8):
    """A save that dies half-way leaves the previous checkpoint untouched and no temp file."""
    train_set, _ = digits8
    data = Subset(train_set, range(64))
    train(_tiny(), data, None, _small_cfg(epochs=1), checkpoint_dir=tmp_path, progress=False)
    path = tmp_path / "last.pt"
    before = path.read_bytes()

    def dying_save(obj, f, *a, **k):
        f.write(b"the first bytes of a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="simulated"):
        train(
            _tiny(seed=1), data, None, _small_cfg(epochs=2), checkpoint_dir=tmp_path, progress=False
        )
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_resume_after_interruption_equals_uninterrupted(tmp_path, monkeypatch, digits8):
    train_set, val_set = digits8
    data = NoisyData(Subset(train_set, range(256)))
    val = Subset(val_set, range(100))
    cfg = _small_cfg()

    m_a = _tiny(seed=0)
    init = copy.deepcopy(m_a.state_dict())
    r_a = train(m_a, data, val, cfg, checkpoint_dir=tmp_path / "a", progress=False)

    m_b = _tiny(seed=0)
    m_b.load_state_dict(init)
    real_save, calls = torch.save, []

    def killed_during_second_save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is killed while saving epoch 2
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", killed_during_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(m_b, data, val, cfg, checkpoint_dir=tmp_path / "b", progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(tmp_path / "b")) == ["last.pt"]
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 1

    torch.manual_seed(12345)  # whatever state a new process starts in
    m_c = _tiny(seed=99)  # other initial weights: the checkpoint's must be used
    r_c = train(m_c, data, val, cfg, checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    assert r_c.resumed_from_epoch == 1 and r_c.steps == r_a.steps
    sa, sc = m_a.state_dict(), m_c.state_dict()
    assert sa.keys() == sc.keys()
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k
    assert _metrics(r_c.history) == _metrics(r_a.history)

    # resuming a finished run trains nothing more and reports the same result
    m_d = _tiny(seed=3)
    r_d = train(m_d, data, val, cfg, checkpoint_dir=tmp_path / "a", resume=True, progress=False)
    assert _metrics(r_d.history) == _metrics(r_a.history)
    assert all(torch.equal(v, sa[k]) for k, v in m_d.state_dict().items())


def test_resume_refuses_other_config(tmp_path, digits8):
    train_set, _ = digits8
    data = Subset(train_set, range(64))
    cfg = _small_cfg(epochs=1)
    train(_tiny(), data, None, cfg, checkpoint_dir=tmp_path, progress=False)
    other = _small_cfg(epochs=1, lr=0.1)
    with pytest.raises(ValueError, match=r"lr: checkpoint 0\.05 vs now 0\.1"):
        train(_tiny(), data, None, other, checkpoint_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="epochs: checkpoint 1 vs now 2"):
        train(
            _tiny(),
            data,
            None,
            _small_cfg(epochs=2),
            checkpoint_dir=tmp_path,
            resume=True,
            progress=False,
        )
    with pytest.raises(ValueError, match="64 samples"):
        train(
            _tiny(),
            Subset(train_set, range(96)),
            None,
            cfg,
            checkpoint_dir=tmp_path,
            resume=True,
            progress=False,
        )
    with pytest.raises(ValueError, match="do not fit this model"):
        train(
            _tiny(basis_layer=False),
            data,
            None,
            cfg,
            checkpoint_dir=tmp_path,
            resume=True,
            progress=False,
        )
    # fields that do not change the trajectory may differ
    ok = _small_cfg(epochs=1, log_every=1, num_workers=0, amp=False)
    r = train(_tiny(), data, None, ok, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert r.resumed_from_epoch == 1
    assert "lr" in RESUME_KEYS and "device" not in RESUME_KEYS


def test_resume_arguments(tmp_path, digits8):
    train_set, _ = digits8
    data = Subset(train_set, range(64))
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train(_tiny(), data, None, _small_cfg(epochs=1), resume=True, progress=False)
    r = train(
        _tiny(),
        data,
        None,
        _small_cfg(epochs=1),
        checkpoint_dir=tmp_path / "new",
        resume=True,
        progress=False,
    )  # nothing to resume from: a fresh run
    assert r.resumed_from_epoch is None and (tmp_path / "new" / "last.pt").is_file()


# --------------------------------------------------------------------------------------------
# reproducibility, schedule, limits


def test_seeded_runs_are_reproducible(digits8):
    train_set, val_set = digits8
    data = NoisyData(Subset(train_set, range(128)))
    val = Subset(val_set, range(64))
    cfg = _small_cfg(epochs=2)
    runs = []
    for seed in (7, 7, 8):
        m = _tiny(seed=0)
        r = train(m, data, val, _small_cfg(epochs=2, seed=seed), progress=False)
        runs.append((m.state_dict(), r))
    (s1, r1), (s2, r2), (_, r3) = runs
    assert _metrics(r1.history) == _metrics(r2.history)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert _metrics(r1.history) != _metrics(r3.history)  # the seed matters
    assert r1.config == cfg.to_dict()


def test_lr_schedules():
    cos = lr_lambda(TrainConfig(epochs=4, warmup=1.0), total_steps=40, steps_per_epoch=10)
    assert cos(0) == pytest.approx(1 / 11) and cos(9) == pytest.approx(10 / 11)
    assert cos(10) == pytest.approx(1.0)
    vals = [cos(s) for s in range(10, 40)]
    assert all(a > b for a, b in zip(vals, vals[1:])) and vals[-1] < 0.01
    one = lr_lambda(TrainConfig(epochs=4, schedule="onecycle"), total_steps=40, steps_per_epoch=10)
    assert one(0) == pytest.approx(1 / 25) and one(12) == pytest.approx(1.0)
    assert max(one(s) for s in range(40)) == pytest.approx(1.0)
    assert one(39) == pytest.approx(1 / 25 / 1e4)


def test_max_steps_and_recorded_lr(digits8):
    train_set, _ = digits8
    data = Subset(train_set, range(256))  # 8 steps per epoch at batch 32
    cfg = _small_cfg(epochs=3, max_steps=10, schedule="onecycle", warmup=0.0)
    r = train(_tiny(), data, None, cfg, progress=False)
    assert [h["steps"] for h in r.history] == [8, 2] and r.steps == 10
    assert r.history[-1]["lr"] == pytest.approx(cfg.lr * lr_lambda(cfg, 10, 8)(9))
    assert r.final_val_acc is None and r.best_epoch is None


def test_config_validation():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(epochs=2, warmup=2)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="nesterov"):
        TrainConfig(momentum=0.0)
    cfg = TrainConfig(epochs=3, lr=1, device="cpu")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg and isinstance(cfg.lr, float)
    with pytest.raises(ValueError, match="unknown TrainConfig fields: lr_max"):
        TrainConfig.from_dict({"lr_max": 1.0})


def test_diverging_run_raises(digits8):
    train_set, _ = digits8
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(
            m,
            Subset(train_set, range(128)),
            None,
            _small_cfg(epochs=1, lr=1e38, warmup=0.0, label_smoothing=0.0),
            progress=False,
        )


def test_train_result_json_round_trip(digits8):
    train_set, val_set = digits8
    r = train(
        _tiny(),
        Subset(train_set, range(64)),
        Subset(val_set, range(32)),
        _small_cfg(epochs=1),
        progress=False,
    )
    d = json.loads(r.to_json())
    assert d == r.to_dict()
    assert TrainResult.from_dict(d) == r
    h = d["history"][0]
    for k in (
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "epoch_time_s",
        "step_time_ms",
        "lr",
    ):
        assert isinstance(h[k], float), k
    assert d["best_epoch"] == 1 and d["final_val_acc"] == h["val_acc"]


# --------------------------------------------------------------------------------------------
# evaluation, counting, timing


def test_evaluate_matches_direct_computation(digits8):
    _, val_set = digits8
    m = _tiny()
    m.train()
    loss, acc = evaluate(m, val_set, "cpu", batch_size=100)
    assert m.training  # mode restored
    m.eval()
    with torch.no_grad():
        out = m(val_set.images)
    assert loss == pytest.approx(F.cross_entropy(out, val_set.targets).item(), rel=1e-5)
    assert acc == pytest.approx((out.argmax(1) == val_set.targets).float().mean().item())
    loader = torch.utils.data.DataLoader(val_set, batch_size=64)
    assert evaluate(m, loader)[1] == pytest.approx(acc)


@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep-basis", "full"])
def test_count_macs_basis_layer(keep_basis):
    N, C_in, C_out, C_b, k, H = 2, 8, 16, 4, 3, 10

    def net(conv):
        return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(C_out * H * H, 10))

    dense = net(nn.Conv2d(C_in, C_out, k, padding=1))
    basis = net(
        tb.BasisConv2d(
            C_in, C_out, k, basis_channels=C_b, padding=1, keep_basis=keep_basis, mode="fused"
        )
    )
    P = N * H * H
    rest = C_out - C_b if keep_basis else C_out
    conv_dense = P * C_out * C_in * k * k
    conv_basis = P * (C_b * C_in * k * k + rest * C_b)  # basis conv + coefficient combination
    linear = N * C_out * H * H * 10
    shape = (N, C_in, H, H)
    assert count_macs(dense, shape) == conv_dense + linear
    assert count_macs(basis, shape) == conv_basis + linear
    assert count_macs(dense, shape) - count_macs(basis, shape) == conv_dense - conv_basis
    assert count_macs(basis, shape, device="cpu") == conv_basis + linear  # real tensors
    # a layer set to weight modification: the method's (fused) count by default; as run, the
    # dense conv plus building W = [B; coeff.B] (a rest x C_b x C_in*k^2 matmul)
    basis[0].mode = "weight"
    assert count_macs(basis, shape) == conv_basis + linear
    assert count_macs(basis, shape, fused=False) == (
        conv_dense + rest * C_b * C_in * k * k + linear
    )
    assert basis[0].mode == "weight"


def _hook_macs(model, shape):
    """Independent count: conv and linear MACs from forward hooks on real tensors."""
    total = []

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            total.append(out.numel() * mod.in_channels // mod.groups * math.prod(mod.kernel_size))
        else:
            total.append(out.numel() * mod.in_features)

    hs = [
        mm.register_forward_hook(hook)
        for mm in model.modules()
        if isinstance(mm, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(shape))
    for h in hs:
        h.remove()
    return sum(total)


def test_count_macs_resnet_with_basis_layer():
    m = resnet18_cifar(width=0.25)
    m.train()
    dense = count_macs(m, (3, 32, 32))
    assert dense == _hook_macs(copy.deepcopy(m), (1, 3, 32, 32))
    assert m.training and all(x.training for x in m.modules())  # modes restored
    # layer3.0.conv1: 32 -> 64, 3x3, stride 2, 16x16 -> 8x8 output; C_b = 16 (ratio 1/4)
    m.layer3[0].conv1 = tb.BasisConv2d(
        32, 64, 3, basis_channels=16, stride=2, padding=1, bias=False
    )
    saved = 8 * 8 * (64 * 32 * 9 - (16 * 32 * 9 + 48 * 16))
    assert dense - count_macs(m, (3, 32, 32)) == saved
    assert count_macs(m, (4, 3, 32, 32)) == 4 * count_macs(m, (3, 32, 32))
    with pytest.raises(ValueError, match="input_shape"):
        count_macs(m, (32, 32))


def test_count_params():
    m = _tiny()
    assert count_params(m) == sum(p.numel() for p in m.parameters())
    m.fc.weight.requires_grad_(False)
    assert count_params(m, trainable_only=True) == count_params(m) - m.fc.weight.numel()


def test_measure_step_time_leaves_model_alone():
    m = _tiny()
    before = copy.deepcopy(m.state_dict())
    t = measure_step_time(m, (4, 3, 8, 8), steps=3, device="cpu", warmup=1)
    for k in ("train_step_ms", "infer_ms", "train_step_ms_p20", "infer_ms_p80"):
        assert t[k] > 0, k
    assert t["train_step_ms_p20"] <= t["train_step_ms"] <= t["train_step_ms_p80"]
    assert t["infer_ms_p20"] <= t["infer_ms"] <= t["infer_ms_p80"]
    # the one timer (util.timing.time_fn): torch.utils.benchmark on CPU, >= steps timed calls
    assert t["method"].startswith("torch.utils.benchmark")
    assert t["train_step_reps"] >= 3 and t["infer_reps"] >= 3
    assert t["input_shape"] == [4, 3, 8, 8] and t["device"] == "cpu"
    assert t["dtype"] == "float32" and t["channels_last"] is False
    json.dumps(t)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in m.parameters())
