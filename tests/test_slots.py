import pytest

from ccl.memory.slots import future_shares, slots_per_class


def test_slots_shrink_as_classes_arrive():
    assert slots_per_class(200, [4, 6]) == {4: 100, 6: 100}
    assert slots_per_class(200, [4, 6, 2, 7]) == {4: 50, 6: 50, 2: 50, 7: 50}
    six = slots_per_class(200, [4, 6, 2, 7, 3, 5])
    assert six == {4: 34, 6: 34, 2: 33, 7: 33, 3: 33, 5: 33}  # remainder to the oldest classes
    assert sum(six.values()) == 200


def test_slots_never_exceed_budget_and_stay_balanced():
    classes = list(range(10))
    for mem in range(10, 250, 7):
        for n in range(1, 11):
            slots = slots_per_class(mem, classes[:n])
            assert sum(slots.values()) == mem
            assert max(slots.values()) - min(slots.values()) <= 1


def test_too_small_memory_is_an_error():
    with pytest.raises(ValueError, match="cannot hold"):
        slots_per_class(3, [0, 1, 2, 3])


def test_future_shares_follow_the_schedule():
    # Split CIFAR-10 at 200 images: a class of the first experience lives at 100, then 50,
    # 34, 25 and 20 images as the other four experiences arrive.
    later = future_shares(200, [4, 6], [[2, 7], [3, 5], [0, 1], [8, 9]])
    assert later == {4: [50, 34, 25, 20], 6: [50, 34, 25, 20]}
    assert future_shares(200, [4, 6, 2, 7, 3, 5, 0, 1, 8, 9], []) == {c: [] for c in range(10)}
    # Every share is what slots_per_class gives once those classes have arrived.
    assert future_shares(20, [1], [[2], [3]])[1] == [slots_per_class(20, [1, 2])[1], slots_per_class(20, [1, 2, 3])[1]]
