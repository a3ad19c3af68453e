"""The whole-run estimate's arithmetic (ccl.estimate), on a fake clock: no timing."""
from __future__ import annotations

import os

import pytest

from ccl.estimate import FORWARD_SHARE, READY_STEPS, SETTLED_SECONDS, WARMUP_STEPS, RunClock, RunPlan
from ccl.units import duration


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plan() -> RunPlan:
    # two experiences of 100 minibatches of 32 stream samples; the second also replays 32
    return RunPlan(steps=(100, 100), stream_batch=32, replayed=(0, 32), update_work=(3200.0, 1600.0),
                   test_images=960)


def train(clock: RunClock, fake: FakeClock, steps: int, seconds_each: float) -> None:
    for _ in range(steps):
        fake.now += seconds_each
        clock.step()


def test_no_estimate_before_minibatches_are_timed():
    fake = FakeClock()
    clock = RunClock(plan(), fake)
    clock.start_experience(0)
    train(clock, fake, WARMUP_STEPS + READY_STEPS - 1, 0.5)
    assert clock.estimate() is None and not clock.ready
    train(clock, fake, 1, 0.5)
    assert clock.ready and not clock.settled  # shown in the bar, not yet worth a log line
    train(clock, fake, int(SETTLED_SECONDS / 0.5) - READY_STEPS, 0.5)
    assert clock.settled


def test_first_estimate_from_the_training_rate():
    """0.5 s a minibatch of 32: the replay batch of 64 costs 1.5 times (half a step's time
    grows with its samples); the memory updates and the tests are priced at the training
    rate per sample until they have run."""
    fake = FakeClock()
    clock = RunClock(plan(), fake)
    clock.start_experience(0)
    train(clock, fake, 40, 0.5)
    e = clock.estimate()
    per_sample = 0.5 / 32
    training_left = 60 * 0.5 + 100 * 0.75
    memory = (3200 + 1600) * per_sample
    testing = 2 * 960 * per_sample * FORWARD_SHARE
    assert e.left == pytest.approx(training_left + memory + testing)
    assert e.total == pytest.approx(20 + e.left)  # 40 minibatches of 0.5 s spent
    assert e.training == pytest.approx(125.0) and e.memory == pytest.approx(memory)
    assert e.testing == pytest.approx(testing) and e.memory_guessed
    assert "guessed" in e.line() and e.short() == "run: 3m left of 4m"


def test_refined_after_the_first_experience():
    """After one update and one test, their measured rates replace the guesses; the next
    experience's replay batch is measured once it has run long enough."""
    fake = FakeClock()
    clock = RunClock(plan(), fake)
    clock.start_experience(0)
    train(clock, fake, 100, 0.5)
    clock.training_done()
    fake.now += 32.0  # the update: 0.01 s per sample-pass of its 3,200
    clock.testing_started()
    fake.now += 9.6   # the test: 0.01 s an image
    clock.testing_done()
    e = clock.estimate()
    assert clock.update_rate == pytest.approx(0.01) and clock.test_rate == pytest.approx(0.01)
    assert e.left == pytest.approx(100 * 0.75 + 1600 * 0.01 + 960 * 0.01)
    assert e.total == pytest.approx(50 + 32 + 9.6 + e.left)
    assert not e.memory_guessed
    clock.start_experience(1)
    train(clock, fake, 50, 0.6)  # measured, the replay batch's own rate wins
    assert clock.seconds_per_step(1) == pytest.approx(0.6)
    assert clock.estimate().left == pytest.approx(50 * 0.6 + 16 + 9.6)


def test_during_the_update_and_the_test():
    fake = FakeClock()
    clock = RunClock(plan(), fake)
    clock.start_experience(0)
    train(clock, fake, 100, 0.5)
    clock.training_done()
    fake.now += 10.0
    guess = 3200 * 0.5 / 32  # 50 s
    testing = 960 * 0.5 / 32 * FORWARD_SHARE
    e = clock.estimate()
    assert e.left == pytest.approx((guess - 10) + testing + 100 * 0.75 + 1600 * 0.5 / 32 + testing)
    fake.now += 100.0  # longer than the guess: nothing of it is left, never less than nothing
    assert clock.estimate().left == pytest.approx(testing + 100 * 0.75 + 1600 * 0.5 / 32 + testing)


