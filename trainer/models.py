"""SimCLR for training: the encoder and projector of contract.networks composed, and what they cost."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contract.networks import projector, resnet_encoder


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
