"""The same seed gives identical batches through the torch, TensorFlow and JAX loaders, with 1, 2 and 4
workers (raw data: masks and NSP pairs drawn per batch; static data: Google's instances)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from bert_common.cli import main
from bert_common.pretraining import BATCH_KEYS, iterate_batches, open_dataset

DATA = os.path.join(os.path.dirname(__file__), "data")
SEED, EPOCH, BATCH = 3, 1, 16


@pytest.fixture(scope="module")
def datasets(minilm_dir, tmp_path_factory):
    vocab = os.path.join(minilm_dir, "vocab.txt")
    base = tmp_path_factory.mktemp("loaders")
    files = [os.path.join(DATA, "google_sample_text.txt"), os.path.join(DATA, "pretraining_unicode.txt")]
    out = {}
    for kind, extra in (("raw", ["--dynamic", "--shard-size", "10KB"]), ("static", ["--dupe-factor", "1"])):
        path = str(base / kind)
        assert main(["pretrain-data", *files, "--vocab", vocab, "--output", path, "--max-seq-length", "64",
                     "--quiet", *extra]) == 0
        out[kind] = path
    return out


def reference(path):
    ds = open_dataset(path)
    batches = list(iterate_batches(ds, BATCH, SEED, EPOCH))
    assert len(batches) == -(-len(ds) // BATCH) > 4
    return batches


def same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g) == set(BATCH_KEYS)
        for k in BATCH_KEYS:
            a = np.asarray(g[k])
            assert a.dtype == np.int32, k
            np.testing.assert_array_equal(a, w[k], err_msg=k)


@pytest.mark.parametrize("kind", ["raw", "static"])
def test_numpy_threads(datasets, kind):
    want = reference(datasets[kind])
    for workers in (1, 2, 4):
        same(list(iterate_batches(datasets[kind], BATCH, SEED, EPOCH, num_workers=workers)), want)
    # every row exactly once per epoch
    n = len(open_dataset(datasets[kind]))
    assert sum(len(b["input_ids"]) for b in want) == n


@pytest.mark.filterwarnings("ignore:This DataLoader will create")   # 4 workers on a 2-core CI machine
@pytest.mark.parametrize("kind", ["raw", "static"])
def test_torch_dataloader_workers(datasets, kind):
    pytest.importorskip("torch")
    from bert_torch.data import make_dataloader

    want = reference(datasets[kind])
    for workers in (0, 1, 2, 4):
        got = [{k: v.numpy() for k, v in b.items()}
               for b in make_dataloader(datasets[kind], BATCH, num_workers=workers, seed=SEED, epoch=EPOCH)]
        same(got, want)


@pytest.mark.parametrize("kind", ["raw", "static"])
def test_tf_dataset_parallel_calls(datasets, kind):
    pytest.importorskip("tensorflow")
    from bert_tf.data import make_tf_dataset

    want = reference(datasets[kind])
    for calls in (1, 2, 4):
        got = list(make_tf_dataset(datasets[kind], BATCH, seed=SEED, epoch=EPOCH, num_parallel_calls=calls)
                   .as_numpy_iterator())
        same(got, want)


@pytest.mark.parametrize("kind", ["raw", "static"])
def test_jax_iterator_workers(datasets, kind):
    pytest.importorskip("jax")
    from bert_flax.data import batch_iterator

    want = reference(datasets[kind])
    for workers in (0, 2, 4):
        same(list(batch_iterator(datasets[kind], BATCH, seed=SEED, epoch=EPOCH, num_workers=workers)), want)


def test_epochs_reshuffle_and_remask(datasets):
    ds = open_dataset(datasets["raw"])
    a = list(iterate_batches(ds, BATCH, SEED, 0))
    b = list(iterate_batches(ds, BATCH, SEED, 1))
    assert not np.array_equal(a[0]["input_ids"], b[0]["input_ids"])
    # the same row in two epochs: same tokens, other masks
    ea, eb = ds.batch([5], epoch=0), ds.batch([5], epoch=1)
    assert not np.array_equal(ea["labels"], eb["labels"])
