"""torch.hub's entry points: the trained encoder in one line of Python, for features in your own code rather than
over HTTP, as DINO, SwAV and Barlow Twins publish theirs.

    import torch
    encoder = torch.hub.load("PATH/TO/simclr-cifar", "simclr_resnet18", source="local")  # a clone
    encoder = torch.hub.load("OWNER/simclr-cifar", "simclr_resnet18")                     # from GitHub
    features = encoder(images)   # uint8 RGB (N, 3, 32, 32), 0-255 -> representations (N, 512)

The module normalises its input itself, with the bundle's mean and std, as the service and the bundle's ONNX
graph do: send the pixels (torchvision.io.decode_image, or transforms.PILToTensor), not ToTensor's floats. Its
`manifest` is the bundle's (classes, input size, evaluation, training). Only names without a leading underscore
that are callable are entry points (torch.hub.list), so this file imports modules, not functions.
"""

import pathlib

import torch
from torch import nn

import contract.bundle
import contract.preprocess

# What loading a bundle imports (contract/): torch.hub checks that each is installed before it loads.
dependencies = ["torch", "torchvision", "numpy", "PIL", "safetensors", "pydantic"]

_REFERENCE = pathlib.Path(__file__).resolve().parent / "models" / "reference"


def simclr_resnet18(classifier: bool = False) -> nn.Module:
    """The reference model (models/reference, its card there): ResNet-18 with the CIFAR stem, pretrained with
    SimCLR on CIFAR-10. uint8 RGB images (N, 3, 32, 32) -> the 512-d representation (the linear evaluation's
    features; L2-normalise them for cosine similarity, as /embed does); classifier=True: the linear head's
    class logits (N, 10) instead, in manifest.classes' order (softmax(logits / T), T the manifest's
    architecture.classifier.temperature, gives /classify's calibrated probabilities)."""
    return bundle(str(_REFERENCE), classifier)


def bundle(path: str, classifier: bool = False) -> nn.Module:
    """Any bundle that python -m trainer.export wrote (its folder), as simclr_resnet18 loads the reference; its
    checksums verified and its networks rebuilt from safetensors (no pickle is loaded)."""
    loaded = contract.bundle.load_bundle(path)
    if classifier and loaded.classifier is None:
        raise ValueError(f"the bundle {path} has no classifier: its run was not evaluated (python -m "
                         f"trainer.linear_eval, then export again)")
    return _Pretrained(loaded, classifier)


class _Pretrained(nn.Module):
    """A bundle's preprocessing and encoder, and its linear head when asked for; in eval mode, no gradients."""

    def __init__(self, loaded: contract.bundle.Bundle, classifier: bool):
        super().__init__()
        self.manifest = loaded.manifest
        self.preprocess = contract.preprocess.Preprocess.of(loaded.manifest.input)
        self.encoder = loaded.encoder
        self.classifier = loaded.classifier if classifier else None
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise TypeError(f"this model takes uint8 RGB images (N, 3, H, W), 0-255, and normalises them itself; "
                            f"got {images.dtype} {tuple(images.shape)} (for ToTensor's floats in [0, 1]: "
                            f"(x * 255).round().to(torch.uint8))")
        features = self.encoder(self.preprocess(images))
        return self.classifier(features) if self.classifier is not None else features
