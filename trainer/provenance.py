"""Where and with what code a run trained: each start and resume appends the machine and the git commit to
RUN_DIR/starts.jsonl, and the export sums it up, with the hours the epochs took, in the bundle's manifest.

A long CPU run is resumed several times, possibly on other machines and always with newer code, so the
answer is a list of machines and commits, not one of each.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from trainer.plots import read_metrics
from trainer.run_dir import RunDir

REPOSITORY = Path(__file__).resolve().parents[1]


def machine(device: torch.device) -> str:
    """One line: the CPU model (and the GPU's), the cores this process may use, torch's threads and version."""
    cpu = _cpuinfo()
    name = cpu.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in cpu and "model" in cpu:  # terse names ("AMD EPYC") say little without them
        name += f" (family {cpu['cpu family']} model {cpu['model']})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [name, f"{cores} cores", f"{torch.get_num_threads()} torch threads"]
    if device.type == "cuda":
        parts.insert(0, f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(device)}")
    return ", ".join(parts + [f"torch {torch.__version__}"])


def commit() -> str | None:
    """The git commit of the code running, "+dirty" when tracked files differ from it; None outside a checkout
    (an installed package, a container image without .git)."""
    if not (REPOSITORY / ".git").exists():  # not inside some enclosing repository either
        return None
    try:
        head = _git("rev-parse", "HEAD")
        return head + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def record_start(run: RunDir, epoch: int, device: torch.device, resumed: bool) -> None:
    """Append this start (epoch 0) or resume (from epoch: 0 too when it resumes inside the first epoch) to the
    run's starts; a fresh start begins the file."""
    row = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "epoch": epoch, "machine": machine(device),
           "commit": commit()}
    with open(run.starts, "a" if resumed else "w") as f:
        f.write(json.dumps(row) + "\n")


def summary(run: RunDir, epoch: int) -> dict[str, Any]:
    """What trained the run's first `epoch` epochs: the hours of those epochs (training steps only, as run:
    slowed by whatever shared the machine or paused the run), the same at the run's median epoch time per
    view size (the pauses and sharing taken out: a long run is paused for other work now and then, most epochs
    are not), and the machines and commits of the starts that ran them."""
    rows = [r for r in read_metrics(run.metrics) if "epoch_seconds" in r and r["epoch"] <= epoch] \
        if run.metrics.is_file() else []
    starts = [r for r in read_metrics(run.starts) if r["epoch"] < epoch] if run.starts.is_file() else []
    by_size: dict[Any, list[float]] = {}
    for r in rows:
        by_size.setdefault(r.get("image_size"), []).append(r["epoch_seconds"])
    median_pace = sum(len(seconds) * statistics.median(seconds) for seconds in by_size.values())
    return {"hours": round(sum(r["epoch_seconds"] for r in rows) / 3600, 2) if rows else None,
            "median_pace_hours": round(median_pace / 3600, 2) if rows else None,
            "machines": list(dict.fromkeys(r["machine"] for r in starts)),
            "commits": list(dict.fromkeys(r["commit"] or "unknown" for r in starts))}


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPOSITORY), *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines()) if v}
