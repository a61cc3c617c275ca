"""SimCLR's networks: a torchvision ResNet with the CIFAR stem as encoder, and an MLP projector."""

from __future__ import annotations

import torch
from torch import Tensor, nn
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


class SimCLR(nn.Module):
    """encoder -> representation h (used downstream) -> projector -> z (fed to NT-Xent)."""

    def __init__(self, backbone: str = "resnet18", width: int = 1, proj_hidden_dim: int | None = None,
                 proj_dim: int = 128):
        super().__init__()
        self.encoder = resnet_encoder(backbone, width)
        self.feature_dim: int = self.encoder.feature_dim
        self.projector = projector(self.feature_dim, proj_hidden_dim or self.feature_dim, proj_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.encoder(x))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def flops_per_image(module: nn.Module, image_size: int = 32) -> int:
    """Forward FLOPs for one image, by torch's own FLOP counter (a multiply-add counts as 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    param = next(module.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype))
    module.train(was_training)
    return counter.get_total_flops()
