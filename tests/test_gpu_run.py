"""The GPU session's script (benchmarks/gpu_run.py), rehearsed on the CPU with tiny limits: every stage runs and
passes, and what comes back fits the device tool's limits and reassembles into a bundle the service loads."""

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from benchmarks.gpu_run import MAX_RESULT_FILES, PART_BYTES, main as gpu_run
from contract.bundle import load_bundle
from tests.conftest import pattern_images, write_image_folder

REPO = Path(__file__).resolve().parents[1]


def test_the_device_command_fits_the_tool():
    line = next(l for l in (REPO / "benchmarks" / "gpu_run.sh").read_text().splitlines() if "run(command=" in l)
    command = re.search(r'command="([^"]+)"', line).group(1)
    assert len(command) < 2000 and (REPO / command.split()[-1]).is_file()
    assert re.search(r'timeout_s=(\d+)', line).group(1) == "600"


@pytest.mark.slow
def test_rehearsal_runs_every_stage_and_returns_files_within_the_limits(tmp_path):
    data = tmp_path / "patterns"
    write_image_folder(data, "train", *pattern_images(16, seed=0))
    write_image_folder(data, "test", *pattern_images(8, seed=1))
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(data / split, split)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "benchmarks/gpu_run.sh", "--rehearse", "--archive", str(archive), "--work",
                             str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = (out / "log.txt").read_text()
    assert result.returncode == 0, log[-3000:]
    assert "every stage passed" in log and "linear top-1" in log

    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) <= MAX_RESULT_FILES and all(p.stat().st_size <= PART_BYTES for p in files)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) and p.parent == out for p in files)
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["stages"]
    assert list(stages) == ["env", "data", "checks", "resume", "throughput", "pretrain", "linear_eval", "export",
                            "pack", "serving"]
    assert all(s["status"] == "ok" for s in stages.values())
    assert stages["resume"]["result"]["identical"]
    assert stages["pretrain"]["result"]["plan"]["plans"]  # the budget planned the run
    assert len(stages["throughput"]["result"]["rows"]) == 5

    dest = tmp_path / "back"
    assert gpu_run(["unpack", str(out), str(dest)]) == 0
    bundle = load_bundle(dest / "bundle")  # checksums verified
    assert bundle.manifest.metrics is not None and bundle.manifest.metrics.protocol.data_name == "patterns (rehearsal)"
    assert (dest / "run" / "eval" / "metrics.json").is_file() and (dest / "run" / "budget.json").is_file()
    part = next(out.glob("results.tar.gz.part-*"))
    part.write_bytes(part.read_bytes()[:-1] + b"x")
    assert gpu_run(["unpack", str(out), str(tmp_path / "again")]) == 2  # a damaged part is refused
