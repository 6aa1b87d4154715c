"""The comparison machinery of the conformance suite, without any backend."""
import re
from pathlib import Path

import numpy as np
import pytest

from conformance.compare import diff_tensors, flatten_outputs, kept, unflatten_cache
from conformance.tolerances import TOLERANCES, Tol, markdown_table, tolerance

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tolerances.md"


def test_docs_table_is_the_code_table():
    text = DOCS.read_text()
    table = re.search(r"<!-- table:start -->\n(.*)\n<!-- table:end -->", text, re.S).group(1)
    assert table == markdown_table()
    assert tolerance("float32", "cpu").outputs == Tol(1e-5)
    with pytest.raises(ValueError, match="no tolerance row for dtype='float8'"):
        tolerance("float8", "cpu")
    assert len(TOLERANCES) == 6


def test_flatten_and_unflatten_cache():
    out = {"last_hidden_state": np.ones((1, 2, 3)), "hidden_states": (np.zeros(1), np.ones(1)),
           "past_key_values": ((np.full(2, 1.0), np.full(2, 2.0)), (np.full(2, 3.0), np.full(2, 4.0))),
           "loss": None}
    flat = flatten_outputs(out)
    assert sorted(flat) == ["hidden_states.0", "hidden_states.1", "last_hidden_state", "past_key_values.0.0",
                            "past_key_values.0.1", "past_key_values.1.0", "past_key_values.1.1"]
    cache = unflatten_cache(flat)
    assert [[float(a[0]) for a in layer] for layer in cache] == [[1.0, 2.0], [3.0, 4.0]]


def test_padded_positions_are_not_compared_but_kept_ones_are():
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    ref = np.zeros((2, 3, 4))
    cand = ref.copy()
    cand[0, 2] = 100.0  # padded query position: unspecified
    assert diff_tensors({"last_hidden_state": cand}, {"last_hidden_state": ref}, Tol(1e-5), mask)[0].passed
    cand[1, 2, 3] = 1e-4  # kept position
    d = diff_tensors({"last_hidden_state": cand}, {"last_hidden_state": ref}, Tol(1e-5), mask)[0]
    assert not d.passed and d.max_abs == pytest.approx(1e-4) and d.first_values == (pytest.approx(1e-4), 0.0)
    # Attention maps: the query axis is 2.
    att = np.zeros((2, 4, 3, 3))
    assert kept("attentions.0", att, mask, "BertModel").size == 5 * 4 * 3
    # Sequence-level logits have no token axis and are compared whole.
    assert kept("logits", np.zeros((2, 3)), mask, "BertForSequenceClassification").size == 6
    assert kept("logits", np.zeros((2, 3, 5)), mask, "BertForTokenClassification").size == 5 * 5


def test_failures_are_reported_in_forward_order_and_nan_is_a_failure():
    ref = {"loss": np.float32(1.0), "hidden_states.1": np.zeros(3), "hidden_states.0": np.zeros(3),
           "attentions.0": np.zeros(3)}
    cand = dict(ref, **{"hidden_states.1": np.array([0, 1.0, 0]), "loss": np.float32(np.nan)})
    diffs = diff_tensors(cand, ref, Tol(1e-5))
    assert [d.path for d in diffs] == ["hidden_states.0", "attentions.0", "hidden_states.1", "loss"]
    assert [d.passed for d in diffs] == [True, True, False, False]
    both_nan = diff_tensors({"loss": np.float32(np.nan)}, {"loss": np.float32(np.nan)}, Tol(1e-5))
    assert both_nan[0].passed  # HF semantics: an all-ignored loss is NaN in every backend
    missing = diff_tensors({}, {"pooler_output": np.zeros(2)}, Tol(1.0))
    assert not missing[0].passed and "missing in candidate" in missing[0].note


def test_gradient_rows_are_norm_wise_and_still_catch_real_errors():
    rng = np.random.default_rng(0)
    ref = {"grad.w": rng.standard_normal(10_000).astype(np.float64)}
    tol = tolerance("float32", "cpu").grads
    noisy = {"grad.w": ref["grad.w"].copy()}
    noisy["grad.w"][7] += 5e-5 * np.abs(ref["grad.w"]).max()  # one entry off by 5e-5 of the max: fp32 noise
    assert diff_tensors(noisy, ref, tol)[0].passed
    wrong = {"grad.w": ref["grad.w"] * (1 + 1e-4)}  # a systematic 1e-4 relative error everywhere
    d = diff_tensors(wrong, ref, tol)[0]
    assert not d.passed and d.rel_norm == pytest.approx(1e-4, rel=1e-3)
    # A mathematically-zero gradient holding rounding noise passes; a real gradient there does not.
    ref2 = {"grad.big": np.ones(100), "grad.zero": np.zeros(50)}
    assert all(x.passed for x in diff_tensors({"grad.big": np.ones(100), "grad.zero": np.full(50, 1e-8)}, ref2, tol))
    assert not diff_tensors({"grad.big": np.ones(100), "grad.zero": np.full(50, 1e-4)}, ref2, tol)[1].passed
