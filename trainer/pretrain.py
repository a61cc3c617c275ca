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

import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from contract.device import pick_device
from contract.files import atomic_write
from trainer import checkpoint, distributed, provenance
from trainer.augment import two_views
from trainer.budget import PLAN_AFTER, WARM_STEPS, TimeBudget
from trainer.checkpoint import TrainingState
from trainer.config import Config, build_parser, load_toml, make_config
from trainer.data import DeviceLoader, ImageSet, balanced_indices, balanced_subset, load_split
from trainer.errors import UserError
from trainer.features import extract_features
from trainer.knn import knn_predict, topk_accuracy
from trainer.loss import nt_xent
from trainer.models import SimCLR, count_parameters, flops_per_image
from trainer.optim import build_optimizer, build_scheduler, follow_config, loss_scale, replan
from trainer.plots import read_metrics, save_curves
from trainer.resolution import ResolutionSchedule
from trainer.run_dir import RunDir
from trainer.speed import RunClock, autocast, format_duration, pick_precision, step_seconds


CPU_RECIPE = "trainer/recipes/cpu-reference.toml"
CPU_PATIENCE_S = 24 * 3600  # longer than this on a CPU, and the run says how to make it shorter


def resolve_config(args: dict[str, Any]) -> tuple[Config, bool]:
    """Defaults < --config file < flags; on --resume the run's saved config sits under the file and flags.
    A run's length is one choice: --epochs given as a flag sets aside a --time-budget from the layers below."""
    resume = args.pop("resume", False)
    file_layer = load_toml(args.pop("config")) if "config" in args else {}
    layers = [file_layer, args]
    if resume:
        run = RunDir(args.get("out", file_layer.get("out", Config.out)))
        if not run.config_file.is_file():
            raise UserError(f"cannot resume: {run.config_file} does not exist (run directory {run})")
        layers.insert(0, run.read_json(run.config_file))
    if "epochs" in args and "time_budget" not in args:  # --epochs is the run's length, over a budget in a file
        layers = [{k: v for k, v in layer.items() if k != "time_budget"} for layer in layers]
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


SYNC_EVERY = 20  # steps between the moments the host waits for the device: progress, pace, agreed stops
CURVES_EVERY_S = 60.0  # curves.png is redrawn at most this often (and at the end): it costs a GPU epoch's time


def train(config: Config, resume: bool = False, stop: StopRequest | None = None) -> dict[str, Any]:
    """Pretrain per config; returns the last epoch's metrics. stop: the signal handler main() installed."""
    device = pick_device(config.device, UserError)
    proc = distributed.init(device.type)
    try:
        device = device if device.type == "cpu" else torch.device("cuda", proc.local_rank)
        return Pretraining(config, resume, device, proc, stop or StopRequest()).run()
    finally:
        distributed.shutdown()


def _agreed(value: Any, proc: distributed.Process) -> Any:
    """Rank 0's value on every rank (a timed choice could differ between processes)."""
    if proc.world_size == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


class StopRequest:
    """SIGTERM and Ctrl-C. During training the first asks the loop to save a checkpoint at the end of the step
    in progress and stop; a second one, or one before training starts, stops at once."""

    def __init__(self) -> None:
        self.requested, self.in_loop = False, False

    def __call__(self, signum: int, frame: object) -> None:
        if self.in_loop and not self.requested:
            self.requested = True
            return
        raise KeyboardInterrupt


class CompileFallback:
    """The training network, compiled where torch.compile works. Compilation happens at the first forward and
    the first backward of each view size; where either fails, the step is redone eager and the run stays eager,
    saying so once."""

    def __init__(self, eager: nn.Module, compile: bool):
        self.eager = eager
        self.net = torch.compile(eager, dynamic=False) if compile else eager  # one static graph per view size
        self.proven: set[int] = set()  # view sizes whose compiled forward and backward have run

    def __call__(self, size: int, step: Callable[[nn.Module], Tensor]) -> Tensor:
        """step(net): a forward and backward pass through net, gradients zeroed first; returns its loss."""
        if self.net is self.eager or size in self.proven:
            loss = step(self.net)
        else:
            try:
                loss = step(self.net)
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                tqdm.write(f"torch.compile failed ({type(e).__name__}: {first[:200]}); training eager instead "
                           "(--no-compile skips the attempt)")
                self.net = self.eager
                loss = step(self.net)
        self.proven.add(size)
        return loss


