"""SimCLR pretraining on CIFAR-10 (or any image folder), data and augmentations on the training device.

    pip install -e .
    python -m trainer.pretrain                                           # the default recipe, 500 epochs
    python -m trainer.pretrain --data-dir ~/data/cifar10 --out runs/r18 --epochs 100
    python -m trainer.pretrain --out runs/r18 --resume                   # continue after an interruption
    python -m trainer.pretrain --config recipe.toml --batch-size 256     # flags override the file
    torchrun --nproc-per-node 4 -m trainer.pretrain --out runs/r18-ddp   # data-parallel, global batch 512

A run directory holds config.json, metrics.jsonl, tensorboard/, checkpoints/epoch_NNNN.pt and curves.png.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from trainer import checkpoint, distributed
from trainer.augment import two_views
from trainer.config import Config, build_parser, load_toml, make_config
from trainer.data import DeviceLoader, ImageSet, balanced_subset, load_split
from trainer.errors import UserError
from trainer.knn import extract_features, knn_predict, topk_accuracy
from trainer.loss import nt_xent
from trainer.models import SimCLR, count_parameters, flops_per_image
from trainer.optim import build_optimizer, build_scheduler
from trainer.plots import read_metrics, save_curves


def resolve_config(args: dict[str, Any]) -> tuple[Config, bool]:
    """Defaults < --config file < flags; on --resume the run's saved config sits under the file and flags."""
    resume = args.pop("resume", False)
    file_layer = load_toml(args.pop("config")) if "config" in args else {}
    layers = [file_layer, args]
    if resume:
        run_dir = Path(args.get("out", file_layer.get("out", Config.out)))
        saved = run_dir / "config.json"
        if not saved.is_file():
            raise UserError(f"cannot resume: {saved} does not exist (run directory {run_dir})")
        layers.insert(0, json.loads(saved.read_text()))
    return make_config(*layers), resume


def pick_device(config: Config) -> torch.device:
    name = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA GPU")
    return torch.device(name)


class KnnMonitor:
    """kNN accuracy of labelled test images against un-augmented labelled training images."""

    def __init__(self, bank: ImageSet, queries: ImageSet, k: int, temperature: float, device: torch.device):
        self.bank, self.queries = bank.to(device), queries.to(device)
        self.k, self.temperature = k, temperature

    def __call__(self, encoder: nn.Module) -> dict[int, float]:
        bank = extract_features(encoder, self.bank.images)
        queries = extract_features(encoder, self.queries.images)
        scores = knn_predict(queries, bank, self.bank.labels, len(self.bank.classes), self.k, self.temperature)
        return topk_accuracy(scores, self.queries.labels, (1, 5))


def load_data(config: Config) -> tuple[ImageSet, ImageSet | None, ImageSet | None]:
    """The pretraining images, and the kNN monitor's bank and queries (None when there is no labelled set)."""
    kwargs = dict(image_size=config.image_size, download=config.download, cache_dir=config.cache_dir)
    train = load_split(config.data_dir, "train", **kwargs)
    if config.limit_train:
        train = balanced_subset(train, config.limit_train, config.seed)
    if config.eval_data_dir:
        bank = load_split(config.eval_data_dir, "train", **kwargs)
        if not bank.labelled:
            raise UserError(f"--eval-data-dir {config.eval_data_dir} has no labels: give a labelled image folder")
        if config.limit_train:
            bank = balanced_subset(bank, min(config.limit_train, len(bank)), config.seed)
        queries = load_split(config.eval_data_dir, "test", **kwargs)
    else:
        bank = train if train.labelled else None
        queries = load_split(config.data_dir, "test", **kwargs) if bank is not None else None
    if queries is not None and config.limit_eval:
        queries = balanced_subset(queries, min(config.limit_eval, len(queries)), config.seed)
    if bank is None or queries is None:
        return train, None, None
    return train, bank, queries


def _seed(*parts: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, rank): resumed epochs redraw the same batches."""
    return hash(parts) & 0x7FFF_FFFF_FFFF_FFFF


def train(config: Config, resume: bool = False) -> dict[str, Any]:
    """Pretrain per config; returns the last epoch's metrics."""
    device = pick_device(config)
    proc = distributed.init(device.type)
    try:
        return _train(config, resume, device if device.type == "cpu" else torch.device("cuda", proc.local_rank),
                      proc)
    finally:
        distributed.shutdown()


