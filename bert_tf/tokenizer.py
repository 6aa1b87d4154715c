"""In-graph BERT WordPiece tokenizer built from core TensorFlow ops only.

``TFBertTokenizer`` is a ``keras.layers.Layer``: strings in, ``input_ids`` / ``token_type_ids`` /
``attention_mask`` out, inside ``tf.function`` and inside an exported SavedModel, giving the ids of the
Hugging Face fast (``tokenizers``) BERT tokenizer.

Why core ops and not ``tensorflow-text``: the only ``tensorflow-text`` release for TF 2.21
(2.21.1) requires the full ``tensorflow`` distribution, which would be installed next to our pinned
``tensorflow-cpu`` (both write the ``tensorflow/`` package), and its normaliser uses ICU tables that do
not equal the ``tokenizers`` ones (see docs/tf_tokenizer.md).

The pipeline (one story, top to bottom):

  1. special tokens   raw-text matches of ``[CLS]``, ``[SEP]``, ... and ``never_split`` become one private
                      "sentinel" code point each (Hugging Face matches them on the raw text, before any
                      normalisation)
  2. decode           UTF-8 -> code points
  3. normalise        per-code-point tables: identity / removed / CJK (isolated) / exception (0..k code
                      points), built from the one tokenizer spec ``bert_common.tokenizers.spec``
                      through the pure-Python ``BertTokenizer``'s own per-character derivation, so both
                      tokenizers follow the same data (no ``tokenizers`` needed).  With accent stripping:
                      clean + NFD, then NFD's canonical ordering of combining marks (a stable sort,
                      in-graph, by the spec's combining classes), then drop non-spacing marks +
                      lower-case.
  4. pre-tokenise     whitespace splits and is dropped; punctuation, CJK and sentinels are one-char words
  5. WordPiece        every (start, length <= longest vocab piece) substring of every word is looked up in
                      one hash table at once; a ``tf.while_loop`` then walks the greedy longest match of all
                      words in parallel.  Words longer than ``max_input_chars_per_word`` or with an
                      unmatched rest become ``[UNK]``.
  6. post-process     ``LongestFirst`` truncation, ``[CLS] a [SEP] (b [SEP])``, padding.

Shape legend: B batch of strings, N code points, M normalised code points, C kept (non-space) code
points, W words, P word pieces, S output sequence length.
"""
from __future__ import annotations

import functools
import json
import os
import time
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import keras
import tensorflow as tf

from bert_common.tokenizers import spec
from bert_common.tokenizers.python import _MARKS, _Expansion, _ccc

# ==  constants ==========================================================================================

# Sentinels for special / never_split tokens live at the end of plane 16 (private use, "Co"), which the
# reference removes as control characters, so a raw character there can never mean anything else.  Raw
# characters in this block are first rewritten to U+FFFD (also removed), so they cannot fake a token.
# (U+10FFFE/U+10FFFF are noncharacters, "Cn", which the reference keeps: they are outside the block.)
_SENTINEL_BASE = 0x10FE00
_SENTINEL_LAST = 0x10FFFD
_MAX_SPECIAL = _SENTINEL_LAST + 1 - _SENTINEL_BASE
_MAX_CODE_POINT = 0x10FFFF

# Per-code-point normalisation kinds (table 3 of the story).
_IDENTITY, _REMOVED, _EXCEPTION, _ISOLATED = 0, 1, 2, 3
# Per-code-point pre-tokeniser classes (the spec's step 6: space, PUNCTUATION_RANGES, other).
_OTHER, _SPACE, _PUNCT = 0, 1, 2

_PADDING = ("longest", "max_length")
_SPECIAL_ROLES = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_REQUIRED_ROLES = ("unk_token", "sep_token", "pad_token", "cls_token")


# ==  character tables (NumPy, built once per option set) ===============================================
#
# Every table comes from the ONE tokenizer spec, bert_common.tokenizers.spec, through the per-character
# derivation the pure-Python BertTokenizer itself uses (imported, not re-implemented): its clean-up + CJK
# padding + NFD (``_Expansion.decompose``), clean-up + lower-casing (``_Expansion.expand``), the
# non-spacing marks it drops (``_MARKS``), its lower-casing (``_Expansion.lowercase``) and its combining
# classes (``_ccc``).  So both tokenizers follow the same data, and building the layer needs neither
# ``tokenizers`` nor any measurement.

