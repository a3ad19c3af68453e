"""The memory's rows as plain data: take, cat and state in one place; a column some rows
lack is NaN in them, one no row has stays absent."""
import torch

from ccl.memory.rows import Rows


def test_cat_pads_a_column_some_parts_lack_with_nan_and_take_keeps_rows_together():
    real = Rows(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), logits=torch.ones(2, 3))
    condensed = Rows(torch.ones(1, 1, 2, 2), torch.tensor([2]), logits=torch.full((1, 3), 2.0),
                     soft=torch.tensor([[5.0, 6.0, 7.0]]))
    rows = Rows.cat([real, condensed])
    assert len(rows) == 3 and rows.labels.tolist() == [0, 1, 2]
    assert rows.soft[:2].isnan().all() and rows.soft[2].tolist() == [5.0, 6.0, 7.0]
    picked = rows.take(torch.tensor([2, 0]))
    assert picked.labels.tolist() == [2, 0] and picked.logits[:, 0].tolist() == [2.0, 1.0]
    assert picked.soft[0].tolist() == [5.0, 6.0, 7.0] and picked.soft[1].isnan().all()
    assert set(rows.state()) == {"images", "labels", "logits", "soft_targets"}


def test_a_column_no_part_has_stays_absent():
    rows = Rows.cat([Rows(torch.zeros(2, 3), torch.tensor([0, 1])), Rows(torch.ones(1, 3), torch.tensor([1]))])
    assert rows.logits is None and rows.soft is None and set(rows.state()) == {"images", "labels"}