class Pretraining:
    """One start (or resume) of a pretraining run: set up in __init__, trained by run().

    Progress is `step`, the optimisation steps done; epochs follow from it. A checkpoint can fall inside an
    epoch (a stop or the budget's end): it then carries the epoch's random state and running loss, so that a
    resume from it ends with the weights an unbroken run would have.
    """

    def __init__(self, config: Config, resume: bool, device: torch.device, proc: distributed.Process,
                 stop: StopRequest):
        self.config, self.device, self.proc, self.stop = config, device, proc, stop
        self.run_dir = run = RunDir(config.out)
        if not resume and run.list_checkpoints():
            raise UserError(f"{run} already holds a run: pass --resume to continue it, or choose another --out")
        self.resolution = ResolutionSchedule.parse(config.resolution_schedule, config.image_size)
        torch.manual_seed(config.seed)
        torch.backends.cudnn.benchmark = not config.deterministic
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        self.train_set, bank, queries = load_data(config)
        self.classes = (bank if bank is not None else self.train_set).classes
        self.loader = DeviceLoader(len(self.train_set), config.batch_size, config.seed, proc.rank, proc.world_size,
                                   device)
        self.monitor = (KnnMonitor(bank, queries, config.knn_k, config.knn_temperature, device)
                        if bank is not None and config.knn_every and proc.is_main else None)
        self.images = self.train_set.images.to(device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

        self.model = SimCLR(config.backbone, config.width, config.proj_hidden_dim, config.proj_dim).to(device)
        self.model = self.model.to(memory_format=self.memory_format)
        self.optimizer = build_optimizer(self.model, config.optimizer, config.peak_lr, config.wd)
        self.steps_per_epoch = len(self.loader)
        self.budget = TimeBudget(config.time_budget) if config.time_budget else None
        # A budgeted run's length is planned once its pace is known; until then the schedule is warming up.
        self.total_steps = 2 ** 40 if self.budget else max(1, round(config.epochs * self.steps_per_epoch))
        self.scheduler = build_scheduler(self.optimizer, self.total_steps,
                                         round(config.warmup_epochs * self.steps_per_epoch))
        precision, self.precision_why = pick_precision(config.precision, self.model, device, config.image_size,
                                                       config.channels_last)
        self.precision = _agreed(precision, proc)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.training = TrainingState(self.model, self.optimizer, self.scheduler, self.scaler)
        self.aug = torch.Generator(device=device)
        self.step, self.partial, self.stopped = 0, None, None
        if resume:
            path = run.latest_checkpoint()
            state = checkpoint.load(path, map_location=device)
            saved = state.get("config", {}).get("optimizer", config.optimizer)
            if saved != config.optimizer:  # its state (momentum, moments) is another optimizer's
                raise UserError(f"{path} was trained with --optimizer {saved}: a resumed run keeps it (not "
                                f"{config.optimizer})")
            planned = [{k: group[k] for k in ("initial_lr", "weight_decay")} for group in self.optimizer.param_groups]
            self.training.load_state_dict(state, path)
            follow_config(self.scheduler, planned, self.total_steps)
            self.step, self.partial = state["step"], state.get("partial")
            if proc.is_main:
                print(f"resuming {run} from {path.name} (step {self.step} of "
                      f"{'a --time-budget plan' if self.budget else self.total_steps})")

        eager: nn.Module = self.model
        if proc.world_size > 1:
            if device.type == "cuda":  # SimCLR's global BatchNorm; SyncBatchNorm has no CPU kernels
                eager = nn.SyncBatchNorm.convert_sync_batchnorm(eager)
            eager = nn.parallel.DistributedDataParallel(eager, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
        self.network = CompileFallback(eager, config.compile)
        self.loss_factor = loss_scale(config.optimizer)
        self.clock = RunClock(self._estimates())
        self.writer = None
        self.curves_drawn = 0.0
        if proc.is_main:
            run.write_config(config)
            _truncate_metrics(run.metrics, self.step // self.steps_per_epoch if self.step else None)
            provenance.record_start(run, self.step // self.steps_per_epoch, device, resumed=resume)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run.tensorboard), purge_step=self.step // self.steps_per_epoch + 1
                                        if self.step else None)
            self._announce()

    def _estimates(self) -> dict[int, float]:
        """Seconds a step per view size, before any is measured. A budgeted run measures its own steps
        instead (trainer.budget) and costs sizes by their pixels; otherwise a few eager steps are timed here,
        for the ETA and the advice a CPU run too long for its machine gets."""
        sizes = self.resolution.steps_per_size(self.total_steps)
        if self.budget:
            return {size: 1e-3 * (size / self.config.image_size) ** 2 for size in sizes}
        local_batch = self.config.batch_size // self.proc.world_size
        return {size: step_seconds(self.model, self.device, self.precision, size,
                                   channels_last=self.config.channels_last) * local_batch for size in sizes}

    def _announce(self) -> None:
        config, model = self.config, self.model
        print(f"SimCLR {config.backbone} (x{config.width}): {count_parameters(model.encoder) / 1e6:.2f}M encoder + "
              f"{count_parameters(model.projector) / 1e6:.2f}M projector parameters, "
              f"{flops_per_image(model.encoder, config.image_size) / 1e9:.3f} GFLOPs per image (encoder forward); "
              f"{len(self.train_set)} training images, {self.steps_per_epoch} steps of {config.batch_size} per "
              f"epoch on {self.device.type} x{self.proc.world_size}, {self.precision} ({self.precision_why}), "
              f"{'channels-last' if config.channels_last else 'contiguous'}{', compiled' if config.compile else ''}")
        if self.budget:
            print(f"plan: as many steps as fit {config.time_budget}, planned after {WARM_STEPS + PLAN_AFTER} timed "
                  "steps and again half way", flush=True)
            return
        total = self.total_steps
        plan = ", ".join(f"{n} at {size} px" for size, n in self.resolution.steps_per_size(total).items())
        eta = self.clock.remaining(self.resolution.steps_per_size(total, self.step))
        print(f"plan: {total} steps ({config.epochs:g} epochs: {plan}); {total - self.step} to go, "
              f"about {format_duration(eta)} here (from a few timed steps)", flush=True)
        if self.device.type == "cpu" and eta > CPU_PATIENCE_S:
            print(f"note: that is {eta / 86400:.1f} days on this CPU. For a CPU-sized run use --config "
                  f"{CPU_RECIPE} (12 hours of steps on any CPU), --time-budget or fewer --epochs; Ctrl-C stops, "
                  "--resume continues.", flush=True)

    def run(self) -> dict[str, Any]:
        if self.monitor and self.step == 0:  # the same network untrained: the floor the training must beat
            self._log(dict(zip(["epoch", "knn_top1", "knn_top5"], [0, *self.monitor(self.model.encoder).values()])))
        row: dict[str, Any] = {}
        first_step = self.step
        self.stop.in_loop = True
        if self.budget:
            self.budget.start()
        try:
            while self.step < self.total_steps:
                row = self._epoch(self.step // self.steps_per_epoch, first_step)
                if self.stopped == "signal":
                    raise KeyboardInterrupt
                if self.stopped == "budget":
                    if self.proc.is_main:
                        print("the --time-budget ran out " + (
                            f"{self.total_steps - self.step} steps before its plan's end (the pace fell after the "
                            "last plan)" if self.budget.plans else "before the run had timed its steps to plan")
                            + f"; the checkpoint is at step {self.step}")
                    break
        finally:
            self.stop.in_loop = False
            if self.writer:
                self.writer.close()
        if self.proc.is_main:
            save_curves(read_metrics(self.run_dir.metrics), self.run_dir.curves)
            print(f"done: {self.run_dir} ({self.step / self.steps_per_epoch:g} epochs, {self.step} steps); curves in "
                  f"{self.run_dir.curves}")
        return row

    def _epoch(self, epoch: int, first_step: int) -> dict[str, Any]:
        """Train epoch `epoch` (0-based) from where the run stands to its end, the plan's end or a stop; log its
        row and save a checkpoint where due. Returns the row ({} for an epoch stopped part way)."""
        config, spe = self.config, self.steps_per_epoch
        self.loader.generator.manual_seed(_seed(config.seed, epoch))
        loss_sum = torch.zeros((), device=self.device)
        seconds_before = 0.0
        if self.partial:  # resumed inside this epoch: its random stream and running loss as they were
            self.aug.set_state(self.partial["aug_rng"].cpu())  # map_location moved it to the device
            loss_sum += self.partial["loss_sum"]
            seconds_before, self.partial = self.partial["seconds"], None
        else:
            self.aug.manual_seed(_seed(config.seed, epoch, self.proc.rank))
        self.network.net.train()
        offset = self.step - epoch * spe
        started = window = time.perf_counter()
        window_steps, size = 0, self.resolution.size_at(self.step, self.total_steps)
        of = "?" if self.budget and not self.budget.plans else math.ceil(self.total_steps / spe)
        quiet = {} if self.proc.is_main else {"disable": True}  # on rank 0, TQDM_DISABLE=1 turns it off too
        bar = tqdm(total=min(spe, self.total_steps - epoch * spe), initial=offset, unit="step", leave=False,
                   desc=f"epoch {epoch + 1}/{of}", mininterval=1, **quiet)
        loss = None
        for idx in self.loader.batches(offset):
            if self.step >= self.total_steps:
                break
            new_size = self.resolution.size_at(self.step, self.total_steps)
            if new_size != size or new_size not in self.network.proven:  # a new size's first step: not the pace
                window, window_steps, size = None, 0, new_size
            loss = self._train_step(idx, size)
            loss_sum += loss.detach()
            self.step += 1
            window_steps += 1
            bar.update()
            if self.budget and self.budget.due(self.step, first_step):
                self._plan(size)
            if self.step % SYNC_EVERY == 0 or self.step >= self.total_steps:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.4f}", px=size,
                                run_eta=format_duration(self._eta()))  # .item() waits for the device
                now = time.perf_counter()
                if window is not None:
                    self.clock.record(size, now - window, window_steps)
                window, window_steps = now, 0
            self.stopped = self._stop_reason()
            if self.stopped:
                break
        bar.close()
        seconds = seconds_before + time.perf_counter() - started
        epoch_steps = self.step - epoch * spe
        last = self.step >= self.total_steps or self.stopped == "budget"
        if epoch_steps < spe and not last:  # stopped part way: only a checkpoint to resume from
            self._save(epoch, loss_sum, seconds, logged=False)
            return {}
        mean_loss = loss_sum.item() / epoch_steps
        if not math.isfinite(mean_loss):
            raise UserError(f"the loss diverged to {mean_loss} in epoch {epoch + 1}: lower --lr")
        done = epoch + 1
        row = {"epoch": done, "step": self.step, "loss": mean_loss, "lr": self.scheduler.get_last_lr()[0],
               "image_size": size, "precision": self.precision, "epoch_seconds": seconds,
               "images_per_second": (epoch_steps - offset) * config.batch_size / (seconds - seconds_before),
               "eta_seconds": 0.0 if last else self._eta()}
        if self.monitor and (done % config.knn_every == 0 or last):
            row["knn_top1"], row["knn_top5"] = self.monitor(self.model.encoder).values()
        if self.proc.is_main:  # logged before the checkpoint: a resume drops rows past its checkpoint, never misses one
            self._log(row)
            if time.monotonic() - self.curves_drawn >= CURVES_EVERY_S:  # a long run can be watched
                save_curves(read_metrics(self.run_dir.metrics), self.run_dir.curves)
                self.curves_drawn = time.monotonic()
        if done % config.checkpoint_every == 0 or last or self.stopped:
            self._save(epoch, loss_sum, seconds, logged=True)
        return row

    def _train_step(self, idx: Tensor, size: int) -> Tensor:
        config = self.config
        v1, v2 = two_views(self.images[idx], self.aug, size, config.blur, config.crop_min_scale, config.grayscale_p)
        views = torch.cat([v1, v2]).contiguous(memory_format=self.memory_format)

        def forward_backward(net: nn.Module) -> Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, self.precision):
                z = net(views)
            loss = nt_xent(z[:len(v1)], z[len(v1):], config.temperature)
            self.scaler.scale(loss * self.loss_factor).backward()
            return loss

        loss = self.network(size, forward_backward)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss

    def _plan(self, size: int) -> None:
        """Fit the run to its --time-budget from the pace so far (rank 0's plan on every rank), and write the
        plan where resume, evaluation and export read a run's length."""
        total = _agreed(self.budget.plan(self.step, size, self.resolution) if self.proc.is_main else None, self.proc)
        self.total_steps = total
        replan(self.scheduler, total)
        self.config = dataclasses.replace(self.config, epochs=total / self.steps_per_epoch, time_budget=None)
        if self.proc.is_main:
            self.run_dir.write_config(self.config)
            atomic_write(self.run_dir.budget, json.dumps(self.budget.record(), indent=2))
            pace = self.budget.plans[-1]["seconds_per_step"]
            tqdm.write(f"plan for {self.budget.text}: {total} steps ({self.config.epochs:.2f} epochs) at "
                       f"{pace:.4g} s a step as measured, {format_duration(self.budget.left())} left at step "
                       f"{self.step}")

    def _eta(self) -> float:
        if self.budget:
            return max(0.0, self.budget.left())
        return self.clock.remaining(self.resolution.steps_per_size(self.total_steps, self.step))

    def _stop_reason(self) -> str | None:
        """"signal" (a stop asked for), "budget" (the --time-budget's end) or None: at once on one process;
        under DDP at the steps where the processes agree (every SYNC_EVERY), so that all stop at the same step."""
        reasons = (None, "budget", "signal")
        local = 2 if self.stop.requested else 1 if self.budget and self.budget.expired() else 0
        if self.proc.world_size == 1 or self.step % SYNC_EVERY:
            return reasons[local] if self.proc.world_size == 1 else None
        flag = torch.tensor([local], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return reasons[int(flag.item())]

    def _save(self, epoch: int, loss_sum: Tensor, seconds: float, logged: bool) -> None:
        """Checkpoint the run as it stands. One inside epoch `epoch` (0-based) keeps what finishing that epoch
        needs; logged: whether the epoch's metrics row is written (a row is written for whole epochs and the
        run's last)."""
        if not self.proc.is_main:
            return
        spe = self.steps_per_epoch
        state = self.training.state_dict(math.ceil(self.step / spe) if logged else epoch, self.step,
                                         self.config.to_dict(), self.classes)
        if self.step % spe:
            state["partial"] = {"aug_rng": self.aug.get_state(), "loss_sum": loss_sum.item(), "seconds": seconds}
        self.run_dir.save_checkpoint(math.ceil(self.step / spe), state, keep=self.config.keep_checkpoints)

    def _log(self, row: dict[str, Any]) -> None:
        _log(self.run_dir, self.writer, row)


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


def _truncate_metrics(path: Path, epochs_kept: int | None) -> None:
    """Drop rows of epochs after the whole epochs of the checkpoint being resumed (all of them on a fresh start,
    epochs_kept None): they will be trained and logged again."""
    if path.exists():
        rows = read_metrics(path) if epochs_kept is not None else []
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows if r["epoch"] <= epochs_kept))


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser(__doc__).parse_args(argv))
    # SIGTERM (kill, docker stop, a scheduler, torchrun passing on its own) and Ctrl-C save a checkpoint where
    # the run stands, then stop. A background job started by a non-interactive shell ignores SIGINT, and keeps
    # ignoring it: SIGTERM is how such a run is stopped.
    stop = StopRequest()
    handled = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler
                                  else [])
    previous = {sig: signal.signal(sig, stop) for sig in handled}
    try:
        config, resume = resolve_config(args)
        train(config, resume, stop)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: resume with --out {args.get('out', Config.out)} --resume", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
