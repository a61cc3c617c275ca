"""Frozen features: an encoder's representations of un-augmented images, and a disk cache of them so that other
heads, label fractions and seeds reuse one extraction."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from contract.files import atomic_write
from contract.preprocess import preprocess


@torch.no_grad()
def extract_features(encoder: nn.Module, images: Tensor, batch_size: int = 512,
                     device: torch.device | str | None = None, l2_normalize: bool = True) -> Tensor:
    """Representations (N, D), float32, L2-normalised unless asked otherwise, of un-augmented uint8 images
    (N, 3, H, W).

    The encoder runs in eval mode (BatchNorm uses its running statistics) and its mode is restored after.
    """
    param = next(encoder.parameters())
    device = device or param.device
    was_training = encoder.training
    encoder.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start:start + batch_size].to(device, non_blocking=True))
        h = encoder(x.contiguous(memory_format=torch.channels_last)).float()  # fp32, as the service runs it
        chunks.append(F.normalize(h, dim=1) if l2_normalize else h)
    encoder.train(was_training)
    return torch.cat(chunks)


def weights_digest(network: nn.Module) -> str:
    """sha256 of a network's exact weights (its state's bytes, wherever and in whatever layout they are held)."""
    weights = hashlib.sha256()
    for tensor in network.state_dict().values():
        weights.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return weights.hexdigest()


def cached_features(folder: Path, name: str, encoder: nn.Module, images: Tensor, flip_average: bool = False,
                    desc: str = "features") -> Tensor:
    """Raw (un-normalised) representations of images, optionally averaged with their mirror images', read from
    folder when this encoder (its exact weights) has already seen these exact images, else extracted and kept
    there as NAME-KEY.npz."""
    pixels = hashlib.sha256(images.cpu().numpy().tobytes()).hexdigest()
    key = hashlib.sha256(f"{weights_digest(encoder)} {pixels} {flip_average}".encode()).hexdigest()[:24]
    path = folder / f"{name}-{key}.npz"
    device = next(encoder.parameters()).device
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return torch.from_numpy(z["features"]).to(device)
        except (OSError, ValueError, KeyError):  # a damaged cache is recomputed, not trusted
            path.unlink(missing_ok=True)
    chunks = []
    with tqdm(total=len(images), desc=desc, unit="img", leave=False) as bar:
        for start in range(0, len(images), 2048):
            batch = images[start:start + 2048].to(device)
            f = extract_features(encoder, batch, l2_normalize=False)
            if flip_average:
                f = (f + extract_features(encoder, batch.flip(-1), l2_normalize=False)) / 2
            chunks.append(f)
            bar.update(len(batch))
    features = torch.cat(chunks)
    buffer = io.BytesIO()
    np.savez(buffer, features=features.cpu().numpy())
    atomic_write(path, buffer.getvalue())
    return features
