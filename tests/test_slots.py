import pytest

from ccl.memory.slots import slots_per_class


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
