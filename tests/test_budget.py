"""--time-budget: the plan that fills a budget, on a fake clock (one second a step, or slower where a test says)."""

import json
import os
import signal

import pytest
import torch

from tests.test_pretrain import tiny_args
from trainer import budget, checkpoint
from trainer.budget import TimeBudget, parse_duration
from trainer.errors import UserError
from trainer.pretrain import main
from trainer.resolution import ResolutionSchedule
from trainer.run_dir import RunDir


def test_durations():
    assert [parse_duration(t) for t in ("90", "90s", "7m", "1.5h", "12h30m", "1d")] == [
        90, 90, 420, 5400, 45000, 86400]
    for bad in ("", "7 minutes", "m", "0s", "5x", "7m7"):
        with pytest.raises(UserError, match="--time-budget"):
            parse_duration(bad)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_plan_fills_what_is_left_costing_unseen_view_sizes_by_their_pixels(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(budget, "now", clock)
    b = TimeBudget("100s")
    b.start()
    clock.t = 4.0
    assert not b.due(2, 0)  # the warm-up ends here
    clock.t = 14.0  # then 20 steps at 0.5 s, at 16 px
    assert b.due(22, 0)
    schedule = ResolutionSchedule.parse("16:0.5,32", 32)
    total = b.plan(22, 16, schedule)
    # 86 s left; steps from 22 to total/2 cost 0.5 s, the other half 2 s (4x the pixels)
    cost = lambda n: sum(k * 0.5 * (s / 16) ** 2 for s, k in schedule.steps_per_size(n, 22).items())
    assert cost(total) <= 86 < cost(total + 1)
    assert b.due(max(23, total // 2), 0) and not b.due(total // 2 + 1, 0)


def run_on_fake_clock(monkeypatch, argv, seconds_per_step=lambda step: 1.0, stop_at=None):
    """main(argv) with the budget's clock advancing seconds_per_step(step) at each step; SIGTERM during step
    stop_at. Returns (exit code, the clock's time at the end)."""
    import trainer.pretrain as pretrain

    clock = FakeClock()
    monkeypatch.setattr(budget, "now", clock)
    real_views = pretrain.two_views
    calls = []

    def views(*args):
        calls.append(None)
        clock.t += seconds_per_step(len(calls))
        if len(calls) == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_views(*args)

    monkeypatch.setattr(pretrain, "two_views", views)
    return main(argv), clock.t


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_budgeted_run_ends_at_its_budget_with_the_learning_rate_at_zero(tmp_path, pattern_folder, monkeypatch):
    out = tmp_path / "run"
    code, elapsed = run_on_fake_clock(monkeypatch, tiny_args(pattern_folder, out, "--time-budget", "60s"))
    assert code == 0
    assert 59 <= elapsed <= 61  # within one step of the budget
    state = checkpoint.load(RunDir(out).latest_checkpoint())
    assert state["step"] == 60 and rows(out)[-1]["lr"] == 0.0
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 30 and config["time_budget"] is None  # the plan, as an ordinary run's length
    plans = json.loads((out / "budget.json").read_text())["plans"]
    assert [p["at_step"] for p in plans] == [22, 30] and [p["steps"] for p in plans] == [60, 60]


def test_the_budget_ends_a_run_whose_pace_falls_after_its_plan(tmp_path, pattern_folder, monkeypatch, capsys):
    out = tmp_path / "run"
    slower = lambda step: 1.0 if step <= 30 else 3.0  # after the second plan, at step 30 (t = 30 s)
    code, elapsed = run_on_fake_clock(monkeypatch, tiny_args(pattern_folder, out, "--time-budget", "60s"), slower)
    assert code == 0 and 60 <= elapsed <= 63
    assert "the --time-budget ran out 20 steps before its plan's end" in capsys.readouterr().out
    assert checkpoint.load(RunDir(out).latest_checkpoint())["step"] == 40
    assert rows(out)[-1]["step"] == 40


def test_a_stopped_budgeted_run_resumes_with_its_plan_to_the_same_weights(tmp_path, pattern_folder, monkeypatch,
                                                                         capsys):
    args = ("--time-budget", "60s", "--deterministic", "--checkpoint-every", "100")
    assert run_on_fake_clock(monkeypatch, tiny_args(pattern_folder, tmp_path / "unbroken", *args))[0] == 0
    broken = tmp_path / "broken"
    code, _ = run_on_fake_clock(monkeypatch, tiny_args(pattern_folder, broken, *args), stop_at=45)
    assert code == 130 and "interrupted: resume with" in capsys.readouterr().err
    stopped = checkpoint.load(RunDir(broken).latest_checkpoint())
    assert stopped["step"] == 45 and "partial" in stopped  # inside epoch 23: its random state travels
    # The resume plans nothing: a clock ten times slower would plan fewer steps, and it must not matter.
    code, _ = run_on_fake_clock(monkeypatch, ["--out", str(broken), "--resume"], lambda step: 10.0)
    assert code == 0
    a = checkpoint.load(RunDir(tmp_path / "unbroken").latest_checkpoint())
    b = checkpoint.load(RunDir(broken).latest_checkpoint())
    assert a["step"] == b["step"] == 60
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert [r["loss"] for r in rows(tmp_path / "unbroken")] == [r["loss"] for r in rows(broken)]


def test_epochs_given_as_a_flag_set_aside_a_budget_from_the_recipe_file(tmp_path):
    from pathlib import Path

    from trainer.pretrain import resolve_config

    recipe = Path(__file__).resolve().parents[1] / "trainer" / "recipes" / "cpu-reference.toml"
    config, _ = resolve_config({"config": str(recipe)})
    assert config.time_budget == "12h"
    config, _ = resolve_config({"config": str(recipe), "epochs": 65.0})
    assert (config.time_budget, config.epochs) == (None, 65.0)  # how models/reference was trained
    config, _ = resolve_config({"config": str(recipe), "time_budget": "30m"})
    assert config.time_budget == "30m"


def test_a_run_stopped_in_its_first_epoch_resumes_keeping_its_history(tmp_path, pattern_folder, monkeypatch):
    """Stopped inside epoch 1 (a CPU epoch takes minutes), with a metrics line torn by the kill: the resume keeps
    the first start's row in starts.jsonl (it wrote the file afresh, as a new run does) and reads past the torn
    line (a JSONDecodeError before)."""
    out = tmp_path / "run"
    code, _ = run_on_fake_clock(monkeypatch, tiny_args(pattern_folder, out, "--epochs", "2"), stop_at=1)
    assert code == 130 and checkpoint.load(RunDir(out).latest_checkpoint())["step"] == 1
    with open(out / "metrics.jsonl", "a") as metrics:
        metrics.write('{"epoch": 1, "lo')  # an append the kill cut short
    assert run_on_fake_clock(monkeypatch, ["--out", str(out), "--resume"])[0] == 0
    starts = [json.loads(line) for line in (out / "starts.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in starts] == [0, 0]  # the start, then the resume inside epoch 1
    assert [r["epoch"] for r in rows(out)] == [1, 2]
