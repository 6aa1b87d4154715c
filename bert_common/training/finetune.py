"""Fine-tuning data and metrics, framework-free: JSON Lines in, batch-contract arrays out, NumPy metrics.

Three tasks (``TASKS``), each a reader + an evaluator:

====================================  ===============================  ==========================================
task (model class)                    one JSON object per line         metric (all fractions in [0, 1])
====================================  ===============================  ==========================================
``sequence-classification``           ``text``, optional               ``accuracy``, ``macro_f1`` (mean F1 over
(BertForSequenceClassification)       ``text_pair``, ``label`` (int    the classes seen in gold or predictions)
                                      id or label name)
``token-classification``              ``tokens`` (list of words),      ``f1`` / ``precision`` / ``recall``:
(BertForTokenClassification)          ``tags`` (one per word, name     entity-level (CoNLL chunks from IOB/IOB2
                                      or int id)                       tags, exact span and type), plus
                                                                       ``token_accuracy`` per word
``question-answering``                ``question``, ``context``,       ``exact_match``, ``f1`` (SQuAD v1.1
(BertForQuestionAnswering)            ``answers: {text: [...],         normalisation: lower case, no
                                      answer_start: [...]}``           punctuation, no articles, one space)
====================================  ===============================  ==========================================

Labels: names map through ``label2id`` (from the checkpoint's config when it names its labels, else built
from the training file, sorted); integer labels must lie in ``[0, num_labels)``. A line that does not
parse, lacks a field or has a bad label raises ``ValueError`` naming the file, the line and the value.

Arrays (``FinetuneDataset.arrays``): ``input_ids`` / ``attention_mask`` / ``token_type_ids`` (N, S) int32,
``labels`` (N,) int32 (sequence) or (N, S) int32 with -100 off the first word piece of each word (token),
``start_positions`` / ``end_positions`` (N,) int32 (QA). S is the longest encoded row of the file, capped at
``max_length``; every batch has the same S (one compiled shape for XLA backends).

Question answering: a context longer than the window is split into overlapping windows
(``return_overflowing_tokens`` with ``stride`` tokens of overlap, question kept whole); a training window
that does not contain the (first) answer points at [CLS] (position 0), as in BERT's SQuAD recipe. At
evaluation each example's best span over all its windows (start <= end, at most ``max_answer_length``
tokens, inside the context) is mapped back to characters with the tokenizer's offsets.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import re
import string
from typing import Any, Callable, Mapping, Sequence

import numpy as np

IGNORE_INDEX = -100
DEFAULT_LABEL_NAME = re.compile(r"LABEL_\d+$")


# ---------------------------------------------------------------------------------------------- reading
def read_jsonl(path: str, required: Sequence[str]) -> list[tuple[int, dict]]:
    """``[(line number, object)]`` of a JSON Lines file (blank lines skipped); every object must have the
    ``required`` fields. Errors name the file and the line."""
    rows = []
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    with f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{no}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{no}: expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in required if k not in obj]
            if missing:
                raise ValueError(f"{path}:{no}: missing field {', '.join(repr(k) for k in missing)}")
            rows.append((no, obj))
    if not rows:
        raise ValueError(f"{path}: no examples (the file is empty)")
    return rows


def _has_named_labels(label2id: Mapping[str, int] | None) -> bool:
    """Whether a config's label2id names real labels (HF fills LABEL_0.. by default)."""
    return bool(label2id) and not all(DEFAULT_LABEL_NAME.match(str(k)) for k in label2id)


def build_label2id(values: Sequence[Any], path: str) -> dict[str, int] | None:
    """label2id from a training file's label values: sorted names -> 0..n-1; None when all are ints."""
    names = {v for v in values if isinstance(v, str)}
    if not names:
        return None
    if len(names) != len(values) and any(not isinstance(v, str) for v in values):
        raise ValueError(f"{path}: labels mix names and integer ids; use one kind")
    return {name: i for i, name in enumerate(sorted(names))}


def _label_id(value: Any, label2id: Mapping[str, int] | None, num_labels: int, path: str, no: int, field: str
              ) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{path}:{no}: {field} {value!r} is not an integer id or a label name")
    if isinstance(value, str):
        if not label2id or value not in label2id:
            known = sorted(label2id or {})
            raise ValueError(f"{path}:{no}: unknown label {value!r} in {field} (known labels: {known[:20]})")
        value = label2id[value]
    if not 0 <= value < num_labels:
        raise ValueError(f"{path}:{no}: label {value} in {field} is outside [0, num_labels={num_labels})")
    return int(value)


