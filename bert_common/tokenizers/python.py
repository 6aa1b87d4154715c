"""``BertTokenizer``: BERT's WordPiece tokenizer in pure Python (standard library only).

It implements the pipeline of ``bert_common.tokenizers.spec`` and returns exactly what Hugging Face's
fast tokenizer returns (ids, offsets, word ids), but without ``tokenizers``: importing this module imports
no framework and no ``tokenizers``. The HF-compatible ``__call__`` / decode / save machinery is the shared
``bert_common.tokenizers.api.TokenizerBase``.

How it stays fast in Python: every distinct character's normalised form ("expansion": cleaned, CJK
padded, NFD + accent-stripped, lower-cased, per the options) is computed once and cached in a
``str.translate`` table, so normalising a text is one C-level ``translate``; texts whose characters all
expand to exactly one character (nearly all text) keep a 1:1 character alignment, so offsets need no
bookkeeping. Words are cut by one compiled regex, and WordPiece results are cached per word.
"""
from __future__ import annotations

import os
import re
import unicodedata
from typing import Iterable

from bert_common.tokenizers import spec
from bert_common.tokenizers.api import DEFAULT_INIT, Piece, TokenizerBase, _reject_unknown, read_vocab

_CONTROL = spec.expand(spec.CONTROL_RANGES)
_WHITESPACE = spec.expand(spec.WHITESPACE_RANGES)
_MARKS = spec.expand(spec.NONSPACING_MARK_RANGES)
# A word is a run of anything but space and punctuation; each punctuation character is a word alone.
_PUNCT_CLASS = spec.regex_class(spec.PUNCTUATION_RANGES)
_WORD_RE = re.compile(f"[^ {_PUNCT_CLASS[1:-1]}]+|{_PUNCT_CLASS}")
_WORD_CACHE_LIMIT = 1 << 16


class _Expansion(dict):
    """``{code point: normalised str}`` filled on first use; usable directly as a ``str.translate`` table.

    ``complex`` collects the characters whose expansion is not exactly one character (or that may need
    canonical reordering), i.e. those that break the 1:1 alignment between original and normalised text.
    """

    def __init__(self, chinese: bool, strip: bool, lower: bool):
        super().__init__()
        self.chinese, self.strip, self.lower = chinese, strip, lower
        self.complex: set[str] = set()

    def __missing__(self, cp: int) -> str:
        out = self.expand(cp)
        self[cp] = out
        if len(out) != 1 or (self.strip and _ccc(out)):
            self.complex.add(chr(cp))
        return out

    def expand(self, cp: int) -> str:
        """The spec's steps 2-5 applied to the single character ``chr(cp)``."""
        out = self.decompose(cp)
        if self.strip:
            out = "".join(ch for ch in out if ord(ch) not in _MARKS)
        if self.lower:
            out = self.lowercase(out)
        return out

    def decompose(self, cp: int) -> str:
        """Steps 2-3 and, when stripping, the NFD decomposition of step 4 (no reordering, no removal)."""
        out = self.clean(cp)
        return "".join(self.nfd(c) for c in out) if self.strip else out

    def clean(self, cp: int) -> str:
        """Steps 2-3: control removal, whitespace to space, CJK padding."""
        if cp in _CONTROL or 0xD800 <= cp <= 0xDFFF:     # lone surrogates count as "other", like controls
            return ""
        if cp in _WHITESPACE:
            return " "
        c = chr(cp)
        if self.chinese and spec.in_ranges(cp, spec.CJK_RANGES):
            return " " + c + " "
        return c

    @staticmethod
    def nfd(c: str) -> str:
        """NFD decomposition of one character (``unicodedata`` + the spec's overrides)."""
        d = spec.NFD_OVERRIDES.get(ord(c))
        return unicodedata.normalize("NFD", c) if d is None else d

    @staticmethod
    def lowercase(text: str) -> str:
        """Character-by-character lower-casing (no final-sigma context rule), with the spec's overrides."""
        return "".join(spec.LOWERCASE_OVERRIDES.get(ord(ch)) or ch.lower() for ch in text)


