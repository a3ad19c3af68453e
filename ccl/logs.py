"""What a run shows and logs: progress bars, Avalanche's metric names, its CSV logs
continued across a resume, and the optional TensorBoard and W&B loggers."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ccl.errors import CclError
from ccl.estimate import RunClock, RunPlan
from ccl.io import open_regular


def shows_bar(stream) -> bool:
    """Whether a progress bar on `stream` (tqdm's is stderr) is seen: a terminal with a
    width. A terminal reporting zero columns draws no bar, so the run's estimate goes out
    as a line instead."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):  # no file descriptor, or not a terminal
        return False


class Progress:
    """Avalanche plugin drawing one tqdm bar per experience with the running loss and,
    once the first minibatches are timed, the whole run's estimate (`ccl.estimate`); one
    bar over the test minibatches while evaluating. When stdout is not a terminal (a log
    file) the estimate is also printed once, as a line."""

    def __new__(cls, enabled: bool, label: str, plan: RunPlan | None = None):
        from avalanche.core import SupervisedPlugin
        from tqdm import tqdm

        class ProgressPlugin(SupervisedPlugin):
            def __init__(self):
                super().__init__()
                self.bar = None
                self.clock = RunClock(plan) if plan is not None else None
                self.estimate_printed = shows_bar(sys.stderr) and sys.stdout.isatty()  # a terminal has the bar

            def before_training_exp(self, strategy, **kw):
                if self.clock:
                    self.clock.start_experience(strategy.experience.current_experience)

            def before_training_epoch(self, strategy, **kw):
                if self.bar is None:
                    total = strategy.train_epochs * len(strategy.dataloader)
                    exp = strategy.experience.current_experience
                    self.bar = tqdm(total=total, desc=f"{label} exp {exp}", unit="it",
                                    disable=not enabled, leave=False, dynamic_ncols=True)

            def after_training_iteration(self, strategy, **kw):
                if self.clock:
                    self.clock.step()
                if not enabled:  # a disabled bar does not count: n % 20 would hold at every step
                    return
                self.bar.update(1)
                if self.bar.n % 20 == 0:  # .item() syncs the device: not every step
                    estimate = self.clock.estimate() if self.clock else None
                    # the estimate first: an 80-column terminal cuts the line's end
                    self.bar.set_postfix_str((f"{estimate.short()}, " if estimate else "")
                                             + f"loss={strategy.loss.item():.3f}")
                    self.print_estimate()

            def print_estimate(self):
                if self.clock and enabled and not self.estimate_printed and self.clock.settled:
                    self.estimate_printed = True
                    tqdm.write(self.clock.estimate().line(), file=sys.stdout)

            def after_training_exp(self, strategy, **kw):
                if self.clock:
                    self.clock.training_done()  # the memory update follows (a later plugin)
                    self.print_estimate()  # an experience too short to print it yet
                if self.bar is not None:  # None: a run resumed inside the memory's update trains no epoch
                    self.bar.close()
                self.bar = None

            # Evaluation: one bar over every test experience's minibatches.
            def before_eval(self, strategy, **kw):
                if self.clock:
                    self.clock.testing_started()
                size = strategy.eval_mb_size
                total = sum(-(-len(exp.dataset) // size) for exp in strategy.current_eval_stream)
                self.eval_bar = tqdm(total=total, desc=f"{label} testing", unit="batch", disable=not enabled,
                                     leave=False, dynamic_ncols=True)

            def after_eval_iteration(self, strategy, **kw):
                self.eval_bar.update(1)

            def after_eval(self, strategy, **kw):
                if self.clock:
                    self.clock.testing_done()
                self.eval_bar.close()

        return ProgressPlugin()


ACC_EXP = "Top1_Acc_Exp/eval_phase/test_stream/Exp{:03d}"
ACC_EPOCH = "Top1_Acc_Epoch/train_phase/train_stream"  # the last training epoch's (csv_metrics)
ACC_STREAM = "Top1_Acc_Stream/eval_phase/test_stream"
FORGETTING = "StreamForgetting/eval_phase/test_stream"
BWT = "StreamBWT/eval_phase/test_stream"


CSV_LOGS = {"training_results.csv": 0, "eval_results.csv": 1}  # file: column of training_exp
TRAINING_HEADER = "training_exp,epoch,training_accuracy,training_loss"


def csv_logger(folder: Path):
    """Avalanche's CSVLogger without the training log's val_accuracy and val_loss columns:
    a run validates on nothing while it trains, and Avalanche wrote 0 there. The metrics it
    reads (epoch accuracy and loss, experience loss) come from `csv_metrics`."""
    from avalanche.logging import CSVLogger

    class TrainingCSVLogger(CSVLogger):
        def __init__(self):
            super().__init__(log_folder=str(folder))
            self.training_file.seek(0)  # Avalanche has just written its six-column header
            self.training_file.truncate()
            print(TRAINING_HEADER, file=self.training_file, flush=True)

        def print_train_metrics(self, training_exp, epoch, train_acc, val_acc, train_loss, val_loss):
            print(training_exp, epoch, self._val_to_str(train_acc), self._val_to_str(train_loss), sep=",",
                  file=self.training_file, flush=True)

    return TrainingCSVLogger()


def csv_metrics() -> list:
    """The metrics the CSV logs' columns read, beyond the accuracy, forgetting and BWT
    the results use: per training epoch accuracy and loss, per test experience loss."""
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    return [accuracy_metrics(epoch=True), loss_metrics(epoch=True, experience=True)]


def _kept(folder: Path, name: str) -> Path:
    return folder / f".{name}.prev"


def csv_rows(folder: Path) -> dict[str, list[str]]:
    """The rows (without header) of an earlier segment's CSV logs. Avalanche's CSVLogger
    truncates the files when it opens them, so each is first renamed (atomically) to a
    hidden copy that stays until `carry_csv_rows` has written its rows back: a crash or a
    failed resume in between loses nothing, and the next resume reads the copy."""
    rows = {}
    for name, column in CSV_LOGS.items():
        live, kept = folder / name, _kept(folder, name)
        if live.exists() and not kept.exists():
            os.replace(live, kept)
        rows[name] = _logged_rows(kept, column) if kept.exists() else []
    return rows


def check_csv_logs(folder: Path) -> None:
    """`csv_rows`' checks of the logs it would read, moving nothing: a CclError for a log it
    could not carry over, while the folder is still as it was."""
    for name, column in CSV_LOGS.items():
        path = _kept(folder, name) if _kept(folder, name).exists() else folder / name
        if path.exists():
            _logged_rows(path, column)


MAX_LOG_BYTES = 256 * 2**20  # a long run's CSV logs are some MiB


def _logged_rows(path: Path, column: int) -> list[str]:
    """The rows of a CSV log ccl wrote, each with its experience index in `column`; else a
    CclError naming the file (before anything is written back)."""
    with open_regular(path, MAX_LOG_BYTES, "CSV log") as f:
        try:
            rows = f.read().decode().splitlines(keepends=True)[1:]
        except UnicodeDecodeError:
            raise CclError(f"{path}: not what ccl wrote there (not text)") from None
    for i, row in enumerate(rows, start=2):
        try:
            int(row.split(",")[column])  # what `carry_csv_rows` reads
        except (IndexError, ValueError):
            raise CclError(f"{path}: not what ccl wrote there (line {i} has no experience index in "
                           f"column {column + 1}); delete it to resume without the earlier log rows") from None
    return rows


def carry_csv_rows(logger, rows: dict[str, list[str]], first: int, folder: Path, epochs_done: int = 0) -> None:
    """Put back an interrupted run's CSV rows of the experiences before `first`, and of
    the `epochs_done` first epochs of experience `first` (a run resumed inside it; the
    rest are logged again as the run repeats them, and would be duplicates), then drop
    the hidden copies `csv_rows` kept."""
    def kept(row: str, name: str, column: int) -> bool:
        cells = row.split(",")
        experience = int(cells[column])
        return experience < first or (name == "training_results.csv" and experience == first
                                      and _epoch(cells) < epochs_done)

    for handle, (name, column) in zip((logger.training_file, logger.eval_file), CSV_LOGS.items()):
        handle.writelines(r for r in rows[name] if kept(r, name, column))
        handle.flush()
        os.fsync(handle.fileno())
    for name in CSV_LOGS:
        _kept(folder, name).unlink(missing_ok=True)


def _epoch(cells: list[str]) -> int:
    """A training log row's epoch (its second column); a row without one counts as not done."""
    try:
        return int(cells[1])
    except (IndexError, ValueError):
        return 1 << 62


def optional_loggers(cfg, run_dir: Path) -> list:
    """TensorBoard and Weights & Biases loggers, when asked for (and installed)."""
    loggers = []
    if cfg.tensorboard:
        from avalanche.logging import TensorboardLogger
        loggers.append(TensorboardLogger(tb_log_dir=cfg.tensorboard))
    if cfg.wandb:
        from avalanche.logging import WandBLogger
        loggers.append(WandBLogger(project_name=cfg.wandb, run_name=run_dir.name, dir=str(run_dir)))
    return loggers
