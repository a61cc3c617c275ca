"""Faults during training: SIGKILL at a random moment and in the middle of a checkpoint write. Nothing is lost:
every checkpoint on disk loads, and a resumed run completes."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer import checkpoint
from trainer.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3


def train_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainer.pretrain", "--data-dir", str(data), "--out", str(out), "--image-size", "16",
            "--batch-size", "32", "--epochs", str(EPOCHS), "--checkpoint-every", "1", "--keep-checkpoints", "5",
            "--device", "cpu", "--knn-every", "0", "--cache-dir", str(out.parent / "cache"), "--no-download", *extra]


def every_checkpoint_loads(run: Path) -> list[int]:
    """The epochs of the named checkpoints, each loaded. A kill mid-write leaves a temporary file, never a name."""
    return [checkpoint.load(path)["epoch"] for path in RunDir(run).list_checkpoints()]


def resume_to_the_end(run: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "trainer.pretrain", "--out", str(run), "--resume"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert every_checkpoint_loads(run)[-1] == EPOCHS
    assert not list((run / "checkpoints").glob("*.tmp")), "the resumed run left a temporary file behind"


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume(tmp_path, pattern_folder):
    run = tmp_path / "run"
    process = subprocess.Popen(train_command(pattern_folder, run), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not RunDir(run).list_checkpoints() and time.monotonic() < deadline:  # let it reach epoch 1 at least
        time.sleep(0.05)
    time.sleep(random.Random(os.getpid()).uniform(0, 2))  # then anywhere: mid-step, mid-write, between epochs
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert every_checkpoint_loads(run)
    resume_to_the_end(run)


@pytest.mark.slow
def test_sigterm_stops_with_the_resume_command_then_resumes(tmp_path, pattern_folder):
    run = tmp_path / "run"
    process = subprocess.Popen(train_command(pattern_folder, run), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not RunDir(run).list_checkpoints() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert f"interrupted: resume with --out {run} --resume" in stderr
    assert "Traceback" not in stderr
    resume_to_the_end(run)


KILL_IN_WRITE = """
import os, signal, sys
from trainer import checkpoint, pretrain
real = checkpoint.atomic_write
def dying_write(path, write):
    if path.name == "epoch_0002.pt":
        def half(f):
            f.write(b"x" * 4096); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
        return real(path, half)
    return real(path, write)
checkpoint.atomic_write = dying_write
sys.exit(pretrain.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_checkpoint_write(tmp_path, pattern_folder):
    run = tmp_path / "run"
    command = train_command(pattern_folder, run)
    result = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, *command[3:]], cwd=REPO, capture_output=True,
                            timeout=300)
    assert result.returncode == -signal.SIGKILL
    assert list((run / "checkpoints").glob(".epoch_0002.pt.*.tmp"))  # the half-written file never got its name
    assert [p.name for p in RunDir(run).list_checkpoints()] == ["epoch_0001.pt"]
    assert checkpoint.load(RunDir(run).latest_checkpoint())["epoch"] == 1
    resume_to_the_end(run)  # and the resumed run sweeps the leftover away
