"""Choose the CPU pretraining recipe by experiment: short proxies of equal compute, judged on held-out images.

Every proxy pretrains on the CIFAR-10 training set less a class-balanced validation split (5,000 images by
default), then scores kNN top-1 (k=200, temperature 0.1) of those held-out images against a 10,000-image bank
of the remaining training images. The test set is never read.

Equal compute: the seconds per step of every (view size, batch) a proxy uses are timed first, alone, and each
proxy's step count is fixed from them so that all proxies cost the same time on a quiet machine. Work running
beside the search then slows every proxy alike without changing what any of them trains.

The search is greedy, one factor at a time from the base recipe (--base): each group of candidates is run,
the best of the group is kept, and the next group varies that.

    python -m benchmarks.recipe_search --data-dir ~/data/cifar10 --minutes 10 --out ~/recipe-search
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from trainer.augment import two_views
from trainer.features import extract_features
from trainer.knn import knn_predict, topk_accuracy
from trainer.loss import nt_xent
from trainer.models import SimCLR
from trainer.pretrain import load_data
from trainer.resolution import ResolutionSchedule
from trainer.run_dir import RunDir
from trainer.speed import autocast, format_duration

BASE = {"batch_size": 256, "temperature": 0.5, "resolution_schedule": None}
# Groups of candidates, each a change to the best recipe so far; the first group compares the resolutions.
GROUPS: list[list[dict[str, Any]]] = [
    [{}, {"resolution_schedule": "16:0.7,32"}, {"resolution_schedule": "24:0.7,32"}],
    [{"temperature": 0.2}],
    [{"batch_size": 512}],
    [{"lr_scale": 2.0}],
    [{"crop_min_scale": 0.2}],
    [{"grayscale_p": 0.1}],
]


def seconds_per_step(size: int, batch: int, precision: str, steps: int = 4) -> float:
    """A real training step (views, forward, NT-Xent, backward, SGD) at this view size and batch, eager."""
    model = SimCLR().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    device = torch.device("cpu")

    def step() -> None:
        v1, v2 = two_views(images, g, size)
        with autocast(device, precision):
            z = model(torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last))
        opt.zero_grad()
        nt_xent(z[:batch], z[batch:]).backward()
        opt.step()

    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def options(recipe: dict[str, Any], budget_s: float, step_time: dict[tuple[int, int], float],
            train_images: int) -> dict[str, Any]:
    """pretrain options of a proxy: the recipe, and the epochs that spend budget_s at the timed step costs."""
    batch = recipe["batch_size"]
    phases = ResolutionSchedule.parse(recipe["resolution_schedule"], 32).phases
    per_step = sum(fraction * step_time[size, batch] for size, fraction in phases)
    steps = int(budget_s / per_step)
    steps_per_epoch = train_images // batch
    opts = {k: v for k, v in recipe.items() if k != "lr_scale"}
    opts["lr"] = 0.06 * batch / 128 * recipe.get("lr_scale", 1.0)
    opts["epochs"] = steps / steps_per_epoch
    opts["warmup_epochs"] = 10 / steps_per_epoch  # 10 warmup steps, then cosine to zero at the proxy's end
    return opts


def name_of(recipe: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(recipe.items()) if v != BASE.get(k, object())) or "base"


def score(run_dir: Path) -> float:
    """kNN top-1 of the held-out validation images with the proxy's final encoder."""
    run = RunDir(run_dir)
    config = run.read_config()
    _, bank, queries = load_data(config)
    model, _ = run.load_model(config, run.latest_checkpoint())
    features = extract_features(model.encoder, bank.images), extract_features(model.encoder, queries.images)
    scores = knn_predict(features[1], features[0], bank.labels, len(bank.classes), config.knn_k,
                         config.knn_temperature)
    return topk_accuracy(scores, queries.labels, (1,))[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", type=Path, required=True, help="one run directory per proxy, and results.jsonl")
    p.add_argument("--minutes", type=float, default=10, help="compute budget of each proxy on a quiet machine")
    p.add_argument("--val-split", type=int, default=5000)
    p.add_argument("--knn-bank", type=int, default=10000)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.jsonl"
    done = ({r["name"]: r for r in map(json.loads, results_file.read_text().splitlines())}
            if results_file.exists() else {})  # a search that was stopped goes on where it was

    timing_file = args.out / "step_seconds.json"
    if timing_file.exists():
        step_time = {tuple(map(int, k.split("x"))): v for k, v in json.loads(timing_file.read_text()).items()}
    else:
        print("timing steps (alone) ...", flush=True)
        step_time = {(s, b): seconds_per_step(s, b, args.precision) for s, b in
                     [(16, 256), (24, 256), (32, 256), (16, 512), (24, 512), (32, 512)]}
        timing_file.write_text(json.dumps({f"{s}x{b}": v for (s, b), v in step_time.items()}, indent=1))
    for (s, b), v in step_time.items():
        print(f"  {s} px, batch {b}: {v:.2f} s/step, {b / v:.0f} pairs/s")

    train_images = 50_000 - args.val_split
    best = dict(BASE)
    for group in GROUPS:
        rows = []
        for change in group:
            recipe = {**best, **change}
            name = name_of(recipe)
            if name not in done:
                opts = options(recipe, args.minutes * 60, step_time, train_images)
                run_dir = args.out / name.replace("=", "-").replace(",", "_").replace(":", "-")
                flags = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items() if v is not None]
                cmd = [sys.executable, "-m", "trainer.pretrain", "--data-dir", args.data_dir, "--out", str(run_dir),
                       "--val-split", str(args.val_split), "--knn-bank", str(args.knn_bank), "--knn-every", "0",
                       "--precision", args.precision, "--seed", str(args.seed), *flags]
                print(f"proxy {name}: {opts['epochs']:.3f} epochs", flush=True)
                started = time.perf_counter()
                if not (run_dir / "checkpoints").is_dir():
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                wall = time.perf_counter() - started
                steps = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
                done[name] = {"name": name, "recipe": recipe, "steps": steps, "epochs": opts["epochs"],
                              "wall_seconds": wall, "val_knn_top1": score(run_dir)}
                with open(results_file, "a") as f:
                    f.write(json.dumps(done[name]) + "\n")
            r = done[name]
            print(f"  {name}: {r['steps']} steps, {format_duration(r['wall_seconds'])}, "
                  f"val kNN top-1 {100 * r['val_knn_top1']:.2f}%", flush=True)
            rows.append(r)
        if group[0]:  # a group of changes competes with the best so far
            rows.append(next(r for r in done.values() if r["recipe"] == best))
        best = max(rows, key=lambda r: r["val_knn_top1"])["recipe"]
        print(f"best so far: {name_of(best)}", flush=True)
    print("\n| recipe | steps | wall | val kNN top-1 |\n| --- | ---: | ---: | ---: |")
    for r in done.values():
        print(f"| {r['name']} | {r['steps']} | {format_duration(r['wall_seconds'])} | {100 * r['val_knn_top1']:.2f}% |")
    print(f"\nwinner: {name_of(best)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
