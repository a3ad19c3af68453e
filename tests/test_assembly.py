"""One builder for `ccl run` and `ccl.CondensedReplay`, and one declared plugin order."""
import pytest

from ccl.assembly import PLUGIN_ORDER, ReplayParts, check_plugin_order
from ccl.experiment import make_config, prepare
from ccl.runner import _build


def test_a_run_hands_avalanche_every_part_in_the_declared_order(tmp_path, tiny_run):
    p = prepare(make_config(**tiny_run, memory="random", strategy="der", stream_augment="crop-flip",
                            finetune_epochs=1))
    bench, strategy, parts = _build(p, tmp_path, progress=False)
    assert all(parts.part(role) is not None for role in PLUGIN_ORDER)  # this run has every role
    at = [next(i for i, plugin in enumerate(strategy.plugins) if plugin is parts.part(role)) for role in PLUGIN_ORDER]
    assert at == sorted(at)
    assert parts.checkpoints is strategy.plugins[0]  # what the runner once read by position


def test_a_list_out_of_the_declared_order_is_refused():
    guard, memory, loss, other = object(), object(), object(), object()
    parts = ReplayParts(memory=memory, loss=loss, guard=guard)
    check_plugin_order([guard, other, memory, other, loss], parts)  # another plugin may stand between
    with pytest.raises(ValueError, match=r"^plugins out of order: guard < loss < memory; .*PLUGIN_ORDER is "):
        check_plugin_order([guard, loss, memory], parts)
    with pytest.raises(ValueError, match="the loss plugin must be in the strategy's plugins once, is there 0 times"):
        check_plugin_order([guard, memory], parts)
    check_plugin_order([guard, loss], ReplayParts(memory=memory, loss=loss, guard=guard, memory_replays=False))
    with pytest.raises(ValueError, match="replay_buffer: not a role"):
        parts.with_parts(replay_buffer=other)
