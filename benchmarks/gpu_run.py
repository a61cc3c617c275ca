"""One GPU session's run, prepared and rehearsed here: checks, measures, trains, evaluates and exports in one
command well inside the device machine's 10 minutes, and packs what comes back into at most 8 files.

On the H200 or the H100 (the device tool's command, either kind; benchmarks/gpu_prepare.sh first puts the data
and wheels in place):

    bash benchmarks/gpu_run.sh

Stages, each logged and timed; one that fails is recorded and the later ones still run where they can:

 1. env         the GPU, driver and versions; every entry point the run uses is imported
 2. data        the CIFAR-10 archive unpacked and decoded (into the cache the trainer's commands read)
 3. checks      at the training's shapes (512 pairs, 32 px): eager fp32, eager bf16 and compiled bf16 steps
                agree within stated tolerances with finite gradients; DDP with SyncBatchNorm at world size 1
                (NCCL) gives the plain step's loss and gradients
    resume      a run stopped by SIGTERM inside an epoch and resumed ends with an unbroken run's weights
                (checkpoints saved and loaded on the device, deterministic algorithms)
 4. throughput  views alone, the step alone (eager fp32, eager bf16, compiled bf16), both: pairs/s, seconds an
                epoch, and the share of the GPU's bf16 peak the model's FLOPs make
 5. pretrain    python -m trainer.pretrain --time-budget (the time left before the deadline, less what the
                stages after it need; at most 7 minutes)
 6. linear_eval python -m trainer.linear_eval on the device
 7. export      python -m trainer.export --half (the int8 graph is made back on a CPU: see `unpack`)
 8. pack        the bundle, the run's metrics and config, and the evaluation's outputs as results.tar.gz,
                split into parts of at most 15 MiB, their sha256 in summary.json
 9. serving     service.model on the device: torch fp32 / fp16 / bf16 at batch 1, 32 and 256, and the top-3
                of the committed reference images under each against fp32's

OUT gets log.txt (benchmarks/gpu_run.sh tees it), summary.json (rewritten after every stage, so a run killed
at its limit still says how far it got) and results.tar.gz.part-NN. Back here:

    python -m benchmarks.gpu_run unpack /work/.device/... models/h200   # verify the parts, reassemble
    python -m trainer.export --bundle models/h200 --int8-calibration 512 --data-dir ~/data/cifar10

On a CPU, tests/test_gpu_run.py rehearses the whole script with tiny limits (--rehearse): the same stages,
output layout and file limits.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
# The dense bf16 matrix rate of an H200 (788 TFLOP/s) and of an H100 (798): the same compute, measured on this
# workplace's machines (KINDS.md); the H100 has less memory (78 GiB), far more than this run needs.
PEAK_BF16_FLOPS = 790e12
PART_BYTES = 15 * 2 ** 20
MAX_RESULT_FILES = 8  # what the device tool brings back, log.txt and summary.json included
DATA_NAME = "CIFAR-10 (JPEG q75 copy)"


@dataclass
class Limits:
    """Sizes and times of the run. The defaults are the GPU run's; rehearsal() shrinks them for a CPU."""

    device: str = "cuda"
    image_size: int = 32
    batch: int = 512
    deadline_s: float = 585.0  # from the start of this script; the device tool stops the command at 600
    reserve_s: float = 90.0  # kept after pretraining: evaluation, export, packing, the serving timings
    max_budget_s: float = 420.0  # pretraining's --time-budget at most: 7 minutes
    compile_backend: str = "inductor"
    bench_warmup: int = 5
    bench_steps: int = 30
    serving_batches: tuple[int, ...] = (1, 32, 256)
    pretrain_args: tuple[str, ...] = ("--knn-every", "25", "--checkpoint-every", "25")
    eval_args: tuple[str, ...] = ()
    data_name: str = DATA_NAME

    @classmethod
    def rehearsal(cls) -> Limits:
        return cls(device="cpu", image_size=16, batch=16, deadline_s=240.0, reserve_s=60.0, max_budget_s=12.0,
                   compile_backend="eager", bench_warmup=1, bench_steps=2, serving_batches=(1, 8),
                   pretrain_args=("--knn-every", "2", "--checkpoint-every", "2", "--no-compile", "--image-size", "16",
                                  "--batch-size", "16", "--device", "cpu", "--precision", "fp32"),
                   eval_args=("--epochs", "3", "--device", "cpu"), data_name="patterns (rehearsal)")


