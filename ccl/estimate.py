"""The whole run's time, estimated from what the run has measured so far.

A run is counted before it starts (`RunPlan`: the minibatches of every experience, the
memory samples each one carries, the work of every memory update, the test images of
every evaluation) and timed while it goes (`RunClock`): seconds a minibatch from the
first minibatches, then seconds per unit of memory-update work and per test image once
one update and one evaluation have run. Until they have, those two are guessed from the
training rate (a memory update's work and a test image in training samples); that guess
is the rough part, and the estimate says so.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from ccl.units import duration

WARMUP_STEPS = 5        # an experience's first minibatches (allocation, data-loader start): not timed
READY_STEPS = 20        # timed minibatches before the first estimate...
READY_SECONDS = 3.0     # ...spanning at least this long (a fast GPU's 20 steps are noise)
SETTLED_SECONDS = 20.0  # timed minibatches before the estimate is worth a log line (a shared CPU's rate wanders)
FORWARD_SHARE = 1 / 3   # a forward pass alone costs about a third of forward + backward
SAMPLE_SHARE = 0.5      # of a minibatch's time, the share taken to grow with its samples (a rough guess)


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, counted before it starts; experience i is index i.

    Units of work are *sample-passes*: one image through the learner forward and backward,
    what a training minibatch of B images costs B of.
    """
    steps: tuple[int, ...]          # training minibatches of each experience, all epochs together
    stream_batch: int               # stream samples per minibatch
    replayed: tuple[int, ...]       # memory samples appended to each minibatch of each experience
    update_work: tuple[float, ...]  # each experience's memory update, in sample-passes (0: none)
    test_images: int                # images each evaluation tests (the whole test stream, every time)

    def batch(self, i: int) -> int:
        return self.stream_batch + self.replayed[i]


@dataclass(frozen=True)
class Estimate:
    """Seconds: the whole run (time spent + left) and what is left, with the whole run's
    split into training, memory updates and testing."""
    total: float
    left: float
    training: float
    memory: float
    testing: float
    memory_guessed: bool  # no memory update has run yet: its time is the training-rate guess

    def short(self) -> str:
        """For a progress bar, beside its own estimate of the experience, short enough for
        an 80-column terminal: "run: 1h12m left of 1h15m"."""
        return f"run: {duration(self.left, compact=True)} left of {duration(self.total, compact=True)}"

    def line(self) -> str:
        """For a log: one sentence with the parts."""
        guess = "; memory updates guessed from the training rate until the first has run" \
            if self.memory_guessed and self.memory > 0 else ""
        return (f"estimate: the whole run about {duration(self.total)}, {duration(self.left)} left (training "
                f"{duration(self.training)}, memory updates {duration(self.memory)}, testing "
                f"{duration(self.testing)}{guess})")


