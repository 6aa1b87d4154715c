"""Google's ``create_pretraining_data.py`` (google-research/bert at eedf571), reproduced exactly.

Same input format (UTF-8 text, one sentence per line, a blank line between documents, files read in the
order given with no document break between files), same flags, and — because every decision is drawn
from one ``random.Random(random_seed)`` in the same order as Google's script — the same instances in the
same order: tokens, segment ids, ``is_random_next``, masked positions and labels. The order of the draws
is the specification:

1. ``shuffle`` of the documents;
2. for each of ``dupe_factor`` passes, for each document: ``random() < short_seq_prob`` (then
   ``randint(2, max_num_tokens)``); per chunk ``randint(1, len(chunk) - 1)`` when the chunk has two or
   more sentences; ``random() < 0.5`` for a random next sentence (only when the chunk has two or more
   sentences), then up to ten ``randint`` for the random document and one for its start sentence;
   ``random() < 0.5`` per truncated token (front or back); ``shuffle`` of the mask candidates; per
   masked word piece ``random() < 0.8`` ([MASK]), else ``random() < 0.5`` (keep), else ``randint`` over
   the vocabulary (random word);
3. ``shuffle`` of all instances.

What differs is everything around the draws: lines are tokenised in batches by the Rust tokenizer (ids,
not strings), instances are lists of ints and the output is arrays. Tokenisation follows Google's
``FullTokenizer``, not Hugging Face's: no special-token matching in the text (``[SEP]`` in the text is
``[``, ``sep``, ``]``), words of up to 200 characters, Google's vocabulary reading (``strip()`` of each
line, a duplicated token keeps its *last* line number). Lines made only of characters for which the Rust
pipeline provably agrees with Google's are tokenised in Rust; any other line (e.g. Greek capital sigma,
whose lower case depends on its neighbours in Python, unassigned or private-use code points, which the
Rust tokenizer drops and Google keeps) goes through a pure-Python tokenizer written to Google's rules.
See ``docs/pretraining-data.md``.

Arrays (N instances, S = ``max_seq_length``, P = ``max_predictions_per_seq``), Google's feature names:
``input_ids`` / ``input_mask`` / ``segment_ids`` (N, S) int32, ``masked_lm_positions`` /
``masked_lm_ids`` (N, P) int32, ``masked_lm_weights`` (N, P) float32, ``next_sentence_labels`` (N,)
int32; padding is 0 as in Google's writer.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import sys
import unicodedata
from typing import Sequence

import numpy as np

# Google's WordpieceTokenizer default (Hugging Face's is 100).
GOOGLE_MAX_CHARS_PER_WORD = 200
FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
            "masked_lm_weights", "next_sentence_labels")
FEATURE_DTYPES = {"masked_lm_weights": np.float32}  # every other feature is int32 (int64 in a TFRecord)
# Strings probed per non-ASCII character before the Rust pipeline is trusted with it ({} = the char).
_PROBES = ("{}", "a{}b", "A{}", "{}{}", "x {} y", ".{}.", "\u00e9{}\u4e2d")
# Characters whose Python lower case depends on their neighbours (Final_Sigma): always the Python path.
_CONTEXT_LOWER = frozenset("\u03a3")


# ============================================================================================ flags
@dataclasses.dataclass(frozen=True)
class GoogleFlags:
    """The flags of Google's script that decide the data, with its defaults."""

    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    random_seed: int = 12345
    dupe_factor: int = 10
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    do_whole_word_mask: bool = False
    do_lower_case: bool = True

    def __post_init__(self):
        # (name, lowest allowed value, highest allowed value)
        limits = (("max_seq_length", 5, None), ("max_predictions_per_seq", 1, None), ("dupe_factor", 1, None),
                  ("masked_lm_prob", 0.0, 1.0), ("short_seq_prob", 0.0, 1.0))
        for name, lo, hi in limits:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo or (hi is not None and v > hi):
                rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise ValueError(f"{name}={v!r} is out of range; it must be a number {rng}")
        if not isinstance(self.random_seed, int):
            raise ValueError(f"random_seed={self.random_seed!r} must be an int")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ============================================================================================ vocabulary
