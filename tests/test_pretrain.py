import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import pattern_images, write_image_folder
from trainer import checkpoint, provenance
from trainer.pretrain import main
from trainer.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]


def tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data), "--out", str(out), "--image-size", "16", "--batch-size", "32",
            "--device", "cpu", "--warmup-epochs", "0", "--knn-every", "0", "--cache-dir", str(out.parent / "cache"),
            "--no-download", "--no-compile", "--precision", "fp32", *extra]


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own exit on a bad flag
        return e.code


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # after any progress bar
    assert last.startswith("error: ")
    return last


def test_bad_inputs_give_one_line_errors(tmp_path, pattern_folder, capsys):
    out = tmp_path / "run"
    empty_class = tmp_path / "empty_class"
    (empty_class / "train" / "a").mkdir(parents=True)
    (empty_class / "train" / "b").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(empty_class / "train" / "a" / "0.png")
    unreadable = tmp_path / "unreadable"
    shutil.copytree(pattern_folder, unreadable)
    (unreadable / "train" / "checker" / "bad.png").write_bytes(b"\x89PNG broken")
    cases = [
        (tiny_args(tmp_path / "missing", out), "CIFAR-10 is not there"),
        (tiny_args(empty_class, out), "has no images"),
        (tiny_args(unreadable, out), "cannot read image"),
        (tiny_args(pattern_folder, out, "--backbone", "resnet9"), "invalid choice: 'resnet9'"),
        (tiny_args(pattern_folder, out, "--batch-size", "1000"), "larger than the data set"),
        (["--out", str(tmp_path / "nowhere"), "--resume"], "cannot resume"),
        (tiny_args(pattern_folder, out, "--epochs", "-1"), "--epochs must be positive"),
        (tiny_args(pattern_folder, out, "--config", str(tmp_path / "none.toml")), "does not exist"),
        (tiny_args(pattern_folder, out, "--config", str(tmp_path)), "cannot be read"),
        (tiny_args(pattern_folder, out, "--epochs", "inf"), "--epochs must be positive"),
        (tiny_args(pattern_folder, out, "--warmup-epochs", "nan"), "--warmup-epochs must be 0 or more"),
        (tiny_args(pattern_folder, out, "--lr", "-1"), "--lr must be positive"),
        (tiny_args(pattern_folder, out, "--weight-decay", "-0.1"), "--weight-decay must be 0 or more"),
        (tiny_args(pattern_folder, out, "--knn-k", "-1"), "--knn-k must be at least 1"),
    ]
    for argv, message in cases:
        assert exit_code(argv) == 2, argv
        line = error_line(capsys)
        assert re.search(message, line), line


def test_a_damaged_image_cache_is_decoded_again(tmp_path, pattern_folder):
    out = tmp_path / "run"
    assert main(tiny_args(pattern_folder, out, "--epochs", "1")) == 0
    caches = list((tmp_path / "cache").glob("*.npz"))  # the splits' decoded images
    for cache in caches:
        cache.write_bytes(cache.read_bytes()[:100])  # a BadZipFile traceback before
    assert main(tiny_args(pattern_folder, tmp_path / "again", "--epochs", "1")) == 0
    assert caches and all(cache.stat().st_size > 100 for cache in caches)  # written anew


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "trainer.pretrain", "--data-dir", str(tmp_path / "none"),
                             "--no-download", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: CIFAR-10 is not there") and "Traceback" not in result.stderr
    assert "image folder" in result.stderr


