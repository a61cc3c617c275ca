"""Classifiers on a pretrained encoder, trained by one loop (fit): a head on frozen features (train_head) or
the whole network end to end (finetune)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from contract.networks import classifier_head
from contract.preprocess import normalize
from trainer.augment import random_crop_flip
from trainer.data import ImageSet
from trainer.features import extract_features


def fit(net: nn.Module, optimizer: torch.optim.Optimizer, n: int, loss_of: Callable[[Tensor], Tensor], *,
        epochs: int, batch_size: int, schedule_step: str, generator: torch.Generator,
        validate: Callable[[], float] | None = None, desc: str = "classifier") -> list[dict]:
    """Train net for epochs of shuffled batches of n examples, loss_of(batch indices) per step, under a cosine
    schedule stepped per "step" or per "epoch". Returns one history row per epoch; with validate (accuracy,
    called with net in eval mode), net ends with the weights of its best epoch."""
    scheduler = cosine_schedule(optimizer, epochs * math.ceil(n / batch_size) if schedule_step == "step" else epochs)
    history, best_state, best_acc = [], None, -1.0
    for epoch in tqdm(range(1, epochs + 1), desc=desc, unit="epoch", leave=False, mininterval=1):
        net.train()
        order = torch.randperm(n, generator=generator, device=generator.device)
        loss_sum, lrs = torch.zeros((), device=generator.device), []
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = loss_of(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if schedule_step == "step":
                scheduler.step()
            loss_sum += loss.detach() * len(idx)
        if schedule_step == "epoch":
            scheduler.step()
        row = {"epoch": epoch, "loss": loss_sum.item() / n, "lr_first": lrs[0], "lr_last": lrs[-1]}
        if validate is not None:
            net.eval()
            with torch.no_grad():
                row["val_top1"] = validate()
            if row["val_top1"] > best_acc:
                best_acc, best_state = row["val_top1"], copy.deepcopy(net.state_dict())
        history.append(row)
    if best_state is not None:
        net.load_state_dict(best_state)
    return history


def cosine_schedule(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay from the optimizer's lr to 0 over `total` scheduler steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))


def accuracy(scores: Tensor, labels: Tensor) -> float:
    return (scores.argmax(dim=1) == labels).float().mean().item()


def train_head(x: Tensor, y: Tensor, num_classes: int, *, epochs: int, lr: float, weight_decay: float,
               batch_size: int, schedule_step: str, seed: int, hidden_dim: int | None = None, dropout: float = 0.8,
               val: tuple[Tensor, Tensor] | None = None) -> tuple[nn.Sequential, list[dict]]:
    """A classifier trained on features x (standardised, with SGD and a cosine schedule), returned folded to
    take raw features, with one history row per epoch. With val, the epoch of best validation accuracy is kept."""
    torch.manual_seed(seed)
    g = torch.Generator(device=x.device).manual_seed(seed)
    mean, std = x.mean(dim=0), (x.var(dim=0) + 1e-5).sqrt()  # as BatchNorm: nearly dead channels stay small
    xs = (x - mean) / std
    head = classifier_head(x.shape[1], num_classes, [hidden_dim] if hidden_dim else [], dropout).to(x.device)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    validate = (lambda: accuracy(head((val[0] - mean) / std), val[1])) if val is not None else None
    history = fit(head, optimizer, len(x), lambda idx: F.cross_entropy(head(xs[idx]), y[idx]), epochs=epochs,
                  batch_size=batch_size, schedule_step=schedule_step, generator=g, validate=validate)
    return fold_standardization(head.eval(), mean, std), history


@torch.no_grad()
def fold_standardization(head: nn.Sequential, mean: Tensor, std: Tensor) -> nn.Sequential:
    """A copy of head that takes raw features: folded(x) == head((x - mean) / std).

    Heads train faster on standardised features; folding the affine map into the first Linear lets the
    saved head (and the service) read the encoder's raw representation with no extra statistics.
    """
    folded = copy.deepcopy(head)
    first = folded[0]
    first.weight.div_(std)
    first.bias.sub_(first.weight @ mean)
    return folded


def finetune(encoder: nn.Module, data: ImageSet, train_idx: Tensor, val_idx: Tensor, image_size: int, *,
             epochs: int, lr: float, weight_decay: float, batch_size: int, schedule_step: str,
             seed: int) -> tuple[nn.Sequential, list[dict]]:
    """RDR2Blackwater/SimCLR-v1's protocol: encoder and a linear head trained together with NAdam on cropped,
    flipped views. Returns nn.Sequential(encoder, head) in eval mode; with a validation split, its best epoch's
    weights."""
    device = next(encoder.parameters()).device
    torch.manual_seed(seed)
    g = torch.Generator(device=device).manual_seed(seed)
    head = nn.Linear(encoder.feature_dim, len(data.classes)).to(device)
    net = nn.Sequential(encoder, head)
    optimizer = torch.optim.NAdam(net.parameters(), lr=lr, weight_decay=weight_decay)
    images, labels = data.images.to(device), data.labels.to(device)
    train_idx, val_idx = train_idx.to(device), val_idx.to(device)

    def loss_of(idx: Tensor) -> Tensor:
        chosen = train_idx[idx]
        views = normalize(random_crop_flip(images[chosen], g, image_size, scale=(0.5, 1.0)))
        return F.cross_entropy(net(views), labels[chosen])

    def validate() -> float:
        return accuracy(head(extract_features(encoder, images[val_idx], l2_normalize=False)), labels[val_idx])

    history = fit(net, optimizer, len(train_idx), loss_of, epochs=epochs, batch_size=batch_size,
                  schedule_step=schedule_step, generator=g, validate=validate if len(val_idx) else None,
                  desc="fine-tuning")
    return net.eval(), history
