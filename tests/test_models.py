import pytest
import torch
from torch import nn

from contract.networks import projector, resnet_encoder
from trainer.models import SimCLR, count_parameters, flops_per_image


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_encoder_shapes(name, dim):
    net = resnet_encoder(name)
    assert net.feature_dim == dim
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_cifar_stem_keeps_resolution():
    net = resnet_encoder("resnet18")
    assert (net.conv1.kernel_size, net.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(net.maxpool, nn.Identity)
    assert net.layer1(net.relu(net.bn1(net.conv1(torch.randn(1, 3, 32, 32))))).shape[-1] == 32


def test_width_multiplier_widens_every_stage():
    net = resnet_encoder("resnet18", width=2)
    assert net.feature_dim == 1024
    assert net.conv1.out_channels == 128 and net.layer1[0].conv1.in_channels == 128
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 1024)
    assert resnet_encoder("resnet50", width=2).feature_dim == 4096


def test_unknown_backbone():
    with pytest.raises(ValueError, match="resnet18"):
        resnet_encoder("vgg11")


def test_projector_is_seed_000s():
    head = projector(512, 512, 128)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].bias is None and head[3].out_features == 128


def test_simclr_forward_and_sizes():
    model = SimCLR("resnet18", proj_hidden_dim=256, proj_dim=64)
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 64)
    assert model.projector[0].out_features == 256
    assert 11.0e6 < count_parameters(model.encoder) < 11.3e6  # ResNet-18 less its 1000-class fc


def test_flops_per_image_is_resnet18_cifar():
    flops = flops_per_image(resnet_encoder("resnet18"))
    assert 1.0e9 < flops < 1.2e9  # 0.56 GMACs at 32x32, as published for CIFAR ResNet-18