class GoogleVocab:
    """``vocab.txt`` read as Google's ``load_vocab`` reads it.

    ``ids``: {token: id} where id is the line number of the token's *last* occurrence (each line is
    ``strip()``-ed); ``random_ids``: (W,) int32, the id of each distinct token in first-occurrence order
    (Google's ``list(vocab.keys())``, from which a random replacement word is drawn);
    ``is_continuation``: (V,) bool, True for ids whose token starts with ``##``; ``size`` = V = lines.
    """

    def __init__(self, vocab_file: str):
        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(f"vocab={vocab_file!r} does not exist or is not a file")
        with open(vocab_file, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise ValueError(f"vocab={vocab_file!r} is not UTF-8 (line {line})") from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if not lines:
            raise ValueError(f"vocab={vocab_file!r} is empty")
        ids: dict[str, int] = {}
        for i, line in enumerate(lines):
            ids[line.strip()] = i  # a dict keeps first-insertion order; the value is the last line
        for tok in ("[CLS]", "[SEP]", "[MASK]", "[UNK]"):
            if tok not in ids:
                raise ValueError(f"vocab={vocab_file!r} has no {tok} token; a BERT vocabulary needs it")
        self.path = vocab_file
        self.ids = ids
        self.size = len(lines)
        self.random_ids = np.fromiter(ids.values(), dtype=np.int32, count=len(ids))
        self.random_list = self.random_ids.tolist()
        self.is_continuation = np.zeros(self.size, dtype=bool)
        for tok, i in ids.items():
            if tok.startswith("##"):
                self.is_continuation[i] = True
        self.cls_id, self.sep_id, self.mask_id, self.unk_id = (ids[t] for t in ("[CLS]", "[SEP]", "[MASK]", "[UNK]"))


# ============================================================================================ tokenizer
def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True   # every non-alphanumeric printable ASCII character counts as punctuation
    return unicodedata.category(ch).startswith("P")


# Code point ranges Google's BasicTokenizer isolates as CJK ideographs.
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK)


class GoogleTokenizer:
    """Text line -> word-piece ids, exactly as Google's ``FullTokenizer(vocab_file, do_lower_case)``.

    ``encode_lines(lines)`` returns one list of int ids per line. Lines whose characters are all known
    to be handled identically by the Rust pipeline go through it in one batch; the others through
    ``encode_python`` (Google's rules, in Python).
    """

    def __init__(self, vocab: GoogleVocab, do_lower_case: bool = True):
        from tokenizers import Tokenizer

        from bert_common.tokenizers.fast import BertTokenizerFast

        self.vocab = vocab
        self.do_lower_case = bool(do_lower_case)
        # The project's Rust pipeline on Google's vocabulary and word-length limit, without the added
        # (special) tokens: Google never matches "[SEP]" in the text.
        fast = BertTokenizerFast(vocab=vocab.ids, do_lower_case=self.do_lower_case,
                                 max_input_chars_per_word=GOOGLE_MAX_CHARS_PER_WORD)
        spec = json.loads(fast.backend_tokenizer.to_str())
        spec["added_tokens"] = []
        self._rust = Tokenizer.from_str(json.dumps(spec))
        self._safe: set[str] = set()
        self._unsafe: set[str] = set(_CONTEXT_LOWER)
        self._word_cache: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------------------------ Python path
    def basic_tokens(self, text: str) -> list[str]:
        """Google's BasicTokenizer: clean, isolate CJK, split on whitespace, lower-case and strip
        accents (uncased), split off punctuation."""
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                out.append(" ")
            elif _is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        pieces: list[str] = []
        for token in "".join(out).split():
            if self.do_lower_case:
                token = token.lower()
                token = "".join(c for c in unicodedata.normalize("NFD", token) if unicodedata.category(c) != "Mn")
            word: list[str] = []
            for ch in token:
                if _is_punctuation(ch):
                    if word:
                        pieces.append("".join(word))
                        word = []
                    pieces.append(ch)
                else:
                    word.append(ch)
            if word:
                pieces.append("".join(word))
        return " ".join(pieces).split()

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        """Greedy longest-match-first word pieces of one basic token (Google's WordpieceTokenizer)."""
        hit = self._word_cache.get(word)
        if hit is not None:
            return hit
        ids = self.vocab.ids
        out: list[int] = []
        if len(word) > GOOGLE_MAX_CHARS_PER_WORD:
            out = [self.vocab.unk_id]
        else:
            start = 0
            while start < len(word):
                end = len(word)
                found = None
                while start < end:
                    sub = word[start:end] if start == 0 else "##" + word[start:end]
                    if sub in ids:
                        found = ids[sub]
                        break
                    end -= 1
                if found is None:
                    out = [self.vocab.unk_id]
                    break
                out.append(found)
                start = end
        result = tuple(out)
        self._word_cache[word] = result
        return result

    def encode_python(self, text: str) -> list[int]:
        return [i for w in self.basic_tokens(text) for i in self._wordpiece(w)]

    # ------------------------------------------------------------------------------------ Rust path
    def _char_safe(self, ch: str) -> bool:
        """True when the Rust pipeline and Google's rules give the same ids for ``ch`` in every probe
        context. Every step of both pipelines except Python's Final_Sigma lower-casing acts on one
        character at a time, so agreement per character means agreement per line."""
        if ch in self._safe:
            return True
        if ch in self._unsafe:
            return False
        probes = [p.format(ch, ch) if p == "{}{}" else p.format(ch) for p in _PROBES]
        got = [e.ids for e in self._rust.encode_batch(probes, add_special_tokens=False)]
        ok = all(g == self.encode_python(p) for g, p in zip(got, probes))
        (self._safe if ok else self._unsafe).add(ch)
        return ok

    def encode_lines(self, lines: Sequence[str]) -> list[list[int]]:
        """One list of ids per line (lines already stripped)."""
        fast_idx, out = [], [None] * len(lines)
        for i, line in enumerate(lines):
            if line.isascii() or all(self._char_safe(c) for c in set(line) if not c.isascii()):
                fast_idx.append(i)
            else:
                out[i] = self.encode_python(line)
        if fast_idx:
            encs = self._rust.encode_batch([lines[i] for i in fast_idx], add_special_tokens=False)
            for i, e in zip(fast_idx, encs):
                out[i] = e.ids
        return out