class Report:
    """summary.json: each stage's status, seconds and figures, rewritten atomically after every stage."""

    def __init__(self, out: Path, limits: Limits):
        self.out, self.started = out, time.monotonic()
        self.data: dict[str, Any] = {"limits": asdict(limits), "stages": {}}
        self.save()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stage(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one stage, logging its start, end and any failure; returns its result, or None if it failed."""
        print(f"\n===== {name} (at {self.elapsed():.0f} s) =====", flush=True)
        started, result, entry = time.monotonic(), None, {}
        try:
            result = fn(*args)
            entry = {"status": "ok", "result": result}
        except Exception as e:  # a failed stage is reported, and the next one runs
            traceback.print_exc()
            entry = {"status": "failed", "error": f"{type(e).__name__}: {str(e).strip()[:2000]}",
                     "result": getattr(e, "result", None)}
        entry["seconds"] = round(time.monotonic() - started, 2)
        self.data["stages"][name] = entry
        print(f"----- {name}: {entry['status']} in {entry['seconds']:.1f} s", flush=True)
        self.save()
        return result

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 2)
        path = self.out / "summary.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        tmp.replace(path)


class CheckFailed(AssertionError):
    """Checks that ran but did not hold; `result` keeps what they measured, for the summary."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


# ----- 1. env


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                           "torch": torch.__version__, "cuda": torch.version.cuda,
                           "cudnn": torch.backends.cudnn.version(), "cpus": os.cpu_count()}
    import torchvision

    env["torchvision"] = torchvision.__version__
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2 ** 30, 1),
                      "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}"}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                                            "--format=csv,noheader"], capture_output=True, text=True,
                                           timeout=20).stdout.strip()
    imports = {}
    for module in ("trainer.pretrain", "trainer.linear_eval", "trainer.export", "service.model",
                   "benchmarks.throughput", "pydantic", "onnx", "onnxruntime", "matplotlib", "tensorboard"):
        try:
            imported = __import__(module, fromlist=["_"])
            imports[module] = getattr(imported, "__version__", "ok")
        except Exception as e:  # reported: a missing package fails only the stages that need it
            imports[module] = f"FAILED: {type(e).__name__}: {e}"
    env["imports"] = imports
    print(json.dumps(env, indent=2))
    if any(str(v).startswith("FAILED") for v in imports.values()):
        raise CheckFailed("some entry points do not import (see imports)", env)
    return env


# ----- 2. data


def unpack_data(archive: Path, work: Path, limits: Limits) -> dict[str, Any]:
    from trainer.data import load_split

    data = work / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(data, filter="data")
    started = time.monotonic()
    splits = {split: load_split(data, split, limits.image_size, download=False, cache_dir=work / "cache")
              for split in ("train", "test")}
    return {"dir": str(data), "train": len(splits["train"]), "test": len(splits["test"]),
            "classes": splits["train"].classes, "decode_seconds": round(time.monotonic() - started, 2)}


def training_images(work: Path, limits: Limits) -> Tensor:
    from trainer.data import load_split

    return load_split(work / "data", "train", limits.image_size, download=False, cache_dir=work / "cache").images


# ----- 3. checks


def _grads(model: nn.Module) -> Tensor:
    return torch.cat([p.grad.detach().float().flatten() for p in model.parameters() if p.grad is not None])


def _cosine(a: Tensor, b: Tensor) -> float:
    a, b = a.double(), b.double()  # over 11M elements float32's sums drift past 1.0
    return (a @ b / (a.norm() * b.norm())).item()


def _pairs(images: Tensor, limits: Limits, device: torch.device) -> tuple[Tensor, int]:
    """A real training batch: two views of the first `batch` images, concatenated, channels-last."""
    from trainer.augment import two_views

    g = torch.Generator(device=device).manual_seed(0)
    v1, v2 = two_views(images[:limits.batch].to(device), g, limits.image_size)
    return torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last), len(v1)