class RunClock:
    """Measures a run as it goes and answers `estimate()`; fed by a progress plugin's hooks
    in this order per experience: `start_experience(i)`, `step()` after every minibatch,
    `training_done()`, `testing_started()` (the memory update lies between the two) and
    `testing_done()`. The latest measurement of a rate wins: rates drift as a run goes.

    Args:
        plan: what the run will do.
        clock: seconds, monotonic (a fake one in tests).
    """

    def __init__(self, plan: RunPlan, clock: Callable[[], float] = time.perf_counter):
        self.plan, self.clock = plan, clock
        self.started = clock()  # the whole run's time counts from here (a resumed run: from the resume)
        self.step_seconds: dict[int, float] = {}  # minibatch size -> measured seconds a minibatch
        self.update_rate: float | None = None  # measured seconds per sample-pass of a memory update
        self.test_rate: float | None = None    # measured seconds per test image
        self.experience = 0  # the one under way, or the next one while idle
        self.phase = "idle"  # training | updating | testing | idle (between experiences)
        self.steps_done = 0
        self._phase_start = self.started
        self._timed_from: tuple[int, float] | None = None  # (steps done, time) where timing began

    # --- what the hooks report ---------------------------------------------------------

    def start_experience(self, i: int) -> None:
        i = min(i, len(self.plan.steps) - 1)  # joint training names its last experience
        self.experience, self.phase, self.steps_done = i, "training", 0
        self._phase_start, self._timed_from = self.clock(), None

    def step(self) -> None:
        if self.phase != "training":
            return
        self.steps_done += 1
        now = self.clock()
        if self.steps_done == WARMUP_STEPS:
            self._timed_from = (self.steps_done, now)
        elif self._timed_from is not None:
            steps, since = self._timed_from
            if self.steps_done - steps >= READY_STEPS and now - since >= READY_SECONDS:
                self._record_steps(now)

    def training_done(self) -> None:
        if self.phase != "training":
            return
        now = self.clock()
        if self._timed_from is None and self.steps_done:  # fewer minibatches than the warm-up
            self._timed_from = (0, self._phase_start)
        if self._timed_from is not None and self.steps_done > self._timed_from[0]:
            self._record_steps(now)
        self.phase, self._phase_start = "updating", now

    def _record_steps(self, now: float) -> None:
        steps, since = self._timed_from
        self.step_seconds[self.plan.batch(self.experience)] = (now - since) / (self.steps_done - steps)

    def testing_started(self) -> None:
        if self.phase != "updating":
            return  # an evaluation inside training (a strategy's own) is not the run's
        now = self.clock()
        work = self.plan.update_work[self.experience]
        if work > 0:
            self.update_rate = (now - self._phase_start) / work
        self.phase, self._phase_start = "testing", now

    def testing_done(self) -> None:
        if self.phase != "testing":
            return
        if self.plan.test_images:
            self.test_rate = (self.clock() - self._phase_start) / self.plan.test_images
        self.phase, self.experience = "idle", self.experience + 1

    # --- the answer --------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Enough minibatches timed for an estimate worth showing."""
        return bool(self.step_seconds)

    @property
    def settled(self) -> bool:
        """Enough minibatches timed for an estimate worth a line in a log: an experience's
        training, or SETTLED_SECONDS of it."""
        if self.experience > 0 or self.phase in ("updating", "testing"):
            return self.ready
        return self._timed_from is not None and self.clock() - self._timed_from[1] >= SETTLED_SECONDS

    def seconds_per_step(self, i: int) -> float:
        """Experience i's seconds a minibatch: measured at its size, else the nearest
        measured size's, of which half is taken to grow with the samples (a replay batch of
        64 then costs 1.5 times 32; measured on 2 CPU cores: 1.2, and a GPU's step hardly
        grows) until the size is measured."""
        size = self.plan.batch(i)
        if size in self.step_seconds:
            return self.step_seconds[size]
        nearest = min(self.step_seconds, key=lambda s: abs(s - size))
        return self.step_seconds[nearest] * (1 - SAMPLE_SHARE + SAMPLE_SHARE * size / nearest)

    def estimate(self) -> Estimate | None:
        """The whole run's estimate, or None while no minibatch rate is measured."""
        if not self.step_seconds:
            return None
        plan, now = self.plan, self.clock()
        i = min(self.experience, len(plan.steps) - 1)
        per_sample = self.seconds_per_step(i) / plan.batch(i)  # training, seconds a sample-pass
        update_rate = self.update_rate if self.update_rate is not None else per_sample
        testing = plan.test_images * (self.test_rate if self.test_rate is not None else per_sample * FORWARD_SHARE)
        in_phase = now - self._phase_start
        left = {"training": 0.0, "memory": 0.0, "testing": 0.0}
        done = {"training": 0.0, "memory": 0.0, "testing": 0.0}  # the plan's cost of what is behind
        for j in range(len(plan.steps)):
            whole = {"training": plan.steps[j] * self.seconds_per_step(j),
                     "memory": plan.update_work[j] * update_rate, "testing": testing}
            if j < self.experience:
                behind = whole
            elif j > self.experience or self.phase == "idle":
                behind = {}
            else:  # the experience under way: training, then its update, then its test
                order = ("training", "updating", "testing").index(self.phase)
                behind = {"training": whole["training"] * self.steps_done / plan.steps[j] if order == 0
                          else whole["training"]}
                if order >= 1:
                    behind["memory"] = min(in_phase, whole["memory"]) if order == 1 else whole["memory"]
                if order == 2:
                    behind["testing"] = min(in_phase, testing)
            for part, seconds in whole.items():
                done[part] += behind.get(part, 0.0)
                left[part] += max(0.0, seconds - behind.get(part, 0.0))
        spent = now - self.started
        # The whole run's parts: what is left of each, plus the time spent shared out in the
        # plan's proportions of what is behind (the parts of the time spent are not kept apart).
        scale = spent / sum(done.values()) if sum(done.values()) > 0 else 0.0
        parts = {k: left[k] + done[k] * scale for k in left}
        return Estimate(spent + sum(left.values()), sum(left.values()), parts["training"], parts["memory"],
                        parts["testing"], self.update_rate is None)


def plan_run(p: Any, bench: Any, memory: Any) -> RunPlan:
    """Count a prepared run (`ccl.experiment.Prepared`) on its Avalanche benchmark with
    its memory plugin (None without one)."""
    from ccl.memory.slots import slots_per_class
    cfg = p.config
    epochs, batch_size = p.learner_training()  # GDumb's own, for its fresh learner
    sizes = [len(exp.dataset) for exp in bench.train_stream]
    if p.spec.joint:
        sizes = [sum(sizes)]
    replays = memory is not None and not p.strategy.memory_alone and cfg.mem_batch > 0
    per_step = cfg.mem_batch * getattr(memory, "draws", 1) if replays else 0
    fed_by_stream = p.spec.policy == "stream" or bool(cfg.stream_slots)  # replays from the first experience
    replayed = tuple(per_step if i or fed_by_stream else 0 for i in range(len(sizes)))
    steps, work, seen = [], [], []
    filler = getattr(memory, "filler", None)
    for i, size in enumerate(sizes):
        trained = size
        if p.strategy.memory_alone:  # GDumb: a fresh learner on the memory alone
            trained = min(cfg.mem_size, sum(sizes[:i + 1]))
        steps.append(epochs * math.ceil(trained / batch_size))
        new = [] if p.spec.joint else [c for c in p.experience_classes[i] if c not in seen]
        seen += new
        update = 0.0
        if filler is not None and new:
            slots = slots_per_class(cfg.mem_size, seen)
            update = filler.work(len(new), sum(slots[c] for c in new), size / len(new), cfg.width)
        work.append(update + cfg.finetune_epochs * min(cfg.mem_size, sum(sizes[:i + 1])))
    test_images = sum(len(exp.dataset) for exp in bench.test_stream)
    return RunPlan(tuple(steps), batch_size, replayed, tuple(work), test_images)
