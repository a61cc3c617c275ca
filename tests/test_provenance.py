"""trainer.provenance: what a bundle's manifest says trained it (machines, commits, hours), from the run's
starts and metrics."""

from __future__ import annotations

import json
import subprocess

import torch

from trainer import provenance
from trainer.run_dir import RunDir


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_summary_counts_the_epochs_and_starts_up_to_the_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    write_jsonl(run.metrics, [{"epoch": 0, "knn_top1": 0.3}] + [
        {"epoch": e, "loss": 1.0, "epoch_seconds": 1800.0 * e} for e in (1, 2, 3, 4)])
    write_jsonl(run.starts, [{"epoch": 0, "machine": "A", "commit": "c1"},
                             {"epoch": 1, "machine": "A", "commit": None},  # run where git was not at hand
                             {"epoch": 2, "machine": "B", "commit": "c1"},
                             {"epoch": 3, "machine": "C", "commit": "c2"}])  # trained epoch 4 only
    assert provenance.summary(run, 3) == {"hours": 3.0, "median_pace_hours": 3.0, "machines": ["A", "B"],
                                          "commits": ["c1", "unknown"]}
    assert provenance.summary(run, 4)["machines"] == ["A", "B", "C"]


def test_median_pace_takes_out_the_epochs_a_pause_or_another_job_slowed(tmp_path):
    run = RunDir(tmp_path)
    small = [600.0, 610.0, 3000.0, 590.0, 600.0]  # the third epoch was paused for 40 minutes
    large = [1000.0, 1020.0, 5000.0]  # then larger views, slower epochs, one of them shared
    write_jsonl(run.metrics, [{"epoch": e, "image_size": size, "epoch_seconds": s} for e, (size, s) in
                              enumerate([(24, s) for s in small] + [(32, s) for s in large], start=1)])
    summary = provenance.summary(run, 8)
    assert summary["hours"] == round((sum(small) + sum(large)) / 3600, 2)
    assert summary["median_pace_hours"] == round((5 * 600.0 + 3 * 1020.0) / 3600, 2)


def test_a_run_from_before_starts_were_recorded_says_nothing_of_them(tmp_path):
    assert provenance.summary(RunDir(tmp_path), 3) == {"hours": None, "median_pace_hours": None, "machines": [],
                                                       "commits": []}


def test_the_machine_and_the_commit_are_this_ones(monkeypatch, tmp_path):
    line = provenance.machine(torch.device("cpu"))
    assert f"{torch.get_num_threads()} torch threads" in line and torch.__version__ in line
    head = subprocess.run(["git", "-C", str(provenance.REPOSITORY), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert provenance.commit().removesuffix("+dirty") == head
    monkeypatch.setattr(provenance, "REPOSITORY", tmp_path)  # no checkout: said, not guessed
    assert provenance.commit() is None
