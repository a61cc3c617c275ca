"""contract.timing.pick_fastest on a fake clock: the candidates run in turns, medians decide, so that a burst of
other work on a busy machine (one noisy round) does not flip the choice, and the margin is honoured."""

from __future__ import annotations

import pytest

from contract.timing import MIN_GAIN, pick_fastest, timed


class FakeMachine:
    """A clock that only moves when a candidate runs: by that candidate's scripted seconds for its n-th run."""

    def __init__(self, script: dict[str, list[float]]):
        self.now, self.script, self.runs = 0.0, script, []

    def clock(self) -> float:
        return self.now

    def candidate(self, name: str):
        def run() -> None:
            self.now += self.script[name][sum(r == name for r in self.runs)]
            self.runs.append(name)

        return lambda: timed(run, clock=self.clock)


def pick(script: dict[str, list[float]], **kwargs) -> tuple[str, dict[str, float], list[str]]:
    machine = FakeMachine(script)
    choice, gains = pick_fastest({name: machine.candidate(name) for name in script}, "fp32", **kwargs)
    return choice, gains, machine.runs


def test_candidates_run_in_turns_and_a_clear_winner_wins():
    choice, gains, runs = pick({"fp32": [2.0] * 5, "bf16": [1.0] * 5})
    assert runs == ["fp32", "bf16"] * 5
    assert choice == "bf16" and gains == {"fp32": 1.0, "bf16": 2.0}


@pytest.mark.parametrize("script", [
    {"fp32": [1.0, 1.0, 9.0, 1.0, 1.0], "bf16": [1.0] * 5},  # a burst slowed the baseline once
    {"fp32": [1.0] * 5, "bf16": [1.0, 0.1, 1.0, 1.0, 1.0]},  # the candidate was timed in a lucky moment once
])
def test_one_noisy_round_does_not_flip_the_choice(script):
    choice, gains, _ = pick(script)
    assert choice == "fp32" and gains["bf16"] == pytest.approx(1.0)


def test_a_faster_candidate_still_wins_when_one_of_its_rounds_is_slowed():
    choice, _, _ = pick({"fp32": [2.0] * 5, "bf16": [1.0, 1.0, 30.0, 1.0, 1.0]})
    assert choice == "bf16"


@pytest.mark.parametrize("baseline, wins", [(MIN_GAIN, True), (MIN_GAIN - 0.01, False)])
def test_the_margin_is_honoured(baseline, wins):
    choice, gains, _ = pick({"fp32": [baseline] * 5, "bf16": [1.0] * 5})
    assert gains["bf16"] == pytest.approx(baseline) and choice == ("bf16" if wins else "fp32")
    assert pick({"fp32": [2.0] * 3, "bf16": [1.0] * 3}, min_gain=2.5, rounds=3)[0] == "fp32"


def test_the_fastest_of_several_wins_and_the_baseline_counts_as_one():
    script = {"fp32": [3.0] * 5, "onnx-fp32": [2.0] * 5, "onnx-int8": [1.0] * 5}
    assert pick(script)[0] == "onnx-int8"
    choice, gains, _ = pick({"fp32": [1.0] * 5, "slow": [2.0] * 5})
    assert choice == "fp32" and gains == {"fp32": 1.0, "slow": 0.5}
