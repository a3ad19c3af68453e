"""The class-balanced reservoir (CBRS, Chrysakis and Moens 2020), the buffer policy added
as one class and one registry line: it keeps the classes balanced however imbalanced the
stream, where the plain reservoir follows the stream's proportions; it runs under ER and
DER++ and resumes to the same numbers."""
import json

import torch

from ccl.experiment import make_config, prepare
from ccl.memory import MEMORIES
from ccl.memory.buffers import ClassBalancedReservoirBuffer, ReservoirBuffer
from ccl.runner import resume_run, run


def _held(buffer_class, stream: torch.Tensor, size: int, batch: int = 8) -> dict[int, int]:
    """Offer `stream` (labels) to a buffer of `size` rows minibatch by minibatch, writing
    each row's label as a memory would; the rows each class holds at the end."""
    buffer, labels = buffer_class(size), torch.full((size,), -1)
    for y in stream.split(batch):
        rows = buffer.rows(y)
        labels[rows[rows >= 0]] = y[rows >= 0]
    assert buffer.seen == len(stream) and (labels >= 0).all()
    return {c: int(n) for c, n in enumerate(torch.bincount(labels).tolist()) if n}


def test_an_imbalanced_stream_fills_a_balanced_memory_where_the_reservoir_follows_the_stream():
    torch.manual_seed(0)
    stream = torch.cat([torch.zeros(400, dtype=torch.long), torch.ones(40, dtype=torch.long),
                        torch.full((40,), 2)])[torch.randperm(480)]  # class 0: 10x the others
    assert _held(ClassBalancedReservoirBuffer, stream, 60) == {0: 20, 1: 20, 2: 20}
    plain = _held(ReservoirBuffer, stream, 60)
    assert plain[0] > 40  # about 400/480 of the rows: the stream's proportions


def test_classes_arriving_one_experience_after_another_share_the_memory_equally():
    """Class-incremental: each new class takes rows from the largest ones until it is
    one of them; at the end of every experience no class holds more than one row above another."""
    torch.manual_seed(0)
    buffer, labels = ClassBalancedReservoirBuffer(30), torch.full((30,), -1)
    for first, count in ((0, 50), (2, 12), (4, 30)):  # unequal experiences
        y = torch.tensor([first, first + 1]).repeat(count)
        for part in y.split(8):
            rows = buffer.rows(part)
            labels[rows[rows >= 0]] = part[rows >= 0]
        held = torch.bincount(labels[labels >= 0])
        held = held[held > 0]
        assert len(held) == first + 2 and held.max() - held.min() <= 1, held.tolist()
    assert buffer.held == {c: 5 for c in range(6)}


def test_it_runs_under_er_and_der_pp_keeps_classes_balanced_and_resumes_to_the_same_numbers(
        tmp_path, tiny_run, interrupted_run):
    assert MEMORIES.get("class-balanced-reservoir").value.buffer is ClassBalancedReservoirBuffer
    for strategy in ("er", "der++"):
        settings = dict(**tiny_run, memory="class-balanced-reservoir", strategy=strategy)
        full = run(prepare(make_config(**settings)), tmp_path / strategy, progress=False)
        saved = torch.load(full / "memory.pt", weights_only=True)
        counts = torch.bincount(saved["labels"], minlength=10)
        assert counts.tolist() == [2] * 10  # 20 rows, 10 classes of an equal stream
        results = json.loads((full / "results.json").read_text())
        assert 0.0 < results["final_average_accuracy"] <= 1.0
        if strategy == "der++":  # DER's logits as each sample entered, and a checkpoint that resumes
            assert saved["logits"].shape == (20, 10)
            cut = interrupted_run(prepare(make_config(**settings)), tmp_path / "cut", after=1)
            resume_run(cut, progress=False)
            resumed = json.loads((cut / "results.json").read_text())
            assert resumed["accuracy_matrix"] == results["accuracy_matrix"]
            assert torch.equal(torch.load(cut / "memory.pt", weights_only=True)["labels"], saved["labels"])