@dataclass(frozen=True)
class CharMap:
    """A map code point -> 0..k code points over [0, 0x10FFFF], as runs plus exceptions.

    ``kind_starts``/``kind_values`` (R,) int32 runs of the kind (identity, removed, exception, isolated);
    ``exc_keys`` (E,) int32 sorted code points of kind "exception"; ``exc_splits`` (E + 1,) int32 row
    splits into ``exc_values`` (X,) int32, their output code points.
    """
    kind_starts: np.ndarray
    kind_values: np.ndarray
    exc_keys: np.ndarray
    exc_splits: np.ndarray
    exc_values: np.ndarray


@dataclass(frozen=True)
class CharTables:
    """Everything the graph needs to normalise and pre-tokenise, for one option set.

    ``first``   clean-up + CJK isolation, then NFD when stripping accents (else lower-casing), per char;
    ``second``  only when stripping accents: drop non-spacing marks + lower-case, per NFD character
                (applied after NFD's canonical reordering, which needs the whole string);
    ``ccc_starts``/``ccc_values`` (K,) int32 runs of the canonical combining class, as the spec defines
                it (only used when stripping accents);
    ``class_starts``/``class_values`` (Q,) int32 runs of the pre-tokeniser class (other, space, punct).
    """
    first: CharMap
    second: CharMap | None
    ccc_starts: np.ndarray
    ccc_values: np.ndarray
    class_starts: np.ndarray
    class_values: np.ndarray


def _range_code_points(ranges: spec.Ranges) -> Iterable[int]:
    """Every code point of a spec range table, in order."""
    return (cp for a, b in ranges for cp in range(a, b + 1))


@functools.lru_cache(maxsize=None)
def _may_change(step: str) -> tuple[int, ...]:
    """Code points that a one-character step of the spec can change: ``"nfd"`` (NFD decomposition),
    ``"lower"`` (lower-casing) or ``"ccc"`` (non-zero combining class).

    A superset, found by scanning ``unicodedata`` / ``str.lower`` and adding the keys of the spec's
    override table for that step; the tables below then ask the spec's derivation for each of them, so
    every code point not listed here is provably left alone by the step."""
    if step == "nfd":
        test, overrides = (lambda c: not unicodedata.is_normalized("NFD", c)), spec.NFD_OVERRIDES
    elif step == "lower":
        test, overrides = (lambda c: c.lower() != c), spec.LOWERCASE_OVERRIDES
    elif step == "ccc":
        test, overrides = unicodedata.combining, spec.CCC_OVERRIDES
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown step {step!r}")
    found = {cp for cp in range(_MAX_CODE_POINT + 1) if not 0xD800 <= cp < 0xE000 and test(chr(cp))}
    return tuple(sorted(found.union(overrides)))


def _first_stage(lowercase: bool, strip_accents: bool, chinese: bool) -> dict[int, str]:
    """{code point: output} for every code point the per-character first stage changes: the spec's steps
    2-3 (clean-up, CJK padding), then step 4's NFD decomposition (stripping accents) or step 5's
    lower-casing (not stripping) -- ``BertTokenizer``'s ``decompose`` / ``expand`` of one character."""
    exp = _Expansion(chinese, strip_accents, lowercase)
    per_char = exp.decompose if strip_accents else exp.expand
    candidates = set(_range_code_points(spec.CONTROL_RANGES + spec.WHITESPACE_RANGES))
    if chinese:
        candidates.update(_range_code_points(spec.CJK_RANGES))
    if strip_accents:
        candidates.update(_may_change("nfd"))
    elif lowercase:
        candidates.update(_may_change("lower"))
    changed = {}
    for cp in candidates:
        out = per_char(cp)
        if out != chr(cp):
            changed[cp] = out
    return changed


def _second_stage(lowercase: bool) -> dict[int, str]:
    """{code point: output} for every code point the second stage changes (applied per NFD character,
    after canonical ordering): drop the spec's non-spacing marks, then lower-case -- what
    ``BertTokenizer`` does to each character after its canonical ordering."""
    candidates = set(_MARKS)
    if lowercase:
        candidates.update(_may_change("lower"))
    changed = {}
    for cp in candidates:
        c = chr(cp)
        out = "" if cp in _MARKS else (_Expansion.lowercase(c) if lowercase else c)
        if out != c:
            changed[cp] = out
    return changed


@functools.lru_cache(maxsize=1)
def _combining_classes() -> np.ndarray:
    """(0x110000,) int16 canonical combining class of every code point, as the spec defines it
    (``unicodedata`` + ``CCC_OVERRIDES``, via ``BertTokenizer``'s ``_ccc``)."""
    ccc = np.zeros(_MAX_CODE_POINT + 1, np.int16)
    for cp in _may_change("ccc"):
        ccc[cp] = _ccc(chr(cp))
    return ccc


