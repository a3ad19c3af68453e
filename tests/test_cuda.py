"""On a CUDA device: the memory and the condensed images live on the GPU, and a seed gives
the same numbers twice. Skipped where torch sees no GPU; every other run-level test also
runs on the GPU there, since runs pick `auto`."""
import json

import pytest
import torch

from ccl.condense.methods import METHODS
from ccl.experiment import make_config, prepare
from ccl.runner import _build, run
from ccl.training import seed_everything
from test_run import TINY_METHOD  # the CPU run tests' tiny condensation settings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONDENSE_ON_GPU = {"random": {}, "datadam": TINY_METHOD["datadam"], "pad": TINY_METHOD["pad"]}


@pytest.mark.parametrize("method", list(CONDENSE_ON_GPU))
def test_condense_from_host_images_returns_them_on_the_gpu(method):
    spec = METHODS.get(method).value
    torch.manual_seed(0)
    real = torch.randn(40, 3, 8, 8)  # on the host, as a loader gives them
    labels = torch.arange(2).repeat_interleave(20)
    images, out = spec.condense(real, labels, {0: 2, 1: 2}, torch.device("cuda"),
                                spec.settings(**CONDENSE_ON_GPU[method]), progress=False)
    assert images.device.type == "cuda" and out.device.type == "cuda"
    assert images.shape == (4, 3, 8, 8) and torch.isfinite(images).all()


@pytest.mark.parametrize("memory", ["herding", "datadam", "pad"])
def test_memory_and_learner_live_on_the_gpu(tmp_path, tiny_run, memory):
    settings = {} if memory == "herding" else TINY_METHOD[memory]
    p = prepare(make_config(**tiny_run, memory=memory, memory_settings=settings, device="cuda"))
    assert p.device == torch.device("cuda", torch.cuda.current_device())  # compares equal to tensors'
    seed_everything(0)
    bench, strategy, parts = _build(p, tmp_path, progress=False)
    plugin = parts.memory
    assert next(strategy.model.parameters()).device == p.device
    strategy.train(bench.train_stream[0])
    assert plugin.images.device == p.device and plugin.labels.device == p.device
    assert torch.isfinite(plugin.images).all()


def test_a_seed_repeats_on_the_gpu(tmp_path, tiny_run):
    # herding: exact. The condensing memories go through DSA's grid_sample, whose CUDA
    # backward has no deterministic kernel, so they repeat only up to float rounding.
    numbers = []
    for i in range(2):
        run_dir = run(prepare(make_config(**tiny_run, memory="herding", device="cuda")), tmp_path / str(i),
                      progress=False)
        numbers.append(json.loads((run_dir / "results.json").read_text()))
    assert numbers[0]["accuracy_matrix"] == numbers[1]["accuracy_matrix"]
    assert numbers[0]["peak_gpu_mib"] > 0