def _canonical_order(chars: list[str], fresh: list[bool]) -> None:
    """NFD's canonical ordering, in place: stable-sort each run of combining characters by combining
    class. ``fresh`` (True for the first character of each character's decomposition) moves with its
    character, because that is how ``tokenizers`` assigns alignments afterwards (measured; see
    docs/tokenizers.md)."""
    i, n = 0, len(chars)
    while i < n:
        if _ccc(chars[i]) == 0:
            i += 1
            continue
        j = i
        while j < n and _ccc(chars[j]) != 0:
            j += 1
        if j - i > 1:
            run = sorted(zip(chars[i:j], fresh[i:j]), key=lambda t: _ccc(t[0]))
            chars[i:j] = [c for c, _ in run]
            fresh[i:j] = [f for _, f in run]
        i = j


def _ccc(ch: str) -> int:
    """Canonical combining class as ``tokenizers`` uses it (``unicodedata`` + the spec's overrides)."""
    v = spec.CCC_OVERRIDES.get(ord(ch))
    return unicodedata.combining(ch) if v is None else v


class BertTokenizer(TokenizerBase):
    """BERT WordPiece tokenizer in pure Python, HF-compatible (``transformers.BertTokenizer`` API), with
    ids, offsets and word ids equal to ``transformers.BertTokenizerFast``'s.

    Args:
        vocab_file: path of vocab.txt (one token per line; line number = id).
        do_lower_case: lower-case (and, unless ``strip_accents=False``, strip accents).
        strip_accents: None = follow ``do_lower_case``; True / False force it.
        tokenize_chinese_chars: split every CJK ideograph into its own word.
        never_split: extra tokens kept whole (matched verbatim in the raw text, like special tokens).
        unk_token, sep_token, pad_token, cls_token, mask_token: special tokens; all must be in the vocab.
        max_input_chars_per_word: longer words (after normalisation) become ``unk_token``.
        model_max_length: default ``max_length`` for truncation / padding.
    """

    def __init__(self, vocab_file: str | None = None, do_lower_case: bool = True, do_basic_tokenize: bool = True,
                 never_split: Iterable[str] | None = None, unk_token: str = "[UNK]", sep_token: str = "[SEP]",
                 pad_token: str = "[PAD]", cls_token: str = "[CLS]", mask_token: str = "[MASK]",
                 tokenize_chinese_chars: bool = True, strip_accents: bool | None = None, *,
                 vocab: dict[str, int] | None = None,
                 max_input_chars_per_word: int = spec.MAX_INPUT_CHARS_PER_WORD, model_max_length: int | None = None,
                 clean_up_tokenization_spaces: bool = False, padding_side: str = "right", **kwargs):
        _reject_unknown(kwargs)
        if not do_basic_tokenize:
            raise ValueError("do_basic_tokenize=False is not supported: the reference (HF fast) always runs "
                             "the basic tokenizer")
        if vocab is None:
            vocab = read_vocab(vocab_file)
        self._init_common(vocab, do_lower_case=do_lower_case, strip_accents=strip_accents,
                          tokenize_chinese_chars=tokenize_chinese_chars, never_split=never_split,
                          unk_token=unk_token, sep_token=sep_token, pad_token=pad_token, cls_token=cls_token,
                          mask_token=mask_token, max_input_chars_per_word=max_input_chars_per_word,
                          model_max_length=model_max_length,
                          clean_up_tokenization_spaces=clean_up_tokenization_spaces, padding_side=padding_side)
        self._table = _Expansion(self.tokenize_chinese_chars, self._strip, self.do_lower_case)
        # Added tokens: longest first so "[SEP]x" never matches a shorter prefix token first.
        added = sorted(self.added_tokens, key=len, reverse=True)
        self._added_re = re.compile("|".join(re.escape(t) for t in added))
        self._longest = max(len(t) for t in vocab)
        self._prefix = spec.WORDPIECE_PREFIX
        self._word_cache: dict[str, tuple[tuple[int, ...], tuple[tuple[int, int], ...]]] = {}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> "BertTokenizer":
        """Load from a HF-style directory (vocab.txt and/or tokenizer.json, tokenizer_config.json)."""
        vocab, kwargs = cls._read_pretrained(path, overrides)
        kwargs = {**{k: v for k, v in DEFAULT_INIT.items()}, **kwargs}
        return cls(vocab=vocab, **kwargs)

    # ---------------------------------------------------------------------------------------- WordPiece
    def _wordpiece(self, word: str) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
        """Greedy longest-match-first. Returns (ids, (start, end) within ``word``); a word longer than
        ``max_input_chars_per_word`` or with an unmatchable remainder is one ``unk_token``."""
        hit = self._word_cache.get(word)
        if hit is not None:
            return hit
        n = len(word)
        vocab = self.vocab
        ids, spans = [], []
        if n > self.max_input_chars_per_word:
            ids, spans = [self.unk_token_id], [(0, n)]
        else:
            start = 0
            while start < n:
                end = min(n, start + self._longest)
                found = None
                while end > start:
                    piece = word[start:end] if start == 0 else self._prefix + word[start:end]
                    found = vocab.get(piece)
                    if found is not None:
                        break
                    end -= 1
                if found is None:
                    ids, spans = [self.unk_token_id], [(0, n)]
                    break
                ids.append(found)
                spans.append((start, end))
                start = end
        result = (tuple(ids), tuple(spans))
        if len(self._word_cache) >= _WORD_CACHE_LIMIT:
            self._word_cache.clear()
        self._word_cache[word] = result
        return result

    # ---------------------------------------------------------------------------------------- core
    def _encode_texts(self, texts: list[str], want_offsets: bool) -> list[Piece]:
        return [self._encode_one(t, want_offsets) for t in texts]

    def _encode_one(self, text: str, want_offsets: bool) -> Piece:
        ids: list[int] = []
        offsets: list | None = [] if want_offsets else None
        words: list[int] = []
        pos, word_index = 0, 0
        for m in self._added_re.finditer(text) if self.added_tokens else ():
            if m.start() > pos:
                word_index = self._encode_segment(text, pos, m.start(), ids, offsets, words, word_index)
            ids.append(self.vocab[m.group()])
            if want_offsets:
                offsets.append((m.start(), m.end()))
            words.append(word_index)
            word_index += 1
            pos = m.end()
        if pos < len(text):
            self._encode_segment(text, pos, len(text), ids, offsets, words, word_index)
        return Piece(ids, offsets, words)

    def _normalize_aligned(self, seg: str) -> tuple[list[str], list[int]]:
        """Normalised characters of ``seg`` and, for each, the index of the original character it came
        from. The general path, for segments holding a character that breaks the 1:1 alignment."""
        table = self._table
        chars: list[str] = []
        origin: list[int] = []
        if not self._strip:
            for i, ch in enumerate(seg):
                out = table[ord(ch)]
                chars.extend(out)
                origin.extend([i] * len(out))
            return chars, origin
        staged: list[int] = []                # origin of each cleaned / CJK-padded character
        fresh: list[bool] = []                # first character of its own decomposition?
        for i, ch in enumerate(seg):          # clean and CJK padding, then NFD decomposition
            for c in table.clean(ord(ch)):
                d = table.nfd(c)
                chars.extend(d)
                staged.append(i)
                fresh.append(True)
                fresh.extend([False] * (len(d) - 1))
        _canonical_order(chars, fresh)        # canonical order, before the marks are dropped
        # Alignment, as tokenizers assigns it: a "fresh" character takes the next staged origin; the
        # others repeat the last one taken.
        k, last = 0, 0
        for f in fresh:
            if f:
                last = staged[k]
                k += 1
            origin.append(last)
        kept_chars: list[str] = []
        kept_origin: list[int] = []
        lower = self.do_lower_case
        for ch, o in zip(chars, origin):
            if ord(ch) in _MARKS:
                continue
            out = table.lowercase(ch) if lower else ch
            kept_chars.extend(out)
            kept_origin.extend([o] * len(out))
        return kept_chars, kept_origin

    def _encode_segment(self, text: str, lo: int, hi: int, ids: list, offsets: list | None, words: list,
                        word_index: int) -> int:
        """Encode ``text[lo:hi]`` (no added tokens inside), appending to the output lists; returns the
        next word index."""
        seg = text[lo:hi] if (lo or hi != len(text)) else text
        table = self._table
        norm = seg.translate(table)           # fills the cache for unseen characters first ...
        origin = None
        if not table.complex.isdisjoint(seg):  # ... so this test sees every character of seg
            chars, origin = self._normalize_aligned(seg)
            norm = "".join(chars)
        wordpiece = self._wordpiece
        for m in _WORD_RE.finditer(norm):
            w_ids, spans = wordpiece(m.group())
            ids.extend(w_ids)
            words.extend([word_index] * len(w_ids))
            word_index += 1
            if offsets is not None:
                s0 = m.start()
                if origin is None:
                    base = lo + s0
                    offsets.extend([(base + a, base + b) for a, b in spans])
                else:
                    offsets.extend([(lo + origin[s0 + a], lo + origin[s0 + b - 1] + 1) for a, b in spans])
        return word_index
