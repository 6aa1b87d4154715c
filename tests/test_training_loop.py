"""The shared loop (bert_common.training.loop) and train-state checkpoints (state_io), driven by the torch
Trainer on a tiny config: data order, logging, resume = straight run (bitwise: dropout and data are keyed
by (seed, step), the state is restored exactly), crash mid-save, corrupt checkpoints, refusals."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bert_common.testing import tiny_config  # noqa: E402
from bert_common.training import TrainingArguments  # noqa: E402
from bert_common.training import loop, state_io  # noqa: E402
from bert_common.training.synthetic import SyntheticPretrainingDataset  # noqa: E402
from bert_torch import BertForPreTraining  # noqa: E402
from bert_torch.training import Trainer  # noqa: E402

CONFIG = tiny_config(hidden_dropout_prob=0.1)
DATA = SyntheticPretrainingDataset(CONFIG.vocab_size, n=36, seq_len=16, seed=2)
ARGS = TrainingArguments(learning_rate=2e-3, max_steps=8, batch_size=8, warmup_steps=2, dropout=True, save_every=3)


def _run(out, args=ARGS, resume=None, stop_after=None, log=None, seed=0):
    trainer = Trainer(BertForPreTraining(CONFIG, seed=seed), args)
    if stop_after is not None:  # the process "dies" after update ``stop_after`` (nothing after it runs)
        real = trainer.step

        def step(batch):
            if trainer.steps_done == stop_after:
                raise KeyboardInterrupt
            return real(batch)
        trainer.step = step
    return loop.train(trainer, DATA, args, str(out), config=CONFIG, model_class="BertForPreTraining",
                      backend="torch", resume=resume, log=log, progress=False)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return out, _run(out, log=str(out / "log.jsonl"))


def test_batch_order_is_a_function_of_seed_and_step():
    n, b = 36, 8
    epochs = {}
    for s in range(8):
        e, idx = loop.batch_indices(s, n, b, seed=5)
        assert e == s // 4 and idx.shape == (8,)
        epochs.setdefault(e, []).extend(idx.tolist())
    for e, rows in epochs.items():  # 4 batches an epoch, no row twice, the last 4 rows dropped
        assert len(set(rows)) == 32
        np.testing.assert_array_equal(rows, np.random.default_rng([5, e]).permutation(n)[:32])
    assert not np.array_equal(loop.batch_indices(0, n, b, 5)[1], loop.batch_indices(4, n, b, 5)[1])
    with pytest.raises(ValueError, match="fewer than one batch"):
        loop.batch_indices(0, 4, 8, 0)


def test_log_and_checkpoints(straight):
    out, result = straight
    records = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(set(loop.LOG_FIELDS) <= set(r) for r in records)
    assert [r["loss"] for r in records] == [result.losses[s] for s in range(1, 9)]
    assert records[0]["lr"] == 0.0 and records[2]["lr"] == pytest.approx(2e-3)
    assert [os.path.basename(p) for p in result.checkpoints] == [
        "checkpoint-00000003", "checkpoint-00000006", "checkpoint-00000008"]
    config, state, meta = state_io.load_train_state(result.checkpoints[-1])
    assert state.step == 8 and meta["backend"] == "torch" and meta["args"]["max_steps"] == 8
    assert config.to_dict()["architectures"] == ["BertForPreTraining"]
    for k, v in result.final_state.params.items():
        assert np.array_equal(state.params[k], v)
    # the checkpoint's weights load in a model as an ordinary checkpoint
    model = BertForPreTraining.from_pretrained(result.checkpoints[-1])
    assert np.array_equal(model.canonical_state_dict()["cls.predictions.bias"], state.params["cls.predictions.bias"])


@pytest.mark.parametrize("stop_after", [3, 5])
def test_resume_after_a_stop_equals_the_straight_run(tmp_path, straight, stop_after):
    _, ref = straight
    out = tmp_path / "run"
    log = str(out / "log.jsonl")
    with pytest.raises(KeyboardInterrupt):
        _run(out, stop_after=stop_after, log=log)
    res = loop.prepare_resume(str(out), CONFIG, ARGS)
    assert res.state.step == 3  # the last checkpoint before the stop
    result = _run(out, resume=res, log=log, seed=11)  # a differently initialised model: all state comes from disk
    assert result.resumed_from.endswith("checkpoint-00000003")
    assert result.losses == {s: ref.losses[s] for s in range(4, 9)}  # bitwise
    for k, v in ref.final_state.params.items():
        assert np.array_equal(result.final_state.params[k], v), k
    steps = [json.loads(line)["step"] for line in open(log)]
    assert steps == list(range(1, 9))  # records past the checkpoint were replaced, not duplicated


def test_crash_mid_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = state_io.save_file
    calls = []

    def failing(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint dies half-way (model written, optimizer not)
            raise OSError("disk full")
        return real(tensors, path, metadata)
    monkeypatch.setattr(state_io, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        _run(out)
    assert [s for s, _ in state_io.list_checkpoints(out)] == [3]
    assert not [n for n in os.listdir(out) if "checkpoint" in n and not n.startswith("checkpoint-00000003")]
    config, state, _ = state_io.load_train_state(out / "checkpoint-00000003")
    assert state.step == 3


def test_corrupt_newest_checkpoint_is_skipped_and_named(tmp_path, straight):
    out, _ = straight
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    model_file = copy / "checkpoint-00000008" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:1000])  # truncated
    os.remove(copy / "checkpoint-00000006" / "optimizer.safetensors")  # partial
    res = state_io.find_resumable(copy)
    assert res.state.step == 3
    msg = res.message()
    assert "checkpoint-00000008" in msg and "model.safetensors" in msg
    assert "checkpoint-00000006" in msg and "missing optimizer.safetensors" in msg
    assert "resuming from" in msg and msg.index("checkpoint-00000003") < msg.index("skipped")
    os.remove(copy / "checkpoint-00000003" / "trainer_state.json")
    with pytest.raises(state_io.TrainStateError, match="no usable checkpoint"):
        state_io.find_resumable(copy)


def test_resume_refuses_another_config_or_schedule(straight):
    out, _ = straight
    with pytest.raises(ValueError, match=r"--config cfg.json does not fit the checkpoint .*hidden_size"):
        loop.prepare_resume(str(out), tiny_config(hidden_dropout_prob=0.1, hidden_size=48), ARGS, "--config cfg.json")
    other = TrainingArguments(**{**ARGS.to_dict(), "learning_rate": 1e-3})
    with pytest.raises(ValueError, match="--learning-rate gives learning_rate=0.001"):
        loop.prepare_resume(str(out), CONFIG, other)
    more_devices = TrainingArguments(**{**ARGS.to_dict(), "gradient_accumulation_steps": 2})
    assert loop.prepare_resume(str(out), CONFIG, more_devices).state.step == 8  # allowed: same result


def test_non_finite_loss_stops_with_the_step(tmp_path):
    args = TrainingArguments(learning_rate=1e9, max_steps=30, batch_size=8, warmup_steps=0, dropout=False,
                             max_grad_norm=None)
    with pytest.raises(FloatingPointError, match="at step"):
        _run(tmp_path / "nan", args=args)
