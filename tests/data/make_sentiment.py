"""A small labelled sentiment set from a template grammar (for fine-tuning tests; no downloads).

Each sentence is ``[opener] [subject] [verb] [intensifier] [adjective] [closer]``; the label is the
adjective's polarity ("positive" / "negative"), a clear lexical cue, so a pretrained encoder learns it in a
few dozen steps while chance is 50 %. Negation is not used (it would make the cue non-lexical).

``python tests/data/make_sentiment.py OUT_DIR [N_TRAIN] [N_EVAL]`` writes ``train.jsonl`` and ``eval.jsonl``;
``make(n, seed)`` returns the rows. Deterministic in ``seed``; train and eval use different seeds.
"""
from __future__ import annotations

import json
import os
import random
import sys

OPENERS = ["", "honestly,", "overall", "i think", "to be fair,", "in my opinion", "frankly,", "after a week,"]
SUBJECTS = ["the movie", "this phone", "the hotel", "our dinner", "the service", "that book", "the concert",
            "my new laptop", "the staff", "the coffee", "this game", "the trip"]
VERBS = ["was", "is", "seemed", "felt", "turned out", "looked"]
INTENSIFIERS = ["", "very", "really", "quite", "truly", "rather", "so"]
POSITIVE = ["great", "wonderful", "excellent", "delightful", "fantastic", "pleasant", "superb", "lovely",
            "brilliant", "enjoyable"]
NEGATIVE = ["terrible", "awful", "horrible", "dreadful", "disappointing", "poor", "boring", "miserable",
            "unpleasant", "bad"]
CLOSERS = ["", ".", "!", "overall.", "to me.", "for the price.", "this time."]


def make(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows ``{"text": str, "label": "positive" | "negative"}``, balanced, shuffled."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        adjective = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        words = [rng.choice(OPENERS), rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(INTENSIFIERS),
                 adjective, rng.choice(CLOSERS)]
        rows.append({"text": " ".join(w for w in words if w), "label": label})
    rng.shuffle(rows)
    return rows


def write(directory: str, n_train: int = 320, n_eval: int = 96) -> tuple[str, str]:
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, n, seed in (("train.jsonl", n_train, 1), ("eval.jsonl", n_eval, 2)):
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            for row in make(n, seed):
                f.write(json.dumps(row) + "\n")
        paths.append(path)
    return paths[0], paths[1]


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    sizes = [int(x) for x in sys.argv[2:4]]
    print(*write(out, *sizes))
