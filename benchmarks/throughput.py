"""Training throughput on one device, in one run: a SimCLR step's settings side by side, and two data pipelines.

Settings: the model step (two views, NT-Xent, SGD) in fp32 NCHW eager (the CPU default before the fast path),
then channels-last, torch.compile, bf16 autocast and smaller view sizes, each fed by our pipeline; the
`--resolution-schedule` average follows from the per-size figures. Pipelines:

- ours: uint8 images resident on the device, batched views from trainer.augment.two_views (as trainer.pretrain);
- dataloader: the usual way, a Dataset of PIL images with torchvision's per-image transforms applied twice,
  served by a torch DataLoader with worker processes and copied to the device.

Every setting is timed over the same steps after an untimed warm-up (which absorbs compilation). Figures are
image pairs per second. Ratios are to the old default (fp32, NCHW, eager) and to the DataLoader pipeline
feeding that same step.

    python -m benchmarks.throughput --data-dir ~/data/cifar10 --device cpu --batch-size 128 --steps 5 --warmup 2
    python -m benchmarks.throughput --device cpu --batch-size 64 --steps 3 --warmup 2 --quick   # no compile
    python -m benchmarks.throughput --data-dir ~/data/cifar10 --limit 50000 --json throughput.json   # GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms as T
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from contract.networks import BACKBONES
from contract.preprocess import CIFAR_MEAN, CIFAR_STD
from trainer.augment import two_views
from trainer.data import DeviceLoader, balanced_subset, load_split
from trainer.errors import UserError
from trainer.loss import nt_xent
from trainer.models import SimCLR, count_parameters, flops_per_image
from trainer.resolution import ResolutionSchedule
from trainer.speed import autocast, pick_precision

Views = tuple[Tensor, Tensor]


class PairDataset(Dataset):
    """PIL images and torchvision's per-image SimCLR transforms, applied twice per image."""

    def __init__(self, images: Tensor, size: int):
        self.images = [Image.fromarray(a) for a in images.permute(0, 2, 3, 1).contiguous().numpy()]
        self.transform = T.Compose([
            T.RandomResizedCrop(size, scale=(0.08, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.ToTensor(),
            T.Normalize(CIFAR_MEAN, CIFAR_STD),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Views:
        image = self.images[i]
        return self.transform(image), self.transform(image)


def loader_views(dataset: PairDataset, batches: int, batch_size: int, workers: int,
                 device: torch.device) -> Iterator[Views]:
    """`batches` batches from a fresh DataLoader, on the device. The sampler draws exactly that many (over
    several permutations if need be), so the iteration ends, and the workers exit, with the measurement."""
    sampler = RandomSampler(dataset, num_samples=batches * batch_size, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=True)
    for v1, v2 in loader:
        yield v1.to(device, non_blocking=True), v2.to(device, non_blocking=True)


def device_views(images: Tensor, batch_size: int, size: int, device: torch.device) -> Iterator[Views]:
    """Endless batches of views made on the device, indexed as trainer.pretrain does."""
    loader = DeviceLoader(len(images), batch_size, seed=0)
    g = torch.Generator(device=device).manual_seed(0)
    while True:
        for idx in loader:
            yield two_views(images[idx.to(device, non_blocking=True)], g, size)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(batches: Iterable[Views], consume: Callable[[Tensor, Tensor], None], warmup: int, steps: int,
            batch_size: int, device: torch.device) -> dict[str, Any]:
    """Images per second over `steps` batches after `warmup` untimed ones, and the peak device memory."""
    it = iter(batches)
    for _ in range(warmup):
        consume(*next(it))
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        consume(*next(it))
    synchronize(device)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"steps": steps, "seconds": seconds, "images_per_second": steps * batch_size / seconds}
    if device.type == "cuda":
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def make_train_step(model: nn.Module, device: torch.device, precision: str, channels_last: bool,
                    compiled: bool, backend: str = "inductor") -> Callable[[Tensor, Tensor], None]:
    """trainer.pretrain's step with the given settings, on its own model and optimizer (backend: torch.compile's;
    "eager" only traces, which a CPU rehearsal of a GPU run uses to go through the compiled path quickly)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    net = torch.compile(model, dynamic=False, backend=backend) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(v1: Tensor, v2: Tensor) -> None:
        views = torch.cat([v1, v2]).contiguous(memory_format=memory_format)
        with autocast(device, precision):
            z = net(views)
        loss = nt_xent(z[:len(v1)], z[len(v1):], temperature=0.5)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def round_up(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple


def load_images(args: argparse.Namespace) -> Tensor:
    """uint8 (N, 3, S, S): the data set's training split (a balanced subset of --limit), or random pixels."""
    if args.data_dir is None:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (4096, 3, args.image_size, args.image_size), dtype=torch.uint8, generator=g)
    data = load_split(args.data_dir, "train", args.image_size, download=False, cache_dir="~/.cache/simclr-cifar")
    if data is None:
        raise UserError(f"{args.data_dir} has no training split")
    if args.limit and args.limit < len(data):
        data = balanced_subset(data, args.limit)
    return data.images


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="anything trainer.data.load_split reads; random images when omitted")
    p.add_argument("--limit", type=int, default=5000, help="images taken from --data-dir (balanced; 0: all)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--backbone", choices=list(BACKBONES), default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 0, help="DataLoader worker processes")
    p.add_argument("--quick", action="store_true", help="skip the compiled settings (each compiles for a minute)")
    p.add_argument("--schedule", default="16:0.7,32", help="resolution schedule whose run average is reported")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.workers < 0 or args.batch_size < 2:
        p.error("need --steps >= 1, --warmup >= 0, --workers >= 0 and --batch-size >= 2")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was asked for but torch sees no CUDA GPU")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True  # as trainer.pretrain
    images = load_images(args)
    if args.batch_size > len(images):
        raise UserError(f"--batch-size {args.batch_size} is larger than the data set ({len(images)} images)")
    full = args.image_size
    schedule = ResolutionSchedule.parse(args.schedule, full)
    model = SimCLR(args.backbone)
    info = {"encoder_parameters": count_parameters(model.encoder),
            "projector_parameters": count_parameters(model.projector),
            "encoder_flops_per_image": flops_per_image(model.encoder, full),
            "model_flops_per_image": flops_per_image(model, full)}
    fast, why = pick_precision("auto", model.to(device), device, full)
    old = "fp32" if device.type == "cpu" else "bf16"  # the defaults before the fast path
    device_name = (f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)")
    source = "random images" if args.data_dir is None else f"images of {args.data_dir}"
    print(f"{device_name}, torch {torch.__version__}; {len(images)} {source} at {full}px, batch {args.batch_size}, "
          f"{args.workers} DataLoader workers; precision auto picks {fast} ({why})")
    print(f"SimCLR {args.backbone}: {info['encoder_parameters'] / 1e6:.2f}M encoder + "
          f"{info['projector_parameters'] / 1e6:.2f}M projector parameters; forward "
          f"{info['encoder_flops_per_image'] / 1e9:.3f} GFLOPs per image (encoder), "
          f"{info['model_flops_per_image'] / 1e9:.3f} (with projector)")

    # (label, precision, channels_last, compiled, view size); the first is the old default everything is compared to
    settings = [(f"{old}, NCHW, eager (old default)", old, device.type == "cuda", False, full),
                (f"{old}, channels-last", old, True, False, full),
                (f"{old}, channels-last, compiled", old, True, True, full),
                ("bf16, channels-last", "bf16", True, False, full),
                ("bf16, channels-last, compiled", "bf16", True, True, full)]
    sizes = sorted({size for size, _ in schedule.phases if size != full} | {24, 16}, reverse=True)
    settings += [(f"{fast}, channels-last, compiled, {size} px", fast, True, True, size) for size in sizes]
    if args.quick:
        settings = [s for s in settings if not s[3]] + [
            (f"{fast}, channels-last, {size} px", fast, True, False, size) for size in sizes]
    settings = list({s[0]: s for s in settings}.values())  # on CUDA the old default already was bf16
    results: dict[str, dict[str, Any]] = {}
    resident = images.to(device)
    for label, precision, channels_last, compiled, size in settings:
        print(f"timing {label} ...", flush=True)
        step = make_train_step(SimCLR(args.backbone).to(device), device, precision, channels_last, compiled)
        batches = device_views(resident, args.batch_size, size, device)
        results[label] = {"precision": precision, "channels_last": channels_last, "compiled": compiled, "size": size,
                          **measure(batches, step, args.warmup, args.steps, args.batch_size, device)}

    # The DataLoader pipeline feeding the old default step, and both pipelines producing views alone.
    rounds = max(args.workers, 1)  # workers deliver whole rounds of batches: count whole rounds
    dl_warmup, dl_steps = round_up(max(args.warmup, 1), rounds), round_up(args.steps, rounds)
    dataset = PairDataset(images, full)
    pipelines: dict[str, dict[str, Any]] = {}
    old_step = make_train_step(SimCLR(args.backbone).to(device), device, old, device.type == "cuda", False)
    for mode, consume in (("data_only", lambda v1, v2: None), ("train_step", old_step)):
        print(f"timing dataloader, {mode.replace('_', ' ')} ...", flush=True)
        batches = loader_views(dataset, dl_warmup + dl_steps, args.batch_size, args.workers, device)
        pipelines[f"dataloader_{mode}"] = measure(batches, consume, dl_warmup, dl_steps, args.batch_size, device)
        del batches  # its workers exit now, not while the next one is timed
    pipelines["ours_data_only"] = measure(device_views(resident, args.batch_size, full, device), lambda v1, v2: None,
                                          args.warmup, args.steps, args.batch_size, device)

    base = results[settings[0][0]]["images_per_second"]
    loader = pipelines["dataloader_train_step"]["images_per_second"]
    print(f"\n{'pairs/s, one training step':<44}{'pairs/s':>9}{'x old default':>15}{'x DataLoader':>14}")
    for label, r in results.items():
        r["over_old_default"], r["over_dataloader"] = r["images_per_second"] / base, r["images_per_second"] / loader
        print(f"{label:<44}{r['images_per_second']:>9.1f}{r['over_old_default']:>14.2f}x{r['over_dataloader']:>13.2f}x")
    print(f"{'DataLoader + old default step':<44}{loader:>9.1f}{loader / base:>14.2f}x{1:>13.2f}x")
    # A run on the schedule spends each phase's share of the steps at that phase's pace.
    pace = {r["size"]: r["images_per_second"] for r in results.values() if r["compiled"] == (not args.quick)
            and r["precision"] == fast and r["channels_last"]}
    schedule_rate = 1 / sum(fraction / pace[size] for size, fraction in schedule.phases)
    print(f"{'run average, --resolution-schedule ' + args.schedule:<44}{schedule_rate:>9.1f}"
          f"{schedule_rate / base:>14.2f}x{schedule_rate / loader:>13.2f}x")
    ours_views = pipelines["ours_data_only"]["images_per_second"]
    dl_views = pipelines["dataloader_data_only"]["images_per_second"]
    print(f"\nviews only: ours {ours_views:.0f} pairs/s, DataLoader {dl_views:.0f} pairs/s "
          f"({ours_views / dl_views:.2f}x)")
    flops = 3 * info["model_flops_per_image"] * 2  # forward + backward (about 2x forward), two views per pair
    best = max(r["images_per_second"] for r in results.values() if r["size"] == full)
    print(f"at {full} px the best setting does {best * flops / 1e9:.0f} GFLOP/s of model arithmetic "
          f"({flops / 1e9:.1f} GFLOPs per pair)")
    return {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "device_name": device_name, "torch": torch.__version__, "auto_precision": fast, "images": len(images),
            **info, "settings": results, "pipelines": pipelines, "schedule_average_pairs_per_second": schedule_rate}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        figures = run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