def test_evaluation_inside_training_is_not_the_runs():
    fake = FakeClock()
    clock = RunClock(plan(), fake)
    clock.start_experience(0)
    train(clock, fake, 30, 0.5)
    clock.testing_started()  # e.g. a strategy's own evaluation
    clock.testing_done()
    assert clock.phase == "training" and clock.experience == 0 and clock.test_rate is None


def test_a_short_experience_is_timed_at_its_end():
    fake = FakeClock()
    clock = RunClock(RunPlan((3,), 32, (0,), (0.0,), 0), fake)
    clock.start_experience(0)
    train(clock, fake, 3, 2.0)
    clock.training_done()
    assert clock.seconds_per_step(0) == pytest.approx(2.0)


def test_durations_read_as_estimates():
    assert [duration(s) for s in (-3, 0.25, 4.5, 45, 89, 90, 600, 3599, 3600, 4320)] == \
        ["0 s", "0.25 s", "4.5 s", "45 s", "89 s", "2 min", "10 min", "1 h 0 min", "1 h 0 min", "1 h 12 min"]
    assert duration(4320, compact=True) == "1h12m" and duration(45, compact=True) == "45s"


def test_a_run_counts_its_plan_and_prints_the_estimate_once_off_a_terminal(tmp_path, tiny_run, capsys):
    """split-digits in 5 experiences of 2 classes, 20 images a class: 3 minibatches of 16 an
    experience; replay from the second; herding's update reads every new image forward."""
    from ccl.experiment import make_config, prepare
    from ccl.runner import _build
    p = prepare(make_config(**tiny_run, memory="herding"))
    bench, strategy, _ = _build(p, tmp_path, progress=True)
    plan = next(x.clock for x in strategy.plugins if isinstance(getattr(x, "clock", None), RunClock)).plan
    assert plan.steps == (3,) * 5 and plan.stream_batch == 16 and plan.replayed == (0, 8, 8, 8, 8)
    assert plan.update_work == pytest.approx((2 * 20 / 3,) * 5)
    assert plan.test_images == sum(len(exp.dataset) for exp in bench.test_stream)
    from ccl.runner import run
    run(p, tmp_path / "runs", progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("estimate: ")]
    assert len(lines) == 1 and "the whole run about" in lines[0]


def test_a_condensation_counts_its_iterations_images_and_networks():
    """DataDAM: real_batch real images a class forward (a third of a pass) and the synthetic
    ones forward and backward, each iteration, through the random network (width 64: a
    quarter of the width-128 learner's cost) and the guide (the learner)."""
    from ccl.condense.datadam import DataDAMSettings
    settings = DataDAMSettings(iterations=100, real_epochs=6.4, real_batch=64, width=64, guide_weight=1.0)
    assert settings.work(2, 200, 5000, 128) == pytest.approx(100 * (2 * 64 / 3 + 200) * (0.25 + 1))
    assert settings.work(2, 200, 100, 128) == pytest.approx(10 * (2 * 64 / 3 + 200) * (0.25 + 1))  # real_epochs
    from ccl.condense.pad import PADSettings  # on the learner's trajectory: N student steps, and back through them
    assert PADSettings(iterations=10, syn_steps=5, expert="learner").work(2, 20, 100, 128) == 10 * 5 * 20 * 2


def test_a_terminal_of_zero_columns_shows_no_bar_so_the_estimate_goes_out_as_a_line(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    from ccl.logs import shows_bar

    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        assert shows_bar(terminal)
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        assert not shows_bar(terminal)
    os.close(leader)
    with open(tmp_path / "log", "w") as log:
        assert not shows_bar(log)
