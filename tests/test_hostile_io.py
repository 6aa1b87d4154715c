"""Crashes, concurrent readers and permissions: SIGKILL during ``convert`` leaves only leftovers the next
run removes, ``--overwrite`` never leaves DST absent, a reader concurrent with saves into the same
directory always gets one whole checkpoint, outputs honour the umask."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bert_common import io_utils, testing
from bert_common.checkpoint import load_checkpoint, load_state_dict, save_checkpoint
from bert_common.convert import convert_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg():
    return testing.tiny_config(num_hidden_layers=1)


def weights(seed: int):
    return testing.random_weights(cfg(), "BertModel", seed=seed)


def leftovers(parent) -> list[str]:
    return sorted(n for n in os.listdir(parent) if n.endswith((".bertrio-tmp", ".bertrio-old")))


def child(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, text=True,
                            env=env)


def wait_for(proc: subprocess.Popen, word: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if word in line:
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"child never printed {word!r} (rc={proc.poll()})")


# The child converts SRC into DST and is killed (by itself or by us) at a chosen step.
CONVERT_CHILD = r"""
import dataclasses, os, signal, sys, time
from bert_common import convert, formats, io_utils
src, dst, step = sys.argv[1], sys.argv[2], sys.argv[3]
fmt = formats.FORMATS["safetensors"]
def write(directory, *a, **k):
    files = fmt.write(directory, *a, **k)
    if step == "writing":  # weights on disk in the temp dir, not yet published
        print("READY", flush=True)
        time.sleep(600)
    return files
formats.FORMATS["safetensors"] = dataclasses.replace(fmt, write=write)
if step == "between-renames":  # no exchange: die after DST was moved aside, before the new one lands
    io_utils._renameat2 = lambda *a: False
    real, calls = io_utils._rename, []
    def rename(a, b):
        calls.append(a)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        real(a, b)
    io_utils._rename = rename
if step == "after-exchange":  # exchanged: DST is new, the old tree waits under the temp name
    io_utils._remove = lambda p: os.kill(os.getpid(), signal.SIGKILL)
convert.convert_checkpoint(src, dst, overwrite=True)
print("FINISHED", flush=True)
"""


@pytest.fixture()
def two_sources(tmp_path):
    a, b = tmp_path / "src-a", tmp_path / "src-b"
    save_checkpoint(a, cfg(), weights(0))
    save_checkpoint(b, cfg(), weights(1))
    return a, b


def same(path, seed: int) -> bool:
    state, _ = load_state_dict(path)
    ref = weights(seed)
    return list(state) == list(ref) and all(state[k].tobytes() == ref[k].tobytes() for k in ref)


def test_sigkill_while_writing_then_next_run_cleans(tmp_path, two_sources):
    a, _ = two_sources
    dst = tmp_path / "out"
    proc = child(CONVERT_CHILD, a, dst, "writing")
    wait_for(proc, "READY")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not dst.exists()
    assert len(leftovers(tmp_path)) == 1  # the dead run's temp directory
    convert_checkpoint(a, dst)  # the next run
    assert leftovers(tmp_path) == [] and same(dst, 0)


def test_sigkill_between_renames_never_loses_dst(tmp_path, two_sources):
    """Without an atomic exchange, a kill between the two renames of --overwrite leaves DST absent for a
    moment; the next run's recovery step puts the old checkpoint back before anything else."""
    a, b = two_sources
    dst = tmp_path / "out"
    convert_checkpoint(a, dst)
    proc = child(CONVERT_CHILD, b, dst, "between-renames")
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not dst.exists() and any(n.endswith(".bertrio-old") for n in leftovers(tmp_path))
    io_utils.cleanup_leftovers(str(dst))  # what every write to DST runs first
    assert same(dst, 0) and leftovers(tmp_path) == []
    convert_checkpoint(b, dst, overwrite=True)
    assert same(dst, 1) and leftovers(tmp_path) == []


