"""mode="auto": decided once (convert / tune / first forward), by tritonbasis.nn.modes, and the
report says what runs. Timings are injected: no wall-clock assertions."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn

import tritonbasis as tb
from tritonbasis.nn import choose_mode, modes
from tritonbasis.nn.functional import FUSED_EFFICIENCY, MIN_FUSED_PIXELS
from tritonbasis.op import reference, tune_cache
from tritonbasis.op.geometry import MAX_BASIS_CHANNELS, check_inputs


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """A private, empty tuning cache (the user's must not steer these decisions)."""
    monkeypatch.setenv(tune_cache.ENV_DIR, str(tmp_path / "cache"))
    tune_cache.clear_memory()
    yield
    tune_cache.clear_memory()


def _geometry(N, C_in, H, C_b, C_out, k=3):
    x = torch.empty(N, C_in, H, H, device="meta")
    basis = torch.empty(C_b, C_in, k, k, device="meta")
    coeff = torch.empty(C_out - C_b, C_b, device="meta")
    return check_inputs(x, basis, coeff, None, 1, k // 2, 1, True)


@pytest.fixture
def count_paths(monkeypatch):
    """Which path runs: reference.forward is the fused op's CPU implementation,
    reference.weight_modified the weight path."""
    calls = []
    real_fwd, real_w = reference.forward, reference.weight_modified
    monkeypatch.setattr(
        reference, "forward", lambda *a, **k: calls.append("fused") or real_fwd(*a, **k)
    )
    monkeypatch.setattr(
        reference, "weight_modified", lambda *a, **k: calls.append("weight") or real_w(*a, **k)
    )
    return calls


def test_injected_timings_decide_on_cpu():
    # 64->64 3x3 at 4x4 px, batch 64, C_b=16: the CPU model says fused (27.5M MACs saved)
    g = _geometry(64, 64, 4, 16, 64)
    assert modes.decide(g, "cpu") == "fused"
    assert modes.decide(g, "cpu", {"fused": 2.0, "weight": 1.0}) == "weight"
    # quarter-width stage 1 at 16x16 px: the model says weight; measured faster fused wins
    small = _geometry(64, 16, 16, 4, 16)
    assert modes.decide(small, "cpu") == "weight"
    assert modes.decide(small, "cpu", {"fused": 1.0, "weight": 2.0}) == "fused"
    assert choose_mode(small, "cpu", {"fused": 1.0, "weight": 2.0}) == "fused"


def test_cpu_model_thresholds():
    """The fitted CPU rule (bench/NOTES.md): fused needs C_b >= 8 and saved MACs x C_b >= 256M;
    a symbolic / unknown size uses the per-pixel rule (C_b >= 32)."""
    g = _geometry(64, 64, 4, 16, 64)  # saved per call: 64*16*(36864-9216-768) = 27.5M
    saved = g.pixels * (64 * 64 * 9 - (16 * 64 * 9 + 48 * 16))
    assert saved * 16 >= modes.CPU_SAVED_MACS_X_CB
    half = _geometry(16, 64, 4, 16, 64)  # a quarter of it: below the threshold
    assert modes.decide(half, "cpu") == "weight"
    assert modes.decide_per_pixel(64, 64, 16, (3, 3), True, "cpu") == "weight"
    assert modes.decide_per_pixel(128, 128, 32, (3, 3), True, "cpu") == "fused"
    # CUDA keeps its rule: FLOPs and >= 2048 output pixels
    assert modes.decide(half, "cuda") == "weight"  # 256 pixels
    assert modes.decide(_geometry(128, 64, 4, 16, 64), "cuda") == "fused"


def test_resolution_happens_once(monkeypatch, count_paths):
    m = tb.BasisConv2d(16, 16, 3, basis_channels=4, padding=1)
    calls = []
    real = modes.decide
    monkeypatch.setattr(modes, "decide", lambda *a, **k: calls.append(1) or real(*a, **k))
    import tritonbasis.nn.functional as F

    monkeypatch.setattr(F, "decide", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 16, 8, 8)
    for _ in range(4):
        m(x)
    assert len(calls) == 1, "decided again on a later forward"
    m(torch.randn(3, 16, 8, 8))  # another input shape: decided once more
    assert len(calls) == 2
    assert count_paths == ["weight"] * 5  # the CPU model's pick for this small layer
    m.set_resolved("fused")  # fixed: no decision at all, whatever the shape
    m(torch.randn(5, 16, 8, 8))
    assert len(calls) == 2 and count_paths[-1] == "fused"
    assert m.resolved_mode(torch.randn(5, 16, 8, 8)) == "fused"
    with pytest.raises(ValueError, match="resolved mode"):
        m.set_resolved("auto")


def test_first_forward_reads_no_disk_after_the_first(monkeypatch):
    m = tb.BasisConv2d(16, 16, 3, basis_channels=4, padding=1)
    m(torch.randn(2, 16, 8, 8))  # first lookup in this process (cache empty, nothing read)
    reads = []
    real = tune_cache._Store._read
    monkeypatch.setattr(
        tune_cache._Store, "_read", lambda self, p: reads.append(p) or real(self, p)
    )
    for n in (2, 3, 4):
        m(torch.randn(n, 16, 8, 8))
    assert reads == []


@pytest.mark.parametrize("input_shape", [None, (3, 16, 16), (64, 3, 16, 16)])
def test_convert_report_states_the_mode_that_runs(input_shape, count_paths):
    from tritonbasis.recipes.models import resnet18_cifar

    model = resnet18_cifar(width=0.25).eval()
    conv, rep = tb.convert_with_report(
        model, {"_default": tb.BasisSpec(ratio=0.25)}, input_shape=input_shape
    )
    said = {r.fqn: r.mode for r in rep.converted}
    assert said and all(v.startswith("auto->") for v in said.values())
    ran = {}
    for fqn in said:
        layer = conv.get_submodule(fqn)
        assert layer.mode == "auto" and layer.resolved in ("fused", "weight")
        layer.register_forward_pre_hook(
            lambda mod, inp, fqn=fqn: ran.__setitem__(fqn, len(count_paths))
        )
    n = input_shape[0] if input_shape and len(input_shape) == 4 else 1
    with torch.no_grad():
        conv(torch.randn(n, 3, 16, 16))
    for fqn, mode in said.items():
        assert count_paths[ran[fqn]] == mode.removeprefix("auto->"), fqn
    if input_shape == (64, 3, 16, 16):  # batch 64 at width 0.25: stage 3-4 run fused
        assert {"fused", "weight"} <= set(said_m.removeprefix("auto->") for said_m in said.values())


def _fake_measure(slower):
    """A timer where ``slower`` ("fused"/"weight") takes 2 ms and the other 1 ms."""

    def measure(mode, layer, in_shape):
        ms = 2.0 if mode == slower else 1.0
        return {"fwd": ms / 3, "fwd+bwd": ms}

    return measure


@pytest.mark.parametrize("slower", ["fused", "weight"])
def test_tune_sets_modes_from_timings(slower, count_paths):
    model = nn.Sequential(
        tb.BasisConv2d(16, 32, 3, basis_channels=8, padding=1),
        nn.ReLU(),
        tb.BasisConv2d(32, 32, 3, basis_channels=8, padding=1),
        tb.BasisConv2d(32, 32, 3, basis_channels=8, padding=1, mode="fused"),
    )
    rows = tb.tune(model, (4, 16, 8, 8), device="cpu", measure=_fake_measure(slower))
    faster = "weight" if slower == "fused" else "fused"
    assert rows and all(r["mode"] == faster for r in rows)
    assert [model[i].resolved for i in (0, 2)] == [faster, faster]
    assert model[3].resolved is None  # a fixed mode is not touched
    count_paths.clear()
    model(torch.randn(4, 16, 8, 8))
    assert count_paths == [faster, faster, "fused"]
    # stored in the tuning cache: a fresh layer of that shape picks it up too
    entries = tune_cache._TIMINGS.entries()
    assert {e["mode"] for e in entries.values()} == {faster}
    fresh = tb.BasisConv2d(32, 32, 3, basis_channels=8, padding=1)
    assert fresh.resolved_mode(torch.randn(4, 32, 8, 8)) == faster
    with pytest.raises(ValueError, match="N, C, H, W"):
        tb.tune(model, (16, 8, 8))


def test_old_state_dicts_load():
    """resolved / its memo are plain attributes: state_dict keys are unchanged, so checkpoints
    from before load (strict), and a resolved layer's state_dict loads into a fresh one."""
    m = tb.BasisConv2d(8, 16, 3, basis_channels=4, padding=1)
    before = set(m.state_dict())
    m.set_resolved("fused")
    m(torch.randn(1, 8, 6, 6))
    assert set(m.state_dict()) == before == {"basis", "coeff", "bias"}
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = tb.BasisConv2d(8, 16, 3, basis_channels=4, padding=1)
    fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    assert fresh.resolved is None
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(fresh(x), m(x))
    # a module pickled before the attributes existed: class defaults fill in
    del m.__dict__["resolved"], m.__dict__["resolved_device"], m.__dict__["_mode_memo"]
    assert m.resolved is None
    m(x)


# --------------------------------------------------------------------------------------------
# The cost model


def geometry(N, C_in, H, W, C_b, C_out, k, keep_basis=True, stride=1, padding=None):
    """ConvGeometry of a call, built from meta tensors (any size, no memory)."""
    padding = k // 2 if padding is None else padding
    rows = C_out - C_b if keep_basis else C_out
    x = torch.empty(N, C_in, H, W, device="meta")
    basis = torch.empty(C_b, C_in, k, k, device="meta")
    coeff = torch.empty(rows, C_b, device="meta")
    return check_inputs(x, basis, coeff, None, stride, padding, 1, keep_basis)


CUDA = torch.device("cuda")


@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
def test_choose_mode_stem_picks_weight(keep_basis):
    # 3 -> 64, 3x3, C_b = 16: C_b*C_in*9 + rest*C_b is not < 0.6 x dense MACs
    g = geometry(32, 3, 224, 224, 16, 64, 3, keep_basis)
    assert choose_mode(g, "cpu") == "weight"
    assert choose_mode(g, CUDA) == "weight"


def test_choose_mode_wide_layer_picks_fused():
    g = geometry(32, 128, 56, 56, 32, 128, 3)
    assert g.pixels >= MIN_FUSED_PIXELS
    assert choose_mode(g, "cpu") == "fused"
    assert choose_mode(g, CUDA) == "fused"
    assert choose_mode(g, "cuda") == "fused"  # a string device works too


def test_choose_mode_cuda_tiny_pixels_pick_weight():
    g = geometry(1, 128, 4, 4, 32, 128, 3)
    assert g.pixels < MIN_FUSED_PIXELS
    assert choose_mode(g, CUDA) == "weight"
    # CPU has its own calibrated rule (tritonbasis.nn.modes, bench/NOTES.md): this call saves
    # 1.7M MACs at C_b=32, below the 8M the CPU's fixed cost of the basis path needs
    assert choose_mode(g, "cpu") == "weight"
    # the threshold itself: k=1, H=W=1, pixels = N
    assert choose_mode(geometry(MIN_FUSED_PIXELS, 128, 1, 1, 32, 128, 1), CUDA) == "fused"
    assert choose_mode(geometry(MIN_FUSED_PIXELS - 1, 128, 1, 1, 32, 128, 1), CUDA) == "weight"


def test_choose_mode_cuda_large_basis_picks_weight():
    big = geometry(4, 2048, 32, 32, MAX_BASIS_CHANNELS + 1, 2048, 1)
    edge = geometry(4, 2048, 32, 32, MAX_BASIS_CHANNELS, 2048, 1)
    assert big.macs()["fused"] < FUSED_EFFICIENCY * big.macs()["dense"]  # FLOPs favour fused
    assert choose_mode(big, CUDA) == "weight"
    assert choose_mode(big, "cpu") == "fused"
    assert choose_mode(edge, CUDA) == "fused"


def test_choose_mode_cb_close_to_cout_picks_weight():
    g = geometry(32, 128, 56, 56, 120, 128, 3)
    assert choose_mode(g, "cpu") == "weight"


def test_resolved_mode():
    stem = tb.BasisConv2d(3, 64, 3, basis_channels=16, padding=1)
    wide = tb.BasisConv2d(128, 128, 3, basis_channels=32, padding=1)
    assert stem.mode == wide.mode == "auto"
    assert stem.resolved_mode(torch.randn(1, 3, 16, 16)) == "weight"
    assert wide.resolved_mode(torch.randn(1, 128, 16, 16)) == "fused"
    fixed = tb.BasisConv2d(3, 64, 3, basis_channels=16, mode="fused")
    assert fixed.resolved_mode(torch.randn(1, 3, 16, 16)) == "fused"
    with pytest.raises(ValueError, match="basis expects 128 input channels"):
        wide.resolved_mode(torch.randn(1, 3, 16, 16))


def test_auto_mode_runs_what_it_resolves(monkeypatch):
    """mode='auto' in forward dispatches to the path resolved_mode names."""
    calls = []
    real_weight = reference.weight_modified
    real_fwd = reference.forward
    monkeypatch.setattr(
        reference,
        "weight_modified",
        lambda *a, **k: calls.append("weight") or real_weight(*a, **k),
    )
    monkeypatch.setattr(
        reference, "forward", lambda *a, **k: calls.append("fused") or real_fwd(*a, **k)
    )
    for m, cin in (
        (tb.BasisConv2d(3, 64, 3, basis_channels=16, padding=1), 3),
        (tb.BasisConv2d(128, 128, 3, basis_channels=32, padding=1), 128),
    ):
        x = torch.randn(1, cin, 12, 12)
        calls.clear()
        m(x)
        assert calls == [m.resolved_mode(x)]