@functools.lru_cache(maxsize=1)
def _pretokenizer_classes() -> np.ndarray:
    """(0x110000,) int8 pre-tokeniser class of every code point (spec step 6, as ``BertTokenizer``'s word
    regex applies it): the space splits and is dropped, ``PUNCTUATION_RANGES`` code points are words of
    their own, anything else merges with its neighbours.  (Normalised text holds no other whitespace:
    step 2 turned every ``WHITESPACE_RANGES`` code point into a space.)"""
    classes = np.full(_MAX_CODE_POINT + 1, _OTHER, np.int8)
    for a, b in spec.PUNCTUATION_RANGES:
        classes[a:b + 1] = _PUNCT
    classes[ord(" ")] = _SPACE
    return classes


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run-length encode a dense (0x110000,) table as (starts, values), both int32."""
    change = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], change]).astype(np.int32)
    return starts, values[starts].astype(np.int32)


def _char_map(changed: dict[int, str]) -> CharMap:
    """Encode {code point: output} (others map to themselves) as a CharMap. A code point whose output is
    itself padded with spaces (a CJK character under ``tokenize_chinese_chars``) is kept as is and
    flagged "isolated" instead."""
    kinds = np.full(_MAX_CODE_POINT + 1, _IDENTITY, np.int8)
    kinds[0xD800:0xE000] = _REMOVED      # lone surrogates are removed, as by BertTokenizer's clean-up
    exceptions: dict[int, list[int]] = {}
    for c, s in changed.items():
        if s == f" {chr(c)} ":
            kinds[c] = _ISOLATED
        elif s == "":
            kinds[c] = _REMOVED
        else:
            kinds[c] = _EXCEPTION
            exceptions[c] = [ord(x) for x in s]
    # Sentinels: kept as they are (the class table isolates them as one-character words).
    kinds[_SENTINEL_BASE:_SENTINEL_BASE + _MAX_SPECIAL] = _IDENTITY
    keys = np.array(sorted(exceptions), np.int32)
    lengths = np.array([len(exceptions[k]) for k in keys], np.int32)
    splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.array([v for k in keys for v in exceptions[k]], np.int32)
    return CharMap(*_runs(kinds), keys, splits, values)


@functools.lru_cache(maxsize=None)
def char_tables(lowercase: bool, strip_accents: bool, tokenize_chinese_chars: bool) -> CharTables:
    """The normalisation and class tables for one option set, from ``bert_common.tokenizers.spec``
    (cached; well under a second the first time)."""
    first = _first_stage(lowercase, strip_accents, tokenize_chinese_chars)
    # Sentinels are only sound if the spec deletes every raw character of their block (so none can mean
    # anything in real text).
    if any(first.get(c) != "" for c in range(_SENTINEL_BASE, _SENTINEL_LAST + 1)):  # pragma: no cover
        raise RuntimeError("the tokenizer spec keeps a character of the sentinel block "
                           f"U+{_SENTINEL_BASE:X}..U+{_SENTINEL_LAST:X}; the tokenizer needs another block")
    classes = _pretokenizer_classes().copy()
    classes[_SENTINEL_BASE:_SENTINEL_BASE + _MAX_SPECIAL] = _PUNCT
    if strip_accents:
        second = _char_map(_second_stage(lowercase))
        ccc_starts, ccc_values = _runs(_combining_classes())
    else:
        second, ccc_starts, ccc_values = None, np.zeros(1, np.int32), np.zeros(1, np.int32)
    return CharTables(_char_map(first), second, ccc_starts, ccc_values, *_runs(classes))


# ==  vocabulary and options ============================================================================

def load_vocab(vocab: str | os.PathLike | Sequence[str]) -> list[str]:
    """A vocabulary as a list of pieces (index = id), from a list or a ``vocab.txt`` path."""
    if isinstance(vocab, (str, os.PathLike)):
        if not os.path.isfile(vocab):
            raise ValueError(f"vocab={str(vocab)!r} is not a file; expected a vocab.txt with one piece per line")
        with open(vocab, encoding="utf-8") as f:
            pieces = [line.rstrip("\n").rstrip("\r") for line in f]
        # A trailing newline does not add an empty piece.
        while pieces and pieces[-1] == "":
            pieces.pop()
    else:
        pieces = list(vocab)
        bad = [p for p in pieces if not isinstance(p, str)]
        if bad:
            raise ValueError(f"vocab must hold strings; got {type(bad[0]).__name__} {bad[0]!r}")
    if not pieces:
        raise ValueError(f"vocab={vocab!r} is empty; need at least the special tokens")
    return pieces


def _utf8_length(cps: tf.Tensor) -> tf.Tensor:
    """Bytes per code point in UTF-8, same shape/dtype as ``cps``."""
    one = tf.ones_like(cps)
    return (one + tf.cast(cps >= 0x80, cps.dtype) + tf.cast(cps >= 0x800, cps.dtype)
            + tf.cast(cps >= 0x10000, cps.dtype))


def _run_lookup(starts: tf.Tensor, values: tf.Tensor, cps: tf.Tensor) -> tf.Tensor:
    """Value of the run containing each code point. cps (N,) int32 -> (N,) int32."""
    run = tf.searchsorted(starts, cps, side="right") - 1
    return tf.gather(values, run)


# ==  the layer =========================================================================================

class TFBertTokenizer(keras.layers.Layer):
    """BERT WordPiece tokenizer as a Keras layer whose whole computation is TensorFlow ops.

    Args:
        vocab: list of pieces (index = id) or path of a ``vocab.txt``.
        do_lower_case: lower-case (and, when ``strip_accents`` is None, strip accents).
        strip_accents: True / False / None (None follows ``do_lower_case``, as in Hugging Face).
        tokenize_chinese_chars: isolate CJK ideographs as one-character words.
        never_split: extra strings matched on the raw text and emitted as their own vocabulary id
            (each must be in the vocabulary), like the special tokens.
        max_input_chars_per_word: longer words become ``unk_token``.
        unk_token, sep_token, pad_token, cls_token, mask_token: special pieces (must be in the vocab;
            ``mask_token`` may be None).
        padding: "longest" (pad to the longest row of the batch) or "max_length".
        max_length: truncation / padding length including the special tokens; None = no truncation.
        truncation: truncate to ``max_length`` ("longest_first" for pairs).

    ``call(text, text_pair=None)``: ``text`` / ``text_pair`` string tensors (B,) (a Python str or list is
    accepted too).  Returns a dict of int64 (B, S) tensors ``input_ids``, ``token_type_ids``,
    ``attention_mask``.
    """

    def __init__(self, vocab: str | os.PathLike | Sequence[str], do_lower_case: bool = True,
                 strip_accents: bool | None = None, tokenize_chinese_chars: bool = True,
                 never_split: Iterable[str] | None = None, max_input_chars_per_word: int = 100,
                 unk_token: str = "[UNK]", sep_token: str = "[SEP]", pad_token: str = "[PAD]",
                 cls_token: str = "[CLS]", mask_token: str | None = "[MASK]", padding: str = "longest",
                 max_length: int | None = None, truncation: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.vocab = load_vocab(vocab)
        for name, value in (("do_lower_case", do_lower_case), ("tokenize_chinese_chars", tokenize_chinese_chars),
                            ("truncation", truncation)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False; got {value!r}")
        if strip_accents not in (True, False, None):
            raise ValueError(f"strip_accents must be True, False or None; got {strip_accents!r}")
        if padding not in _PADDING:
            raise ValueError(f"padding={padding!r} is not one of {list(_PADDING)}")
        if not isinstance(max_input_chars_per_word, int) or max_input_chars_per_word < 1:
            raise ValueError(f"max_input_chars_per_word must be an int >= 1; got {max_input_chars_per_word!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 3):
            raise ValueError(f"max_length must be None or an int >= 3 (room for the special tokens "
                             f"[CLS] [SEP] [SEP]); got {max_length!r}")
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length; got max_length=None")
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.max_input_chars_per_word = max_input_chars_per_word
        self.padding = padding
        self.max_length = max_length
        self.truncation = truncation

        # Last duplicate wins, as when Hugging Face reads a vocab.txt into a dict.
        index = {piece: i for i, piece in enumerate(self.vocab)}
        specials = {"unk_token": unk_token, "sep_token": sep_token, "pad_token": pad_token,
                    "cls_token": cls_token, "mask_token": mask_token}
        for role, tok in specials.items():
            if tok is None and role in _REQUIRED_ROLES:
                raise ValueError(f"{role} is required; got None")
            if tok is not None and tok not in index:
                raise ValueError(f"{role}={tok!r} is not in the vocabulary ({len(self.vocab)} pieces)")
        self.special_tokens = {role: tok for role, tok in specials.items() if tok is not None}
        self.unk_id, self.sep_id = index[unk_token], index[sep_token]
        self.pad_id, self.cls_id = index[pad_token], index[cls_token]
        self.never_split = [] if never_split is None else list(never_split)
        for tok in self.never_split:
            if not isinstance(tok, str) or not tok:
                raise ValueError(f"never_split entries must be non-empty strings; got {tok!r}")
            if tok not in index:
                raise ValueError(f"never_split token {tok!r} is not in the vocabulary")
        # Matched on raw text, longest first, so "[MASK]x" never loses to a shorter overlapping token.
        matched = sorted(dict.fromkeys(list(self.special_tokens.values()) + self.never_split),
                         key=lambda t: (-len(t), t))
        if len(matched) > _MAX_SPECIAL:
            raise ValueError(f"never_split has {len(matched)} tokens with the specials; the limit is {_MAX_SPECIAL}")
        self._matched_tokens = matched
        self._matched_ids = np.array([index[t] for t in matched], np.int64)

        strip = do_lower_case if strip_accents is None else strip_accents
        tables = char_tables(do_lower_case, bool(strip), tokenize_chinese_chars)
        self._tables = tables
        # Longest piece in characters (without "##"): no candidate substring is longer.
        self._max_piece = max(len(p[2:]) if p.startswith("##") else len(p) for p in self.vocab)
        self._max_piece = max(1, min(self._max_piece, max_input_chars_per_word))
        keys = tf.constant(list(index), tf.string)
        ids = tf.constant(list(index.values()), tf.int64)
        self._vocab_table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, ids), -1)

    # --  config -----------------------------------------------------------------------------------------
    def get_config(self) -> dict:
        config = super().get_config()
        config.update(vocab=self.vocab, do_lower_case=self.do_lower_case, strip_accents=self.strip_accents,
                      tokenize_chinese_chars=self.tokenize_chinese_chars, never_split=self.never_split,
                      max_input_chars_per_word=self.max_input_chars_per_word, padding=self.padding,
                      max_length=self.max_length, truncation=self.truncation,
                      mask_token=self.special_tokens.get("mask_token"),
                      **{r: t for r, t in self.special_tokens.items() if r != "mask_token"})
        return config

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> "TFBertTokenizer":
        """Build from a Hugging Face directory: ``vocab.txt`` + optional ``tokenizer_config.json``.

        Options in the config (do_lower_case, strip_accents, tokenize_chinese_chars, never_split, special
        tokens, model_max_length -> max_length) are used unless given in ``overrides``."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise ValueError(f"path={path!r} is not a directory")
        vocab_file = os.path.join(path, "vocab.txt")
        if not os.path.isfile(vocab_file):
            raise ValueError(f"path={path!r} has no vocab.txt")
        kwargs: dict = {}
        config_file = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(config_file):
            with open(config_file, encoding="utf-8") as f:
                cfg = json.load(f)
            for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "never_split",
                        *_SPECIAL_ROLES):
                value = cfg.get(key)
                if isinstance(value, dict):  # AddedToken serialised as {"content": ...}
                    value = value.get("content")
                if value is not None or key == "strip_accents":
                    kwargs[key] = value
            # Hugging Face stores "no limit" as a huge integer (1e30).
            mml = cfg.get("model_max_length")
            if isinstance(mml, int) and 3 <= mml <= 1_000_000:
                kwargs["max_length"] = mml
        kwargs.update(overrides)
        return cls(vocab_file, **kwargs)

    # --  graph pieces -----------------------------------------------------------------------------------
    def _replace_matched_tokens(self, text: tf.Tensor) -> tf.Tensor:
        """Raw-text special/never_split tokens -> one sentinel code point each. (B,) string -> (B,) string."""
        text = tf.strings.regex_replace(text, "[\\x{%X}-\\x{%X}]" % (_SENTINEL_BASE, _SENTINEL_LAST), "\ufffd")
        for i, tok in enumerate(self._matched_tokens):
            pattern = "".join(ch if ch.isascii() and ch.isalnum() else "\\x{%X}" % ord(ch) for ch in tok)
            text = tf.strings.regex_replace(text, pattern, chr(_SENTINEL_BASE + i))
        return text

    @staticmethod
    def _expand(m: CharMap, cps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Apply a CharMap. cps (N,) int32 -> (output code points (M,) int32, source index (M,) int64,
        isolated flag (M,) bool)."""
        kind = _run_lookup(tf.constant(m.kind_starts), tf.constant(m.kind_values), cps)          # (N,)
        n_exc = len(m.exc_keys)
        exc = tf.minimum(tf.searchsorted(tf.constant(m.exc_keys), cps, side="left"), max(n_exc - 1, 0))
        splits = tf.constant(m.exc_splits)
        exc_len = tf.gather(splits, exc + 1) - tf.gather(splits, exc) if n_exc else tf.zeros_like(cps)
        n_out = tf.where(kind == _REMOVED, 0, tf.where(kind == _EXCEPTION, exc_len, 1))          # (N,)
        src = tf.repeat(tf.range(tf.size(cps, out_type=tf.int64)), tf.cast(n_out, tf.int64))     # (M,)
        first = tf.cumsum(tf.cast(n_out, tf.int64), exclusive=True)                               # (N,)
        offset = tf.cast(tf.range(tf.size(src, out_type=tf.int64)) - tf.gather(first, src), tf.int32)
        src_kind = tf.gather(kind, src)
        out = tf.gather(cps, src)
        if n_exc:
            is_exc = src_kind == _EXCEPTION
            at = tf.gather(splits, tf.gather(exc, src)) + tf.where(is_exc, offset, 0)
            out = tf.where(is_exc, tf.gather(tf.constant(m.exc_values), at), out)
        return out, src, src_kind == _ISOLATED

    def _normalize(self, cps: tf.Tensor, rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Code points (N,) int32 with their rows (N,) int64 -> (normalised code points (M,) int32,
        row (M,) int64, isolated flag (M,) bool)."""
        t = self._tables
        out, src, isolated = self._expand(t.first, cps)
        out_rows = tf.gather(rows, src)
        if t.second is None:
            return out, out_rows, isolated
        # NFD's canonical ordering: each run of non-starters (class > 0) is stably sorted by class. Done
        # before the non-spacing marks are dropped, as in the reference (a dropped class-0 mark still
        # separates two runs). Runs never cross rows: each row start opens a new group.
        ccc = tf.cast(_run_lookup(tf.constant(t.ccc_starts), tf.constant(t.ccc_values), out), tf.int64)
        row_start = tf.not_equal(out_rows, tf.concat([[-1], out_rows[:-1]], 0))
        group = tf.cumsum(tf.cast((ccc == 0) | row_start, tf.int64)) - 1                          # (M,)
        order = tf.argsort(group * 256 + ccc, stable=True)
        out, out_rows, isolated = tf.gather(out, order), tf.gather(out_rows, order), tf.gather(isolated, order)
        out2, src2, _ = self._expand(t.second, out)
        return out2, tf.gather(out_rows, src2), tf.gather(isolated, src2)

    def _wordpiece_ids(self, text: tf.Tensor) -> tf.RaggedTensor:
        """(B,) string -> ragged (B, None) int64 word-piece ids, without special tokens or truncation."""
        t = self._tables
        text = self._replace_matched_tokens(text)
        decoded = tf.strings.unicode_decode(text, "UTF-8", errors="replace", replacement_char=0xFFFD)
        cps, rows = decoded.flat_values, decoded.value_rowids()                                  # (N,), (N,)
        n_rows = tf.shape(text, out_type=tf.int64)[0]

        # -- normalise, then classify the normalised code points
        out, out_rows, isolated = self._normalize(cps, rows)                                     # (M,)
        cls = _run_lookup(tf.constant(t.class_starts), tf.constant(t.class_values), out)
        space = cls == _SPACE
        alone = isolated | (cls == _PUNCT)
        # A word starts at a kept char whose predecessor (same row) is a space or isolated, or that is
        # itself isolated, or that begins its row.
        prev_row = tf.concat([[-1], out_rows[:-1]], 0)
        prev_break = tf.concat([[True], (space | alone)[:-1]], 0)
        keep = ~space
        start = keep & (prev_break | alone | tf.not_equal(out_rows, prev_row))
        chars = tf.boolean_mask(out, keep)                                                       # (C,)
        start = tf.boolean_mask(start, keep)
        char_rows = tf.boolean_mask(out_rows, keep)
        word = tf.cumsum(tf.cast(start, tf.int64)) - 1                                           # (C,)
        n_chars = tf.size(chars, out_type=tf.int64)
        char_idx = tf.range(n_chars)
        word_first = tf.boolean_mask(char_idx, start)                                            # (W,)
        n_words = tf.size(word_first, out_type=tf.int64)
        word_len = tf.math.unsorted_segment_sum(tf.ones_like(word), word, n_words)               # (W,)
        pos = char_idx - tf.gather(word_first, word)                                             # (C,)
        wlen = tf.gather(word_len, word)

        # -- every candidate piece (start char j, length l) inside a word that is not too long
        nbytes = tf.cast(_utf8_length(chars), tf.int64)
        byte_end = tf.cumsum(nbytes)                                                             # (C,)
        byte_start = byte_end - nbytes
        word_str = tf.strings.unicode_encode(                                                    # (W,)
            tf.RaggedTensor.from_value_rowids(chars, word, nrows=n_words, validate=False), "UTF-8")
        L = self._max_piece
        lengths = tf.range(1, L + 1, dtype=tf.int64)                                             # (L,)
        j = tf.repeat(char_idx, L)                                                               # (C*L,)
        ln = tf.tile(lengths, [n_chars])
        valid = (tf.gather(pos, j) + ln <= tf.gather(wlen, j)) & (
            tf.gather(wlen, j) <= self.max_input_chars_per_word)
        j, ln = tf.boolean_mask(j, valid), tf.boolean_mask(ln, valid)
        last = j + ln - 1
        cand_word = tf.gather(word, j)
        in_word = tf.gather(byte_start, j) - tf.gather(byte_start, tf.gather(word_first, cand_word))
        piece = tf.strings.substr(tf.gather(word_str, cand_word), in_word,
                                  tf.gather(byte_end, last) - tf.gather(byte_start, j))
        piece = tf.strings.join([tf.where(tf.gather(pos, j) > 0, "##", ""), piece])
        found = self._vocab_table.lookup(piece)                                                  # (K,)
        # Longest match per start char: pack (length, id) into one int64 so one segment max finds both.
        packed = tf.where(found >= 0, ln * (1 << 32) + found, 0)
        best = tf.math.unsorted_segment_max(packed, j, n_chars)
        best = tf.maximum(best, 0)  # empty segments give the dtype minimum
        match_len, match_id = best // (1 << 32), best % (1 << 32)                                # (C,)
        sentinel = (chars >= _SENTINEL_BASE) & (chars < _SENTINEL_BASE + len(self._matched_tokens))
        match_len = tf.where(sentinel, tf.ones_like(match_len), match_len)
        sentinel_id = tf.gather(tf.constant(self._matched_ids),
                                tf.clip_by_value(tf.cast(chars, tf.int64) - _SENTINEL_BASE, 0,
                                                 len(self._matched_tokens) - 1))
        match_id = tf.where(sentinel, sentinel_id, match_id)

        # -- greedy walk of all words at once; a word fails (-> [UNK]) on its first unmatched rest
        failed0 = word_len > self.max_input_chars_per_word
        visited0 = tf.zeros([n_chars], tf.int32)
        wpos0 = tf.zeros_like(word_len)

        def cond(wpos, failed, visited):
            return tf.reduce_any(~failed & (wpos < word_len))

        def body(wpos, failed, visited):
            active = ~failed & (wpos < word_len)
            at = tf.minimum(word_first + wpos, tf.maximum(n_chars - 1, 0))
            ml = tf.gather(match_len, at)
            miss = active & (ml == 0)
            hit = active & ~miss
            visited = tf.tensor_scatter_nd_max(visited, tf.boolean_mask(at, hit)[:, None],
                                               tf.ones_like(tf.boolean_mask(at, hit), tf.int32))
            wpos = tf.where(hit, wpos + ml, tf.where(miss, word_len, wpos))
            return wpos, failed | miss, visited

        _, failed, visited = tf.while_loop(cond, body, (wpos0, failed0, visited0))
        char_failed = tf.gather(failed, word)
        is_piece = tf.where(char_failed, pos == 0, visited > 0)
        ids = tf.where(char_failed, tf.constant(self.unk_id, tf.int64), match_id)
        return tf.RaggedTensor.from_value_rowids(tf.boolean_mask(ids, is_piece),
                                                 tf.boolean_mask(char_rows, is_piece), nrows=n_rows,
                                                 validate=False)

    def _truncate(self, a: tf.RaggedTensor, b: tf.RaggedTensor | None) -> tuple:
        """Hugging Face ``LongestFirst`` truncation to ``max_length`` minus the special tokens."""
        if not self.truncation or self.max_length is None:
            return a, b
        la = a.row_lengths()
        if b is None:
            keep_a = tf.minimum(la, self.max_length - 2)
            return tf.ragged.boolean_mask(a, tf.ragged.range(la) < keep_a[:, None]), None
        m = self.max_length - 3
        lb = b.row_lengths()
        short, long = tf.minimum(la, lb), tf.maximum(la, lb)
        new_long = tf.where(short > m, short, tf.maximum(short, m - short))
        both = short + new_long > m
        short2 = tf.where(both, tf.cast(m // 2, tf.int64), short)
        long2 = tf.where(both, tf.cast(m // 2 + m % 2, tf.int64), new_long)
        swap = la > lb
        fits = la + lb <= m
        keep_a = tf.where(fits, la, tf.minimum(la, tf.where(swap, long2, short2)))
        keep_b = tf.where(fits, lb, tf.minimum(lb, tf.where(swap, short2, long2)))
        return (tf.ragged.boolean_mask(a, tf.ragged.range(la) < keep_a[:, None]),
                tf.ragged.boolean_mask(b, tf.ragged.range(lb) < keep_b[:, None]))

    def _as_batch(self, text, name: str) -> tf.Tensor:
        text = tf.convert_to_tensor(text)
        if text.dtype != tf.string:
            raise ValueError(f"{name} must be a string tensor; got dtype {text.dtype.name}")
        if text.shape.rank == 0:
            text = text[None]
        if text.shape.rank != 1:
            raise ValueError(f"{name} must have shape (batch,); got {text.shape}")
        return text

    def __call__(self, text, text_pair=None, **kwargs):
        # Keras only lets tensors through positionally; a str or a list of str is a convenience here.
        if isinstance(text, (str, bytes, list, tuple)):
            text = tf.constant(text, tf.string)
        if isinstance(text_pair, (str, bytes, list, tuple)):
            text_pair = tf.constant(text_pair, tf.string)
        return super().__call__(text, text_pair, **kwargs)

    def call(self, text, text_pair=None) -> dict[str, tf.Tensor]:
        """text, text_pair: (B,) string -> dict of (B, S) int64 input_ids / token_type_ids / attention_mask."""
        text = self._as_batch(text, "text")
        if text_pair is not None:
            text_pair = self._as_batch(text_pair, "text_pair")
            if not text.shape.is_compatible_with(text_pair.shape):
                raise ValueError(f"text and text_pair must have the same batch size; got {text.shape[0]} "
                                 f"and {text_pair.shape[0]}")
        return self._encode(text, text_pair)

    def _encode(self, text: tf.Tensor, text_pair: tf.Tensor | None) -> dict[str, tf.Tensor]:
        n = tf.shape(text)[0]
        if text_pair is None:
            a, b = self._truncate(self._wordpiece_ids(text), None)
        else:
            both = self._wordpiece_ids(tf.concat([text, text_pair], 0))  # one pass over 2B strings
            a, b = self._truncate(both[:n], both[n:])
        cls = tf.fill([n, 1], tf.constant(self.cls_id, tf.int64))
        sep = tf.fill([n, 1], tf.constant(self.sep_id, tf.int64))
        parts = [cls, a, sep] + ([] if b is None else [b, sep])
        ids = tf.concat(parts, axis=1)                                                           # (B, None)
        types = tf.concat([tf.zeros_like(cls), tf.zeros_like(a), tf.zeros_like(sep)]
                          + ([] if b is None else [tf.ones_like(b), tf.ones_like(sep)]), axis=1)
        mask = tf.ones_like(ids)
        width = None if self.padding == "longest" else self.max_length
        # Keys in sorted order: Keras flattens dict outputs by sorted key, so the symbolic spec and the
        # eager result line up however a caller iterates them.
        out = {"attention_mask": mask.to_tensor(0), "input_ids": ids.to_tensor(self.pad_id),
               "token_type_ids": types.to_tensor(0)}
        if width is not None:  # pad to max_length (rows longer than it exist only without truncation)
            extra = tf.maximum(width - tf.shape(out["input_ids"])[1], 0)
            out = {k: tf.pad(v, [[0, 0], [0, extra]], constant_values=self.pad_id if k == "input_ids" else 0)
                   for k, v in out.items()}
        return out

    def compute_output_spec(self, text, text_pair=None):  # symbolic Keras inputs
        # One KerasTensor per output: a shared one would make a functional model return one tensor thrice.
        return {key: keras.KerasTensor((text.shape[0], None), dtype="int64")
                for key in ("attention_mask", "input_ids", "token_type_ids")}


# ==  benchmark helper ==================================================================================

def bench_tf_tokenizer(texts: Sequence[str], vocab_dir: str | os.PathLike, batch_size: int = 256,
                       repeats: int = 3, **options) -> float:
    """Word pieces per second of the in-graph tokenizer (under ``tf.function``, after one warm-up call),
    best of ``repeats`` passes over ``texts`` in batches of ``batch_size``."""
    tok = TFBertTokenizer.from_pretrained(vocab_dir, **options)
    fn = tf.function(lambda x: tok(x), input_signature=[tf.TensorSpec([None], tf.string)])
    batches = [tf.constant(list(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
    n_tokens = 0
    for b in batches:
        n_tokens += int(tf.reduce_sum(fn(b)["attention_mask"]))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)["input_ids"].numpy()
        best = min(best, time.perf_counter() - t0)
    return n_tokens / best
