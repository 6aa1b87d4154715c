"""The comparison machinery of the conformance suite, without any backend."""
import re
from pathlib import Path

import numpy as np
import pytest

from conformance.compare import diff_tensors, flatten_outputs, kept, noise_scales, unflatten_cache
from conformance.tolerances import TOLERANCES, UNIT, Noise, Tol, markdown_table, tolerance

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tolerances.md"


def test_docs_table_is_the_code_table():
    text = DOCS.read_text()
    table = re.search(r"<!-- table:start -->\n(.*)\n<!-- table:end -->", text, re.S).group(1)
    assert table == markdown_table()
    assert tolerance("float32", "cpu").outputs.unit == UNIT["float32"] == 2.0 ** -24
    assert tolerance("bfloat16", "cpu").grads is None  # half precision runs forward outputs only
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
    tol = Tol(8.0, 16.0, UNIT["float32"])
    assert diff_tensors({"last_hidden_state": cand}, {"last_hidden_state": ref}, tol, mask)[0].passed
    cand[1, 2, 3] = 1e-4  # kept position
    d = diff_tensors({"last_hidden_state": cand}, {"last_hidden_state": ref}, tol, mask)[0]
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
    tol = Tol(8.0, 16.0, UNIT["float32"])
    diffs = diff_tensors(cand, ref, tol)
    assert [d.path for d in diffs] == ["hidden_states.0", "attentions.0", "hidden_states.1", "loss"]
    assert [d.passed for d in diffs] == [True, True, False, False]
    both_nan = diff_tensors({"loss": np.float32(np.nan)}, {"loss": np.float32(np.nan)}, tol)
    assert both_nan[0].passed  # HF semantics: an all-ignored loss is NaN in every backend
    missing = diff_tensors({}, {"pooler_output": np.zeros(2)}, tol)
    assert not missing[0].passed and "missing in candidate" in missing[0].note


def test_each_tensor_is_judged_against_its_own_measured_noise():
    """A cancelling sum gets the floor its fp32 sample shows; a well-conditioned tensor gets no slack."""
    rng = np.random.default_rng(0)
    tol = tolerance("float32", "cpu").grads
    truth = {"big": rng.standard_normal(10_000), "cancel": np.full(8, 1e-3)}
    # The fp32 sample: ~1 ulp off on the big tensor, 1e-8 absolute on the cancelling sum (its summands' noise).
    sample = {"big": truth["big"].astype(np.float32).astype(np.float64), "cancel": truth["cancel"] + 1e-8}
    noise = noise_scales(sample, truth)
    assert noise["cancel"].rms == pytest.approx(1e-8)
    ok = {"big": truth["big"] * (1 + 2e-7), "cancel": truth["cancel"] + 3e-8}  # a few noise scales away
    assert all(d.passed for d in diff_tensors(ok, truth, tol, noise=noise))
    wrong = {"big": truth["big"] * (1 + 1e-5), "cancel": truth["cancel"] + 5e-7}  # 1e-5 relative: not noise
    d_big, d_cancel = diff_tensors(wrong, truth, tol, noise=noise)
    assert not d_big.passed and d_big.ratio_rms > 50 and d_big.rel_norm == pytest.approx(1e-5, rel=1e-3)
    assert not d_cancel.passed and d_cancel.ratio_rms == pytest.approx(50, rel=1e-6)
    # A sample that happens to be exact is floored at one rounding of the truth (the unit).
    exact = Noise.measure(truth["big"], truth["big"])
    assert tol.scales(exact)[0] == pytest.approx(UNIT["float32"] * np.sqrt(np.mean(truth["big"] ** 2)))
    # An explicit floor (mathematically zero gradients, AdamW steps) raises the scale.
    assert tol.scales(Noise(0.0, 0.0, 0.0, 0.0, floor=1e-6)) == (1e-6, 1e-6)
