"""SimCLR pretraining on CIFAR-10 (or any image folder), data and augmentations on the training device.

    pip install -e .
    python -m trainer.pretrain                                           # the default recipe, 500 epochs
    python -m trainer.pretrain --data-dir ~/data/cifar10 --out runs/r18 --epochs 100
    python -m trainer.pretrain --out runs/r18 --resume                   # continue after an interruption
    python -m trainer.pretrain --config recipe.toml --batch-size 256     # flags override the file
    torchrun --nproc-per-node 4 -m trainer.pretrain --out runs/r18-ddp   # data-parallel, global batch 512

A run directory holds config.json, metrics.jsonl, starts.jsonl, tensorboard/, checkpoints/epoch_NNNN.pt and
curves.png.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from contract.files import atomic_write
from trainer import checkpoint, distributed, provenance
from trainer.augment import two_views
from trainer.checkpoint import TrainingState
from trainer.config import Config, build_parser, load_toml, make_config
from trainer.data import DeviceLoader, ImageSet, balanced_indices, balanced_subset, load_split
from trainer.device import pick_device
from trainer.errors import UserError
from trainer.features import extract_features
from trainer.knn import knn_predict, topk_accuracy
from trainer.loss import nt_xent
from trainer.models import SimCLR, count_parameters, flops_per_image
from trainer.optim import build_optimizer, build_scheduler, loss_scale
from trainer.plots import read_metrics, save_curves
from trainer.resolution import ResolutionSchedule
from trainer.run_dir import RunDir
from trainer.speed import RunClock, autocast, format_duration, pick_precision, step_seconds


CPU_RECIPE = "trainer/recipes/cpu-reference.toml"
CPU_PATIENCE_S = 24 * 3600  # longer than this on a CPU, and the run says how to make it shorter


def resolve_config(args: dict[str, Any]) -> tuple[Config, bool]:
    """Defaults < --config file < flags; on --resume the run's saved config sits under the file and flags."""
    resume = args.pop("resume", False)
    file_layer = load_toml(args.pop("config")) if "config" in args else {}
    layers = [file_layer, args]
    if resume:
        run = RunDir(args.get("out", file_layer.get("out", Config.out)))
        if not run.config_file.is_file():
            raise UserError(f"cannot resume: {run.config_file} does not exist (run directory {run})")
        layers.insert(0, run.read_json(run.config_file))
    return make_config(*layers), resume


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
    """The pretraining images, and the kNN monitor's bank and queries (None when there is no labelled set).

    With --val-split the queries are training images held out of pretraining, so that a recipe can be chosen
    without looking at the test set; otherwise they are the test split.
    """
    kwargs = dict(image_size=config.image_size, download=config.download, cache_dir=config.cache_dir)
    train = load_split(config.data_dir, "train", **kwargs)
    val = None
    if config.val_split:
        if not train.labelled:
            raise UserError(f"--val-split needs labelled training images; {config.data_dir} has none")
        if config.val_split >= len(train):
            raise UserError(f"--val-split {config.val_split} leaves no training images (the set has {len(train)})")
        held = torch.zeros(len(train), dtype=torch.bool)
        held[balanced_indices(train.labels, config.val_split, config.seed)] = True
        train, val = train.subset(torch.nonzero(~held).squeeze(1)), train.subset(torch.nonzero(held).squeeze(1))
    if config.limit_train:
        train = balanced_subset(train, config.limit_train, config.seed)
    if config.eval_data_dir:
        bank = load_split(config.eval_data_dir, "train", **kwargs)
        if not bank.labelled:
            raise UserError(f"--eval-data-dir {config.eval_data_dir} has no labels: give a labelled image folder")
        if config.limit_train:
            bank = balanced_subset(bank, min(config.limit_train, len(bank)), config.seed)
        queries = val if val is not None else load_split(config.eval_data_dir, "test", **kwargs)
    else:
        bank = train if train.labelled else None
        if val is not None:
            queries = val
        else:
            queries = load_split(config.data_dir, "test", **kwargs) if bank is not None else None
    if bank is not None and config.knn_bank:
        bank = balanced_subset(bank, min(config.knn_bank, len(bank)), config.seed)
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
    device = pick_device(config.device)
    proc = distributed.init(device.type)
    try:
        return _train(config, resume, device if device.type == "cpu" else torch.device("cuda", proc.local_rank),
                      proc)
    finally:
        distributed.shutdown()


