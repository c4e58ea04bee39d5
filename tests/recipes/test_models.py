"""Models: the CIFAR ResNet18 (size, shapes, module names, width scaling) and the name registry
(torchvision classification models built without any download)."""

import pytest
import torch
import torch.nn as nn

from tritonbasis.recipes.models import MODELS, get_model, list_models, resnet18_cifar


def _expected_params(widths, num_classes=10, in_channels=3):
    """Parameter count of a CIFAR ResNet18 from its architecture, written out by hand: the
    3x3 stem conv (no bias) + BN, 2 BasicBlocks per stage (two 3x3 convs + two BNs, and a
    1x1 conv + BN downsample where the shape changes), fc."""
    bn = lambda c: 2 * c
    total = 9 * in_channels * widths[0] + bn(widths[0])
    c_in = widths[0]
    for i, c in enumerate(widths):
        for b in range(2):
            stride = 2 if (i > 0 and b == 0) else 1
            total += 9 * c_in * c + bn(c) + 9 * c * c + bn(c)
            if stride != 1 or c_in != c:
                total += c_in * c + bn(c)
            c_in = c
    return total + widths[-1] * num_classes + num_classes


def test_resnet18_cifar_param_count():
    m = resnet18_cifar()
    n = sum(p.numel() for p in m.parameters())
    # 11,173,962 is the published size of the standard CIFAR ResNet18 with 10 classes.
    assert n == 11_173_962
    assert n == _expected_params((64, 128, 256, 512))
    assert sum(p.numel() for p in resnet18_cifar(num_classes=100).parameters()) == (
        _expected_params((64, 128, 256, 512), num_classes=100)
    )


@pytest.mark.parametrize("hw", [32, 16, 8], ids=lambda s: f"{s}x{s}")
def test_output_shape(hw):
    m = resnet18_cifar(num_classes=7, width=0.125).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, hw, hw)).shape == (2, 7)


def test_cifar_stem_and_module_names():
    m = resnet18_cifar(width=0.25)
    assert isinstance(m.maxpool, nn.Identity)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert m.conv1.padding == (1, 1) and m.conv1.bias is None
    convs = {n: c for n, c in m.named_modules() if isinstance(c, nn.Conv2d)}
    expected_3x3 = ["conv1"] + [
        f"layer{s}.{b}.conv{c}" for s in range(1, 5) for b in range(2) for c in (1, 2)
    ]
    assert [n for n, c in convs.items() if c.kernel_size == (3, 3)] == expected_3x3
    assert [n for n, c in convs.items() if c.kernel_size == (1, 1)] == [
        f"layer{s}.0.downsample.0" for s in (2, 3, 4)
    ]
    assert isinstance(dict(m.named_modules())["layer2.0.downsample.1"], nn.BatchNorm2d)
    assert [convs[f"layer{s}.0.conv1"].stride for s in range(1, 5)] == [
        (1, 1),
        (2, 2),
        (2, 2),
        (2, 2),
    ]
    assert all(not isinstance(x, nn.MaxPool2d) for x in m.modules())


@pytest.mark.parametrize(
    "width,widths",
    [
        (0.5, (32, 64, 128, 256)),
        (0.25, (16, 32, 64, 128)),
        (0.3, (19, 38, 77, 154)),
        (0.001, (1, 1, 1, 1)),
    ],
    ids=["w0.5", "w0.25", "w0.3-rounds", "w0.001-at-least-1"],
)
def test_width_scaling(width, widths):
    m = resnet18_cifar(width=width)
    assert m.conv1.out_channels == widths[0]
    assert [getattr(m, f"layer{s}")[1].conv2.out_channels for s in range(1, 5)] == list(widths)
    assert m.fc.in_features == widths[-1]
    assert sum(p.numel() for p in m.parameters()) == _expected_params(widths)


def test_zero_init_residual():
    m = resnet18_cifar(width=0.125, zero_init_residual=True)
    bn2 = [b.bn2.weight for s in range(1, 5) for b in getattr(m, f"layer{s}")]
    assert all(torch.count_nonzero(w) == 0 for w in bn2)
    assert torch.all(resnet18_cifar(width=0.125).layer1[0].bn2.weight == 1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="width"):
        resnet18_cifar(width=0)
    with pytest.raises(ValueError, match="num_classes"):
        resnet18_cifar(num_classes=0)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to fetch weights fails the test."""
    import urllib.request

    def boom(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)
    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)
    monkeypatch.setattr(urllib.request, "urlopen", boom)


@pytest.mark.parametrize(
    "name,hw",
    [
        ("resnet18", 64),
        ("resnet50", 64),
        ("vgg11_bn", 32),
        ("mobilenet_v2", 64),
        ("resnet18_cifar", 32),
    ],
)
def test_get_model_builds_without_download(no_network, name, hw):
    # Built on the meta device: the real construction path (layers, init) without allocating
    # vgg11_bn's 129 M parameters; a meta forward checks the head's shape.
    with torch.device("meta"):
        m = get_model(name, num_classes=7)
        out = m.eval()(torch.empty(2, 3, hw, hw))
    assert out.shape == (2, 7)
    assert any(isinstance(x, nn.Conv2d) for x in m.modules())


def test_get_model_registry_and_errors():
    assert set(MODELS) == {"resnet18_cifar"}
    names = list_models()
    assert names[0] == "resnet18_cifar" and "resnet50" in names and "vgg11_bn" in names
    m = get_model("resnet18_cifar", num_classes=5, width=0.125)
    assert m.fc.out_features == 5 and m.conv1.out_channels == 8
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        get_model("resnet19")
    with pytest.raises(ValueError, match="width"):
        get_model("resnet18", width=0.5)
