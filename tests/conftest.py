import os
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; before torch is imported

import pytest

warnings.filterwarnings("ignore", message="no QP solver")


@pytest.fixture
def tiny_run():
    """Settings for a split-digits run that takes a few seconds on 2 cores."""
    return dict(scenario="split-digits", epochs=1, train_per_class=20, mem_size=20, mem_batch=8,
                width=16, batch_size=16)