def _agreed(value: str, proc: distributed.Process) -> str:
    """Rank 0's value on every rank (a timed choice could differ between processes)."""
    if proc.world_size == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _train(config: Config, resume: bool, device: torch.device, proc: distributed.Process) -> dict[str, Any]:
    run = RunDir(config.out)
    if not resume and run.list_checkpoints():
        raise UserError(f"{run} already holds a run: pass --resume to continue it, or choose another --out")
    resolution = ResolutionSchedule.parse(config.resolution_schedule, config.image_size)
    torch.manual_seed(config.seed)
    torch.backends.cudnn.benchmark = not config.deterministic
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    train_set, bank, queries = load_data(config)
    loader = DeviceLoader(len(train_set), config.batch_size, config.seed, proc.rank, proc.world_size)
    monitor = (KnnMonitor(bank, queries, config.knn_k, config.knn_temperature, device)
               if bank is not None and config.knn_every and proc.is_main else None)
    images = train_set.images.to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    model = SimCLR(config.backbone, config.width, config.proj_hidden_dim, config.proj_dim).to(device)
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model, config.optimizer, config.peak_lr, config.wd)
    steps_per_epoch = len(loader)
    total_steps = max(1, round(config.epochs * steps_per_epoch))
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = build_scheduler(optimizer, total_steps, round(config.warmup_epochs * steps_per_epoch))
    precision, why = pick_precision(config.precision, model, device, config.image_size, config.channels_last)
    precision = _agreed(precision, proc)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    training = TrainingState(model, optimizer, scheduler, scaler)
    start_epoch = 0
    if resume:
        path = run.latest_checkpoint()
        start_epoch = training.load_state_dict(checkpoint.load(path, map_location=device), path)
        if proc.is_main:
            print(f"resuming {run} from {path.name} (epoch {start_epoch} of {epochs})")

    eager: nn.Module = model
    if proc.world_size > 1:
        if device.type == "cuda":  # SimCLR's global BatchNorm; SyncBatchNorm has no CPU kernels
            eager = nn.SyncBatchNorm.convert_sync_batchnorm(eager)
        eager = nn.parallel.DistributedDataParallel(eager, device_ids=[device.index] if device.type == "cuda" else None)
    net = torch.compile(eager, dynamic=False) if config.compile else eager  # one static graph per view size
    local_batch = config.batch_size // proc.world_size
    clock = RunClock({size: step_seconds(model, device, precision, size, channels_last=config.channels_last)
                      * local_batch for size in resolution.steps_per_size(total_steps)})

    writer = None
    done_steps = min(start_epoch * steps_per_epoch, total_steps)
    if proc.is_main:
        run.write_config(config)
        _truncate_metrics(run.metrics, start_epoch)
        provenance.record_start(run, start_epoch, device)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.tensorboard), purge_step=start_epoch + 1 if start_epoch else None)
        plan = ", ".join(f"{n} at {size} px" for size, n in resolution.steps_per_size(total_steps).items())
        print(f"SimCLR {config.backbone} (x{config.width}): {count_parameters(model.encoder) / 1e6:.2f}M encoder + "
              f"{count_parameters(model.projector) / 1e6:.2f}M projector parameters, "
              f"{flops_per_image(model.encoder, config.image_size) / 1e9:.3f} GFLOPs per image (encoder forward); "
              f"{len(train_set)} training images, {steps_per_epoch} steps of {config.batch_size} per epoch on "
              f"{device.type} x{proc.world_size}, {precision} ({why}), "
              f"{'channels-last' if config.channels_last else 'contiguous'}{', compiled' if config.compile else ''}")
        remaining = resolution.steps_per_size(total_steps, done_steps)
        eta = clock.remaining(remaining)
        print(f"plan: {total_steps} steps ({config.epochs:g} epochs: {plan}); {total_steps - done_steps} to go, "
              f"about {format_duration(eta)} here (from a few timed steps)", flush=True)
        if device.type == "cpu" and eta > CPU_PATIENCE_S:
            print(f"note: that is {eta / 86400:.1f} days on this CPU. For a CPU-sized run use --config "
                  f"{CPU_RECIPE} (about 11 hours on 2 cores) or fewer --epochs; Ctrl-C stops, --resume continues.",
                  flush=True)

    if monitor and start_epoch == 0:  # the same network untrained: the floor the training must beat
        _log(run, writer, dict(zip(["epoch", "knn_top1", "knn_top5"], [0, *monitor(model.encoder).values()])))
    aug = torch.Generator(device=device)
    loss_factor = loss_scale(config.optimizer)
    row: dict[str, Any] = {}
    step, seen_sizes = done_steps, set()
    for epoch in range(start_epoch, epochs):
        loader.generator.manual_seed(_seed(config.seed, epoch))
        aug.manual_seed(_seed(config.seed, epoch, proc.rank))
        net.train()
        loss_sum = torch.zeros((), device=device)
        epoch_steps = min(steps_per_epoch, total_steps - step)
        started = tick = time.perf_counter()
        bar = tqdm(loader, total=epoch_steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=False,
                   disable=not proc.is_main, mininterval=1)
        for i, idx in enumerate(bar):
            if i == epoch_steps:
                break
            size = resolution.size_at(step, total_steps)
            v1, v2 = two_views(images[idx.to(device, non_blocking=True)], aug, size, config.blur,
                               config.crop_min_scale, config.grayscale_p)
            views = torch.cat([v1, v2]).contiguous(memory_format=memory_format)
            try:
                with autocast(device, precision):
                    z = net(views)
            except Exception as e:  # torch.compile fails at the first call of each shape, if it fails
                if net is eager or size in seen_sizes:
                    raise
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                tqdm.write(f"torch.compile failed ({type(e).__name__}: {first[:200]}); training eager instead "
                           "(--no-compile skips the attempt)")
                net = eager
                with autocast(device, precision):
                    z = net(views)
            loss = nt_xent(z[:len(v1)], z[len(v1):], config.temperature)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * loss_factor).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach()
            step += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            if size in seen_sizes:  # the first step at a size compiles and warms up: not the pace of the rest
                clock.record(size, now - tick)
            seen_sizes.add(size)
            tick = now
            if i % 20 == 0:
                eta = clock.remaining(resolution.steps_per_size(total_steps, step))
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.4f}", px=size,
                                run_eta=format_duration(eta))
        seconds = time.perf_counter() - started
        mean_loss = loss_sum.item() / epoch_steps
        if not math.isfinite(mean_loss):
            raise UserError(f"the loss diverged to {mean_loss} in epoch {epoch + 1}: lower --lr")
        done = epoch + 1
        row = {"epoch": done, "step": step, "loss": mean_loss,
               "lr": scheduler.get_last_lr()[0], "image_size": size, "precision": precision, "epoch_seconds": seconds,
               "images_per_second": epoch_steps * config.batch_size / seconds,
               "eta_seconds": clock.remaining(resolution.steps_per_size(total_steps, step))}
        if monitor and (done % config.knn_every == 0 or done == epochs):
            row["knn_top1"], row["knn_top5"] = monitor(model.encoder).values()
        if proc.is_main:  # logged before the checkpoint: a resume drops rows past its checkpoint, never misses one
            _log(run, writer, row)
            save_curves(read_metrics(run.metrics), run.curves)  # a long run can be watched
        if done % config.checkpoint_every == 0 or done == epochs:
            if proc.is_main:
                classes = (bank if bank is not None else train_set).classes
                run.save_checkpoint(done, training.state_dict(done, step, config.to_dict(), classes),
                                    keep=config.keep_checkpoints)
    if proc.is_main:
        writer.close()
        print(f"done: {run} ({config.epochs:g} epochs, {total_steps} steps); curves in {run.curves}")
    return row


def _log(run: RunDir, writer, row: dict[str, Any]) -> None:
    with open(run.metrics, "a") as f:
        f.write(json.dumps(row) + "\n")
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)):
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
        atomic_write(path, "".join(kept))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser(__doc__).parse_args(argv))
    # SIGTERM (kill, docker stop, a scheduler) stops a run as Ctrl-C does; a background job started by a
    # non-interactive shell ignores SIGINT altogether, so SIGTERM is how such a run is stopped.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        config, resume = resolve_config(args)
        train(config, resume)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: resume with --out {args.get('out', Config.out)} --resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
