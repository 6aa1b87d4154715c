"""Static pretraining data against Google's own create_pretraining_data.py (google-research/bert eedf571).

The fixture (``tests/data/google_pretraining_fixture.{json,npz}``) holds what Google's script wrote for
the runs of ``tests/data/make_google_pretraining_fixture.py``: its default flags on its ``sample_text.txt``
with and without whole-word masking, an adversarial Unicode corpus (uncased, and cased with whole-word
masking) and two files with every numeric flag changed. Every feature must be equal, and our TFRecord
bytes equal to Google's records in canonical (deterministic) serialisation.
"""
from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pytest

from bert_common.cli import main
from bert_common.pretraining import GoogleFlags, create_pretraining_arrays, open_dataset
from bert_common.pretraining import google
from bert_common.pretraining.shards import static_to_batch
from bert_common.pretraining.tfrecord import crc32c_many, read_tfrecord, write_tfrecord_examples

DATA = os.path.join(os.path.dirname(__file__), "data")
META = json.load(open(os.path.join(DATA, "google_pretraining_fixture.json"), encoding="utf-8"))
RUNS = sorted(META["runs"])


@pytest.fixture(scope="module")
def vocab(minilm_dir) -> str:
    path = os.path.join(minilm_dir, "vocab.txt")
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == META["vocab_sha256"]
    return path


@pytest.fixture(scope="module")
def want() -> dict:
    z = np.load(os.path.join(DATA, "google_pretraining_fixture.npz"))
    return {k: z[k] for k in z.files}


_CACHE: dict = {}


def ours(run: str, vocab: str) -> dict:
    if run not in _CACHE:
        r = META["runs"][run]
        _CACHE[run] = create_pretraining_arrays([os.path.join(DATA, f) for f in r["files"]], vocab,
                                                GoogleFlags(**r["flags"]))
    return _CACHE[run]


@pytest.mark.parametrize("run", RUNS)
def test_features_equal_googles(run, vocab, want):
    got = ours(run, vocab)
    assert len(got["input_ids"]) == META["runs"][run]["num_instances"]
    for name in google.FEATURES:
        w = want[f"{run}/{name}"]
        assert got[name].dtype == w.dtype and got[name].shape == w.shape, name
        np.testing.assert_array_equal(got[name], w, err_msg=f"{run}: {name}")


@pytest.mark.parametrize("run", RUNS)
def test_tfrecord_bytes_equal_googles(run, vocab):
    buf = io.BytesIO()
    n = write_tfrecord_examples(buf, ours(run, vocab), chunk=100)   # chunking must not change the bytes
    data = buf.getvalue()
    assert n == len(data) == META["runs"][run]["tfrecord_bytes"]
    assert hashlib.sha256(data).hexdigest() == META["runs"][run]["tfrecord_sha256"]


@pytest.mark.slow   # imports TensorFlow
def test_tfrecord_parses_with_tensorflow(vocab, tmp_path):
    tf = pytest.importorskip("tensorflow")
    got = ours("sample_default", vocab)
    path = tmp_path / "x.tfrecord"
    with open(path, "wb") as f:
        write_tfrecord_examples(f, got)
    raws = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert raws == read_tfrecord(str(path)) and len(raws) == len(got["input_ids"])
    ex = tf.train.Example.FromString(raws[5]).features.feature
    assert list(ex["input_ids"].int64_list.value) == got["input_ids"][5].tolist()
    assert list(ex["masked_lm_weights"].float_list.value) == got["masked_lm_weights"][5].tolist()
    assert list(ex["next_sentence_labels"].int64_list.value) == [got["next_sentence_labels"][5]]


def test_crc32c_known_values():
    # RFC 3720 B.4 test vectors and the classic check value
    assert crc32c_many([b"123456789", bytes(32), b"\xff" * 32, bytes(range(32))]).tolist() == [
        0xE3069283, 0x8A9136AA, 0x62A8AB43, 0x46DD794E]


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_tokenizer_matches_googles_full_tokenizer(vocab, lower):
    tok = google.GoogleTokenizer(google.GoogleVocab(vocab), lower)
    lines = [ln.strip() for ln in META["unicode_lines"]]
    want = META["google_tokens"]["uncased" if lower else "cased"]
    got = tok.encode_lines(lines)
    assert [list(g) for g in got] == want
    assert [tok.encode_python(ln) for ln in lines] == want
    # the Rust path was used for most lines, the Python path only for characters that need it
    assert "\u03a3" in tok._unsafe and "a" not in tok._unsafe and len(tok._safe) > 100


def test_per_file_equals_separate_runs(vocab, tmp_path):
    r = META["runs"]["two_files_flags"]
    flags = GoogleFlags(**r["flags"])
    files = [os.path.join(DATA, f) for f in r["files"]]
    parts = [create_pretraining_arrays([f], vocab, flags) for f in files]
    out = tmp_path / "per_file"
    assert main(["pretrain-data", *files, "--vocab", vocab, "--output", str(out), "--per-file", "--quiet",
                 "--max-seq-length", "48", "--max-predictions-per-seq", "7", "--random-seed", "7",
                 "--dupe-factor", "3", "--masked-lm-prob", "0.2", "--short-seq-prob", "0.3"]) == 0
    ds = open_dataset(str(out))
    assert len(ds) == sum(len(p["input_ids"]) for p in parts) and ds.manifest["per_file"] is True
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    b = ds.batch(np.arange(len(ds)))
    for k, v in static_to_batch(cat, 48).items():
        np.testing.assert_array_equal(b[k], v, err_msg=k)


