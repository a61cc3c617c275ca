"""The networks a bundle holds: a torchvision ResNet with the CIFAR stem (the encoder), SimCLR's projector and
the classifier head. The trainer trains them and the service rebuilds them from a manifest, so a state_dict
saved by one fits the other by construction."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

BACKBONES = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class _WideResNet(ResNet):
    """torchvision's ResNet with every stage's channels multiplied by `width` (SimCLR's ResNet-50 (2x))."""

    width = 1  # a class attribute: it must be set before ResNet.__init__ builds the stages

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # the first stage reads the stem's (widened) output
            self.inplanes = 64 * self.width
        return super()._make_layer(block, planes * self.width, blocks, stride, dilate)


def resnet_encoder(name: str = "resnet18", width: int = 1) -> nn.Module:
    """A ResNet whose forward maps (N, 3, H, W) to its pooled representation (N, feature_dim).

    The CIFAR stem (3x3 conv, stride 1, no max-pool) keeps 32x32 inputs from shrinking to 8x8 before the
    first stage; `feature_dim` is set on the module (512 x width for resnet18/34, 2048 x width for resnet50).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    block, layers = BACKBONES[name]
    cls = _WideResNet if width == 1 else type(f"ResNetx{width}", (_WideResNet,), {"width": width})
    net = cls(block, layers)
    stem = 64 * width
    net.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
    net.bn1 = nn.BatchNorm2d(stem)
    net.maxpool = nn.Identity()
    net.feature_dim = 512 * block.expansion * width
    net.fc = nn.Identity()
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's init
    return net


def projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """SimCLR's projection head: Linear(no bias) - BN - ReLU - Linear."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


def classifier_head(in_dim: int, num_classes: int, hidden_dims: Sequence[int] = (),
                    dropout: float = 0.8) -> nn.Sequential:
    """A linear classifier, or masterzero-hw/ssl-simclr's Linear - ReLU - Dropout - Linear with one hidden
    layer. Its state_dict keys (0.*, and 3.* with a hidden layer) are the bundle's classifier.safetensors."""
    if not hidden_dims:
        return nn.Sequential(nn.Linear(in_dim, num_classes))
    if len(hidden_dims) != 1:
        raise ValueError(f"classifier hidden_dims {list(hidden_dims)}: at most one hidden layer is supported")
    hidden = hidden_dims[0]
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))
