"""Training throughput of SimCLR's two data pipelines, measured in one run on one device.

- ours: uint8 images resident on the device, batched views from trainer.augment.two_views (as trainer.pretrain);
- dataloader: the usual way, a Dataset of PIL images with torchvision's per-image transforms applied twice,
  served by a torch DataLoader with worker processes and copied to the device.

Both feed the same SimCLR model, NT-Xent loss and SGD optimizer at the same batch size. Each pipeline is
timed twice: producing views alone (on CPU the model dominates a training step and hides the data) and as a
full training step. Figures are images per second, an image being one pair of views.

    python benchmarks/throughput.py --device cpu --batch-size 64 --steps 5 --warmup 1 --workers 2
    python benchmarks/throughput.py --data-dir ~/data/cifar10 --device cpu --batch-size 64 --steps 5 --warmup 1
    python -m benchmarks.throughput --data-dir ~/data/cifar10 --limit 50000 --json throughput.json   # GPU
    python -m benchmarks.throughput --data-dir ~/data/cifar10 --backbone resnet50 --compile
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms as T
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

if __package__ in (None, ""):  # run as a script: `trainer` lives in the repository root, next to benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.augment import CIFAR_MEAN, CIFAR_STD, two_views  # noqa: E402
from trainer.data import DeviceLoader, balanced_subset, load_split  # noqa: E402
from trainer.errors import UserError  # noqa: E402
from trainer.loss import nt_xent  # noqa: E402
from trainer.models import BACKBONES, SimCLR, count_parameters, flops_per_image  # noqa: E402

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


def make_train_step(net: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
                    ) -> Callable[[Tensor, Tensor], None]:
    """trainer.pretrain's step: channels_last and bf16 autocast on CUDA, fp32 on CPU."""
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    def step(v1: Tensor, v2: Tensor) -> None:
        views = torch.cat([v1, v2]).contiguous(memory_format=memory_format)
        with autocast:
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
    p.add_argument("--compile", action="store_true", help="torch.compile the model (for both pipelines)")
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

    model = SimCLR(args.backbone).to(device)
    info = {"encoder_parameters": count_parameters(model.encoder),
            "projector_parameters": count_parameters(model.projector),
            "encoder_flops_per_image": flops_per_image(model.encoder, args.image_size),
            "model_flops_per_image": flops_per_image(model, args.image_size)}
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # One model and optimizer serve both pipelines: the same weights' shapes, kernels and (with --compile) one
    # compilation; the weights drifting between measurements does not change the work of a step.
    net = torch.compile(model) if args.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_step = make_train_step(net, optimizer, device)
    precision = "bf16" if device.type == "cuda" else "fp32"

    device_name = (f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)")
    source = "random images" if args.data_dir is None else f"images of {args.data_dir}"
    print(f"{device_name}, torch {torch.__version__}, {precision}{', compiled' if args.compile else ''}; "
          f"{len(images)} {source} at {args.image_size}px, batch {args.batch_size}, "
          f"{args.workers} DataLoader workers")
    print(f"SimCLR {args.backbone}: {info['encoder_parameters'] / 1e6:.2f}M encoder + "
          f"{info['projector_parameters'] / 1e6:.2f}M projector parameters; forward "
          f"{info['encoder_flops_per_image'] / 1e9:.3f} GFLOPs per image (encoder), "
          f"{info['model_flops_per_image'] / 1e9:.3f} (with projector)")

    # DataLoader workers each build whole batches in step, so batches arrive in bursts of one per worker: counting
    # whole rounds (warm-up included, which absorbs the workers' start) keeps a short run from over- or
    # under-counting the rounds in flight when the clock starts and stops.
    rounds = max(args.workers, 1)
    dl_warmup, dl_steps = round_up(max(args.warmup, 1), rounds), round_up(args.steps, rounds)
    dataset = PairDataset(images, args.image_size)
    results: dict[str, dict[str, Any]] = {}

    def no_op(v1: Tensor, v2: Tensor) -> None:
        pass

    # The DataLoader first, so its peak memory does not include the images that ours keeps on the device.
    for mode, consume in (("data_only", no_op), ("train_step", train_step)):
        print(f"timing dataloader, {mode.replace('_', ' ')} ...", flush=True)
        batches = loader_views(dataset, dl_warmup + dl_steps, args.batch_size, args.workers, device)
        results[f"dataloader_{mode}"] = measure(batches, consume, dl_warmup, dl_steps, args.batch_size, device)
    del batches  # its DataLoader's workers exit now, not while ours is being timed
    resident = images.to(device)
    for mode, consume in (("data_only", no_op), ("train_step", train_step)):
        print(f"timing ours, {mode.replace('_', ' ')} ...", flush=True)
        batches = device_views(resident, args.batch_size, args.image_size, device)
        results[f"ours_{mode}"] = measure(batches, consume, args.warmup, args.steps, args.batch_size, device)

    ratios = {mode: results[f"ours_{mode}"]["images_per_second"] / results[f"dataloader_{mode}"]["images_per_second"]
              for mode in ("data_only", "train_step")}
    print(f"\n{'images/s':<20}{'ours':>12}{'dataloader':>12}{'ours/dataloader':>17}")
    for mode, label in (("data_only", "data only"), ("train_step", "full training step")):
        ours, dl = results[f"ours_{mode}"], results[f"dataloader_{mode}"]
        print(f"{label:<20}{ours['images_per_second']:>12.1f}{dl['images_per_second']:>12.1f}{ratios[mode]:>16.2f}x")
    if device.type == "cuda":
        print(f"{'peak GPU MiB':<20}" + "".join(f"{results[f'{p}_train_step']['peak_memory_bytes'] / 2**20:>12.0f}"
                                               for p in ("ours", "dataloader")) + "   (full training step)")
    print(f"(timed steps: ours {args.steps}, dataloader {dl_steps}; warm-up: ours {args.warmup}, dataloader {dl_warmup})")

    return {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "device_name": device_name,
            "torch": torch.__version__, "precision": precision, "images": len(images), **info,
            "results": results, "ours_over_dataloader": ratios}


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