# ============================================================================================ input
def read_lines(path: str) -> list[str]:
    """The lines of one UTF-8 input file as Google's GFile ``readline`` + ``strip()`` see them: split
    on ``\\n`` only, every ``\\r`` removed, then stripped. Raises FileNotFoundError / ValueError naming the file (and line)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"input file {path!r} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"input {path!r} is not a file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(f"input file {path!r} is not UTF-8: line {line}, byte {col} "
                         f"(0x{raw[e.start]:02x}); re-encode it as UTF-8") from None
    # TensorFlow's GFile.readline (which Google's script reads with) ends a line at "\n" only and
    # drops every "\r" byte wherever it is in the line.
    lines = text.replace("\r", "").split("\n")
    if lines and lines[-1] == "":
        lines.pop()     # the final newline ends the last line, it does not open another
    lines = [ln.strip() for ln in lines]
    if not any(lines):
        raise ValueError(f"input file {path!r} is empty (no non-blank line); pretraining needs text, "
                         f"one sentence per line")
    return lines


def check_inputs(paths: Sequence[str]) -> None:
    """Fail before anything is written: every input exists, is a non-empty UTF-8 text file."""
    if not paths:
        raise ValueError("no input files given")
    for p in paths:
        read_lines(p)


def read_documents(paths: Sequence[str], tokenizer: GoogleTokenizer, progress: bool = False,
                   batch_lines: int = 20000) -> list[list[list[int]]]:
    """Documents (lists of sentences, each a non-empty list of ids) from the files, in order.

    A blank line closes a document; a line that tokenises to nothing is dropped without closing one;
    the last document of a file continues into the next file (Google inserts no break); empty documents
    are removed at the end.
    """
    docs: list[list[list[int]]] = [[]]
    bar = _bar(len(paths), "tokenize", "file", progress)
    for path in paths:
        lines = read_lines(path)
        for lo in range(0, len(lines), batch_lines):
            chunk = lines[lo:lo + batch_lines]
            nonblank = [ln for ln in chunk if ln]
            ids = iter(tokenizer.encode_lines(nonblank))
            for ln in chunk:
                if not ln:
                    docs.append([])
                    continue
                toks = next(ids)
                if toks:
                    docs[-1].append(list(toks))
        bar.update(1)
    bar.close()
    return [d for d in docs if d]


def _bar(total: int, desc: str, unit: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=not (enabled and sys.stderr.isatty()), leave=False)


# ============================================================================================ draws
class Draws:
    """``random.Random(seed)`` with ``random``, ``randint`` and ``shuffle`` giving exactly the draws of
    its own methods. ``randint`` / ``shuffle`` are inlined (CPython's ``randrange`` -> ``_randbelow``
    -> ``getrandbits`` loop, without the two levels of calls per element) when a self-check proves them
    identical on this interpreter; otherwise the methods themselves are used. Shuffling the mask
    candidates is most of the time of instance creation, so this matters."""

    def __init__(self, seed: int):
        self.rng = rng = random.Random(seed)
        self.random = rng.random
        if _inline_ok():
            self.randint, self.shuffle = _inlined(rng.getrandbits)
        else:   # pragma: no cover - an interpreter whose random draws differently
            self.randint, self.shuffle = rng.randint, rng.shuffle


def _inlined(getrandbits):
    def randint(a: int, b: int) -> int:
        n = b - a + 1
        k = n.bit_length()
        r = getrandbits(k)
        while r >= n:
            r = getrandbits(k)
        return a + r

    def shuffle(x: list) -> None:
        for i in range(len(x) - 1, 0, -1):
            n = i + 1
            k = n.bit_length()
            j = getrandbits(k)
            while j >= n:
                j = getrandbits(k)
            x[i], x[j] = x[j], x[i]

    return randint, shuffle


_INLINE_OK: bool | None = None


def _inline_ok() -> bool:
    """Do the inlined draws equal ``random.Random``'s own on this interpreter? (checked once)"""
    global _INLINE_OK
    if _INLINE_OK is None:
        a, b = random.Random(97), random.Random(97)
        randint, shuffle = _inlined(b.getrandbits)
        ok = True
        for n in (1, 2, 3, 7, 64, 129, 1000):
            x, y = list(range(n)), list(range(n))
            a.shuffle(x)
            shuffle(y)
            ok &= x == y and a.randint(0, n) == randint(0, n) and a.randint(2, n + 2) == randint(2, n + 2)
            ok &= a.random() == b.random()
        _INLINE_OK = bool(ok)
    return _INLINE_OK


