"""The Hugging Face-compatible tokenizer API, written once for ``BertTokenizer`` and ``BertTokenizerFast``.

A subclass supplies only the core: ``_encode_texts(texts, want_offsets)`` turning raw strings into
word-piece ids (no special tokens) with character offsets and pre-token word indices, and
``_decode_tokens``. Everything else — special tokens, truncation (``longest_first`` / ``only_first`` /
``only_second``), overflowing windows with ``stride``, padding, ``is_split_into_words``, tensors, vocab
I/O and ``from_pretrained`` / ``save_pretrained`` — lives here, so both tokenizers behave identically by
construction. The behaviour reproduces ``transformers.BertTokenizerFast`` 4.57 (the reference); the few
deliberate differences (clear errors where HF panics or silently ignores ``max_length``) are listed in
``docs/tokenizers.md``.

Shapes: a batch of B examples encodes to lists of length B (more with overflowing windows) of
per-token lists; ``return_tensors`` turns them into (B, S) int64 arrays / tensors and offsets into
(B, S, 2).
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Iterable, NamedTuple, Sequence

from bert_common.io_utils import atomic_write_text
from bert_common.tokenizers.spec import DECODE_CLEANUP, MAX_INPUT_CHARS_PER_WORD, SPECIAL_TOKENS, WORDPIECE_PREFIX

VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_MODEL_MAX_LENGTH = 512
logger = logging.getLogger(__name__)

# Keys of an encoding, in the order Hugging Face returns them.
OUTPUT_KEYS = ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask", "offset_mapping", "length")
# Value each key gets at a padded position (input_ids uses the tokenizer's pad id).
PAD_VALUES = {"token_type_ids": 0, "attention_mask": 0, "special_tokens_mask": 1, "offset_mapping": (0, 0)}
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")
PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TENSOR_TYPES = ("np", "pt", "tf", "jax")


class Piece(NamedTuple):
    """One encoded sequence before special tokens: parallel lists of length T.

    ids: word-piece ids (int); offsets: (start, end) character offsets into the source text or ``None``
    when offsets were not requested; words: index of the pre-token (word) each id came from.
    """
    ids: list
    offsets: list | None
    words: list


# ============================================================================================ outputs
class BatchEncoding(dict):
    """The result of ``tokenizer(...)``: a dict (``enc["input_ids"]``) with attribute access
    (``enc.input_ids``) and per-example ``word_ids`` / ``sequence_ids`` / ``tokens``."""

    def __init__(self, data: dict, *, layout=None, side: str = "right", tokenizer=None, batched: bool = True):
        super().__init__(data)
        # layout[i] = (unpadded ids, first Piece, second Piece or None, specials added?, pad count); the
        # per-token views are built only when asked for, so a plain call does not pay for them.
        self._layout, self._side, self._tokenizer, self._batched = layout, side, tokenizer, batched

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def _row(self, batch_index: int, key: str, pad_value):
        if self._layout is None:
            raise ValueError("word_ids / sequence_ids / tokens need an encoding made by the tokenizer's __call__")
        if not 0 <= batch_index < len(self._layout):
            raise ValueError(f"batch_index={batch_index} is outside [0, {len(self._layout)})")
        ids, a, b, special, npad = self._layout[batch_index]
        if key == "tokens":
            values = self._tokenizer.convert_ids_to_tokens(ids)
        else:
            values = self._tokenizer._column(key, a, b, special)
        pad = [pad_value] * npad
        return values + pad if self._side == "right" else pad + values

    def word_ids(self, batch_index: int = 0) -> list:
        """Word (pre-token, or input word with ``is_split_into_words``) index of each token; None for
        special and padding tokens."""
        return self._row(batch_index, "word_ids", None)

    def sequence_ids(self, batch_index: int = 0) -> list:
        """0 / 1 for tokens of the first / second sequence, None for special and padding tokens."""
        return self._row(batch_index, "sequence_ids", None)

    def tokens(self, batch_index: int = 0) -> list:
        return self._row(batch_index, "tokens", self._tokenizer.pad_token if self._tokenizer else None)

    def to(self, device) -> "BatchEncoding":
        """Move torch tensors to ``device`` (as HF's ``BatchEncoding.to``); other values are kept."""
        for key, value in list(self.items()):
            if hasattr(value, "to") and type(value).__module__.startswith("torch"):
                self[key] = value.to(device)
        return self

    def convert_to_tensors(self, tensor_type: str | None) -> "BatchEncoding":
        if tensor_type is None:
            return self
        for key, value in list(self.items()):
            self[key] = to_tensor(value, tensor_type, key)
        return self


def to_tensor(value, tensor_type: str, key: str = "value"):
    """Nested equal-length int lists -> an int64 array / tensor of ``tensor_type``. The framework is
    imported only here, only when asked."""
    if tensor_type not in TENSOR_TYPES:
        raise ValueError(f"return_tensors={tensor_type!r} is not one of {TENSOR_TYPES}")
    import numpy as np

    try:
        arr = np.asarray(value, dtype=np.int64)
    except ValueError:
        raise ValueError(f"cannot make a tensor of {key}: the sequences have different lengths; pass "
                         f"padding=True (or 'max_length') with return_tensors={tensor_type!r}") from None
    if tensor_type == "np":
        return arr
    if tensor_type == "pt":
        import torch
        return torch.from_numpy(arr)
    if tensor_type == "tf":
        import tensorflow as tf
        return tf.constant(arr)
    import jax.numpy as jnp
    return jnp.asarray(arr)


# ============================================================================================ helpers
def _windows(n: int, size: int, stride: int, arg: str) -> list[tuple[int, int]]:
    """[start, end) windows of ``size`` over ``n`` items, each overlapping the previous by ``stride``.

    The first window is the truncated sequence; the rest are the overflowing ones (HF / tokenizers order).
    """
    if n <= size:
        return [(0, n)]
    if stride >= size:
        raise ValueError(f"stride={stride} must be smaller than the truncation window of {size} tokens "
                         f"({arg} minus special tokens and the other sequence)")
    out, start = [], 0
    while True:
        end = min(start + size, n)
        out.append((start, end))
        if end == n:
            return out
        start += size - stride


def _pair_budget(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """Lengths (n1', n2') for ``longest_first``: the shorter keeps min(len, budget // 2) (the first
    sequence counts as the shorter on a tie), the longer gets the rest — tokenizers' rule, which differs
    from HF slow's one-token-at-a-time loop on ties."""
    if n1 + n2 <= budget:
        return n1, n2
    if n1 > n2:
        short = min(n2, budget // 2)
        return budget - short, short
    short = min(n1, budget // 2)
    return short, budget - short


def _slice(p: Piece, a: int, b: int) -> Piece:
    return Piece(p.ids[a:b], None if p.offsets is None else p.offsets[a:b], p.words[a:b])


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_str(value, arg: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{arg} must be a str (or a list of str), got {type(value).__name__}: {value!r:.60}")
    if not value.isascii():
        m = _SURROGATE.search(value)
        if m:   # not valid Unicode text: the Rust library cannot take it, so neither tokenizer does
            raise ValueError(f"{arg} contains a lone surrogate U+{ord(m.group()):04X} at index {m.start()}, "
                             f"which is not valid Unicode text")


def read_vocab(vocab_file: str) -> dict[str, int]:
    """vocab.txt (one token per line, line number = id) -> {token: id}. Raises ValueError naming the file."""
    if vocab_file is None or not os.path.isfile(vocab_file):
        raise ValueError(f"vocab_file={vocab_file!r} does not exist or is not a file")
    with open(vocab_file, encoding="utf-8") as f:
        tokens = f.read().split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()      # the trailing newline, not an empty token
    tokens = [t.rstrip("\r") for t in tokens]
    if not tokens:
        raise ValueError(f"vocab_file={vocab_file!r} is empty")
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)   # a duplicate line keeps the first id, as tokenizers does
    return vocab


# Keys HF writes into tokenizer_config.json that carry no behaviour here; accepted and dropped.
IGNORED_INIT_KEYS = frozenset({"name_or_path", "tokenizer_class", "tokenizer_file", "special_tokens_map_file",
                               "added_tokens_decoder", "auto_map", "extra_special_tokens"})


def _reject_unknown(kwargs: dict) -> None:
    """Constructor keywords we cannot honour raise instead of being silently ignored."""
    unknown = sorted(k for k in kwargs if k not in IGNORED_INIT_KEYS)
    if unknown:
        raise ValueError(f"unsupported tokenizer argument(s) {unknown}; supported: vocab_file, vocab, "
                         f"{', '.join(sorted(DEFAULT_INIT))}")


# ============================================================================================ base
class TokenizerBase:
    """Shared HF-compatible machinery. Subclasses implement ``_encode_texts`` and may override
    ``_decode_tokens``; they call ``_init_common`` from ``__init__``."""

    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    padding_side = "right"

    # ---------------------------------------------------------------------------------------- setup
    def _init_common(self, vocab: dict[str, int], *, do_lower_case: bool, strip_accents: bool | None,
                     tokenize_chinese_chars: bool, never_split: Iterable[str] | None, unk_token: str,
                     sep_token: str, pad_token: str, cls_token: str, mask_token: str,
                     max_input_chars_per_word: int, model_max_length: int | None,
                     clean_up_tokenization_spaces: bool, padding_side: str = "right") -> None:
        if not vocab:
            raise ValueError("vocab is empty: the vocabulary needs at least the special tokens")
        specials = {"unk_token": unk_token, "sep_token": sep_token, "pad_token": pad_token,
                    "cls_token": cls_token, "mask_token": mask_token}
        for arg, tok in specials.items():
            if not isinstance(tok, str) or not tok:
                raise ValueError(f"{arg} must be a non-empty str, got {tok!r}")
            if tok not in vocab:
                raise ValueError(f"{arg}={tok!r} is not in the vocabulary ({len(vocab)} tokens); a BERT "
                                 f"vocab must contain {sorted(set(specials.values()))}")
        if strip_accents not in (None, True, False):
            raise ValueError(f"strip_accents must be None, True or False, got {strip_accents!r}")
        if not isinstance(max_input_chars_per_word, int) or max_input_chars_per_word < 1:
            raise ValueError(f"max_input_chars_per_word must be a positive int, got {max_input_chars_per_word!r}")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        never_split = list(dict.fromkeys(never_split or ()))
        for tok in never_split:
            if not isinstance(tok, str) or not tok or tok not in vocab:
                raise ValueError(f"never_split token {tok!r} is not in the vocabulary; never_split tokens are "
                                 f"kept whole, so each must be a vocabulary entry")
        self.vocab = vocab
        self.ids_to_tokens = {i: t for t, i in vocab.items()}
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.never_split = never_split
        self.max_input_chars_per_word = max_input_chars_per_word
        self.model_max_length = DEFAULT_MODEL_MAX_LENGTH if model_max_length is None else int(model_max_length)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.padding_side = padding_side
        for arg, tok in specials.items():
            setattr(self, arg, tok)
            setattr(self, arg + "_id", vocab[tok])
        self.pad_token_type_id = 0
        # Matched verbatim in raw text before normalisation (tokenizers' added tokens, normalized=False).
        self.added_tokens = list(dict.fromkeys(list(specials.values()) + never_split))
        self.all_special_tokens = [unk_token, sep_token, pad_token, cls_token, mask_token]
        self.all_special_ids = [vocab[t] for t in self.all_special_tokens]
        self._special_id_set = frozenset(self.all_special_ids)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    @property
    def _strip(self) -> bool:
        """Accent stripping actually applied: ``strip_accents``, or ``do_lower_case`` when it is None."""
        return self.do_lower_case if self.strip_accents is None else self.strip_accents

    def init_kwargs(self) -> dict[str, Any]:
        return {"do_lower_case": self.do_lower_case, "strip_accents": self.strip_accents,
                "tokenize_chinese_chars": self.tokenize_chinese_chars, "never_split": self.never_split or None,
                **{k: getattr(self, k) for k in SPECIAL_TOKENS},
                "max_input_chars_per_word": self.max_input_chars_per_word, "model_max_length": self.model_max_length,
                "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces, "padding_side": self.padding_side}

    # ---------------------------------------------------------------------------------------- core (subclass)
    def _encode_texts(self, texts: list[str], want_offsets: bool) -> list[Piece]:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------- token-level API
    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        """Word-piece strings of ``text`` (and ``pair``), without special tokens unless asked."""
        _check_str(text, "text")
        ids = self._encode_texts([text], False)[0].ids
        pair_ids = None
        if pair is not None:
            _check_str(pair, "pair")
            pair_ids = self._encode_texts([pair], False)[0].ids
        if add_special_tokens:
            ids = self.build_inputs_with_special_tokens(ids, pair_ids)
        elif pair_ids is not None:
            ids = ids + pair_ids
        return self.convert_ids_to_tokens(ids)

    def encode(self, text, text_pair=None, add_special_tokens: bool = True, **kwargs) -> list[int]:
        return self(text, text_pair, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]):
        """Token string(s) -> id(s); unknown tokens give ``unk_token_id``."""
        if isinstance(tokens, str):
            return self.vocab.get(tokens, self.unk_token_id)
        return [self.vocab.get(t, self.unk_token_id) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        """Id(s) -> token string(s). Raises ValueError for an id outside [0, vocab_size)."""
        if isinstance(ids, int) or hasattr(ids, "__index__"):
            return self._id_to_token(int(ids))
        out = []
        for i in ids:
            i = int(i)
            if skip_special_tokens and i in self._special_id_set:
                continue
            out.append(self._id_to_token(i))
        return out

    def _id_to_token(self, i: int) -> str:
        try:
            return self.ids_to_tokens[i]
        except KeyError:
            raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})") from None

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        return self._decode_tokens(list(tokens), cleanup=True)

    def _decode_tokens(self, tokens: list[str], cleanup: bool) -> str:
        """tokenizers' WordPiece decoder: a ``##`` piece glues to the previous one (except in first
        position, where it is kept verbatim), others get a leading space; then each piece's clean-up."""
        parts = []
        plen = len(WORDPIECE_PREFIX)
        for i, tok in enumerate(tokens):
            if i:
                tok = tok[plen:] if tok.startswith(WORDPIECE_PREFIX) else " " + tok
            if cleanup:
                for a, b in DECODE_CLEANUP:
                    tok = tok.replace(a, b)
            parts.append(tok)
        return "".join(parts)

    def decode(self, token_ids, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None, **kwargs) -> str:
        """Ids (list, 1-D array or tensor) -> text."""
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        text = self._decode_tokens(self.convert_ids_to_tokens(token_ids, skip_special_tokens), cleanup=True)
        clean = clean_up_tokenization_spaces
        if clean is None:
            clean = self.clean_up_tokenization_spaces
        if clean:  # transformers' string-level clean-up, applied on top of the decoder's
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kwargs) -> list[str]:
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens=skip_special_tokens, **kwargs) for s in sequences]

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None
                                         ) -> list[int]:
        """``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``."""
        out = [self.cls_token_id] + list(token_ids_0) + [self.sep_token_id]
        if token_ids_1 is not None:
            out += list(token_ids_1) + [self.sep_token_id]
        return out

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 where ``build_inputs_with_special_tokens`` puts a special token (or, with
        ``already_has_special_tokens``, where an id is a special token's), else 0."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("token_ids_1 must be None when already_has_special_tokens=True")
            return [1 if int(i) in self._special_id_set else 0 for i in token_ids_0]
        out = [1] + [0] * len(token_ids_0) + [1]
        if token_ids_1 is not None:
            out += [0] * len(token_ids_1) + [1]
        return out

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int], token_ids_1: list[int] | None = None
                                             ) -> list[int]:
        """0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``."""
        out = [0] * (len(token_ids_0) + 2)
        if token_ids_1 is not None:
            out += [1] * (len(token_ids_1) + 1)
        return out

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 3 if pair else 2

    # ---------------------------------------------------------------------------------------- __call__
    def __call__(self, text=None, text_pair=None, *, add_special_tokens: bool = True, padding=False,
                 truncation=None, max_length: int | None = None, stride: int = 0,
                 is_split_into_words: bool = False, pad_to_multiple_of: int | None = None,
                 padding_side: str | None = None, return_tensors: str | None = None,
                 return_token_type_ids: bool | None = None, return_attention_mask: bool | None = None,
                 return_overflowing_tokens: bool = False, return_special_tokens_mask: bool = False,
                 return_offsets_mapping: bool = False, return_length: bool = False, verbose: bool = True,
                 **kwargs) -> BatchEncoding:
        """Encode a string, a pair, or a batch of either (HF semantics).

        text / text_pair: str, list[str] (a batch), or with ``is_split_into_words`` list[str] (one
        pre-split example) / list[list[str]] (a batch). Returns a ``BatchEncoding`` of lists (one example
        unless batched or overflowing) or of int64 (B, S) tensors with ``return_tensors``.
        """
        if kwargs:
            raise ValueError(f"unknown keyword argument(s) {sorted(kwargs)}")
        if text is None:
            raise ValueError("text must be given (a str, a pair via text_pair, or a batch)")
        batched = self._is_batched(text, is_split_into_words, "text")
        texts = list(text) if batched else [text]
        if isinstance(text_pair, (str, list, tuple)) and not batched and len(text_pair) == 0:
            text_pair = None   # HF quirk, kept for identical ids: an empty unbatched pair means "no pair"
        if text_pair is not None:
            if self._is_batched(text_pair, is_split_into_words, "text_pair") != batched:
                raise ValueError("text and text_pair must both be single examples or both batches")
            pairs = list(text_pair) if batched else [text_pair]
            if len(pairs) != len(texts):
                raise ValueError(f"text_pair has {len(pairs)} examples but text has {len(texts)}")
        else:
            pairs = None
        for i, t in enumerate(texts):
            self._check_example(t, is_split_into_words, "text")
            if pairs is not None:
                self._check_example(pairs[i], is_split_into_words, "text_pair")

        pad_mode, trunc_mode, max_length = self._strategies(padding, truncation, max_length)
        if not isinstance(stride, int) or stride < 0:
            raise ValueError(f"stride must be a non-negative int, got {stride!r}")
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
            raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")
        side = padding_side or self.padding_side
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")

        want_offsets = return_offsets_mapping
        firsts = self._encode_examples(texts, is_split_into_words, want_offsets)
        seconds = self._encode_examples(pairs, is_split_into_words, want_offsets) if pairs is not None else None

        rows, mapping = [], []
        for i, a in enumerate(firsts):
            b = seconds[i] if seconds is not None else None
            for row in self._assemble(a, b, add_special_tokens, trunc_mode, max_length, stride,
                                      return_overflowing_tokens):
                rows.append(row)
                mapping.append(i)

        if trunc_mode == "do_not_truncate":
            self._warn_if_too_long(max((len(r[0]) for r in rows), default=0))
        want = {"input_ids": True,
                "token_type_ids": True if return_token_type_ids is None else return_token_type_ids,
                "attention_mask": True if return_attention_mask is None else return_attention_mask,
                "special_tokens_mask": return_special_tokens_mask, "offset_mapping": return_offsets_mapping,
                "length": return_length}
        target = None
        if pad_mode == "longest":
            target = max((len(r[0]) for r in rows), default=0)
        elif pad_mode == "max_length":
            target = max_length
        if target is not None and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of

        data = {k: [] for k in OUTPUT_KEYS if want[k]}
        lazy = [k for k in ("special_tokens_mask", "offset_mapping") if k in data]
        pad_id = self.pad_token_id
        layout = []          # per row: (ids, a, b, add_special, pad count) for the lazy accessors
        for ids, types, a, b, special in rows:
            n = len(ids)
            npad = max(0, target - n) if target is not None else 0
            cols = {"input_ids": ids, "token_type_ids": types}
            if "attention_mask" in data:
                cols["attention_mask"] = [1] * n
            for k in lazy:
                cols[k] = self._column(k, a, b, special)
            for k, col in cols.items():
                if k not in data:
                    continue
                if npad:
                    fill = [pad_id if k == "input_ids" else PAD_VALUES[k]] * npad
                    col = col + fill if side == "right" else fill + col
                data[k].append(col)
            if "length" in data:
                data["length"].append(n + npad)   # HF fast reports the padded length
            layout.append((ids, a, b, special, npad))
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = mapping

        keep_batch = batched or return_overflowing_tokens or return_tensors is not None
        if not keep_batch:
            # HF unwraps only per-token lists; "length" stays a one-element list
            data = {k: v[0] if v and isinstance(v[0], list) else v for k, v in data.items()}
        enc = BatchEncoding(data, layout=layout, side=side, tokenizer=self, batched=keep_batch)
        if return_tensors is not None:
            enc.convert_to_tensors(return_tensors)
        return enc

    # ---------------------------------------------------------------------------------------- __call__ helpers
    @staticmethod
    def _is_batched(value, split: bool, arg: str) -> bool:
        if isinstance(value, str):
            if split:
                raise ValueError(f"{arg} must be a list of words when is_split_into_words=True, got a str")
            return False
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{arg} must be a str, a list of str or (with is_split_into_words) a list of "
                             f"lists of str, got {type(value).__name__}")
        if split:   # list[str] is one pre-split example; list[list[str]] a batch
            return len(value) > 0 and not isinstance(value[0], str)
        return True

    @staticmethod
    def _check_example(value, split: bool, arg: str) -> None:
        if split:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{arg}: each example must be a list of words with is_split_into_words=True, "
                                 f"got {type(value).__name__}")
            for w in value:
                _check_str(w, arg + " word")
        else:
            _check_str(value, arg)

    def _warn_if_too_long(self, longest: int) -> None:
        """Log once per tokenizer, as HF does, when an untruncated row exceeds ``model_max_length``:
        the model would reject it (ids past ``max_position_embeddings``)."""
        if longest > self.model_max_length and not getattr(self, "_warned_too_long", False):
            self._warned_too_long = True
            logger.warning("Token indices sequence length is longer than the specified maximum sequence length "
                           "for this model (%d > %d). Running this sequence through the model will fail; pass "
                           "truncation=True (or max_length) to cut it.", longest, self.model_max_length)

    def _strategies(self, padding, truncation, max_length):
        """Normalise HF's padding / truncation arguments to (pad mode, truncation mode, max_length)."""
        pad = {True: "longest", False: "do_not_pad", None: "do_not_pad"}.get(padding, padding) \
            if isinstance(padding, (bool, type(None))) else padding
        if pad not in PADDING_STRATEGIES:
            raise ValueError(f"padding={padding!r} is not one of True, False, {PADDING_STRATEGIES}")
        if isinstance(truncation, bool):
            trunc = "longest_first" if truncation else "do_not_truncate"
        elif truncation is None:
            # HF: a max_length without truncation (and without max_length padding) truncates longest_first
            trunc = "longest_first" if (max_length is not None and pad == "do_not_pad") else "do_not_truncate"
        else:
            trunc = truncation
        if trunc not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation={truncation!r} is not one of True, False, {TRUNCATION_STRATEGIES}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 0):
            raise ValueError(f"max_length must be a non-negative int, got {max_length!r}")
        if max_length is None and (pad == "max_length" or trunc != "do_not_truncate"):
            max_length = self.model_max_length
        return pad, trunc, max_length

    def _encode_examples(self, examples: list, split: bool, want_offsets: bool) -> list[Piece]:
        """Encode each example; with ``split`` each input word is its own text and the word index is
        the word's position in the example (offsets are relative to each word, as in HF)."""
        if not split:
            return self._encode_texts(examples, want_offsets)
        flat = [w for ex in examples for w in ex]
        enc = self._encode_texts(flat, want_offsets)
        out, k = [], 0
        for ex in examples:
            ids, offs, words = [], [] if want_offsets else None, []
            for wi in range(len(ex)):
                p = enc[k]
                k += 1
                ids += p.ids
                if want_offsets:
                    offs += p.offsets
                words += [wi] * len(p.ids)
            out.append(Piece(ids, offs, words))
        return out

    def _assemble(self, a: Piece, b: Piece | None, add_special: bool, trunc: str, max_length: int | None,
                  stride: int, overflow: bool) -> list[tuple]:
        """Truncate (into windows when ``overflow``), add special tokens; one row per output sequence
        (see ``_with_specials``)."""
        if b is None and trunc == "only_second":
            if len(a.ids) + (2 if add_special else 0) > (max_length or 0):
                raise ValueError("truncation='only_second' needs a second sequence (text_pair)")
        pairs_of_windows: list[tuple[Piece, Piece | None]]
        if trunc == "do_not_truncate" or max_length is None:
            pairs_of_windows = [(a, b)]
        else:
            n_special = (3 if b is not None else 2) if add_special else 0
            budget = max_length - n_special
            if budget < 1:
                raise ValueError(f"max_length={max_length} leaves no room for text: the special tokens need "
                                 f"{n_special} positions (max_length must be at least {n_special + 1})")
            n1, n2 = len(a.ids), len(b.ids) if b is not None else 0
            if b is None:
                wins = _windows(n1, budget, stride, f"max_length={max_length}")
                pairs_of_windows = [(_slice(a, s, e), None) for s, e in wins]
            elif trunc == "longest_first":
                k1, k2 = _pair_budget(n1, n2, budget)
                wa = _windows(n1, k1, stride, f"max_length={max_length}") if k1 < n1 else [(0, n1)]
                wb = _windows(n2, k2, stride, f"max_length={max_length}") if k2 < n2 else [(0, n2)]
                A = [_slice(a, s, e) for s, e in wa]
                B = [_slice(b, s, e) for s, e in wb]
                # tokenizers' order: main, then each overflow of A with every window of B, then A0 with B's
                pairs_of_windows = [(A[0], B[0])] + [(x, y) for x in A[1:] for y in B] + [(A[0], y) for y in B[1:]]
            else:
                first = trunc == "only_first"
                other = n2 if first else n1
                room = budget - other
                if room < 1 and n1 + n2 > budget:   # the truncated sequence would vanish entirely
                    raise ValueError(f"max_length={max_length} cannot hold the {other} tokens of the "
                                     f"{'second' if first else 'first'} sequence plus special tokens with "
                                     f"truncation={trunc!r}")
                target = a if first else b
                wins = _windows(len(target.ids), max(room, 1), stride, f"max_length={max_length}") \
                    if n1 + n2 > budget else [(0, len(target.ids))]
                pieces = [_slice(target, s, e) for s, e in wins]
                pairs_of_windows = [(p, b) if first else (a, p) for p in pieces]
            if not overflow:
                pairs_of_windows = pairs_of_windows[:1]
        return [self._with_specials(x, y, add_special) for x, y in pairs_of_windows]

    def _with_specials(self, a: Piece, b: Piece | None, add_special: bool) -> tuple:
        """Row = (input_ids, token_type_ids, a, b, add_special); the other columns are built from the
        pieces only when asked for (``_column``), which keeps the plain call cheap."""
        if add_special:
            cls, sep = self.cls_token_id, self.sep_token_id
            if b is None:
                return [cls, *a.ids, sep], [0] * (len(a.ids) + 2), a, b, True
            return ([cls, *a.ids, sep, *b.ids, sep], [0] * (len(a.ids) + 2) + [1] * (len(b.ids) + 1), a, b, True)
        if b is None:
            return list(a.ids), [0] * len(a.ids), a, b, False
        return a.ids + b.ids, [0] * len(a.ids) + [1] * len(b.ids), a, b, False

    @staticmethod
    def _column(key: str, a: Piece, b: Piece | None, add_special: bool) -> list:
        """The ``key`` column of a row: "special_tokens_mask", "offset_mapping", "word_ids" or
        "sequence_ids" (specials get 1 / (0, 0) / None / None)."""
        if key == "special_tokens_mask":
            parts, edge = ([0] * len(a.ids), None if b is None else [0] * len(b.ids)), 1
        elif key == "offset_mapping":
            parts, edge = (a.offsets, None if b is None else b.offsets), (0, 0)
        elif key == "word_ids":
            parts, edge = (a.words, None if b is None else b.words), None
        else:
            parts, edge = ([0] * len(a.ids), None if b is None else [1] * len(b.ids)), None
        first, second = parts
        if not add_special:
            return list(first) + (list(second) if second is not None else [])
        out = [edge, *first, edge]
        if second is not None:
            out += [*second, edge]
        return out

    # ---------------------------------------------------------------------------------------- files
    @classmethod
    def _read_pretrained(cls, path: str | os.PathLike, overrides: dict) -> tuple[dict[str, int], dict]:
        """(vocab, init kwargs) from a HF-style directory: vocab.txt and/or tokenizer.json, plus
        tokenizer_config.json / special_tokens_map.json. Precedence: ``overrides`` > tokenizer_config >
        tokenizer.json's normaliser > defaults."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise ValueError(f"from_pretrained path={path!r} is not a directory")
        kwargs: dict[str, Any] = {}
        vocab = None
        tj = os.path.join(path, TOKENIZER_FILE)
        if os.path.isfile(tj):
            with open(tj, encoding="utf-8") as f:
                spec = json.load(f)
            model = spec.get("model") or {}
            if model.get("type") != "WordPiece":
                raise ValueError(f"{tj}: model type {model.get('type')!r} is not WordPiece")
            vocab = dict(model["vocab"])
            if model.get("unk_token"):
                kwargs["unk_token"] = model["unk_token"]
            if model.get("max_input_chars_per_word"):
                kwargs["max_input_chars_per_word"] = model["max_input_chars_per_word"]
            norm = spec.get("normalizer") or {}
            if norm.get("type") == "BertNormalizer":
                kwargs.update(do_lower_case=norm.get("lowercase", True), strip_accents=norm.get("strip_accents"),
                              tokenize_chinese_chars=norm.get("handle_chinese_chars", True))
        vf = os.path.join(path, VOCAB_FILE)
        if os.path.isfile(vf):
            vocab = read_vocab(vf)   # vocab.txt is authoritative when both exist (HF's slow files)
        if vocab is None:
            raise ValueError(f"from_pretrained path={path!r} has neither {VOCAB_FILE} nor {TOKENIZER_FILE}")
        for name in (SPECIAL_MAP_FILE, CONFIG_FILE):
            p = os.path.join(path, name)
            if os.path.isfile(p):
                with open(p, encoding="utf-8") as f:
                    cfg = json.load(f)
                for k, v in cfg.items():
                    if isinstance(v, dict) and "content" in v:   # serialised AddedToken
                        v = v["content"]
                    if k in SPECIAL_TOKENS or k in ("do_lower_case", "strip_accents", "tokenize_chinese_chars",
                                                    "never_split", "model_max_length", "padding_side",
                                                    "clean_up_tokenization_spaces", "max_input_chars_per_word"):
                        kwargs[k] = v
        if kwargs.get("model_max_length", 0) and kwargs["model_max_length"] > 10 ** 12:
            kwargs["model_max_length"] = DEFAULT_MODEL_MAX_LENGTH   # HF's "no limit" sentinel
        kwargs.update(overrides)
        return vocab, kwargs

    def save_vocabulary(self, save_directory: str | os.PathLike, filename_prefix: str | None = None) -> tuple[str]:
        """Write vocab.txt (tokens in id order) into ``save_directory``; returns (path,)."""
        save_directory = os.fspath(save_directory)
        if not os.path.isdir(save_directory):
            raise ValueError(f"save_directory={save_directory!r} is not a directory")
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE
        ids = sorted(self.ids_to_tokens)
        if ids != list(range(len(ids))):
            raise ValueError(f"vocabulary ids are not contiguous 0..{len(ids) - 1}; cannot write {VOCAB_FILE}")
        path = os.path.join(save_directory, name)
        atomic_write_text(path, "".join(self.ids_to_tokens[i] + "\n" for i in ids))
        return (path,)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> tuple[str, ...]:
        """Write vocab.txt, tokenizer_config.json and special_tokens_map.json (the fast tokenizer adds
        tokenizer.json); loadable by ours and by ``transformers.BertTokenizer(Fast).from_pretrained``."""
        save_directory = os.fspath(save_directory)
        os.makedirs(save_directory, exist_ok=True)
        files = list(self.save_vocabulary(save_directory))
        cfg = {k: v for k, v in self.init_kwargs().items()}
        cfg["tokenizer_class"] = type(self).__name__.replace("Fast", "")
        p = os.path.join(save_directory, CONFIG_FILE)
        atomic_write_text(p, json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
        files.append(p)
        p = os.path.join(save_directory, SPECIAL_MAP_FILE)
        atomic_write_text(p, json.dumps({k: getattr(self, k) for k in SPECIAL_TOKENS}, indent=2) + "\n")
        files.append(p)
        return tuple(files)


DEFAULT_INIT = {"do_lower_case": True, "strip_accents": None, "tokenize_chinese_chars": True, "never_split": None,
                **SPECIAL_TOKENS, "max_input_chars_per_word": MAX_INPUT_CHARS_PER_WORD,
                "model_max_length": DEFAULT_MODEL_MAX_LENGTH, "clean_up_tokenization_spaces": False,
                "padding_side": "right"}
