import pytest
import torch

from trainer.errors import UserError
from trainer.models import SimCLR
from trainer.speed import RunClock, format_duration, pick_precision, step_seconds


def test_step_timing_leaves_the_model_and_the_random_stream_alone():
    model = SimCLR()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    seconds = step_seconds(model, torch.device("cpu"), "fp32", 16, pairs=4, steps=1)
    assert torch.equal(torch.rand(3), expected)
    assert seconds > 0
    for name, tensor in model.state_dict().items():  # weights and BatchNorm statistics untouched
        assert torch.equal(tensor, before[name]), name
    assert all(p.grad is None for p in model.parameters())


def test_precision_auto_measures_on_cpu_and_explicit_choices_stand():
    model = SimCLR()
    cpu = torch.device("cpu")
    assert pick_precision("fp32", model, cpu, 16) == ("fp32", "as asked")
    assert pick_precision("bf16", model, cpu, 16) == ("bf16", "as asked")
    choice, why = pick_precision("auto", model, cpu, 16)
    assert choice in ("fp32", "bf16") and "measured" in why
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        pick_precision("fp16", model, cpu, 16)


def test_run_clock_uses_estimates_then_follows_the_measured_pace():
    clock = RunClock({16: 1.0, 32: 4.0}, smoothing=0.5)
    assert clock.remaining({16: 10, 32: 5}) == pytest.approx(30.0)
    clock.record(16, 2.0)  # 16 px runs twice as slow as estimated: so will 32 px, until measured
    assert clock.per_step(16) == pytest.approx(2.0) and clock.per_step(32) == pytest.approx(8.0)
    clock.record(16, 4.0)  # the machine got busier: the pace moves halfway there at this smoothing
    assert clock.per_step(16) == pytest.approx(3.0) and clock.per_step(32) == pytest.approx(12.0)
    clock.record(32, 10.0)
    assert clock.remaining({16: 0, 32: 4}) == pytest.approx(40.0)


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.6, 61, 3600 * 12 + 90)] == ["0m00s", "1m00s", "1m01s", "12h01m"]


def test_a_pause_moves_the_eta_by_one_slow_step_not_by_its_length():
    clock = RunClock({32: 1.0}, smoothing=0.02)
    for _ in range(50):
        clock.record(32, 1.0)
    clock.record(32, 600.0)  # ten minutes stopped with kill -STOP
    assert clock.remaining({32: 100}) == pytest.approx(100 * (1 + 0.02 * 3))
    for _ in range(200):  # a machine that really got slower is still followed
        clock.record(32, 3.0)
    assert clock.per_step(32) > 2.9


def test_a_window_of_steps_counts_as_its_steps_one_by_one():
    one_by_one, windowed = RunClock({32: 1.0}, smoothing=0.1), RunClock({32: 1.0}, smoothing=0.1)
    for clock in (one_by_one, windowed):
        clock.record(32, 1.0)
    for _ in range(20):
        one_by_one.record(32, 2.0)
    windowed.record(32, 40.0, steps=20)
    assert windowed.per_step(32) == pytest.approx(one_by_one.per_step(32))
