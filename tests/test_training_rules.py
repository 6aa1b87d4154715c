"""The framework-free training rules of ``bert_common.training`` that every trainer applies: the gathered
MLM positions (``with_mlm_positions``, ``mlm_slots``), the global loss denominators and the shard layout.
NumPy only."""
from __future__ import annotations

import numpy as np
import pytest

from bert_common.training import (MLM_POSITIONS, loss_normalizers, mlm_slots, split_batch,
                                  with_mlm_positions)


@pytest.mark.parametrize("count,seq_len,want", [(0, 128, 8), (1, 128, 8), (8, 128, 8), (9, 128, 16),
                                                (20, 128, 32), (33, 128, 64), (100, 128, 128), (10, 12, 12),
                                                (3, 4, 4)])
def test_mlm_slots_is_a_power_of_two_between_8_and_the_length(count, seq_len, want):
    assert mlm_slots(count, seq_len) == want


def test_positions_list_each_rows_labels_first_in_order_then_ignored_slots():
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((16, 40)) < 0.3, rng.integers(0, 99, (16, 40)), -100)
    labels[3] = -100                      # a row with nothing to predict
    labels[5, :20] = 7                    # the busiest row: 20 labels -> P = 32
    batch = {"input_ids": np.zeros((16, 40), np.int32), "labels": labels}
    out = with_mlm_positions(batch)
    pos = out[MLM_POSITIONS]
    assert pos.dtype == np.int32 and pos.shape == (16, 32)
    assert out["labels"] is labels        # the batch's own arrays are not touched
    gathered = np.take_along_axis(labels, pos, axis=1)
    for row in range(16):
        where = np.flatnonzero(labels[row] != -100)
        n = len(where)
        np.testing.assert_array_equal(pos[row, :n], where)                # labelled positions, in order
        assert (gathered[row, n:] == -100).all()                          # spare slots add no loss term
        assert len(set(pos[row].tolist())) == 32                          # no position twice
    # every labelled token exactly once, so the global count (the loss denominator) is unchanged
    assert loss_normalizers({**batch, "labels": gathered}) == loss_normalizers(batch)
    # positions are per row, so the shard layout (micro-batches x devices) may split them with the rows:
    # each shard's gathered labels are exactly that shard's labelled tokens
    for shard in split_batch(out, 4):
        got = np.take_along_axis(shard["labels"], shard[MLM_POSITIONS], axis=1)
        assert sorted(got[got != -100]) == sorted(shard["labels"][shard["labels"] != -100])


def test_batches_without_token_labels_are_unchanged():
    rows = {"input_ids": np.zeros((4, 8), np.int32), "labels": np.array([0, 1, 2, 1])}   # classification
    assert MLM_POSITIONS not in with_mlm_positions(rows)
    assert MLM_POSITIONS not in with_mlm_positions({"input_ids": np.zeros((4, 8), np.int32)})