def check_steps(images: Tensor, limits: Limits) -> dict[str, Any]:
    """One training step's loss and gradients in eager fp32, eager bf16, compiled bf16, and under DDP with
    SyncBatchNorm at world size 1, from the same weights and views."""
    from trainer.loss import nt_xent
    from trainer.models import SimCLR
    from trainer.speed import autocast

    device = torch.device(limits.device)
    torch.manual_seed(0)
    base = SimCLR().to(device).to(memory_format=torch.channels_last)
    views, b = _pairs(images, limits, device)

    def step(precision: str, wrap: Callable[[nn.Module], nn.Module] = lambda m: m) -> tuple[float, Tensor, float]:
        model = copy.deepcopy(base)
        net = wrap(model)
        started = time.monotonic()
        with autocast(device, precision):
            z = net(views)
        loss = nt_xent(z[:b], z[b:], 0.5)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss.item(), _grads(model), time.monotonic() - started

    fp32, bf16 = step("fp32"), step("bf16")
    compiled = step("bf16", lambda m: torch.compile(m, dynamic=False, backend=limits.compile_backend))
    ddp = _ddp_step(base, views, b, device)
    # bf16 keeps 8 bits of mantissa: at initialisation its gradient is 0.93-0.94 cosine-similar to fp32's
    # (measured on a CPU at 16 and 128 pairs), so both bf16 steps are held to 0.90 against fp32; the loss, a
    # mean over thousands of similarities, to 2%. The same step under DDP at world size 1 must be the same step.
    tolerances = {"bf16_vs_fp32_loss_rel": 0.02, "bf16_vs_fp32_grad_cosine": 0.90,
                  "compiled_bf16_vs_fp32_loss_rel": 0.02, "compiled_bf16_vs_fp32_grad_cosine": 0.90,
                  "compiled_vs_eager_bf16_loss_rel": 0.01,
                  "ddp_vs_fp32_loss_rel": 1e-5, "ddp_vs_fp32_grad_cosine": 0.9999}
    measured = {"bf16_vs_fp32_loss_rel": abs(bf16[0] - fp32[0]) / abs(fp32[0]),
                "bf16_vs_fp32_grad_cosine": _cosine(bf16[1], fp32[1]),
                "compiled_bf16_vs_fp32_loss_rel": abs(compiled[0] - fp32[0]) / abs(fp32[0]),
                "compiled_bf16_vs_fp32_grad_cosine": _cosine(compiled[1], fp32[1]),
                "compiled_vs_eager_bf16_loss_rel": abs(compiled[0] - bf16[0]) / abs(bf16[0]),
                "ddp_vs_fp32_loss_rel": abs(ddp[0] - fp32[0]) / abs(fp32[0]),
                "ddp_vs_fp32_grad_cosine": _cosine(ddp[1], fp32[1])}
    held = {k: (v <= tolerances[k]) if k.endswith("_rel") else (v >= tolerances[k]) for k, v in measured.items()}
    finite = {name: bool(torch.isfinite(r[1]).all()) for name, r in
              (("fp32", fp32), ("bf16", bf16), ("compiled_bf16", compiled), ("ddp", ddp))}
    result = {"pairs": b, "size": limits.image_size, "losses": {"fp32": fp32[0], "bf16": bf16[0],
              "compiled_bf16": compiled[0], "ddp_fp32": ddp[0]}, "first_call_seconds": {
              "fp32": fp32[2], "bf16": bf16[2], "compiled_bf16 (compiles)": compiled[2]},
              "measured": measured, "tolerances": tolerances, "held": held, "finite_gradients": finite,
              "ddp": ddp[2]}
    print(json.dumps(result, indent=2))
    if not (all(held.values()) and all(finite.values())):
        raise CheckFailed("a step check did not hold (see held, finite_gradients)", result)
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_step(base: nn.Module, views: Tensor, b: int, device: torch.device) -> tuple[float, Tensor, str]:
    """The fp32 step through DistributedDataParallel at world size 1: NCCL with SyncBatchNorm on CUDA, gloo on a
    CPU (SyncBatchNorm has no CPU kernels), as trainer.pretrain wraps the model under torchrun."""
    import torch.distributed as dist

    from trainer.loss import nt_xent

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        model = copy.deepcopy(base)
        net = nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else model
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index or 0] if device.type == "cuda"
                                                  else None)
        z = net(views)
        loss = nt_xent(z[:b], z[b:], 0.5)
        loss.backward()
        grads = torch.cat([p.grad.detach().float().flatten() for p in net.module.parameters()])
        return loss.item(), grads, f"{backend}{', SyncBatchNorm' if device.type == 'cuda' else ''}"
    finally:
        dist.destroy_process_group()


