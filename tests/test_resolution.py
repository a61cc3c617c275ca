import pytest

from trainer.errors import UserError
from trainer.resolution import ResolutionSchedule


def test_no_schedule_is_the_full_size_throughout():
    schedule = ResolutionSchedule.parse(None, 32)
    assert [schedule.size_at(s, 10) for s in range(10)] == [32] * 10
    assert schedule.steps_per_size(10) == {32: 10}


def test_phases_split_the_steps_by_fraction_and_end_at_full_size():
    schedule = ResolutionSchedule.parse("16:0.5, 24:0.3, 32", 32)
    assert schedule.phases == ((16, 0.5), (24, 0.3), (32, pytest.approx(0.2)))
    sizes = [schedule.size_at(s, 100) for s in range(100)]
    assert sizes == [16] * 50 + [24] * 30 + [32] * 20
    assert schedule.steps_per_size(100) == {16: 50, 24: 30, 32: 20}
    assert schedule.steps_per_size(100, done=60) == {16: 0, 24: 20, 32: 20}  # what is left after step 60


def test_a_short_run_still_ends_at_full_size():
    schedule = ResolutionSchedule.parse("16:0.9,32", 32)
    assert schedule.size_at(2, 3) == 32  # 0.9 x 3 rounds to the last step, which the full size keeps
    assert sum(schedule.steps_per_size(3).values()) == 3


@pytest.mark.parametrize("text, message", [
    ("16:0.7,24", "must end at --image-size 32"),
    ("16:0.7,24:0.3,32", "together under 1"),
    ("16:0,32", "in \\(0, 1\\)"),
    ("4:0.5,32", "between 8"),
    ("16,32", "SIZE:FRACTION"),
])
def test_bad_schedules_are_user_errors(text, message):
    with pytest.raises(UserError, match=message):
        ResolutionSchedule.parse(text, 32)