@dataclasses.dataclass
class FinetuneDataset:
    """Encoded examples: ``arrays`` (batch contract, N rows) + what the evaluator needs (``meta``)."""
    task: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    path: str

    @property
    def manifest(self) -> dict[str, Any]:
        return {"kind": self.task, "num_instances": len(self), "max_seq_length": int(self.arrays["input_ids"].shape[1]),
                "path": self.path}

    def __len__(self) -> int:
        return int(self.arrays["input_ids"].shape[0])

    def batch(self, indices: Sequence[int], epoch: int = 0) -> dict[str, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        return {k: v[idx] for k, v in self.arrays.items()}


def _pad(rows: list[list[int]], value: int, width: int) -> np.ndarray:
    out = np.full((len(rows), width), value, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r[:width]
    return out


def _encoded_arrays(enc: Mapping[str, list], pad_id: int) -> tuple[dict[str, np.ndarray], int]:
    width = max(len(r) for r in enc["input_ids"])
    return ({"input_ids": _pad(enc["input_ids"], pad_id, width),
             "attention_mask": _pad(enc["attention_mask"], 0, width),
             "token_type_ids": _pad(enc["token_type_ids"], 0, width)}, width)


# ---------------------------------------------------------------------------------------------- sequence cls
def load_sequence_classification(path: str, tokenizer, *, max_length: int = 128, num_labels: int | None = None,
                                 label2id: Mapping[str, int] | None = None) -> FinetuneDataset:
    rows = read_jsonl(path, ("text", "label"))
    for no, r in rows:
        for field in ("text", "text_pair"):
            if field in r and not isinstance(r[field], str):
                raise ValueError(f"{path}:{no}: {field} must be a string, got {type(r[field]).__name__}")
    pairs = [("text_pair" in r) for _, r in rows]
    if any(pairs) and not all(pairs):
        first = next(no for (no, _), p in zip(rows, pairs) if p != pairs[0])
        raise ValueError(f"{path}:{first}: text_pair is given on some lines and not others")
    if label2id is None:
        label2id = build_label2id([r["label"] for _, r in rows], path)
    n_labels = num_labels or (len(label2id) if label2id else max(int(r["label"]) for _, r in rows) + 1)
    labels = np.array([_label_id(r["label"], label2id, n_labels, path, no, "label") for no, r in rows], np.int32)
    texts = [r["text"] for _, r in rows]
    enc = tokenizer(texts, [r["text_pair"] for _, r in rows] if pairs[0] else None, truncation=True,
                    max_length=max_length)
    arrays, _ = _encoded_arrays(enc, tokenizer.pad_token_id)
    arrays["labels"] = labels
    return FinetuneDataset("sequence-classification", arrays,
                           {"label2id": label2id, "num_labels": n_labels}, path)


def _f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def sequence_classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """logits (N, L), labels (N,) -> accuracy and macro F1 over the classes in gold or predictions."""
    pred = np.argmax(logits, axis=-1)
    labels = np.asarray(labels)
    f1s = []
    for c in np.union1d(pred, labels):
        tp = int(np.sum((pred == c) & (labels == c)))
        f1s.append(_f1(tp, int(np.sum((pred == c) & (labels != c))), int(np.sum((pred != c) & (labels == c))))[2])
    return {"accuracy": float(np.mean(pred == labels)), "macro_f1": float(np.mean(f1s))}


# ---------------------------------------------------------------------------------------------- token cls
def load_token_classification(path: str, tokenizer, *, max_length: int = 128, num_labels: int | None = None,
                              label2id: Mapping[str, int] | None = None) -> FinetuneDataset:
    """Words -> pieces; each word's tag goes on its first piece, -100 on the rest and on special tokens.
    Words cut by ``max_length`` lose their tags (counted as missed by the metric)."""
    rows = read_jsonl(path, ("tokens", "tags"))
    for no, r in rows:
        if not isinstance(r["tokens"], list) or not r["tokens"] or not all(isinstance(t, str) for t in r["tokens"]):
            raise ValueError(f"{path}:{no}: tokens must be a non-empty list of strings")
        if not isinstance(r["tags"], list) or len(r["tags"]) != len(r["tokens"]):
            raise ValueError(f"{path}:{no}: tags must be a list with one tag per token "
                             f"({len(r['tokens'])} tokens)")
    if label2id is None:
        label2id = build_label2id([t for _, r in rows for t in r["tags"]], path)
    n_labels = num_labels or (len(label2id) if label2id else max(int(t) for _, r in rows for t in r["tags"]) + 1)
    word_tags = [[_label_id(t, label2id, n_labels, path, no, "tags") for t in r["tags"]] for no, r in rows]
    enc = tokenizer([r["tokens"] for _, r in rows], is_split_into_words=True, truncation=True, max_length=max_length)
    arrays, width = _encoded_arrays(enc, tokenizer.pad_token_id)
    labels = np.full((len(rows), width), IGNORE_INDEX, np.int32)
    for i, tags in enumerate(word_tags):
        seen = set()
        for pos, w in enumerate(enc.word_ids(i)):
            if w is not None and w not in seen:
                seen.add(w)
                labels[i, pos] = tags[w]
    arrays["labels"] = labels
    return FinetuneDataset("token-classification", arrays,
                           {"label2id": label2id, "num_labels": n_labels, "word_tags": word_tags}, path)


def _chunks(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """CoNLL chunks (type, first word, last word) from IOB / IOB2 / IO tags: a chunk starts at B-X, or at
    I-X (or a bare X) after anything but a tag of type X; "O" is outside every chunk."""
    out, start, kind = set(), 0, None
    for i, tag in enumerate(list(tags) + ["O"]):
        if tag == "O":
            prefix, typ = "O", None
        elif tag[:2] in ("B-", "I-"):
            prefix, typ = tag[0], tag[2:]
        else:
            prefix, typ = "I", tag
        begins = prefix == "B" or (prefix == "I" and typ != kind)
        if kind is not None and (prefix == "O" or begins):
            out.add((kind, start, i - 1))
            kind = None
        if begins:
            start, kind = i, typ
    return out


def token_classification_metrics(logits: np.ndarray, labels: np.ndarray, id2label: Mapping[int, str] | None
                                 ) -> dict[str, float]:
    """logits (N, S, L), labels (N, S) with -100 off first pieces -> entity-level P/R/F1 + word accuracy.

    Predictions are read at the labelled (first) piece of each word; with no label names id 0 is "O" and
    every other id a bare (IO) type."""
    pred = np.argmax(logits, axis=-1)
    name = (lambda i: id2label[int(i)]) if id2label else (lambda i: "O" if int(i) == 0 else str(int(i)))
    tp = fp = fn = 0
    correct = total = 0
    for p_row, l_row in zip(pred, labels):
        keep = l_row != IGNORE_INDEX
        gold, guess = [name(x) for x in l_row[keep]], [name(x) for x in p_row[keep]]
        correct += int(np.sum(p_row[keep] == l_row[keep]))
        total += int(np.sum(keep))
        g, q = _chunks(gold), _chunks(guess)
        tp, fp, fn = tp + len(g & q), fp + len(q - g), fn + len(g - q)
    p, r, f = _f1(tp, fp, fn)
    return {"f1": f, "precision": p, "recall": r, "token_accuracy": correct / max(total, 1)}


# ---------------------------------------------------------------------------------------------- QA
def load_question_answering(path: str, tokenizer, *, max_length: int = 384, stride: int = 128,
                            num_labels: int | None = None, label2id=None) -> FinetuneDataset:
    rows = read_jsonl(path, ("question", "context", "answers"))
    for no, r in rows:
        a = r["answers"]
        if not (isinstance(a, dict) and isinstance(a.get("text"), list) and isinstance(a.get("answer_start"), list)
                and len(a["text"]) == len(a["answer_start"])):
            raise ValueError(f"{path}:{no}: answers must be {{'text': [...], 'answer_start': [...]}} of equal length")
        for text, start in zip(a["text"], a["answer_start"]):
            if not isinstance(start, int) or r["context"][start:start + len(text)] != text:
                raise ValueError(f"{path}:{no}: answer {text!r} is not at answer_start {start!r} of the context")
    if stride >= max_length // 2:
        raise ValueError(f"stride {stride} must be below half of max_length {max_length}")
    enc = tokenizer([r["question"] for _, r in rows], [r["context"] for _, r in rows], truncation="only_second",
                    max_length=max_length, stride=stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True)
    arrays, width = _encoded_arrays(enc, tokenizer.pad_token_id)
    owner = list(enc["overflow_to_sample_mapping"])
    starts, ends, windows = [], [], []
    for f, ex in enumerate(owner):
        seq, offsets = enc.sequence_ids(f), enc["offset_mapping"][f]
        ctx = [i for i, s in enumerate(seq) if s == 1]
        windows.append((ex, ctx[0] if ctx else 0, ctx[-1] if ctx else -1, [tuple(o) for o in offsets]))
        a = rows[ex][1]["answers"]
        s_tok = e_tok = 0
        if a["text"] and ctx:
            c0 = a["answer_start"][0]
            c1 = c0 + len(a["text"][0])
            if offsets[ctx[0]][0] <= c0 and offsets[ctx[-1]][1] >= c1:
                s_tok = next(i for i in ctx if offsets[i][1] > c0)
                e_tok = next(i for i in reversed(ctx) if offsets[i][0] < c1)
        starts.append(s_tok)
        ends.append(e_tok)
    arrays["start_positions"] = np.array(starts, np.int32)
    arrays["end_positions"] = np.array(ends, np.int32)
    meta = {"windows": windows, "contexts": [r["context"] for _, r in rows],
            "answers": [r["answers"]["text"] for _, r in rows], "num_labels": 2, "label2id": None}
    return FinetuneDataset("question-answering", arrays, meta, path)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1: lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, truth: str) -> float:
    p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(p) & collections.Counter(t)
    same = sum(common.values())
    if not p or not t:
        return float(p == t)
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def qa_predictions(start_logits: np.ndarray, end_logits: np.ndarray, meta: Mapping[str, Any],
                   max_answer_length: int = 30) -> list[str]:
    """Best answer text per example over its windows. start/end logits (F, S) for the F windows."""
    best: dict[int, tuple[float, str]] = {}
    for f, (ex, c0, c1, offsets) in enumerate(meta["windows"]):
        if c1 < c0:
            continue
        s_log, e_log = start_logits[f], end_logits[f]
        top_s = [i for i in np.argsort(-s_log[c0:c1 + 1])[:20] + c0]
        top_e = [i for i in np.argsort(-e_log[c0:c1 + 1])[:20] + c0]
        for s in top_s:
            for e in top_e:
                if s <= e < s + max_answer_length:
                    score = float(s_log[s] + e_log[e])
                    if ex not in best or score > best[ex][0]:
                        best[ex] = (score, meta["contexts"][ex][offsets[s][0]:offsets[e][1]])
    return [best.get(i, (0.0, ""))[1] for i in range(len(meta["contexts"]))]


def question_answering_metrics(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """SQuAD v1.1 exact match and F1 (best over each example's gold answers), as fractions."""
    em = [max((float(normalize_answer(p) == normalize_answer(t)) for t in ts), default=float(p == ""))
          for p, ts in zip(predictions, answers)]
    f1 = [max((squad_f1(p, t) for t in ts), default=float(p == "")) for p, ts in zip(predictions, answers)]
    return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1))}


