"""``BertTokenizerFast``: the same tokenizer built on the Rust ``tokenizers`` library.

The normalise / pre-tokenise / WordPiece core runs in Rust (BertNormalizer, BertPreTokenizer, WordPiece
model — the pipeline of ``bert_common.tokenizers.spec``); special tokens, truncation, windows, padding
and tensors come from the shared ``bert_common.tokenizers.api.TokenizerBase``, so this class and the pure
Python ``BertTokenizer`` share one implementation of everything above the core.
"""
from __future__ import annotations

import os
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from bert_common.tokenizers import spec
from bert_common.io_utils import atomic_write_text
from bert_common.tokenizers.api import (DEFAULT_INIT, TOKENIZER_FILE, Piece, TokenizerBase, _reject_unknown,
                                       read_vocab)


class BertTokenizerFast(TokenizerBase):
    """BERT WordPiece tokenizer backed by ``tokenizers``; same arguments and API as
    ``bert_common.BertTokenizer`` (see there), same ids, offsets and word ids."""

    def __init__(self, vocab_file: str | None = None, do_lower_case: bool = True,
                 never_split: Iterable[str] | None = None, unk_token: str = "[UNK]", sep_token: str = "[SEP]",
                 pad_token: str = "[PAD]", cls_token: str = "[CLS]", mask_token: str = "[MASK]",
                 tokenize_chinese_chars: bool = True, strip_accents: bool | None = None, *, vocab: dict[str, int] | None = None,
                 max_input_chars_per_word: int = spec.MAX_INPUT_CHARS_PER_WORD, model_max_length: int | None = None,
                 clean_up_tokenization_spaces: bool = False, padding_side: str = "right", **kwargs):
        _reject_unknown(kwargs)
        if vocab is None:
            vocab = read_vocab(vocab_file)
        self._init_common(vocab, do_lower_case=do_lower_case, strip_accents=strip_accents,
                          tokenize_chinese_chars=tokenize_chinese_chars, never_split=never_split,
                          unk_token=unk_token, sep_token=sep_token, pad_token=pad_token, cls_token=cls_token,
                          mask_token=mask_token, max_input_chars_per_word=max_input_chars_per_word,
                          model_max_length=model_max_length,
                          clean_up_tokenization_spaces=clean_up_tokenization_spaces, padding_side=padding_side)
        tok = Tokenizer(models.WordPiece(vocab, unk_token=unk_token, continuing_subword_prefix=spec.WORDPIECE_PREFIX,
                                         max_input_chars_per_word=max_input_chars_per_word))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=self.tokenize_chinese_chars,
                                                    strip_accents=strip_accents, lowercase=self.do_lower_case)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix=spec.WORDPIECE_PREFIX, cleanup=True)
        # Only used by HF when it loads our saved tokenizer.json; our __call__ adds special tokens itself.
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls_token}:0 $A:0 {sep_token}:0", pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
            special_tokens=[(cls_token, vocab[cls_token]), (sep_token, vocab[sep_token])])
        # Special and never_split tokens are matched verbatim in the raw text, never normalised.
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in self.all_special_tokens])
        extra = [t for t in self.never_split if t not in self.all_special_tokens]
        if extra:
            tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in extra])
        self._tokenizer = tok

    @property
    def backend_tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> "BertTokenizerFast":
        """Load from a HF-style directory (vocab.txt and/or tokenizer.json, tokenizer_config.json)."""
        vocab, kwargs = cls._read_pretrained(path, overrides)
        kwargs = {**DEFAULT_INIT, **kwargs}
        return cls(vocab=vocab, **kwargs)

    def _encode_texts(self, texts: list[str], want_offsets: bool) -> list[Piece]:
        if not texts:
            return []
        # (encode_batch_fast would skip offsets but also drops word ids, and measured no faster here)
        encs = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        if want_offsets:
            return [Piece(e.ids, e.offsets, e.word_ids) for e in encs]
        return [Piece(e.ids, None, e.word_ids) for e in encs]

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> tuple[str, ...]:
        files = super().save_pretrained(save_directory, **kwargs)
        path = os.path.join(os.fspath(save_directory), TOKENIZER_FILE)
        atomic_write_text(path, self._tokenizer.to_str(pretty=True))
        return files + (path,)