class Killed(Exception):
    pass


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_resume_ends_with_the_same_weights_as_an_unbroken_run(tmp_path, pattern_folder, monkeypatch, compiled):
    args = ["--epochs", "3", "--checkpoint-every", "1", "--deterministic", *(["--compile"] if compiled else [])]
    assert main(tiny_args(pattern_folder, tmp_path / "unbroken", *args)) == 0

    real_save = RunDir.save_checkpoint

    def save_then_die(run, epoch, state, keep):
        path = real_save(run, epoch, state, keep)
        if epoch == 1:
            raise Killed
        return path

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        main(tiny_args(pattern_folder, tmp_path / "broken", *args))
    monkeypatch.setattr(RunDir, "save_checkpoint", real_save)
    assert main(tiny_args(pattern_folder, tmp_path / "broken", *args)) == 2  # refuses to overwrite the run
    assert main(["--out", str(tmp_path / "broken"), "--resume"]) == 0

    a = checkpoint.load(RunDir(tmp_path / "unbroken").latest_checkpoint())
    b = checkpoint.load(RunDir(tmp_path / "broken").latest_checkpoint())
    assert a["epoch"] == b["epoch"] == 3
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    rows = lambda run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows("unbroken")] == [r["loss"] for r in rows("broken")]
    starts = [json.loads(line) for line in (tmp_path / "broken" / "starts.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in starts] == [0, 1]  # the start, then the resume (the refused start left no row)
    assert {s["machine"] for s in starts} == {provenance.machine(torch.device("cpu"))}
    assert {s["commit"] for s in starts} == {provenance.commit()}
    assert (tmp_path / "broken" / "curves.png").stat().st_size > 0


def test_flags_given_with_resume_hold_from_there_on(tmp_path, pattern_folder, capsys):
    """More --epochs, another --lr: the resumed run follows the config it records, not the schedule its checkpoint
    saved (which ended at the old epoch count, so the added epochs trained at lr 0)."""
    out = tmp_path / "run"
    assert main(tiny_args(pattern_folder, out, "--epochs", "2", "--lr", "0.1")) == 0
    assert main(["--out", str(out), "--resume", "--epochs", "4", "--lr", "0.2"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((out / "config.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and (config["epochs"], config["lr"]) == (4, 0.2)
    assert rows[2]["lr"] > 0 and rows[3]["lr"] < rows[2]["lr"]  # on a cosine to 0 at epoch 4, not at 0 already
    state = checkpoint.load(RunDir(out).latest_checkpoint())
    assert state["scheduler"]["base_lrs"][0] == 0.2  # --lr is the peak itself
    assert main(["--out", str(out), "--resume", "--epochs", "5", "--optimizer", "lars"]) == 2
    assert "trained with --optimizer sgd" in error_line(capsys)


def test_resume_refuses_a_checkpoint_of_another_backbone(tmp_path, pattern_folder, capsys):
    assert main(tiny_args(pattern_folder, tmp_path / "run", "--epochs", "1")) == 0
    assert main(["--out", str(tmp_path / "run"), "--resume", "--backbone", "resnet34", "--epochs", "2"]) == 2
    assert "does not fit" in error_line(capsys)
    path = RunDir(tmp_path / "run").latest_checkpoint()
    path.write_bytes(path.read_bytes()[:1000])
    assert main(["--out", str(tmp_path / "run"), "--resume", "--epochs", "2"]) == 2
    assert "corrupt or truncated" in error_line(capsys)


@pytest.mark.slow
def test_short_run_learns_features_far_better_than_initialisation(tmp_path):
    """Patterns whose class survives crops and flips but whose period and phase do not: SimCLR must learn the
    invariance. Random-init kNN sits near 0.75 here; 24 steps of training reach about 0.9."""
    data = tmp_path / "patterns"
    write_image_folder(data, "train", *pattern_images(48, seed=0))
    write_image_folder(data, "test", *pattern_images(24, seed=1))
    out = tmp_path / "run"
    argv = tiny_args(data, out, "--epochs", "8", "--batch-size", "64", "--lr", "0.1", "--knn-every", "8",
                     "--knn-k", "20")
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    initial, final = rows[0], rows[-1]
    assert initial["epoch"] == 0 and final["epoch"] == 8
    assert final["loss"] < rows[1]["loss"]
    margin = 0.08  # 8 points of kNN top-1 over the untrained network, on 96 test images
    assert final["knn_top1"] >= initial["knn_top1"] + margin, (initial, final)


def _torchrun(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


@pytest.mark.slow
def test_torchrun_two_processes_on_one_node_and_on_two(tmp_path, pattern_folder):
    """Global batch 32 as one process, as two processes on one node, and as two nodes of one process each
    meeting over c10d rendezvous on 127.0.0.1 (what two machines do, docs/training.md). The two-process runs
    must agree exactly: the same global batch, split the same way. One process differs a little: on a CPU each
    process normalises its half batch (SyncBatchNorm has no CPU kernels; on CUDA the runs share statistics)."""
    train = ("--epochs", "1", "--knn-every", "1", "--deterministic")
    single, standalone, nodes = tmp_path / "single", tmp_path / "standalone", tmp_path / "nodes"
    assert main(tiny_args(pattern_folder, single, *train)) == 0
    one_node = _torchrun("--standalone", "--nproc-per-node", "2", "-m", "trainer.pretrain",
                         *tiny_args(pattern_folder, standalone, *train))
    assert one_node.wait(timeout=300) == 0, one_node.stdout.read()[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agents = [_torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                        f"127.0.0.1:{port}", "--rdzv-id", "test", "--rdzv-conf", f"is_host={int(node == 0)}",
                        "-m", "trainer.pretrain", *tiny_args(pattern_folder, nodes, *train)) for node in (0, 1)]
    for agent in agents:
        assert agent.wait(timeout=300) == 0, agent.stdout.read()[-2000:]

    for out in (standalone, nodes):
        state = checkpoint.load(RunDir(out).latest_checkpoint())
        assert state["epoch"] == 1 and state["step"] == 2  # 64 images / global batch 32
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [0, 1] and "knn_top1" in rows[1]  # logged once, by rank 0
    assert _losses(nodes) == pytest.approx(_losses(standalone), rel=1e-5)
    assert _losses(nodes) == pytest.approx(_losses(single), rel=0.05)


def test_resolution_schedule_fractional_epochs_and_the_lr_reaching_zero(tmp_path, pattern_folder, monkeypatch,
                                                                       capsys):
    """64 images at batch 32: 2 steps per epoch; 1.5 epochs is 3 steps, the first two at 8 px, the last at 16."""
    import trainer.pretrain as pretrain

    sizes = []
    real_views = pretrain.two_views

    def spy(images, g, size, *args):
        sizes.append(size)
        return real_views(images, g, size, *args)

    monkeypatch.setattr(pretrain, "two_views", spy)
    out = tmp_path / "run"
    assert main(tiny_args(pattern_folder, out, "--epochs", "1.5", "--resolution-schedule", "8:0.5,16",
                          "--knn-every", "1")) == 0
    assert sizes == [8, 8, 16]
    assert "plan: 3 steps (1.5 epochs: 2 at 8 px, 1 at 16 px)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r.get("step"), r.get("image_size")) for r in rows] == [(0, None, None), (1, 2, 8), (2, 3, 16)]
    assert rows[-1]["lr"] == 0.0 and rows[1]["lr"] > 0  # the cosine ends exactly at the planned last step
    assert "knn_top1" in rows[-1] and rows[-1]["eta_seconds"] == 0
    assert checkpoint.load(RunDir(out).latest_checkpoint())["step"] == 3
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")  # redrawn every epoch, for watching a long run


def test_validation_split_is_held_out_of_pretraining(pattern_folder):
    from trainer.config import make_config
    from trainer.pretrain import load_data

    config = make_config({"data_dir": str(pattern_folder), "val_split": 16, "knn_bank": 20, "cache_dir": "",
                          "download": False})
    train, bank, queries = load_data(config)
    assert (len(train), len(bank), len(queries)) == (48, 20, 16)
    assert torch.bincount(queries.labels).tolist() == [4, 4, 4, 4]  # class-balanced
    seen = {bytes(image.numpy()) for image in train.images}
    assert not any(bytes(image.numpy()) in seen for image in queries.images)  # never trained on
    assert all(bytes(image.numpy()) in seen for image in bank.images)


def test_a_model_that_cannot_compile_trains_eager_and_says_so_once(tmp_path, pattern_folder, monkeypatch, capsys):
    import trainer.pretrain as pretrain

    class Uncompilable(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("backend compiler failed\nmore detail")

    monkeypatch.setattr(pretrain.torch, "compile", lambda module, **kwargs: Uncompilable())
    out = tmp_path / "run"
    assert main(tiny_args(pattern_folder, out, "--epochs", "2", "--compile")) == 0
    captured = capsys.readouterr()
    said = (captured.out + captured.err).count("torch.compile failed (RuntimeError: backend compiler failed)")
    assert said == 1
    assert checkpoint.load(RunDir(out).latest_checkpoint())["step"] == 4


def test_a_run_too_long_for_a_cpu_points_at_the_cpu_recipe(tmp_path, pattern_folder, monkeypatch, capsys):
    import trainer.pretrain as pretrain

    monkeypatch.setattr(pretrain, "CPU_PATIENCE_S", 0.0)  # every run is too long: the advice must follow the plan
    assert main(tiny_args(pattern_folder, tmp_path / "run", "--epochs", "1")) == 0
    out = capsys.readouterr().out
    assert "plan: 2 steps" in out and f"--config {pretrain.CPU_RECIPE}" in out
    assert (REPO / pretrain.CPU_RECIPE).is_file()


def test_a_backward_that_cannot_compile_trains_eager_and_says_so_once(tmp_path, pattern_folder, monkeypatch, capsys):
    """torch.compile compiles the backward at the first backward call: a failure there falls back too."""
    import trainer.pretrain as pretrain

    class FailingBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("backward graph failed to compile")

    class CompiledForwardOnly(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return FailingBackward.apply(self.module(x))

    monkeypatch.setattr(pretrain.torch, "compile", lambda module, **kwargs: CompiledForwardOnly(module))
    out = tmp_path / "run"
    assert main(tiny_args(pattern_folder, out, "--epochs", "2", "--compile")) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("torch.compile failed (RuntimeError: backward graph failed") == 1
    state = checkpoint.load(RunDir(out).latest_checkpoint())
    assert state["step"] == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in rows)