def test_cli_safetensors_and_tfrecord(vocab, want, tmp_path, capsys):
    sample = os.path.join(DATA, "google_sample_text.txt")
    out = tmp_path / "ds"
    assert main(["pretrain-data", sample, "--vocab", vocab, "--output", str(out), "--shard-size", "20KB", "--quiet"]) == 0
    assert "wrote 118 instances" in capsys.readouterr().out
    ds = open_dataset(str(out))
    m = ds.manifest
    assert (m["kind"], m["num_instances"], m["max_seq_length"], m["vocab_size"]) == ("static", 118, 128, 30522)
    assert m["vocab_hash"] == META["vocab_sha256"] and m["flags"]["dupe_factor"] == 10
    assert len(m["shards"]) > 1     # 20KB shards: the batch below crosses shard boundaries
    g = {k: want[f"sample_default/{k}"] for k in google.FEATURES}
    idx = np.array([117, 0, 50, 3, 3])
    b = ds.batch(idx)
    ref = static_to_batch({k: v[idx] for k, v in g.items()}, 128)
    for k in ref:
        assert b[k].dtype == np.int32
        np.testing.assert_array_equal(b[k], ref[k], err_msg=k)
    # labels: the original ids at the masked positions, -100 elsewhere
    row = g["masked_lm_weights"][117] > 0
    assert (b["labels"][0] != -100).sum() == row.sum()
    np.testing.assert_array_equal(b["labels"][0][g["masked_lm_positions"][117][row]], g["masked_lm_ids"][117][row])
    rec = tmp_path / "x.tfrecord"
    assert main(["pretrain-data", sample, "--vocab", vocab, "--output", str(rec), "--format", "tfrecord", "--quiet"]) == 0
    assert hashlib.sha256(rec.read_bytes()).hexdigest() == META["runs"]["sample_default"]["tfrecord_sha256"]
    # an existing output is kept unless --overwrite
    assert main(["pretrain-data", sample, "--vocab", vocab, "--output", str(rec), "--format", "tfrecord", "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err


def _bad_inputs(tmp_path):
    ok = tmp_path / "ok.txt"
    ok.write_text("A first sentence.\nA second one.\n\nAnother document here.\n", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\t\n", encoding="utf-8")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(b"good line\nsecond line\ncaf\xe9 au lait\n")
    return ok, {"missing": (str(tmp_path / "nope.txt"), "does not exist"),
                "empty": (str(empty), "is empty"), "blank": (str(blank), "is empty"),
                "latin1": (str(latin), "is not UTF-8: line 3, byte 4")}


@pytest.mark.parametrize("case", ["missing", "empty", "blank", "latin1"])
@pytest.mark.parametrize("fmt", ["safetensors", "tfrecord"])
def test_bad_input_names_file_and_line_and_writes_nothing(case, fmt, vocab, tmp_path, capsys):
    ok, cases = _bad_inputs(tmp_path)
    path, message = cases[case]
    out = tmp_path / "out"
    rc = main(["pretrain-data", str(ok), path, "--vocab", vocab, "--output", str(out), "--format", fmt, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and os.path.basename(path) in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []   # no temp left


def test_read_lines_follows_gfile():
    # GFile.readline ends lines at "\n" only and drops every "\r"; then Google strips each line
    import tempfile
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write("one\r\ntwo\rthree\n \u2028\n  four  \nlast".encode())
    try:
        assert google.read_lines(f.name) == ["one", "twothree", "", "four", "last"]
    finally:
        os.unlink(f.name)


@pytest.mark.parametrize("kwargs,message", [
    ({"max_seq_length": 4}, "max_seq_length=4"), ({"masked_lm_prob": 1.5}, "masked_lm_prob=1.5"),
    ({"dupe_factor": 0}, "dupe_factor=0"), ({"short_seq_prob": -0.1}, "short_seq_prob=-0.1"),
    ({"max_predictions_per_seq": 0}, "max_predictions_per_seq=0")])
def test_flags_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        GoogleFlags(**kwargs)


def test_inlined_draws_equal_random_random():
    import random
    assert google._inline_ok()
    for seed in (0, 12345, 2**40 + 3):
        a, d = random.Random(seed), google.Draws(seed)
        for n in (1, 2, 5, 17, 128, 1000, 30522):
            x, y = list(range(n)), list(range(n))
            a.shuffle(x)
            d.shuffle(y)
            assert x == y
            assert [a.randint(0, n - 1) for _ in range(20)] == [d.randint(0, n - 1) for _ in range(20)]
            assert a.randint(2, n + 2) == d.randint(2, n + 2) and a.random() == d.random()
