"""Models: the standard CIFAR ResNet18 built from torchvision's ResNet pieces, and a name
registry that also reaches every torchvision classification model (never with pretrained
weights: nothing here downloads).

The CIFAR ResNet18 keeps torchvision's module names (``conv1``, ``layer2.0.conv1``,
``layer3.1.conv2``, ``layer4.0.downsample.0``, ``fc``, ...), so conversion plans written for a
torchvision ResNet read the same here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock, ResNet

__all__ = ["MAX_WIDTH", "MODELS", "CifarResNet", "get_model", "list_models", "resnet18_cifar"]

_BASE_WIDTHS = (64, 128, 256, 512)


# Widest multiplier accepted: 64 x 512 = 32768 channels in the last stage, already ~10^10
# parameters; above it channel counts overflow before any allocation could fail cleanly.
MAX_WIDTH = 64.0


def _scaled(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class CifarResNet(ResNet):
    """torchvision's ``ResNet`` with the CIFAR stem: a 3x3 stride-1 conv, BN, ReLU and no max
    pool (``maxpool`` is an ``nn.Identity`` so torchvision's ``forward`` and the module names
    are unchanged), and stage widths ``64/128/256/512 * width``.

    Built by torchvision's own ``_make_layer`` (the blocks, the 1x1 conv + BN downsample and
    their names are torchvision's); initialised as torchvision initialises a ResNet
    (Kaiming-normal fan_out convs, BN weight 1 / bias 0, optional zero-init of each residual
    branch's last BN).
    """

    def __init__(
        self,
        block: type[BasicBlock] = BasicBlock,
        layers: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 10,
        width: float = 1.0,
        zero_init_residual: bool = False,
        in_channels: int = 3,
    ):
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not (
            isinstance(width, (int, float))
            and not isinstance(width, bool)
            and 0 < width <= MAX_WIDTH
        ):
            raise ValueError(f"width must be a number in (0, {MAX_WIDTH}], got {width!r}")
        # ResNet.__init__ hard-codes the ImageNet stem and 64..512 widths; we set up the same
        # attributes its _make_layer reads and build the rest ourselves.
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.groups = 1
        self.base_width = 64  # BasicBlock's required value (not a channel count)
        self.dilation = 1
        widths = [_scaled(c, width) for c in _BASE_WIDTHS]
        self.widths = tuple(widths)
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(
            in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)

        for m in self.modules():  # as torchvision.models.resnet.ResNet.__init__
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)


def resnet18_cifar(
    num_classes: int = 10, width: float = 1.0, *, zero_init_residual: bool = False
) -> CifarResNet:
    """The standard CIFAR ResNet18: 3x3 stem (64*width, stride 1), BN, ReLU, no max pool,
    4 stages of 2 torchvision ``BasicBlock``s with widths 64/128/256/512 * width (rounded,
    at least 1) and strides 1/2/2/2, 1x1 conv + BN downsample, adaptive average pool, fc.

    11,173,962 parameters at ``width=1, num_classes=10``; ~0.56 GMACs per 32x32 image.
    """
    return CifarResNet(
        BasicBlock,
        (2, 2, 2, 2),
        num_classes=num_classes,
        width=width,
        zero_init_residual=zero_init_residual,
    )


MODELS: dict[str, Callable[..., nn.Module]] = {"resnet18_cifar": resnet18_cifar}


def list_models() -> list[str]:
    """Our models, then torchvision's classification models (all constructible by
    :func:`get_model`)."""
    tv = torchvision.models.list_models(module=torchvision.models)
    return sorted(MODELS) + sorted(n for n in tv if n not in MODELS)


def get_model(name: str, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """A model by name: one of :data:`MODELS` (``width`` scales its channels), or any
    torchvision classification model (``"resnet18"``, ``"resnet50"``, ``"vgg11_bn"``,
    ``"mobilenet_v2"``, ...) built with ``weights=None`` -- randomly initialised, never
    downloaded -- and ``num_classes`` outputs.

    Raises ``ValueError`` for an unknown name, or ``width != 1`` on a torchvision model.
    """
    if name in MODELS:
        return MODELS[name](num_classes=num_classes, width=width)
    tv = torchvision.models.list_models(module=torchvision.models)
    if name not in tv:
        raise ValueError(
            f"unknown model {name!r}: use one of {', '.join(sorted(MODELS))} or a torchvision "
            f"classification model name (e.g. resnet18, resnet50, vgg11_bn, mobilenet_v2; "
            f"see tritonbasis.recipes.models.list_models())"
        )
    if width != 1.0:
        raise ValueError(
            f"width={width} only applies to {', '.join(sorted(MODELS))}; torchvision model "
            f"{name!r} is built at its own width"
        )
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