def check_resume(work: Path, limits: Limits) -> dict[str, Any]:
    """Checkpoints on the device: a run stopped by SIGTERM inside its second epoch and resumed ends with the
    weights of an unbroken run (deterministic algorithms, eager)."""
    import trainer.pretrain as pretrain
    from trainer import checkpoint
    from trainer.data import load_split
    from trainer.run_dir import RunDir

    n_train = len(load_split(work / "data", "train", limits.image_size, download=False, cache_dir=work / "cache"))
    per_epoch = min(8, n_train // limits.batch)
    base = ["--data-dir", str(work / "data"), "--cache-dir", str(work / "cache"), "--no-download",
            "--image-size", str(limits.image_size), "--batch-size", str(limits.batch), "--device", limits.device,
            "--limit-train", str(per_epoch * limits.batch), "--epochs", "2", "--warmup-epochs", "0",
            "--knn-every", "0", "--checkpoint-every", "1", "--no-compile", "--deterministic",
            "--precision", "bf16" if limits.device == "cuda" else "fp32"]
    runs = work / "resume-check"
    shutil.rmtree(runs, ignore_errors=True)
    stop_at = per_epoch + per_epoch // 2 + 1  # inside the second epoch
    real_views, calls = pretrain.two_views, []

    def views_then_stop(*args: Any) -> Any:
        calls.append(None)
        if len(calls) == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_views(*args)

    try:
        codes = [pretrain.main(base + ["--out", str(runs / "unbroken")])]
        pretrain.two_views = views_then_stop
        codes.append(pretrain.main(base + ["--out", str(runs / "broken")]))
        pretrain.two_views = real_views
        stopped_step = checkpoint.load(RunDir(runs / "broken").latest_checkpoint())["step"]
        codes.append(pretrain.main(["--out", str(runs / "broken"), "--resume"]))
    finally:  # --deterministic set these for the whole process: the timings after must not run under them
        pretrain.two_views = real_views
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
    a, b = (checkpoint.load(RunDir(runs / r).latest_checkpoint(), map_location="cpu")["model"]
            for r in ("unbroken", "broken"))
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    result = {"exit_codes": codes, "steps_per_epoch": per_epoch, "stopped_at_step": stopped_step,
              "max_abs_weight_difference": diff, "identical": all(torch.equal(a[k], b[k]) for k in a)}
    print(json.dumps(result, indent=2))
    if codes != [0, 130, 0] or stopped_step != stop_at or diff > 1e-5:
        raise CheckFailed("stopping and resuming did not reproduce the unbroken run", result)
    return result


# ----- 4. throughput


def throughput(images: Tensor, limits: Limits) -> dict[str, Any]:
    from benchmarks.throughput import device_views, make_train_step, measure
    from trainer.models import SimCLR, flops_per_image

    device = torch.device(limits.device)
    resident = images.to(device)
    flops_per_pair = 3 * flops_per_image(SimCLR(), limits.image_size) * 2  # forward + backward, two views
    fixed, b = _pairs(images, limits, device)
    v1, v2 = fixed[:b], fixed[b:]

    def repeat() -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield v1, v2

    settings = [("views only (trainer.augment, on the device)", None, None, False, True),
                ("step only, eager fp32", "fp32", repeat, False, False),
                ("step only, eager bf16", "bf16", repeat, False, False),
                ("step only, compiled bf16", "bf16", repeat, True, False),
                ("views + step, compiled bf16 (as pretraining)", "bf16", None, True, True)]
    rows, steps = [], {}
    epoch_pairs = 50_000 // limits.batch * limits.batch  # CIFAR-10's training set, whole batches
    for label, precision, source, compiled, views in settings:
        print(f"timing {label} ...", flush=True)
        torch.manual_seed(0)
        if precision is not None and (precision, compiled) not in steps:  # compiled once, timed twice
            steps[precision, compiled] = make_train_step(SimCLR().to(device), device, precision, True, compiled,
                                                         limits.compile_backend)
        consume = (lambda x, y: None) if precision is None else steps[precision, compiled]
        batches = device_views(resident, limits.batch, limits.image_size, device) if views else source()
        r = measure(batches, consume, limits.bench_warmup, limits.bench_steps, limits.batch, device)
        pairs = r["images_per_second"]
        rows.append({"setting": label, "pairs_per_second": round(pairs, 1),
                     "seconds_per_epoch": round(epoch_pairs / pairs, 2),
                     "share_of_bf16_peak": None if precision is None else round(pairs * flops_per_pair /
                                                                                PEAK_BF16_FLOPS, 4),
                     "peak_memory_gib": round(r.get("peak_memory_bytes", 0) / 2 ** 30, 2)})
        print(json.dumps(rows[-1]), flush=True)
    return {"batch": limits.batch, "size": limits.image_size, "flops_per_pair": flops_per_pair,
            "peak_flops": PEAK_BF16_FLOPS, "rows": rows}


# ----- 5-7. pretrain, linear_eval, export


def command(args: list[str], timeout: float) -> dict[str, Any]:
    """A trainer command in its own process, output into this log; SIGTERM at the timeout (pretraining then
    checkpoints where it stands), SIGKILL a minute later."""
    print("$ " + " ".join(args), flush=True)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO)
    try:
        code = proc.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    result = {"exit_code": code, "seconds": round(time.monotonic() - started, 1)}
    if code != 0:
        raise CheckFailed(f"{args[1]} exited with status {code}", result)
    return result


