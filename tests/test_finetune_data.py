"""Fine-tuning readers and metrics (bert_common.training.finetune): arrays, label alignment, QA windows and
offsets, errors naming file and line, metric values on hand-computed cases. No framework."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bert_common.training import finetune as ft


@pytest.fixture(scope="module")
def tok(minilm_dir):
    from bert_common.tokenizers.fast import BertTokenizerFast
    return BertTokenizerFast.from_pretrained(minilm_dir)


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


# ---------------------------------------------------------------------------------------------- sequence
def test_sequence_classification_arrays_and_label_names(tmp_path, tok):
    path = _write(tmp_path / "t.jsonl", [{"text": "a fine day", "label": "pos"}, "",
                                         {"text": "rain again and again", "label": "neg"},
                                         {"text": "sun", "label": "pos"}])
    ds = ft.load_sequence_classification(path, tok, max_length=6)
    assert ds.meta["label2id"] == {"neg": 0, "pos": 1} and ds.meta["num_labels"] == 2
    a = ds.arrays
    assert a["input_ids"].shape == (3, 6) and a["input_ids"].dtype == np.int32  # longest row, capped
    np.testing.assert_array_equal(a["labels"], [1, 0, 1])
    want = tok("a fine day")["input_ids"]
    assert a["input_ids"][0, :len(want)].tolist() == want and a["attention_mask"][0].sum() == len(want)
    assert a["input_ids"][1, -1] == tok.sep_token_id  # truncated to 6 with [SEP] kept
    b = ds.batch([2, 0])
    np.testing.assert_array_equal(b["labels"], [1, 1])


def test_sequence_classification_pairs_and_int_labels(tmp_path, tok):
    path = _write(tmp_path / "p.jsonl", [{"text": "q one", "text_pair": "a one", "label": 2},
                                         {"text": "q two", "text_pair": "a two", "label": 0}])
    ds = ft.load_sequence_classification(path, tok, num_labels=3)
    assert ds.meta["label2id"] is None
    assert ds.arrays["token_type_ids"][0].max() == 1
    with pytest.raises(ValueError, match=r"p.jsonl:1: label 2 in label is outside \[0, num_labels=2\)"):
        ft.load_sequence_classification(path, tok, num_labels=2)


@pytest.mark.parametrize("line,message", [
    ('{"text": "x", "label": 0', r"bad.jsonl:2: not valid JSON"),
    ('{"label": 0}', r"bad.jsonl:2: missing field 'text'"),
    ('[1, 2]', r"bad.jsonl:2: expected a JSON object"),
    ('{"text": "x", "label": "maybe"}', r"bad.jsonl:2: unknown label 'maybe'"),
    ('{"text": 5, "label": "yes"}', r"bad.jsonl:2: text must be a string"),
])
def test_bad_rows_name_file_and_line(tmp_path, tok, line, message):
    path = _write(tmp_path / "bad.jsonl", [{"text": "ok", "label": "yes"}, line])
    with pytest.raises(ValueError, match=message):
        ft.load_sequence_classification(path, tok, label2id={"yes": 0, "no": 1}, num_labels=2)


def test_empty_and_missing_files(tmp_path, tok):
    with pytest.raises(ValueError, match="no examples"):
        ft.load_sequence_classification(_write(tmp_path / "e.jsonl", []), tok)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        ft.load_sequence_classification(str(tmp_path / "nope.jsonl"), tok)


def test_sequence_metrics():
    logits = np.array([[2, 1, 0], [0, 3, 0], [0, 0, 1], [5, 0, 0]], np.float32)  # predicts 0, 1, 2, 0
    got = ft.sequence_classification_metrics(logits, np.array([0, 1, 1, 2]))
    assert got["accuracy"] == 0.5
    # F1 per class: 0 -> p 1/2 r 1 = 2/3; 1 -> p 1 r 1/2 = 2/3; 2 -> 0
    assert got["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


# ---------------------------------------------------------------------------------------------- token
def test_token_classification_aligns_first_pieces(tmp_path, tok):
    rows = [{"tokens": ["Heidelberg", "is", "lovely"], "tags": ["B-LOC", "O", "O"]},
            {"tokens": ["John", "Smithson", "visits"], "tags": ["B-PER", "I-PER", "O"]}]
    ds = ft.load_token_classification(_write(tmp_path / "t.jsonl", rows), tok)
    l2i = ds.meta["label2id"]
    assert l2i == {"B-LOC": 0, "B-PER": 1, "I-PER": 2, "O": 3}
    enc = tok(["Heidelberg", "is", "lovely"], is_split_into_words=True)
    words = enc.word_ids()
    labels = ds.arrays["labels"][0]
    for pos, w in enumerate(words):
        first = w is not None and (pos == 0 or words[pos - 1] != w)
        assert labels[pos] == ([l2i[t] for t in rows[0]["tags"]][w] if first else -100)
    assert (labels != -100).sum() == 3
    bad = _write(tmp_path / "b.jsonl", rows + [{"tokens": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(ValueError, match=r"b.jsonl:3: tags must be a list with one tag per token"):
        ft.load_token_classification(bad, tok)
    with pytest.raises(ValueError, match=r"b2.jsonl:1: unknown label 'B-ORG' in tags"):
        ft.load_token_classification(_write(tmp_path / "b2.jsonl", [{"tokens": ["x"], "tags": ["B-ORG"]}]), tok,
                                     label2id=l2i, num_labels=4)


def test_entity_f1_is_chunk_level():
    id2label = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC"}
    gold = np.array([[1, 2, 0, 3, -100]])
    pred_ids = np.array([[1, 0, 0, 3, 3]])          # PER cut short (wrong chunk), LOC right
    logits = np.eye(4)[pred_ids].astype(np.float32)
    got = ft.token_classification_metrics(logits, gold, id2label)
    assert got["precision"] == 0.5 and got["recall"] == 0.5 and got["f1"] == 0.5
    assert got["token_accuracy"] == 0.75


# ---------------------------------------------------------------------------------------------- QA
def test_question_answering_windows_and_positions(tmp_path, tok):
    context = " ".join(f"word{i}" for i in range(60)) + " the answer is Paris indeed ."
    start = context.index("Paris")
    rows = [{"question": "where?", "context": context, "answers": {"text": ["Paris"], "answer_start": [start]}},
            {"question": "who?", "context": "Ada wrote it.", "answers": {"text": ["Ada"], "answer_start": [0]}}]
    ds = ft.load_question_answering(_write(tmp_path / "qa.jsonl", rows), tok, max_length=48, stride=8)
    windows = ds.meta["windows"]
    owners = [w[0] for w in windows]
    assert owners.count(0) > 1 and owners.count(1) == 1  # the long context was split
    a = ds.arrays
    hits = 0
    for f, (ex, c0, c1, offsets) in enumerate(windows):
        s, e = int(a["start_positions"][f]), int(a["end_positions"][f])
        if s == 0:
            assert e == 0
            continue
        hits += 1
        text = rows[ex]["context"][offsets[s][0]:offsets[e][1]]
        assert text == rows[ex]["answers"]["text"][0]
    assert hits >= 2
    # predictions from one-hot logits at the gold positions give EM 1
    S = a["input_ids"].shape[1]
    start_logits = np.full((len(windows), S), -10, np.float32)
    end_logits = start_logits.copy()
    start_logits[np.arange(len(windows)), a["start_positions"]] = 10
    end_logits[np.arange(len(windows)), a["end_positions"]] = 10
    preds = ft.qa_predictions(start_logits, end_logits, ds.meta)
    assert preds == ["Paris", "Ada"]
    bad = dict(rows[1], answers={"text": ["Bob"], "answer_start": [0]})
    with pytest.raises(ValueError, match=r"qa2.jsonl:1: answer 'Bob' is not at answer_start 0"):
        ft.load_question_answering(_write(tmp_path / "qa2.jsonl", [bad]), tok)


def test_squad_metrics():
    assert ft.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    got = ft.question_answering_metrics(["the Paris", "big red house", "x"],
                                        [["Paris"], ["red house", "a house"], ["y"]])
    assert got["exact_match"] == pytest.approx(1 / 3)
    assert got["f1"] == pytest.approx((1 + 0.8 + 0) / 3)  # "big red house" vs "red house": p 2/3, r 1
