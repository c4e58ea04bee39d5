"""Conversion: BasisSpec, plans, convert / merge, initialisation from trained convs."""

import json

import pytest
import torch
import torch.nn as nn
import torchvision

import tritonbasis as tb
from tritonbasis.conversion.plan import lookup, normalize_plan

# Both forms on the two small models; one form each on the large ones (CI time on 2 cores).
TORCHVISION = [
    ("resnet18", False),
    ("resnet18", True),
    ("mobilenet_v2", False),
    ("mobilenet_v2", True),
    ("resnet50", False),
    ("vgg11_bn", True),
]


def _model(name):
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    # trained-looking BN statistics so the outputs are not dominated by one channel
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize(
    ("name", "keep_basis"),
    TORCHVISION,
    ids=[f"{n}-{'keep' if k else 'full'}" for n, k in TORCHVISION],
)
@pytest.mark.slow
def test_full_rank_conversion_reproduces_torchvision_models(name, keep_basis):
    m = _model(name)
    x = torch.randn(2, 3, 32, 32)
    ref = m(x)
    spec = tb.BasisSpec(energy=1.0, keep_basis=keep_basis)
    conv, report = tb.convert_with_report(m, {"_default": spec}, require_saving=False)
    n_basis = sum(isinstance(mm, tb.BasisConv2d) for mm in conv.modules())
    n_cand = len(tb.candidate_convs(m))
    assert n_basis == n_cand == report.totals()["converted"] > 0
    # every grouped / depthwise conv is left alone, with the reason
    skipped = [r for r in report.layers if not r.converted]
    assert all("groups" in r.reason for r in skipped), [(r.fqn, r.reason) for r in skipped]
    scale = ref.abs().max()
    # fp32 forward through ~20-50 layers: relative error ~1e-6 observed; 1e-4 can still fail on
    # a wrong channel order (O(1)) or a truncated basis (~1e-2 and up)
    assert (conv(x) - ref).abs().max() <= 1e-4 * scale
    merged = tb.merge(conv)
    assert not any(isinstance(mm, tb.BasisConv2d) for mm in merged.modules())
    assert (merged(x) - ref).abs().max() <= 1e-4 * scale
    # the original is untouched (inplace=False)
    assert not any(isinstance(mm, tb.BasisConv2d) for mm in m.modules())


def test_svd_init_error_is_the_discarded_singular_values():
    """Eckart-Young: || W - coeff.basis ||_F^2 = sum of the discarded sigma^2, exactly."""
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 24, 3).double()
    h = conv.weight.detach().reshape(24, -1)
    s = torch.linalg.svdvals(h)
    for cb in (1, 5, 12, 24):
        layer = tb.from_conv(conv, tb.BasisSpec(basis_channels=cb))
        err = (layer.merged_weight().reshape(24, -1) - h).norm() ** 2
        torch.testing.assert_close(err, s[cb:].square().sum(), rtol=1e-9, atol=1e-12)
        # and no other rank-cb approximation beats it: a keep-basis one is at least as large
        keep = tb.from_conv(conv, tb.BasisSpec(basis_channels=cb, keep_basis=True))
        assert (keep.merged_weight().reshape(24, -1) - h).norm() ** 2 >= err - 1e-9


def test_energy_rule_picks_smallest_sufficient_rank():
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 32, 3)
    s2 = torch.linalg.svdvals(conv.weight.detach().double().reshape(32, -1)) ** 2
    frac = torch.cumsum(s2, 0) / s2.sum()
    for energy in (0.3, 0.5, 0.9, 0.99):
        layer = tb.from_conv(conv, tb.BasisSpec(energy=energy))
        cb = layer.basis_channels
        assert frac[cb - 1] >= energy
        assert cb == 1 or frac[cb - 2] < energy
    assert tb.from_conv(conv, tb.BasisSpec(energy=1.0)).basis_channels == 32


def test_keep_basis_keeps_original_filters_and_channel_order():
    torch.manual_seed(3)
    conv = nn.Conv2d(6, 12, 3, padding=1)
    layer = tb.from_conv(conv, tb.BasisSpec(basis_channels=4, keep_basis=True))
    perm = layer.out_perm
    assert sorted(perm.tolist()) == list(range(12))
    chosen = perm[:4]
    # the basis filters ARE original filters
    torch.testing.assert_close(layer.basis, conv.weight[chosen])
    x = torch.randn(2, 6, 9, 9)
    y, ref = layer(x), conv(x)
    # the chosen channels are reproduced exactly, in their original positions
    torch.testing.assert_close(y[:, chosen], ref[:, chosen], rtol=1e-5, atol=1e-5)
    # the rest are least-squares reconstructions: far better than zero, not exact
    rest = perm[4:]
    rel = (y[:, rest] - ref[:, rest]).norm() / ref[:, rest].norm()
    assert rel < 1.0
    # and the merged conv has the filters in the original order
    torch.testing.assert_close(layer.merged_weight()[chosen], conv.weight[chosen])


