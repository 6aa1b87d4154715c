"""Dynamic masking: masks keyed by (seed, epoch, example index) only; rates as configured; raw datasets;
packed rows.

Statistical tolerance: every measured count K of n Bernoulli(p) trials must lie within 5 binomial standard
deviations, |K - n p| <= 5 sqrt(n p (1 - p)). For a correct masker a 5-sigma miss has probability about
6e-7 per check, and the draws are seeded, so a pass is reproducible; a wrong rate (e.g. 0.15 vs 0.16 over
the ~40 000 trials here) is off by many sigmas.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from bert_common.cli import main
from bert_common.pretraining import (IGNORE_INDEX, DynamicMasker, MaskingConfig, example_rng, open_dataset,
                                     pack_batch)

DATA = os.path.join(os.path.dirname(__file__), "data")
V, MASK, SPECIAL = 1000, 4, (0, 1, 2, 3, 4)   # ids 0..4: [PAD] [UNK] [CLS] [SEP] [MASK]


def within_5_sigma(k: int, n: int, p: float) -> bool:
    return abs(k - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1e-9


def rows(b=400, s=128, seed=0):
    """(B, S) ids: [CLS] words [SEP] words [SEP] then padding, lengths 40..S; attention mask."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((b, s), np.int64)
    mask = np.zeros((b, s), np.int64)
    for r in range(b):
        n = int(rng.integers(40, s + 1))
        ids[r, :n] = rng.integers(5, V, n)
        ids[r, [0, n // 2, n - 1]] = [2, 3, 3]
        mask[r, :n] = 1
    return ids, mask


def test_masks_depend_only_on_seed_epoch_index():
    ids, att = rows(12)
    m = DynamicMasker(V, MASK, SPECIAL)
    idx = np.arange(100, 112)
    full = m.mask_batch(ids, idx, seed=7, epoch=2, attention_mask=att)
    for r in (0, 5, 11):   # a row alone, or in another batch, or at another position: the same masks
        alone = m.mask_batch(ids[r:r + 1], idx[r:r + 1], seed=7, epoch=2, attention_mask=att[r:r + 1])
        np.testing.assert_array_equal(alone[0][0], full[0][r])
        np.testing.assert_array_equal(alone[1][0], full[1][r])
    rev = m.mask_batch(ids[::-1], idx[::-1], seed=7, epoch=2, attention_mask=att[::-1])
    np.testing.assert_array_equal(rev[0][::-1], full[0])
    other_epoch = m.mask_batch(ids, idx, seed=7, epoch=3, attention_mask=att)
    other_seed = m.mask_batch(ids, idx, seed=8, epoch=2, attention_mask=att)
    assert (other_epoch[1] != full[1]).any() and (other_seed[1] != full[1]).any()
    # and the row's masks are a function of its own generator
    out, lab = m.mask_row(ids[3], example_rng(7, 2, 103), att[3])
    np.testing.assert_array_equal(out, full[0][3])


@pytest.mark.parametrize("p,mask_rate,random_rate", [(0.15, 0.8, 0.1), (0.3, 0.5, 0.25)])
def test_mask_rates_within_5_sigma(p, mask_rate, random_rate):
    ids, att = rows(400)
    m = DynamicMasker(V, MASK, SPECIAL, MaskingConfig(p, mask_rate, random_rate))
    out, labels = m.mask_batch(ids, np.arange(len(ids)), seed=1, attention_mask=att)
    maskable = (att == 1) & (ids > 4)
    selected = labels != IGNORE_INDEX
    assert not (selected & ~maskable).any()          # never specials, never padding
    np.testing.assert_array_equal(labels[selected], ids[selected])
    n, k = int(maskable.sum()), int(selected.sum())
    assert within_5_sigma(k, n, p), (k, n * p)
    # among selected: [MASK] with mask_rate (+ a random draw that happens to be [MASK]); unchanged with
    # 1 - mask_rate - random_rate (+ a random draw equal to the original)
    became_mask = int((out[selected] == MASK).sum())
    kept = int((out[selected] == ids[selected]).sum())
    assert within_5_sigma(became_mask, k, mask_rate + random_rate / V)
    assert within_5_sigma(kept, k, 1 - mask_rate - random_rate + random_rate / V)
    # unselected positions are untouched
    np.testing.assert_array_equal(out[~selected], ids[~selected])


def test_whole_word_masking_from_continuation_pieces():
    ids, att = rows(400, seed=3)
    cont = np.zeros(V, bool)
    cont[500:] = True       # ids >= 500 are '##' pieces: they join the word before them
    m = DynamicMasker(V, MASK, SPECIAL, MaskingConfig(whole_word="wordpiece"), is_continuation=cont)
    _, labels = m.mask_batch(ids, np.arange(len(ids)), seed=2, attention_mask=att)
    sel = labels != IGNORE_INDEX
    maskable = (att == 1) & (ids > 4)
    joins = maskable[:, 1:] & maskable[:, :-1] & cont[ids[:, 1:]]
    np.testing.assert_array_equal(sel[:, 1:][joins], sel[:, :-1][joins])   # a word is masked whole or not
    starts = maskable & ~np.concatenate([np.zeros((len(ids), 1), bool), joins], axis=1)
    assert within_5_sigma(int(sel[starts].sum()), int(starts.sum()), 0.15)
    assert not (sel & ~maskable).any()


def test_whole_word_masking_from_word_ids():
    ids, att = rows(300, seed=4)
    word_ids = np.where(att == 1, np.arange(ids.shape[1]) // 3, -1)       # words of three pieces
    word_ids[ids <= 4] = -1
    m = DynamicMasker(V, MASK, SPECIAL, MaskingConfig(whole_word="word_ids"))
    _, labels = m.mask_batch(ids, np.arange(len(ids)), seed=5, attention_mask=att, word_ids=word_ids)
    sel = labels != IGNORE_INDEX
    for r in range(20):
        for w in np.unique(word_ids[r][word_ids[r] >= 0]):
            assert len(set(sel[r][word_ids[r] == w].tolist())) == 1
    with pytest.raises(ValueError, match="word_ids"):
        m.mask_row(ids[0], example_rng(0, 0, 0))


@pytest.mark.parametrize("kwargs,message", [
    ({"mlm_probability": 1.2}, "mlm_probability=1.2"), ({"mask_token_rate": 0.9, "random_token_rate": 0.2}, "exceeds 1"),
    ({"whole_word": "words"}, "whole_word='words'")])
def test_masking_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskingConfig(**kwargs)


# ---------------------------------------------------------------------------------------------- raw data
@pytest.fixture(scope="module")
def raw_dirs(minilm_dir, tmp_path_factory):
    vocab = os.path.join(minilm_dir, "vocab.txt")
    base = tmp_path_factory.mktemp("raw")
    files = [os.path.join(DATA, "google_sample_text.txt"), os.path.join(DATA, "pretraining_unicode.txt")]
    out = {}
    for name, extra in (("nsp", []), ("no_nsp", ["--no-nsp"]), ("wwm", ["--whole-word-mask", "--shard-size", "8KB"])):
        path = str(base / name)
        assert main(["pretrain-data", *files, "--vocab", vocab, "--output", path, "--dynamic", "--quiet",
                     "--max-seq-length", "64", "--random-seed", "11", *extra]) == 0
        out[name] = path
    return out


def test_raw_batches_follow_the_contract(raw_dirs):
    ds = open_dataset(raw_dirs["nsp"])
    m = ds.manifest
    assert m["kind"] == "raw" and m["num_instances"] == len(ds) > 50 and m["dynamic"]["seed"] == 11
    idx = np.arange(len(ds))
    b = ds.batch(idx, epoch=0)
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label"}
    assert all(v.dtype == np.int32 for v in b.values()) and b["input_ids"].shape == (len(ds), 64)
    lengths = b["attention_mask"].sum(1)
    assert (b["input_ids"][:, 0] == 101).all()
    assert (b["input_ids"][np.arange(len(ds)), lengths - 1] == 102).all()
    assert ((b["labels"] == IGNORE_INDEX) | (b["attention_mask"] == 1)).all()
    # NSP: both labels occur, about half random (blocks of one sentence are always random next)
    nsp = b["next_sentence_label"]
    assert 0.3 < nsp.mean() < 0.9
    # determinism: the same rows alone, in any order; another epoch differs
    sub = idx[::-7][:9]
    again = ds.batch(sub, epoch=0)
    for k in b:
        np.testing.assert_array_equal(again[k], b[k][sub], err_msg=k)
    assert (ds.batch(sub, epoch=1)["labels"] != again["labels"]).any()


def test_actual_next_pairs_are_the_block_itself(raw_dirs):
    ds = open_dataset(raw_dirs["nsp"])
    b = ds.batch(np.arange(len(ds)), epoch=4)
    orig = np.where(b["labels"] != IGNORE_INDEX, b["labels"], b["input_ids"])
    checked = 0
    for r in np.nonzero(b["next_sentence_label"] == 0)[0]:
        n = b["attention_mask"][r].sum()
        la = int((b["token_type_ids"][r][:n] == 0).sum())             # [CLS] A [SEP]
        tokens, cuts = ds.block(int(r))
        if len(cuts):   # A ends at a sentence start (a one-sentence block is cut at a random token)
            assert la - 2 in cuts.tolist()
        got = np.concatenate([orig[r][1:la - 1], orig[r][la:n - 1]])
        np.testing.assert_array_equal(got, tokens[:len(got)])
        checked += 1
    assert checked > 10


def test_raw_without_nsp_and_whole_words(raw_dirs):
    ds = open_dataset(raw_dirs["no_nsp"])
    b = ds.batch(np.arange(len(ds)))
    assert (b["next_sentence_label"] == 0).all() and (b["token_type_ids"] == 0).all()
    orig = np.where(b["labels"] != IGNORE_INDEX, b["labels"], b["input_ids"])
    tokens, _ = ds.block(3)
    np.testing.assert_array_equal(orig[3][:len(tokens) + 2], np.concatenate([[101], tokens, [102]]))
    w = open_dataset(raw_dirs["wwm"])
    assert len(w.manifest["shards"]) > 1 and w.masking.whole_word == "wordpiece"
    bw = w.batch(np.arange(len(w)))
    sel = bw["labels"] != IGNORE_INDEX
    cont = np.zeros(w.manifest["vocab_size"], bool)
    cont[w.manifest["continuation_ids"]] = True
    ids = np.where(sel, bw["labels"], bw["input_ids"])
    inner = cont[ids[:, 1:]] & (bw["attention_mask"][:, 1:] == 1) & ~np.isin(ids[:, :-1], [101, 102])
    np.testing.assert_array_equal(sel[:, 1:][inner], sel[:, :-1][inner])
    # overrides at open time (raw only)
    assert open_dataset(raw_dirs["wwm"], seed=5).seed == 5
    with pytest.raises(ValueError, match="indices contain 100000"):
        w.batch([0, 100000])


def test_dynamic_flags_need_dynamic(minilm_dir, tmp_path, capsys):
    vocab = os.path.join(minilm_dir, "vocab.txt")
    rc = main(["pretrain-data", os.path.join(DATA, "google_sample_text.txt"), "--vocab", vocab, "--output",
               str(tmp_path / "o"), "--no-nsp", "--quiet"])
    assert rc == 2 and "--dynamic" in capsys.readouterr().err and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- packing
def test_packed_rows_keep_every_sequence():
    ids, att = rows(10, s=64, seed=9)
    att[:, :] = 0
    lengths = np.array([10, 20, 30, 64, 5, 5, 50, 13, 14, 40])
    for r, n in enumerate(lengths):
        att[r, :n] = 1
        ids[r, n:] = 0
    labels = np.where(att == 1, ids, IGNORE_INDEX)
    batch = {"input_ids": ids, "attention_mask": att, "token_type_ids": (np.arange(64) > 3) * att,
             "labels": labels, "next_sentence_label": np.arange(10) % 2}
    p = pack_batch(batch, 64)
    # next-fit: [10,20,30] [64] [5,5,50] [13,14] [40]
    assert p["input_ids"].shape == (5, 64)
    np.testing.assert_array_equal(p["cu_seq_lens_q"], np.concatenate([[0], np.cumsum(lengths)]))
    assert p["max_length_q"] == 64 and p["sequence_starts"].tolist()[:4] == [[0, 0], [0, 10], [0, 30], [1, 0]]
    flat = {k: p[k][p["attention_mask"] == 1] for k in ("input_ids", "labels", "token_type_ids", "position_ids")}
    cu = p["cu_seq_lens_q"]
    for r, n in enumerate(lengths):
        sl = slice(cu[r], cu[r + 1])
        np.testing.assert_array_equal(flat["input_ids"][sl], ids[r, :n])
        np.testing.assert_array_equal(flat["labels"][sl], labels[r, :n])
        np.testing.assert_array_equal(flat["position_ids"][sl], np.arange(n))
    assert (p["labels"][p["attention_mask"] == 0] == IGNORE_INDEX).all()
    f = pack_batch(batch, flatten=True)     # DataCollatorWithFlattening's layout: one row, no padding
    assert f["input_ids"].shape == (1, lengths.sum()) and f["attention_mask"].all()
    np.testing.assert_array_equal(f["input_ids"][0], flat["input_ids"])
    bad = dict(batch, attention_mask=att[:, ::-1].copy())
    with pytest.raises(ValueError, match="right-padded"):
        pack_batch(bad, 64)
    with pytest.raises(ValueError, match="max_seq_length=32"):
        pack_batch(batch, 32)
