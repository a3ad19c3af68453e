"""The memory's store and the class-balanced end-of-experience policy, without Avalanche:
old classes keep their first rows, stream samples land in their rows (a reservoir's spare
row past the memory included), draws take the rows they name, and a checkpoint's rows come
back as they were stored."""
import torch

from ccl.memory.buffers import class_balanced_slots
from ccl.memory.codec import MemoryCodec
from ccl.memory.rows import Rows
from ccl.memory.store import MemoryStore


def test_class_balanced_slots_cut_each_old_class_to_its_first_rows_and_append_the_new_ones():
    old = Rows(torch.arange(7.0)[:, None], torch.tensor([3, 5, 3, 5, 3, 5, 5]), logits=torch.arange(7.0)[:, None])
    new = Rows(torch.tensor([[10.0], [11.0]]), torch.tensor([8, 8]), logits=torch.zeros(2, 1),
               soft=torch.ones(2, 1))
    rows = class_balanced_slots(old, new, {3: 2, 5: 1})  # arrival order: 3 first
    assert rows.labels.tolist() == [3, 3, 5, 8, 8]
    assert rows.images.flatten().tolist() == [0.0, 2.0, 1.0, 10.0, 11.0]  # each class's first rows, in order
    assert rows.logits.flatten().tolist() == [0.0, 2.0, 1.0, 0.0, 0.0]  # rows keep their logits
    assert rows.soft[:3].isnan().all() and rows.soft[3:].flatten().tolist() == [1.0, 1.0]
    assert class_balanced_slots(old, None, {5: 2}).labels.tolist() == [5, 5]  # no new class: the cut alone
    empty = MemoryStore("cpu").rows  # the first experience: the new rows alone, in their own dtype
    assert class_balanced_slots(empty, Rows(torch.ones(1, 2, dtype=torch.uint8), torch.tensor([1])),
                                {}).images.dtype == torch.uint8


def test_a_reservoir_store_writes_every_sample_and_shows_only_its_filled_rows():
    store = MemoryStore("cpu", logits=True)
    store.allocate(4, torch.Size([2]), classes=3)  # 3 rows and a spare one past them
    store.write(torch.tensor([0, 3, 1]), torch.ones(3, 2), torch.tensor([7, 8, 9]), torch.ones(3, 3))
    store.filled = 2
    assert store.labels.tolist() == [7, 9] and store.logits.shape == (2, 3) and len(store) == 2
    idx, drawn = store.draw(2, draws=3, distinct=True)
    assert [sorted(idx[i:i + 2].tolist()) for i in (0, 2, 4)] == [[0, 1]] * 3  # each batch without replacement
    assert torch.equal(drawn.labels, store.labels[idx]) and torch.equal(drawn.logits, store.logits[idx])


def test_stream_slots_get_their_logits_at_the_first_write():
    store = MemoryStore("cpu", logits=True)
    store.keep(store.blank(torch.tensor([4, 4, 6]), torch.Size([2])))  # no row had logits: width unknown
    assert len(store.logits) == 0
    store.write(torch.tensor([2]), torch.ones(1, 2), torch.tensor([6]), torch.full((1, 5), 3.0))
    assert store.logits.shape == (3, 5) and store.logits.sum().item() == 15.0  # zeros for the slots not written
    slots = store.blank(torch.tensor([9]), torch.Size([2]))  # the width known now: zero logits from the start
    assert slots.logits.shape == (1, 5) and not slots.logits.any()


def test_a_checkpoint_restores_the_stored_pixels_without_encoding_them_twice():
    codec = MemoryCodec(torch.uint8, (0.5,), (0.25,))
    images = torch.randn(3, 1, 2, 2)
    for capacity in (None, 5):  # a class-balanced memory's rows, a reservoir's allocated ones
        store = MemoryStore("cpu", codec)
        store.keep(Rows(codec.encode(images), torch.tensor([0, 1, 2])))
        restored = MemoryStore("cpu", codec)
        restored.restore(store.state(), capacity)
        assert torch.equal(restored.images, store.images) and restored.images.dtype == torch.uint8
        assert len(restored) == 3 and restored.capacity == (capacity or 3)