# ============================================================================================ instances
class Instances:
    """Instances in output order. Each is (ids, len_a, positions, labels, is_random_next): ``ids`` the
    masked sequence ``[CLS] A [SEP] B [SEP]`` as ints, ``len_a`` the length of ``[CLS] A [SEP]``
    (segment 0), ``positions`` ascending masked positions, ``labels`` the original ids there."""

    def __init__(self, rows: list, flags: GoogleFlags):
        self.rows = rows
        self.flags = flags

    def __len__(self) -> int:
        return len(self.rows)

    def arrays(self) -> dict[str, np.ndarray]:
        """Google's seven features as arrays (see the module docstring for shapes)."""
        n, s, p = len(self.rows), self.flags.max_seq_length, self.flags.max_predictions_per_seq
        input_ids = np.zeros((n, s), np.int32)
        lengths = np.empty(n, np.int64)
        len_a = np.empty(n, np.int64)
        positions = np.zeros((n, p), np.int32)
        labels = np.zeros((n, p), np.int32)
        nmask = np.empty(n, np.int64)
        nsp = np.empty(n, np.int32)
        for r, (ids, la, pos, lab, rnd) in enumerate(self.rows):
            input_ids[r, :len(ids)] = ids
            lengths[r] = len(ids)
            len_a[r] = la
            positions[r, :len(pos)] = pos
            labels[r, :len(lab)] = lab
            nmask[r] = len(pos)
            nsp[r] = rnd
        cols = np.arange(s)
        input_mask = (cols < lengths[:, None]).astype(np.int32)
        segment_ids = ((cols >= len_a[:, None]) & (cols < lengths[:, None])).astype(np.int32)
        weights = (np.arange(p) < nmask[:, None]).astype(np.float32)
        return {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids,
                "masked_lm_positions": positions, "masked_lm_ids": labels, "masked_lm_weights": weights,
                "next_sentence_labels": nsp}


def create_instances(documents: list[list[list[int]]], flags: GoogleFlags, vocab: GoogleVocab,
                     progress: bool = False) -> Instances:
    """Google's ``create_training_instances`` after reading: shuffle the documents, ``dupe_factor``
    passes over them, shuffle the instances — all from ``random.Random(flags.random_seed)``."""
    rng = Draws(flags.random_seed)
    documents = list(documents)
    rng.shuffle(documents)
    rows: list = []
    bar = _bar(flags.dupe_factor * len(documents), "instances", "doc", progress)
    for _ in range(flags.dupe_factor):
        for di in range(len(documents)):
            _from_document(documents, di, flags, vocab, rng, rows)
            bar.update(1)
    bar.close()
    order = list(range(len(rows)))
    rng.shuffle(order)          # the same draws as shuffling the instances themselves
    return Instances([rows[i] for i in order], flags)


