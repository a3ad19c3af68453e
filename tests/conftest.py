import os
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; before torch is imported

import pytest
import torch

import ccl  # noqa: F401  before any test module imports avalanche: ccl stands in for the wandb
#            avalanche imports, which a machine with wandb but not its dependencies (the GPU
#            image with benchmarks/device-requirements.txt) could not import

warnings.filterwarnings("ignore", message="no QP solver")


@pytest.fixture
def tiny_run():
    """Settings for a split-digits run that takes a few seconds on 2 cores."""
    return dict(scenario="split-digits", epochs=1, train_per_class=20, mem_size=20, mem_batch=8,
                width=16, batch_size=16)


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny tensors, where one thread is faster than two; and with two, OpenMP
    waits made the condensation tests up to 20x slower while another process shared the
    2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Stop(Exception):
    pass


@pytest.fixture
def interrupted_run():
    """cut(prepared, runs_dir, after): run into `runs_dir` and stop after experience
    `after`, as a crash there would (its checkpoint written); returns the run folder."""
    from pathlib import Path

    from ccl.runner import run

    def cut(prepared, runs_dir, after: int):
        def stop(i, results):
            if i == after:
                raise _Stop

        with pytest.raises(_Stop):
            run(prepared, runs_dir, progress=False, on_experience=stop)
        (folder,) = Path(runs_dir).iterdir()
        return folder
    return cut
