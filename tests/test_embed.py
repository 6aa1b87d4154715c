"""Sentence embeddings: ``bert_common.embeddings.encode`` / ``bertrio embed`` on every backend equal
sentence-transformers' ``encode`` for the shipped all-MiniLM-L6-v2 (test-only oracle), in input order,
with empty and over-long lines, and the CLI's errors leave nothing behind."""
from __future__ import annotations

import os

import numpy as np
import pytest

from bert_common import embeddings
from bert_common.backend import installed_backends
from bert_common.cli import main
from conformance.tolerances import TOLERANCES

BACKENDS = installed_backends()
LONG = "word " * 400  # about 400 tokens: longer than MiniLM's 256 (sentence-transformers' max_seq_length)
TEXTS = ["The quick brown fox jumps over the lazy dog.", "", "Embeddings map sentences to vectors.", LONG,
         "Short.", "A somewhat longer sentence about tokenisation, padding and the cost of attention."] * 3


def _assert_fp32_close(ours: np.ndarray, ref: np.ndarray) -> None:
    """The fp32 CPU output rule of the one tolerance table (conformance/tolerances.py)."""
    tol = TOLERANCES[("float32", "cpu")].outputs
    diff = float(np.abs(ours - ref).max())
    assert tol.allows(diff, float(np.abs(ref).max())), f"max |Δ| {diff:.3g} outside the fp32 output rule"


@pytest.fixture(scope="module")
def st_reference(minilm_dir):
    os.environ.setdefault("USE_TF", "0")  # transformers' TF half needs tf-keras; the oracle is its torch half
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(minilm_dir, device="cpu")
    return model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)


def test_plan_batches_respects_budget_and_covers_every_row():
    lengths = [5, 40, 3, 40, 17, 1, 9, 100]
    batches = embeddings.plan_batches(lengths, batch_tokens=80)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * longest <= 80
    assert [lengths[i] for i in seen] == sorted(lengths, reverse=True)
    with pytest.raises(ValueError, match="batch_tokens"):
        embeddings.plan_batches(lengths, 0)


def test_pooling_definitions():
    h = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(embeddings.pool(h, mask, "cls"), h[:, 0])
    np.testing.assert_allclose(embeddings.pool(h, mask, "mean"), [[1, 2], [6, 7]])
    np.testing.assert_array_equal(embeddings.pool(h, mask, "max"), [[2, 3], [6, 7]])
    n = embeddings.normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]], np.float32))
    np.testing.assert_allclose(n, [[0.6, 0.8], [0.0, 0.0]])


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_encode_matches_sentence_transformers(backend, minilm_dir, st_reference):
    from bert_common.backend import backend_module
    from bert_common.tokenizers.fast import BertTokenizerFast
    model = backend_module(backend).BertModel.from_pretrained(minilm_dir)
    tok = BertTokenizerFast.from_pretrained(minilm_dir)
    # a small budget forces several batches of different widths; results must come back in input order
    ours = embeddings.encode(model, tok, TEXTS, pooling="mean", normalize=True, max_length=256, batch_tokens=512)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    _assert_fp32_close(ours, st_reference)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_embed_cli(backend, minilm_dir, st_reference, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    # the checkpoint's sentence-transformers files give the defaults: mean pooling, normalised, 256 tokens
    assert main(["embed", minilm_dir, str(src), "--output", str(out), "--backend", backend,
                 "--batch-tokens", "1024"]) == 0
    err = capsys.readouterr().err
    assert err.count("truncated") == 1 and "3 of 18 texts were longer than 256 tokens" in err
    emb = np.load(out)
    assert emb.shape == (len(TEXTS), 384)
    _assert_fp32_close(emb, st_reference)


def test_embed_cli_rejects_non_utf8_and_writes_nothing(minilm_dir, tmp_path, capsys):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"fine\nalso fine\n\xff\xfe broken\n")
    out = tmp_path / "out.npy"
    assert main(["embed", minilm_dir, str(src), "--output", str(out)]) == 2
    assert "line 3 is not UTF-8" in capsys.readouterr().err
    assert not out.exists() and os.listdir(tmp_path) == ["bad.txt"]


def test_count_lines_matches_read_lines(tmp_path):
    for content in (b"", b"a", b"a\n", b"a\n\nb", b"\n\n", b"x\r\ny\r\n"):
        p = tmp_path / "f.txt"
        p.write_bytes(content)
        lines = [line for chunk in embeddings.read_lines(str(p), chunk_lines=2) for line in chunk]
        assert embeddings.count_lines(str(p)) == len(lines)
    assert lines == ["x", "y"]
