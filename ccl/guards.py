"""What stops a run early: SIGINT and SIGTERM (held while a checkpoint is written, then
honoured), and a training loss that is no longer a number."""
from __future__ import annotations

import contextlib
import signal
import threading

import numpy as np

from ccl.errors import CclError


class Diverged(CclError):
    """The training loss became NaN or infinite: the run ends with status `diverged`."""


class DivergenceGuard:
    """Avalanche plugin: checks the training loss every `every` steps and at the end of an
    experience (a check syncs the device), and ends the run on a NaN or infinite one
    with the experience and step, instead of training on to report chance accuracy.
    `ccl run` marks the run `diverged`; `ccl.CondensedReplay` carries the same guard, so
    a Python user's training stops with the same message (`hint`: what to change, in the
    caller's terms)."""

    def __new__(cls, every: int = 20, hint: str = "try a smaller --lr"):
        from avalanche.core import SupervisedPlugin

        class Guard(SupervisedPlugin):
            def before_training_exp(self, strategy, **kw):
                self.step, self.last = 0, None

            def after_training_iteration(self, strategy, **kw):
                self.step += 1
                self.last = strategy.loss.detach()  # a reference, no sync
                if self.step % every == 0:
                    self.check(strategy)

            def after_training_exp(self, strategy, **kw):
                if self.last is not None:  # the last step's loss: an eval inside train() resets strategy.loss
                    self.check(strategy)

            def check(self, strategy):
                loss = self.last.item()
                if not np.isfinite(loss):
                    raise Diverged(f"the training loss became {loss} in experience "
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


def _interrupt(signum, frame):
    if _Deferral.depth:
        _Deferral.pending = signum
        return
    _Deferral.pending = None  # raised here: nothing left for a deferred block to raise again
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise_interrupted():
    """Turn SIGINT and SIGTERM into `Interrupted` for the duration of a run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