# ---------------------------------------------------------------------------------------------- task table
@dataclasses.dataclass(frozen=True)
class Task:
    model_class: str
    load: Callable[..., FinetuneDataset]
    output_keys: tuple[str, ...]          # model outputs the evaluator reads
    main_metric: str


TASKS: dict[str, Task] = {
    "sequence-classification": Task("BertForSequenceClassification", load_sequence_classification, ("logits",),
                                    "accuracy"),
    "token-classification": Task("BertForTokenClassification", load_token_classification, ("logits",), "f1"),
    "question-answering": Task("BertForQuestionAnswering", load_question_answering,
                               ("start_logits", "end_logits"), "f1"),
}


def evaluate(dataset: FinetuneDataset, predict: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
             batch_size: int = 64, id2label: Mapping[int, str] | None = None) -> dict[str, float]:
    """Run ``predict(batch) -> {output name: (b, ...) array}`` over ``dataset`` in order; the task's metrics."""
    keys = TASKS[dataset.task].output_keys
    outs: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    inputs = ("input_ids", "attention_mask", "token_type_ids")
    for i in range(0, len(dataset), batch_size):
        idx = np.arange(i, min(i + batch_size, len(dataset)))
        b = dataset.batch(idx)
        got = predict({k: b[k] for k in inputs})
        for k in keys:
            outs[k].append(np.asarray(got[k], dtype=np.float32))
    full = {k: np.concatenate(v) for k, v in outs.items()}
    if dataset.task == "sequence-classification":
        return sequence_classification_metrics(full["logits"], dataset.arrays["labels"])
    if dataset.task == "token-classification":
        return token_classification_metrics(full["logits"], dataset.arrays["labels"], id2label)
    preds = qa_predictions(full["start_logits"], full["end_logits"], dataset.meta)
    return question_answering_metrics(preds, dataset.meta["answers"])


__all__ = ["TASKS", "Task", "FinetuneDataset", "read_jsonl", "build_label2id", "load_sequence_classification",
           "load_token_classification", "load_question_answering", "sequence_classification_metrics",
           "token_classification_metrics", "question_answering_metrics", "qa_predictions", "normalize_answer",
           "squad_f1", "evaluate", "IGNORE_INDEX"]