def test_sigkill_after_exchange_keeps_new_dst(tmp_path, two_sources):
    if not io_utils.exchange(str(two_sources[0]), str(two_sources[1])):
        pytest.skip("renameat2(RENAME_EXCHANGE) not available here")
    io_utils.exchange(str(two_sources[0]), str(two_sources[1]))  # swap back
    a, b = two_sources
    dst = tmp_path / "out"
    convert_checkpoint(a, dst)
    proc = child(CONVERT_CHILD, b, dst, "after-exchange")
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert same(dst, 1) and len(leftovers(tmp_path)) == 1  # the old tree, under the dead run's name
    convert_checkpoint(a, dst, overwrite=True)
    assert same(dst, 0) and leftovers(tmp_path) == []


def test_cleanup_touches_only_dead_owners_of_its_own_kind(tmp_path):
    dst = tmp_path / "out"
    mine = io_utils.temp_name(str(dst))  # this live process's name
    os.mkdir(mine)
    dead = tmp_path / ".out.999999999-1.abcd.bertrio-tmp"
    dead.mkdir()
    other_target = tmp_path / ".other.999999999-1.abcd.bertrio-tmp"
    other_target.mkdir()
    foreign = tmp_path / ".out.tmp12345"  # someone else's temp naming
    foreign.mkdir()
    removed = io_utils.cleanup_leftovers(str(dst))
    assert removed == [str(dead)]
    assert os.path.isdir(mine) and other_target.is_dir() and foreign.is_dir() and not dead.exists()


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_honour_the_umask(tmp_path, two_sources, mask):
    old = os.umask(mask)
    try:
        convert_checkpoint(two_sources[0], tmp_path / "out")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "out").st_mode & 0o777 == 0o777 & ~mask
    for name in os.listdir(tmp_path / "out"):
        assert os.stat(tmp_path / "out" / name).st_mode & 0o777 == 0o666 & ~mask, name


WRITER_CHILD = r"""
import os, sys
from bert_common import testing
from bert_common.checkpoint import save_checkpoint
path, stop = sys.argv[1], sys.argv[2]
cfg = testing.tiny_config(num_hidden_layers=1)
states = [testing.random_weights(cfg, "BertModel", seed=s) for s in (0, 1)]
print("READY", flush=True)
i = 0
while not os.path.exists(stop) and i < 100000:  # pairs of saves: the last one written is always states[1]
    for j in (0, 1):
        save_checkpoint(path, cfg, states[j], shard_size="10KB" if i % 2 == 0 else None)
    i += 1
print("FINISHED", flush=True)
"""


@pytest.mark.slow
def test_concurrent_reader_never_sees_a_mix(tmp_path):
    """Saves into one directory (alternating weights, sharded and single) while this process loads it in a
    loop: every load is exactly one of the two checkpoints, never a mix, never an error. The writer runs
    until the reader has made 40 loads and seen both, so the check does not depend on relative speed."""
    path = tmp_path / "ck"
    stop = tmp_path / "stop"
    refs = [weights(0), weights(1)]
    save_checkpoint(path, cfg(), refs[0])
    (path / "notes.txt").write_text("kept")  # HF's save_pretrained keeps other files
    proc = child(WRITER_CHILD, path, stop)
    wait_for(proc, "READY")
    loads, seen = 0, set()
    deadline = time.monotonic() + 300
    while (loads < 40 or seen != {0, 1}) and proc.poll() is None and time.monotonic() < deadline:
        config, state, fmt = load_checkpoint(path)
        assert fmt == "safetensors" and config == cfg()
        which = 0 if state["embeddings.word_embeddings.weight"].tobytes() == \
            refs[0]["embeddings.word_embeddings.weight"].tobytes() else 1
        ref = refs[which]
        assert list(state) == list(ref)
        for k in ref:
            assert state[k].tobytes() == ref[k].tobytes(), (loads, which, k)
        seen.add(which)
        loads += 1
    stop.write_text("")
    assert proc.wait(timeout=60) == 0
    assert loads >= 40 and seen == {0, 1}, (loads, seen)
    assert leftovers(tmp_path) == [] and (path / "notes.txt").read_text() == "kept"
    assert np.array_equal(load_checkpoint(path)[1]["pooler.dense.weight"], refs[1]["pooler.dense.weight"])
