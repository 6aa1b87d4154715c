"""The HF-compatible API of both Python tokenizers: compared call by call with the HF fast oracle, plus
file I/O and the errors the issue asks for."""
from __future__ import annotations

import os

import numpy as np
import pytest

from bert_common.tokenizers.python import BertTokenizer

IMPLS = ["pure", "fast"]
TEXTS = ["Hello, world! How are you today?", "Ünïcödé naïve café 中文字 😀 emoji", "",
         "a b c d e f g h i j k l m n o p q r s t u v w x y z", "unbelievable antidisestablishmentarianism",
         "x[SEP]y [MASK] z", "tab\tnew\nline\u00a0nbsp\u200bzwsp"]
PAIRS = ["Short.", "The second sequence is a bit longer than the first one here.", "", "中文", "ok",
         "one two three four five six seven eight nine ten", "[CLS] again"]


def _cls(impl: str):
    if impl == "pure":
        return BertTokenizer
    pytest.importorskip("tokenizers")
    from bert_common.tokenizers.fast import BertTokenizerFast
    return BertTokenizerFast


@pytest.fixture(scope="module")
def hf(minilm_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizerFast.from_pretrained(minilm_dir)


@pytest.fixture(scope="module", params=IMPLS)
def tok(request, minilm_dir):
    return _cls(request.param).from_pretrained(minilm_dir)


def _plain(x):
    """BatchEncoding values -> nested lists of ints (tuples to lists) for comparison."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _same(ours, theirs, n_rows: int | None = None):
    assert list(ours.keys()) == list(theirs.keys())
    for k in theirs:
        assert _plain(ours[k]) == _plain(theirs[k]), k


CALLS = [
    dict(),
    dict(padding=True),
    dict(padding="max_length", max_length=24, truncation=True),
    dict(padding=True, pad_to_multiple_of=8, return_length=True),
    dict(padding="longest", padding_side="left", return_special_tokens_mask=True),
    dict(truncation=True, max_length=9, return_offsets_mapping=True),
    dict(truncation="longest_first", max_length=12, return_length=True, return_special_tokens_mask=True),
    dict(truncation=True, max_length=10, stride=3, return_overflowing_tokens=True, return_offsets_mapping=True),
    dict(max_length=8),   # HF: a max_length alone truncates longest_first
    dict(add_special_tokens=False, return_offsets_mapping=True, return_special_tokens_mask=True),
    dict(return_token_type_ids=False, return_attention_mask=False),
]
PAIR_CALLS = [
    dict(),
    dict(padding=True, return_offsets_mapping=True),
    dict(truncation="longest_first", max_length=11),
    dict(truncation="only_first", max_length=14),
    dict(truncation="only_second", max_length=14, padding="max_length"),
    dict(truncation="only_first", max_length=16, stride=2, return_overflowing_tokens=True),
    dict(truncation="only_second", max_length=16, stride=1, return_overflowing_tokens=True, padding=True),
    dict(truncation="longest_first", max_length=10, stride=1, return_overflowing_tokens=True),
]


@pytest.mark.oracle
@pytest.mark.parametrize("kwargs", CALLS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "plain")
def test_call_matches_hf_single(tok, hf, kwargs):
    # the batch, and every example alone (unbatched output shape rules differ)
    _same(tok(TEXTS, **kwargs), hf(TEXTS, **kwargs))
    for t in TEXTS[:4]:
        ours, theirs = tok(t, **kwargs), hf(t, **kwargs)
        _same(ours, theirs)
        row = 0
        assert ours.word_ids(row) == theirs.word_ids(row)
        assert ours.tokens(row) == theirs.tokens(row)
        assert ours.sequence_ids(row) == theirs.sequence_ids(row)


@pytest.mark.oracle
@pytest.mark.parametrize("kwargs", PAIR_CALLS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "plain")
def test_call_matches_hf_pairs(tok, hf, kwargs):
    a, b = TEXTS[:6], PAIRS[:6]
    if kwargs.get("truncation") == "only_first":    # the untouched sequence must fit (else an error)
        a, b = TEXTS[:5], ["Short.", "ok", "", "中文", "two words"]
    elif kwargs.get("truncation") == "only_second":
        a, b = ["Short.", "ok", "", "中文", "two words"], PAIRS[:5]
    ours, theirs = tok(a, b, **kwargs), hf(a, b, **kwargs)
    _same(ours, theirs)
    for i in range(len(theirs["input_ids"])):
        assert ours.word_ids(i) == theirs.word_ids(i)
        assert ours.sequence_ids(i) == theirs.sequence_ids(i)


@pytest.mark.oracle
def test_split_into_words_matches_hf(tok, hf):
    words = [["Hello", "wörld,", "it's", "中文"], ["a", "", "b c", "[SEP]"], ["unbelievably"]]
    for kw in (dict(return_offsets_mapping=True), dict(padding=True, return_special_tokens_mask=True)):
        ours, theirs = tok(words, is_split_into_words=True, **kw), hf(words, is_split_into_words=True, **kw)
        _same(ours, theirs)
        for i in range(len(words)):
            assert ours.word_ids(i) == theirs.word_ids(i)
    one = tok(words[0], is_split_into_words=True)
    ref = hf(words[0], is_split_into_words=True)
    _same(one, ref)
    assert one.word_ids() == ref.word_ids()
    _same(tok(words[:2], words[1:], is_split_into_words=True), hf(words[:2], words[1:], is_split_into_words=True))


@pytest.mark.oracle
def test_token_level_methods_match_hf(tok, hf, minilm_dir):
    import transformers
    hf_slow = transformers.BertTokenizer.from_pretrained(minilm_dir)
    text = "Hello, unaffable wörld! 中文 [MASK]"
    assert tok.tokenize(text) == hf.tokenize(text)
    assert tok.tokenize(text, pair="second part", add_special_tokens=True) == \
        hf.tokenize(text, pair="second part", add_special_tokens=True)
    toks = hf.tokenize(text)
    assert tok.convert_tokens_to_ids(toks) == hf.convert_tokens_to_ids(toks)
    assert tok.convert_tokens_to_ids("no-such-token") == hf.convert_tokens_to_ids("no-such-token") == tok.unk_token_id
    ids = hf(text)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert tok.convert_ids_to_tokens(ids, skip_special_tokens=True) == hf.convert_ids_to_tokens(ids, skip_special_tokens=True)
    assert tok.convert_ids_to_tokens(ids[1]) == hf.convert_ids_to_tokens(ids[1])
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
        assert tok.decode(np.array(ids), skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
        for clean in (False, True):
            s = hf("it 's a test , isn't it ? yes !")["input_ids"]
            assert tok.decode(s, clean_up_tokenization_spaces=clean) == hf.decode(s, clean_up_tokenization_spaces=clean)
    batch = hf(TEXTS)["input_ids"]
    assert tok.batch_decode(batch, skip_special_tokens=True) == hf.batch_decode(batch, skip_special_tokens=True)
    a, b = [5, 6, 7], [8, 9]
    for x, y in ((a, None), (a, b)):
        assert tok.build_inputs_with_special_tokens(x, y) == hf.build_inputs_with_special_tokens(x, y)
        assert tok.get_special_tokens_mask(x, y) == hf_slow.get_special_tokens_mask(x, y)   # HF fast lacks it
        assert tok.create_token_type_ids_from_sequences(x, y) == hf.create_token_type_ids_from_sequences(x, y)
    full = tok.build_inputs_with_special_tokens(a, b)
    assert tok.get_special_tokens_mask(full, already_has_special_tokens=True) == \
        hf.get_special_tokens_mask(full, already_has_special_tokens=True)
    assert tok.vocab_size == hf.vocab_size == len(tok) == 30522
    assert tok.get_vocab() == hf.get_vocab()
    assert tok.encode(text) == hf.encode(text)


@pytest.mark.parametrize("tensor_type", ["np", "pt", pytest.param("tf", marks=pytest.mark.slow), "jax"])
def test_return_tensors(tok, tensor_type):
    mod = {"np": "numpy", "pt": "torch", "tf": "tensorflow", "jax": "jax"}[tensor_type]
    pytest.importorskip(mod)
    enc = tok(TEXTS[:3], TEXTS[3:6], padding=True, return_tensors=tensor_type, return_offsets_mapping=True)
    ref = tok(TEXTS[:3], TEXTS[3:6], padding=True, return_offsets_mapping=True)
    for k in ref:
        arr = np.asarray(enc[k])
        # int64 (jax: int32 unless jax_enable_x64, as jnp.asarray gives — HF's behaviour too)
        assert arr.dtype == (np.int32 if tensor_type == "jax" and arr.dtype != np.int64 else np.int64), k
        assert arr.tolist() == _plain(ref[k]), k
    assert np.asarray(enc["offset_mapping"]).shape == (3, len(ref["input_ids"][0]), 2)
    if tensor_type == "pt":
        assert enc.to("cpu")["input_ids"].device.type == "cpu"
    one = tok("single text", return_tensors=tensor_type)   # a single example gets a batch dim
    assert np.asarray(one["input_ids"]).shape[0] == 1
    with pytest.raises(ValueError, match="padding=True"):
        tok(TEXTS[:3], return_tensors=tensor_type)


def test_tensors_import_framework_only_when_asked(minilm_dir):
    import subprocess
    import sys
    code = (f"import sys; from bert_common.tokenizers.python import BertTokenizer as T; t = T.from_pretrained({minilm_dir!r}); "
            "t(['a b', 'c'], padding=True, return_tensors='np'); "
            "print(','.join(m for m in ('torch', 'tensorflow', 'jax', 'tokenizers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


# ---------------------------------------------------------------------------------------------- files
def test_from_pretrained_sources_agree(tmp_path, minilm_dir):
    """vocab.txt only, tokenizer.json only, and the full directory give the same tokenizer."""
    import shutil
    vocab_only, json_only = tmp_path / "v", tmp_path / "j"
    vocab_only.mkdir()
    json_only.mkdir()
    shutil.copy(os.path.join(minilm_dir, "vocab.txt"), vocab_only)
    shutil.copy(os.path.join(minilm_dir, "tokenizer.json"), json_only)
    text = "Héllo WORLD, 中文!"
    for cls in (_cls("pure"), _cls("fast")):
        ref = cls.from_pretrained(minilm_dir)(text)["input_ids"]
        assert cls.from_pretrained(vocab_only)(text)["input_ids"] == ref
        assert cls.from_pretrained(json_only)(text)["input_ids"] == ref
        assert cls(vocab_file=os.path.join(minilm_dir, "vocab.txt"))(text)["input_ids"] == ref
        cased = cls.from_pretrained(minilm_dir, do_lower_case=False)
        assert cased.do_lower_case is False and cased(text)["input_ids"] != ref


@pytest.mark.oracle
@pytest.mark.parametrize("impl", IMPLS)
def test_save_pretrained_round_trip_and_hf_loads_it(tmp_path, minilm_dir, impl):
    transformers = pytest.importorskip("transformers")
    tok = _cls(impl).from_pretrained(minilm_dir, do_lower_case=False, strip_accents=True,
                                     tokenize_chinese_chars=False, model_max_length=64)
    files = tok.save_pretrained(tmp_path)
    assert all(os.path.isfile(f) for f in files)
    text = "Héllo WORLD, 中文! [SEP] x"
    back = _cls(impl).from_pretrained(tmp_path)
    assert back.init_kwargs() == tok.init_kwargs()
    assert back(text) == tok(text)
    for hf_cls in (transformers.BertTokenizerFast, transformers.BertTokenizer):
        theirs = hf_cls.from_pretrained(tmp_path)
        assert theirs(text)["input_ids"] == tok(text)["input_ids"]
        assert theirs.model_max_length == 64
    (path,) = tok.save_vocabulary(tmp_path, filename_prefix="x")
    assert os.path.basename(path) == "x-vocab.txt"
    with open(path, encoding="utf-8") as f, open(os.path.join(minilm_dir, "vocab.txt"), encoding="utf-8") as g:
        assert f.read().split("\n") == g.read().split("\n")


def test_never_split_is_kept_whole_by_both(minilm_dir):
    pure = _cls("pure").from_pretrained(minilm_dir, never_split=["hello", "##ing"])
    fast = _cls("fast").from_pretrained(minilm_dir, never_split=["hello", "##ing"])
    text = "xhello Hello ##ing sing"
    assert pure.tokenize(text) == fast.tokenize(text) == ["x", "hello", "hello", "##ing", "sing"]
    assert pure(text, return_offsets_mapping=True) == fast(text, return_offsets_mapping=True)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("impl", IMPLS)
def test_bad_vocab_files(tmp_path, impl):
    cls = _cls(impl)
    with pytest.raises(ValueError, match="vocab_file=.*does not exist"):
        cls(vocab_file=str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="vocab_file=.*is empty"):
        cls(vocab_file=str(empty))
    nospecial = tmp_path / "v.txt"
    nospecial.write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"sep_token='\[SEP\]' is not in the vocabulary"):
        cls(vocab_file=str(nospecial))
    with pytest.raises(ValueError, match="never_split token 'zzz-not-there'"):
        cls(vocab_file=str(tmp_path / "v.txt"), sep_token="hello", cls_token="hello", mask_token="hello",
            never_split=["zzz-not-there"])
    with pytest.raises(ValueError, match="path=.*is not a directory"):
        cls.from_pretrained(tmp_path / "nope")


def test_bad_call_arguments(tok):
    with pytest.raises(ValueError, match="text must be a str"):
        tok(123)
    with pytest.raises(ValueError, match="text must be a str"):
        tok(["ok", None])
    with pytest.raises(ValueError, match="text contains a lone surrogate U\\+D800 at index 1"):
        tok("a\ud800b")
    with pytest.raises(ValueError, match="text_pair must be a str"):
        tok("ok", 5)
    with pytest.raises(ValueError, match="text must be a list of words"):
        tok("not split", is_split_into_words=True)
    with pytest.raises(ValueError, match=r"max_length=2 leaves no room.*special tokens need 2"):
        tok("a b c", truncation=True, max_length=2)
    with pytest.raises(ValueError, match=r"max_length=3 leaves no room.*need 3"):
        tok("a b c", "d e", truncation=True, max_length=3)
    with pytest.raises(ValueError, match=r"stride=4 must be smaller than the truncation window of 4"):
        tok("a b c d e f g h", truncation=True, max_length=6, stride=4, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match="padding='sideways'"):
        tok("a", padding="sideways")
    with pytest.raises(ValueError, match="truncation='middle'"):
        tok("a", truncation="middle")
    with pytest.raises(ValueError, match="text_pair has 1 examples but text has 2"):
        tok(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="return_tensors='torchx'"):
        tok("a", return_tensors="torchx")
    with pytest.raises(ValueError, match="token id 99999 is outside the vocabulary"):
        tok.decode([101, 99999])
    with pytest.raises(ValueError, match="unknown keyword"):
        tok("a", max_len=3)


@pytest.mark.parametrize("impl", IMPLS)
def test_unknown_constructor_argument_raises(minilm_dir, impl):
    with pytest.raises(ValueError, match=r"unsupported tokenizer argument\(s\) \['additional_special_tokens'\]"):
        _cls(impl).from_pretrained(minilm_dir, additional_special_tokens=["[X]"])
    with pytest.raises(ValueError, match="do_basic_tokenize=False is not supported"):
        BertTokenizer.from_pretrained(minilm_dir, do_basic_tokenize=False)


@pytest.mark.parametrize("impl", IMPLS)
def test_over_length_warning_once(impl, caplog, minilm_dir):
    """Like HF: an untruncated encoding longer than model_max_length logs one warning per tokenizer;
    truncated or short encodings log nothing."""
    import logging

    tok = _cls(impl)(vocab_file=os.path.join(minilm_dir, "vocab.txt"), model_max_length=8)
    with caplog.at_level(logging.WARNING, logger="bert_common.tokenizers.api"):
        tok("short")
        tok("one two three four five six seven eight nine", truncation=True)
        assert not caplog.records
        ids = tok("one two three four five six seven eight nine")["input_ids"]
        assert len(ids) == 11
        tok("one two three four five six seven eight nine ten")
    assert len(caplog.records) == 1
    assert "(11 > 8)" in caplog.records[0].getMessage()