def pretrain(work: Path, limits: Limits, report: Report) -> dict[str, Any]:
    left = limits.deadline_s - report.elapsed() - limits.reserve_s
    budget = max(10.0, min(limits.max_budget_s, left - 25))  # 25 s: the command's start and its last epoch
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    result = command(["-m", "trainer.pretrain", "--data-dir", str(work / "data"), "--out", str(run), "--cache-dir",
                      str(work / "cache"), "--no-download", "--time-budget", f"{budget:.0f}s",
                      *limits.pretrain_args], timeout=left)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "loss" in r]
    knn = [r for r in rows if "knn_top1" in r]
    plan = json.loads((run / "budget.json").read_text()) if (run / "budget.json").is_file() else None
    return {**result, "time_budget_s": round(budget), "plan": plan, "epochs": trained[-1]["epoch"] if trained else 0,
            "steps": trained[-1]["step"] if trained else 0, "last_loss": trained[-1]["loss"] if trained else None,
            "epoch_seconds_median": sorted(r["epoch_seconds"] for r in trained)[len(trained) // 2] if trained
            else None, "steps_seconds": round(sum(r["epoch_seconds"] for r in trained), 1),
            "knn_top1_last": knn[-1]["knn_top1"] if knn else None}


def linear_eval(work: Path, limits: Limits, report: Report) -> dict[str, Any]:
    result = command(["-m", "trainer.linear_eval", "--run", str(work / "run"), "--cache-dir", str(work / "cache"),
                      "--no-download", "--data-name", limits.data_name, *limits.eval_args],
                     timeout=limits.deadline_s - report.elapsed() - 15)
    metrics = json.loads((work / "run" / "eval" / "metrics.json").read_text())
    return {**result, **{k: metrics[k] for k in ("top1", "top3", "top5", "knn_top1", "knn_top5") if k in metrics}}


def export(work: Path, limits: Limits, report: Report) -> dict[str, Any]:
    bundle = work / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    result = command(["-m", "trainer.export", "--run", str(work / "run"), "--out", str(bundle), "--half"],
                     timeout=limits.deadline_s - report.elapsed() - 10)
    return {**result, "files": {p.name: p.stat().st_size for p in sorted(bundle.iterdir())}}


# ----- 8. pack


RUN_FILES = ("config.json", "budget.json", "metrics.jsonl", "starts.jsonl", "curves.png")


def pack(work: Path, out: Path) -> dict[str, Any]:
    """results.tar.gz (bundle/, run/ without checkpoints and caches, run/eval/) in parts of PART_BYTES."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        if (work / "bundle").is_dir():
            tar.add(work / "bundle", "bundle")
        for name in RUN_FILES:
            if (work / "run" / name).is_file():
                tar.add(work / "run" / name, f"run/{name}")
        if (work / "run" / "eval").is_dir():
            tar.add(work / "run" / "eval", "run/eval")
    data = buffer.getvalue()
    parts = [data[i:i + PART_BYTES] for i in range(0, len(data), PART_BYTES)]
    if len(parts) > MAX_RESULT_FILES - 2:
        raise CheckFailed(f"the results take {len(parts)} parts; only {MAX_RESULT_FILES - 2} fit", {})
    files = {}
    for i, part in enumerate(parts):
        name = f"results.tar.gz.part-{i:02d}"
        (out / name).write_bytes(part)
        files[name] = {"bytes": len(part), "sha256": hashlib.sha256(part).hexdigest()}
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "parts": files}


def unpack(files_at: Path, dest: Path) -> int:
    """Verify the parts against summary.json, reassemble results.tar.gz and extract it into dest."""
    summary = json.loads((files_at / "summary.json").read_text())
    packed = summary["stages"].get("pack", {}).get("result")
    if not packed:
        print(f"error: {files_at}/summary.json records no packed results (the pack stage did not finish)",
              file=sys.stderr)
        return 2
    chunks = []
    for name, meta in packed["parts"].items():
        chunk = (files_at / name).read_bytes()
        if hashlib.sha256(chunk).hexdigest() != meta["sha256"]:
            print(f"error: {name} does not match its sha256 in summary.json", file=sys.stderr)
            return 2
        chunks.append(chunk)
    data = b"".join(chunks)
    if hashlib.sha256(data).hexdigest() != packed["sha256"]:
        print("error: the reassembled archive does not match its sha256", file=sys.stderr)
        return 2
    if dest.exists() and any(dest.iterdir()):
        print(f"error: {dest} is not empty", file=sys.stderr)
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    print(f"{dest}: bundle/ and run/ ({len(data) / 2 ** 20:.1f} MiB, {len(chunks)} parts verified)")
    return 0


# ----- 9. serving


def serving(limits: Limits) -> dict[str, Any]:
    """The service's model (the committed reference bundle) on the device: latency per batch and runtime, and
    each runtime's top-3 of the ten committed reference images against fp32's."""
    import numpy as np

    from contract.bundle import load_bundle
    from service.model import Model

    model = Model(load_bundle(REPO / "models" / "reference"), "torch-fp32", limits.device)
    pngs = sorted((REPO / "tests" / "reference").glob("*.png"))
    reference = Model.batch([model.preprocess(p.read_bytes(), 10 ** 7) for p in pngs])
    rows, top3 = [], {}
    for runtime in [r for r in model.runtimes if r.startswith("torch")]:
        model.use(runtime)
        top3[runtime] = model.infer(reference).probabilities.topk(3, dim=1).indices.tolist()
        for batch in limits.serving_batches:
            images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, 3, model.size, model.size),
                                                                       dtype=np.uint8))
            for _ in range(3):
                model.infer(images)
            times = []
            for _ in range(20):
                started = time.perf_counter()
                model.infer(images)  # its outputs come back to the CPU: the wait is in the timing
                times.append(time.perf_counter() - started)
            times.sort()
            rows.append({"runtime": runtime, "batch": batch, "p50_ms": round(1000 * times[len(times) // 2], 3),
                         "images_per_second": round(batch / times[len(times) // 2], 1)})
            print(json.dumps(rows[-1]), flush=True)
    agree = {r: sum(a == b for a, b in zip(t, top3["torch-fp32"])) / len(pngs) for r, t in top3.items()}
    return {"rows": rows, "top3_same_order_as_fp32": agree}


# ----- the run


def table(report: Report) -> str:
    """The short table printed last: stage statuses, then the figures that matter."""
    stages = report.data["stages"]
    lines = ["", "stage        status  seconds"]
    lines += [f"{name:<12} {s['status']:<7} {s['seconds']:>7.1f}" for name, s in stages.items()]
    rows = ((stages.get("throughput") or {}).get("result") or {}).get("rows", [])
    if rows:
        lines += ["", f"{'setting':<46}{'pairs/s':>10}{'s/epoch':>9}{'peak':>8}"]
        lines += [f"{r['setting']:<46}{r['pairs_per_second']:>10.0f}{r['seconds_per_epoch']:>9.2f}"
                  + (f"{100 * r['share_of_bf16_peak']:>7.1f}%" if r["share_of_bf16_peak"] is not None else "")
                  for r in rows]
    trained = (stages.get("pretrain") or {}).get("result")
    if trained:
        lines.append(f"\npretrain: {trained['epochs']} epochs, {trained['steps']} steps in {trained['steps_seconds']} s"
                     f" (budget {trained['time_budget_s']} s), last loss {trained['last_loss']}")
    evaluated = (stages.get("linear_eval") or {}).get("result")
    if evaluated:
        lines.append(f"linear top-1 {100 * evaluated['top1']:.2f}%  top-3 {100 * evaluated['top3']:.2f}%  "
                     f"kNN top-1 {100 * evaluated.get('knn_top1', math.nan):.2f}%")
    lines.append(f"total {report.elapsed():.0f} s")
    return "\n".join(lines)


def run(out: Path, archive: Path, work: Path, limits: Limits) -> int:
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    report = Report(out, limits)
    report.stage("env", environment)
    data = report.stage("data", unpack_data, archive, work, limits)
    images = training_images(work, limits) if data else None
    if images is not None:
        report.stage("checks", check_steps, images, limits)
        report.stage("resume", check_resume, work, limits)
        report.stage("throughput", throughput, images, limits)
        report.stage("pretrain", pretrain, work, limits, report)
        if (work / "run" / "checkpoints").is_dir():
            report.stage("linear_eval", linear_eval, work, limits, report)
            report.stage("export", export, work, limits, report)
    report.stage("pack", pack, work, out)
    if limits.deadline_s - report.elapsed() > 20:
        report.stage("serving", serving, limits)
    print(table(report), flush=True)
    report.save()
    failed = [name for name, s in report.data["stages"].items() if s["status"] != "ok"]
    print(f"failed stages: {', '.join(failed)}" if failed else "every stage passed", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["unpack"]:
        p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_run unpack")
        p.add_argument("files_at", type=Path, help="the folder the device tool put the result files in")
        p.add_argument("dest", type=Path, help="where bundle/ and run/ go (must be empty or new)")
        args = p.parse_args(argv[1:])
        return unpack(args.files_at, args.dest)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-run-out")),
                   help="where the result files go (default: $OUT)")
    p.add_argument("--archive", type=Path, default=REPO / ".carry" / "cifar10-jpeg.tar.gz",
                   help="the data as a .tar.gz of train/<class>/* and test/<class>/*")
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu-run"), help="scratch space (data, run, caches)")
    p.add_argument("--rehearse", action="store_true", help="tiny limits on the CPU: what the test runs")
    args = p.parse_args(argv)
    limits = Limits.rehearsal() if args.rehearse else Limits()
    if limits.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; --rehearse runs the same stages on the CPU", file=sys.stderr)
        return 2
    if not args.archive.is_file():
        print(f"error: {args.archive} does not exist (benchmarks/gpu_prepare.sh puts the data there)",
              file=sys.stderr)
        return 2
    if limits.device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, for the resume check
    return run(args.out, args.archive, args.work, limits)


if __name__ == "__main__":
    sys.exit(main())