def test_out_perm_survives_state_dict_round_trip(tmp_path):
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 8, 3)
    layer = tb.from_conv(conv, tb.BasisSpec(ratio=0.5, keep_basis=True))
    path = tmp_path / "layer.pt"
    torch.save(layer.state_dict(), path)
    fresh = tb.BasisConv2d(4, 8, 3, basis_channels=4, keep_basis=True)
    assert fresh.out_perm is None
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(fresh.out_perm, layer.out_perm)
    x = torch.randn(1, 4, 7, 7)
    torch.testing.assert_close(fresh(x), layer(x))
    with pytest.raises(ValueError, match="permutation"):
        fresh.set_out_perm(torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]))


def test_random_init_and_frozen_orthogonal_basis():
    conv = nn.Conv2d(8, 16, 3)
    layer = tb.from_conv(conv, tb.BasisSpec(ratio=0.25, init="random", trainable_basis=False))
    assert not layer.basis.requires_grad and layer.coeff.requires_grad
    flat = layer.basis.detach().reshape(4, -1)
    gram = flat @ flat.t()
    off = gram - torch.diag(torch.diag(gram))
    assert off.abs().max() <= 1e-5 * gram.diag().max()  # orthogonal rows
    assert "trainable_basis=False" in repr(layer)
    layer(torch.randn(2, 8, 7, 7)).sum().backward()
    assert layer.basis.grad is None and layer.coeff.grad is not None


def test_plan_precedence_and_skip():
    plan = normalize_plan(
        {
            "layer1.0.conv1": {"ratio": 0.5},
            "re:layer1\\..*": {"ratio": 0.25, "keep_basis": True},
            "re:layer2\\..*": None,
            "_default": tb.BasisSpec(basis_channels=8),
        }
    )
    assert lookup(plan, "layer1.0.conv1")[1] == tb.BasisSpec(ratio=0.5)
    assert lookup(plan, "layer1.1.conv2")[1] == tb.BasisSpec(ratio=0.25, keep_basis=True)
    assert lookup(plan, "layer2.0.conv1") == (True, None, "re:layer2\\..*")
    assert lookup(plan, "layer3.0.conv1")[1] == tb.BasisSpec(basis_channels=8)
    # regexes match the whole name
    assert lookup(normalize_plan({"re:conv": {"ratio": 0.5}}), "layer1.0.conv1")[0] is False


@pytest.mark.slow
def test_convert_by_plan_reports_every_conv():
    m = _model("resnet18")
    plan = {"re:layer[34]\\.\\d\\.conv[12]": {"ratio": 0.25}, "conv1": None}
    conv, rep = tb.convert_with_report(m, plan, input_shape=(3, 32, 32))
    rows = {r.fqn: r for r in rep.layers}
    assert len(rows) == 20  # every Conv2d of resnet18
    assert rows["conv1"].reason.startswith("plan says skip")
    assert rows["layer1.0.conv1"].reason == "not in plan"
    r = rows["layer4.1.conv2"]
    assert r.converted and r.C_b == 128 and r.params_after < r.params_before
    assert r.macs_after < r.macs_before
    assert r.out_pixels == 1  # 32 px input -> 1 px at layer4
    assert isinstance(conv.get_submodule("layer4.1.conv2"), tb.BasisConv2d)
    t = rep.totals()
    assert t["converted"] == 8 and t["conv_params_after"] < t["conv_params_before"]
    text = rep.table()
    assert "layer4.1.conv2" in text and "converted 8/20" in text
    assert json.loads(rep.to_json())["totals"]["converted"] == 8


def test_no_saving_and_unsupported_convs_are_skipped_with_reasons():
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3),  # C_in*k^2=27: ratio 0.75 saves nothing
        nn.Conv2d(16, 16, 3, groups=16),  # depthwise
        nn.Conv2d(16, 32, 3, groups=4),  # grouped
        nn.ConvTranspose2d(32, 16, 3),  # transposed
        nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect"),  # converted (as any pad)
        nn.Conv2d(16, 64, 3),  # converted
    )
    conv, rep = tb.convert_with_report(net, {"0": {"ratio": 0.75}, "_default": {"ratio": 0.25}})
    reasons = {r.fqn: r.reason for r in rep.layers}
    assert "no saving" in reasons["0"]
    assert "depthwise" in reasons["1"] and "grouped" in reasons["2"]
    assert "3" not in reasons  # ConvTranspose2d is not a candidate at all
    assert reasons["4"] == "" and isinstance(conv[4], tb.BasisConv2d)
    assert conv[4].padding_mode == "reflect"
    assert isinstance(conv[5], tb.BasisConv2d) and not isinstance(conv[0], tb.BasisConv2d)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("keep_basis", [True, False], ids=["keep", "full"])
