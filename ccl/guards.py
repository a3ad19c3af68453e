"""What stops a run early: SIGINT and SIGTERM, and a training loss that is no longer a
number or has exploded (`DivergenceGuard`).

A run stops on a signal where it can save: the first SIGINT or SIGTERM asks it to stop
(`stop_requested`), and the run writes a checkpoint at its next minibatch, condensation
iteration or experience end and only then raises `Interrupted` (`stop_if_requested`), so
that a Ctrl-C never loses the work since the last periodic checkpoint. A second signal
stops it at once, from the last checkpoint on disk. Either way a checkpoint being written
is finished first (`signals_deferred`): the signal is held until the write is whole.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

import numpy as np

from ccl.errors import CclError


class Diverged(CclError):
    """The training loss became NaN or infinite, or exploded: the run ends with status `diverged`."""


# A loss above both of these has exploded: cross-entropy at chance is ln(classes), 2.3 for
# 10 and 4.6 for 100; a learner's healthy loss never grows a hundredfold over its first.
EXPLOSION_FACTOR = 100.0  # times the experience's first minibatch's loss
EXPLOSION_FLOOR = 1e4  # and never below this: a first loss near 0 (a resumed run) is no yardstick


class DivergenceGuard:
    """Avalanche plugin: ends the run (`Diverged`) when the training loss diverges, instead
    of training on to report chance accuracy. Diverged means NaN or infinite, or above
    max(EXPLOSION_FACTOR x the loss of the experience's first minibatch, EXPLOSION_FLOOR):
    at lr 10 split-digits' loss passes 1e12 in 18 minibatches, finite all along. The loss is checked
    every `every` steps and at the end of an experience (a check syncs the device); a run
    resumed inside an experience measures from its first minibatch after the resume.
    `ccl run` marks the run `diverged`; `ccl.CondensedReplay` carries the same guard, so
    a Python user's training stops with the same message (`hint`: what to change, in the
    caller's terms)."""

    def __new__(cls, every: int = 20, hint: str = "try a smaller --lr"):
        from avalanche.core import SupervisedPlugin

        class Guard(SupervisedPlugin):
            def before_training_exp(self, strategy, **kw):
                self.step, self.first, self.last = 0, None, None

            def after_training_iteration(self, strategy, **kw):
                self.step += 1
                self.last = strategy.loss.detach()  # a reference, no sync
                if self.first is None:
                    self.first = self.last.item()
                    self.check(strategy)
                elif self.step % every == 0:
                    self.check(strategy)

            def after_training_exp(self, strategy, **kw):
                if self.last is not None:  # the last step's loss: an eval inside train() resets strategy.loss
                    self.check(strategy)

            def check(self, strategy):
                loss = self.last.item()
                bound = max(EXPLOSION_FACTOR * abs(self.first or 0.0), EXPLOSION_FLOOR)
                if not np.isfinite(loss) or loss > bound:
                    what = f"became {loss}" if not np.isfinite(loss) else f"exploded to {loss:.3g} (above {bound:.3g})"
                    raise Diverged(f"the training loss {what} in experience "
                                   f"{strategy.experience.current_experience} by step {self.step}: {hint}")
        return Guard()


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the run folder is left resumable."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Deferral:
    """Inside a deferred block (depth > 0) the handler records a signal instead of raising;
    the block raises it when it ends. The OS-level mask alone is not enough: a signal that
    arrived just before the block runs its Python handler at the next bytecode, which may
    be inside the write (aborting it, or raising inside torch's pickler, which can swallow
    it)."""
    depth = 0
    pending: int | None = None


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT and SIGTERM until the block ends; a signal that came meanwhile raises
    `Interrupted` right after it, never inside it, never lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    _Deferral.depth += 1
    try:
        yield
    finally:
        for signum in held:  # taken while still blocked, so no handler runs for them later
            if signal.sigtimedwait({signum}, 0) is not None:
                _Deferral.pending = signum
        _Deferral.depth -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    if _Deferral.depth == 0 and _Deferral.pending is not None:
        signum, _Deferral.pending = _Deferral.pending, None
        raise Interrupted(signum)


class _Stop:
    """The first signal of a run, which asks it to stop at its next checkpoint (None: none yet)."""
    signum: int | None = None
    depth = 0  # nested `signals_raise_interrupted` blocks: only the outermost installs and resets


def stop_requested() -> bool:
    """Whether a signal asked the run to stop: the next place that can save should."""
    return _Stop.signum is not None


def stop_if_requested() -> None:
    """Raise `Interrupted` if a signal asked the run to stop; called right after a checkpoint."""
    if _Stop.signum is not None:
        raise Interrupted(_Stop.signum)


def _interrupt(signum, frame):
    if _Deferral.depth:
        _Deferral.pending = signum
        return
    if _Stop.signum is None:  # the first: the run saves where it stands, then stops
        _Stop.signum = signum
        # os.write, not print: a handler that wrote through sys.stderr's buffer while the
        # interrupted code was writing to it would fail with a reentrant-call error.
        note = (f"\n{signal.Signals(signum).name}: stopping at the next minibatch or condensation iteration, "
                "after a checkpoint there (again: stop at once, from the last checkpoint)\n")
        with contextlib.suppress(OSError):
            os.write(2, note.encode())
        return
    _Deferral.pending = None  # raised here: nothing left for a deferred block to raise again
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise_interrupted():
    """For the duration of a run: the first SIGINT or SIGTERM asks it to stop at its next
    checkpoint (`stop_requested`), a second raises `Interrupted` at once."""
    if threading.current_thread() is not threading.main_thread() or _Stop.depth:
        # Nested (the CLI installs them before it makes the run folder, the runner again
        # around the run): the outer block's handlers stay, and a stop asked between keeps.
        yield
        return
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    _Stop.signum, _Stop.depth = None, 1
    try:
        yield
    finally:
        _Stop.signum, _Stop.depth = None, 0  # a later run in this process starts without a stop asked
        for s, h in old.items():
            signal.signal(s, h)