def _train(config: Config, resume: bool, device: torch.device, proc: distributed.Process) -> dict[str, Any]:
    run_dir = Path(config.out)
    if not resume and checkpoint.list_checkpoints(run_dir):
        raise UserError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
    precision = config.precision or ("bf16" if device.type == "cuda" else "fp32")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    torch.manual_seed(config.seed)
    torch.backends.cudnn.benchmark = not config.deterministic
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    train_set, bank, queries = load_data(config)
    loader = DeviceLoader(len(train_set), config.batch_size, config.seed, proc.rank, proc.world_size)
    monitor = (KnnMonitor(bank, queries, config.knn_k, config.knn_temperature, device)
               if bank is not None and config.knn_every and proc.is_main else None)
    images = train_set.images.to(device)
    channels_last = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    model = SimCLR(config.backbone, config.width, config.proj_hidden_dim, config.proj_dim).to(device)
    model = model.to(memory_format=channels_last)
    optimizer = build_optimizer(model, config.optimizer, config.peak_lr, config.wd)
    steps_per_epoch = len(loader)
    scheduler = build_scheduler(optimizer, config.epochs * steps_per_epoch,
                                round(config.warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    start_epoch = 0
    if resume:
        path = checkpoint.latest(run_dir)
        state = checkpoint.load(path, map_location=device)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"checkpoint {path} does not fit this configuration "
                            f"(backbone {config.backbone}, width {config.width}): {str(e).splitlines()[0]}") from None
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"].cpu())
        start_epoch = state["epoch"]
        if proc.is_main:
            print(f"resuming {run_dir} from {path.name} (epoch {start_epoch} of {config.epochs})")

    net: nn.Module = model
    if proc.world_size > 1:
        if device.type == "cuda":  # SimCLR's global BatchNorm; SyncBatchNorm has no CPU kernels
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if precision != "fp32" else nullcontext())

    writer = None
    if proc.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write(run_dir / "config.json", lambda f: f.write(json.dumps(config.to_dict(), indent=2).encode()))
        _truncate_metrics(run_dir / "metrics.jsonl", start_epoch)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch + 1 if start_epoch else None)
        print(f"SimCLR {config.backbone} (x{config.width}): {count_parameters(model.encoder) / 1e6:.2f}M encoder + "
              f"{count_parameters(model.projector) / 1e6:.2f}M projector parameters, "
              f"{flops_per_image(model.encoder, config.image_size) / 1e9:.3f} GFLOPs per image (encoder forward); "
              f"{len(train_set)} training images, {steps_per_epoch} steps of {config.batch_size} per epoch on "
              f"{device.type} x{proc.world_size}, {precision}")

    if monitor and start_epoch == 0:  # the same network untrained: the floor the training must beat
        _log(run_dir, writer, dict(zip(["epoch", "knn_top1", "knn_top5"], [0, *monitor(model.encoder).values()])))
    aug = torch.Generator(device=device)
    row: dict[str, Any] = {}
    for epoch in range(start_epoch, config.epochs):
        loader.generator.manual_seed(_seed(config.seed, epoch))
        aug.manual_seed(_seed(config.seed, epoch, proc.rank))
        net.train()
        loss_sum = torch.zeros((), device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", leave=False,
                   disable=not proc.is_main, mininterval=1)
        for i, idx in enumerate(bar):
            v1, v2 = two_views(images[idx.to(device, non_blocking=True)], aug, config.image_size, config.blur)
            views = torch.cat([v1, v2]).contiguous(memory_format=channels_last)
            with autocast:
                z = net(views)
            loss = nt_xent(z[:len(v1)], z[len(v1):], config.temperature)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach()
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.4f}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        mean_loss = loss_sum.item() / steps_per_epoch
        if not math.isfinite(mean_loss):
            raise UserError(f"the loss diverged to {mean_loss} in epoch {epoch + 1}: lower --lr")
        done = epoch + 1
        row = {"epoch": done, "step": done * steps_per_epoch, "loss": mean_loss,
               "lr": scheduler.get_last_lr()[0], "epoch_seconds": seconds,
               "images_per_second": steps_per_epoch * config.batch_size / seconds}
        if monitor and (done % config.knn_every == 0 or done == config.epochs):
            row["knn_top1"], row["knn_top5"] = monitor(model.encoder).values()
        if proc.is_main:  # logged before the checkpoint: a resume drops rows past its checkpoint, never misses one
            _log(run_dir, writer, row)
        if done % config.checkpoint_every == 0 or done == config.epochs:
            if proc.is_main:
                checkpoint.save(run_dir, done, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": done,
                    "step": done * steps_per_epoch, "rng": torch.get_rng_state(), "config": config.to_dict(),
                    "classes": (bank if bank is not None else train_set).classes}, keep=config.keep_checkpoints)
    if proc.is_main:
        writer.close()
        save_curves(read_metrics(run_dir / "metrics.jsonl"), run_dir / "curves.png")
        print(f"done: {run_dir} ({config.epochs} epochs); curves in {run_dir / 'curves.png'}")
    return row


def _log(run_dir: Path, writer, row: dict[str, Any]) -> None:
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    for key, value in row.items():
        if key != "epoch":
            writer.add_scalar(key, value, row["epoch"])
    writer.flush()
    train = (f"  loss {row['loss']:.4f}  lr {row['lr']:.4f}  {row['images_per_second']:.0f} img/s  "
             f"{row['epoch_seconds']:.1f} s" if "loss" in row else "  (untrained)")
    knn = f"  kNN top-1 {100 * row['knn_top1']:.2f}% top-5 {100 * row['knn_top5']:.2f}%" if "knn_top1" in row else ""
    tqdm.write(f"epoch {row['epoch']:4d}{train}{knn}")


def _truncate_metrics(path: Path, epochs_kept: int) -> None:
    """Drop rows of epochs after the checkpoint being resumed (all of them on a fresh start): they will be
    trained and logged again."""
    if path.exists():
        kept = [json.dumps(r) + "\n" for r in read_metrics(path) if r["epoch"] <= epochs_kept] if epochs_kept else []
        checkpoint.atomic_write(path, lambda f: f.write("".join(kept).encode()))


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser(__doc__).parse_args(argv))
    try:
        config, resume = resolve_config(args)
        train(config, resume)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: resume with --out {args.get('out', Config.out)} --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