def test_convert_any_padding_mode_and_string_padding(padding_mode, keep_basis):
    """Convs with every padding_mode and with padding="same" (odd and even windows) /
    "valid" convert; at full rank the converted model is the dense one (float64), in both
    modes, and merge gives back convs with the same padding and padding_mode."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, padding_mode=padding_mode),
        nn.Conv2d(6, 6, (4, 3), padding="same", dilation=(1, 2), padding_mode=padding_mode),
        nn.Conv2d(6, 5, 2, padding="valid", padding_mode=padding_mode),
    ).double()
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    spec = tb.BasisSpec(energy=1.0, keep_basis=keep_basis, mode="fused")
    conv, rep = tb.convert_with_report(net, spec, require_saving=False, input_shape=(3, 9, 8))
    assert [r.converted for r in rep.layers] == [True, True, True], rep.table()
    want = net(x)
    for mode in ("fused", "weight"):
        for m in conv:
            m.mode = mode
        torch.testing.assert_close(conv(x), want, rtol=1e-10, atol=1e-10, msg=mode)
    back = tb.merge(conv)
    for a, b in zip(back, net):
        assert type(a) is nn.Conv2d
        assert (a.padding, a.padding_mode) == (b.padding, b.padding_mode)
    torch.testing.assert_close(back(x), want, rtol=1e-10, atol=1e-10)


def test_filter_fn_and_inplace():
    net = nn.Sequential(nn.Conv2d(8, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3))
    out = tb.convert(
        net, tb.BasisSpec(ratio=0.25), filter_fn=lambda m, fqn: fqn == "2", inplace=True
    )
    assert out is net
    assert isinstance(net[2], tb.BasisConv2d) and isinstance(net[0], nn.Conv2d)


def test_plan_json_round_trip_and_errors(tmp_path):
    plan = {
        "layer1.0.conv1": tb.BasisSpec(ratio=0.25, keep_basis=True),
        "_default": None,
        "re:layer4.*": {"energy": 0.9, "mode": "fused"},
    }
    path = tb.save_plan(plan, tmp_path / "plan.json", meta={"source": "test"})
    doc = json.loads(path.read_text())
    assert doc["plan"]["_default"] is None and doc["meta"] == {"source": "test"}
    back = tb.load_plan(path)
    assert back == normalize_plan(plan)
    # a bare {name: spec} dict loads too
    (tmp_path / "bare.json").write_text(json.dumps({"conv1": {"basis_channels": 4}}))
    assert tb.load_plan(tmp_path / "bare.json") == {"conv1": tb.BasisSpec(basis_channels=4)}
    with pytest.raises(FileNotFoundError, match="nope.json"):
        tb.load_plan(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        tb.load_plan(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unknown BasisSpec field"):
        normalize_plan({"conv1": {"ratio": 0.5, "rank": 3}})
    with pytest.raises(ValueError, match="not a valid regex"):
        normalize_plan({"re:(": {"ratio": 0.5}})


@pytest.mark.parametrize(
    "kw, match",
    [
        ({}, "exactly one of"),
        ({"ratio": 0.5, "energy": 0.9}, "exactly one of"),
        ({"ratio": 1.5}, "ratio must be in"),
        ({"basis_channels": 0}, "basis_channels must be a positive int"),
        ({"energy": 0.0}, "energy must be in"),
        ({"ratio": 0.5, "init": "kaiming"}, "init must be one of"),
        ({"energy": 0.5, "init": "random"}, "energy needs init='svd'"),
        ({"ratio": 0.5, "mode": "fast"}, "mode must be one of"),
    ],
)
def test_basis_spec_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        tb.BasisSpec(**kw)


def test_from_conv_rejects_unsupported():
    with pytest.raises(ValueError, match="groups=4"):
        tb.from_conv(nn.Conv2d(8, 8, 3, groups=4), tb.BasisSpec(ratio=0.5))
    with pytest.raises(ValueError, match="not an nn.Conv2d"):
        tb.from_conv(nn.ConvTranspose2d(8, 8, 3), tb.BasisSpec(ratio=0.5))
    layer = tb.BasisConv2d.from_conv(nn.Conv2d(8, 16, 3), ratio=0.5)
    assert layer.basis_channels == 8


def test_unknown_or_non_conv_names_in_a_plan_are_clear_errors():
    m = _model("resnet18")
    with pytest.raises(ValueError, match=r"'layer9.0.conv1' \(no such module\).*conv1"):
        tb.convert(m, {"layer9.0.conv1": {"ratio": 0.5}})
    with pytest.raises(ValueError, match=r"'fc' \(a Linear, not a Conv2d\)"):
        tb.convert(m, {"fc": {"ratio": 0.5}})
    # regex and _default keys may match nothing, but a pattern that selects no conv warns
    with pytest.warns(UserWarning, match="re:nothing.*match no Conv2d"):
        tb.convert(m, {"re:nothing.*": {"ratio": 0.5}, "_default": None})