def _from_document(docs, di, flags: GoogleFlags, vocab: GoogleVocab, rng: Draws, rows: list) -> None:
    document = docs[di]
    max_num_tokens = flags.max_seq_length - 3            # [CLS] A [SEP] B [SEP]
    target = max_num_tokens
    if rng.random() < flags.short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    chunk: list[list[int]] = []
    cur = 0
    i = 0
    n = len(document)
    while i < n:
        seg = document[i]
        chunk.append(seg)
        cur += len(seg)
        if i == n - 1 or cur >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = list(itertools.chain.from_iterable(chunk[:a_end]))
            if len(chunk) == 1 or rng.random() < 0.5:
                is_random = 1
                target_b = target - len(a)
                for _ in range(10):
                    rdi = rng.randint(0, len(docs) - 1)
                    if rdi != di:
                        break
                rdoc = docs[rdi]
                b: list[int] = []
                for j in range(rng.randint(0, len(rdoc) - 1), len(rdoc)):
                    b.extend(rdoc[j])
                    if len(b) >= target_b:
                        break
                i -= len(chunk) - a_end     # the unused sentences are read again
            else:
                is_random = 0
                b = list(itertools.chain.from_iterable(chunk[a_end:]))
            a, b = _truncate_pair(a, b, max_num_tokens, rng)
            ids = [vocab.cls_id, *a, vocab.sep_id, *b, vocab.sep_id]
            pos, lab = _mask(ids, len(a), flags, vocab, rng)
            rows.append((ids, len(a) + 2, pos, lab, is_random))
            chunk = []
            cur = 0
        i += 1


def _truncate_pair(a: list[int], b: list[int], max_num_tokens: int, rng: Draws):
    """Google's ``truncate_seq_pair``: trim the longer (B on a tie) one token at a time, from the front
    or the back by a coin flip. Counts the cuts and slices once instead of deleting from the lists."""
    la, lb = len(a), len(b)
    a0 = b0 = 0
    random_ = rng.random
    while la + lb > max_num_tokens:
        if la > lb:
            if random_() < 0.5:
                a0 += 1
            la -= 1
        else:
            if random_() < 0.5:
                b0 += 1
            lb -= 1
    return a[a0:a0 + la], b[b0:b0 + lb]


def _mask(ids: list[int], len_a: int, flags: GoogleFlags, vocab: GoogleVocab, rng: Draws):
    """Google's ``create_masked_lm_predictions`` on ids, in place on ``ids``; returns (positions, labels)."""
    n = len(ids)
    sep = len_a + 1
    cand = [i for i in range(1, n - 1) if i != sep]      # all but [CLS] and the two [SEP]
    if flags.do_whole_word_mask:
        cont = vocab.is_continuation
        groups: list[list[int]] = []
        for i in cand:
            if groups and cont[ids[i]]:
                groups[-1].append(i)    # joins the previous word, even across the middle [SEP] (as Google)
            else:
                groups.append([i])
    num_to_predict = min(flags.max_predictions_per_seq, max(1, int(round(n * flags.masked_lm_prob))))
    if flags.do_whole_word_mask:
        rng.shuffle(groups)
        chosen: list[int] = []
        for g in groups:
            if len(chosen) >= num_to_predict:
                break
            if len(chosen) + len(g) > num_to_predict:
                continue
            chosen.extend(g)
    else:
        rng.shuffle(cand)
        chosen = cand[:num_to_predict]
    random_, randint = rng.random, rng.randint
    last = len(vocab.random_ids) - 1
    mask_id = vocab.mask_id
    orig = {}
    for i in chosen:                # draws in the shuffled order, as Google
        orig[i] = ids[i]
        if random_() < 0.8:
            ids[i] = mask_id
        elif random_() < 0.5:
            pass
        else:
            ids[i] = vocab.random_list[randint(0, last)]
    positions = sorted(orig)
    return positions, [orig[i] for i in positions]


# ============================================================================================ top level
def create_pretraining_arrays(inputs: Sequence[str], vocab_file: str, flags: GoogleFlags | None = None,
                              progress: bool = False) -> dict[str, np.ndarray]:
    """Google's script in one call: input files -> its seven features as arrays (module docstring)."""
    flags = flags or GoogleFlags()
    vocab = GoogleVocab(vocab_file)
    tok = GoogleTokenizer(vocab, flags.do_lower_case)
    docs = read_documents(inputs, tok, progress)
    return create_instances(docs, flags, vocab, progress).arrays()
