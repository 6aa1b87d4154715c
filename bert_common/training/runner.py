"""What ``bertrio pretrain`` / ``bertrio finetune`` share (framework-free; a backend is reached by name).

- ``trainer_module(backend)``: ``bert_<backend>.training`` through ``bert_common.backend`` (importlib).
- ``prepare_devices(backend, n)``: what ``--devices N`` needs before the framework starts, per backend
  (``DEVICE_SETUP``): torch runs N processes (``torchrun`` semantics: the command re-executes itself
  under ``python -m torch.distributed.run --standalone --nproc-per-node N``), TensorFlow splits the CPU
  into N logical devices (``MirroredStrategy``), JAX forces N host devices (``XLA_FLAGS``) when there is
  no accelerator.
- ``predictor(model, keys)``: a NumPy-in, NumPy-out inference function for any backend's model.
- ``check_data(manifest, config, ...)``: the pretraining shards against the model config.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import subprocess
import sys
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from bert_common import backend as _backend
from bert_common.config import BertConfig

# environment variables torchrun sets in every process it starts
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
# backend -> how ``--devices N`` (N > 1) is obtained on that framework
DEVICE_SETUP = {
    "torch": "processes",          # torchrun: one process per device (gloo on CPU, NCCL on GPU)
    "tf": "logical_cpus",          # bert_tf.training.use_cpu_devices(N) before TensorFlow starts
    "flax": "xla_host_devices",    # XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts
}


def backend_name(name: str) -> str:
    """Normalised backend name (``torch``/``tf``/``flax``), installed, else ValueError / ImportError."""
    key = _backend.ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in _backend.BACKENDS:
        raise ValueError(f"--backend {name!r} is not a backend; choose one of {list(_backend.BACKENDS)}")
    if key not in _backend.installed_backends():
        raise ImportError(f"--backend {key} needs {', '.join(_backend.BACKENDS[key][1])}, which is not installed "
                          f"(installed: {_backend.installed_backends() or 'none'})")
    return key


def trainer_module(backend: str) -> ModuleType:
    """``bert_<backend>.training`` (imports the framework)."""
    return importlib.import_module(_backend.BACKENDS[backend_name(backend)][0] + ".training")


def model_module(backend: str) -> ModuleType:
    return _backend.backend_module(backend_name(backend))


def under_torchrun() -> bool:
    return all(k in os.environ for k in TORCHRUN_ENV)


def needs_launch(backend: str, devices: int) -> bool:
    """Whether this process must start ``devices`` worker processes instead of training itself."""
    return DEVICE_SETUP[backend_name(backend)] == "processes" and devices > 1 and not under_torchrun()


def launch_processes(devices: int, argv: Sequence[str]) -> int:
    """Run ``python -m torch.distributed.run --standalone --nproc-per-node N -m bert_common ARGV``;
    its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
           "-m", "bert_common", *argv]
    return subprocess.call(cmd)


def check_devices(backend: str, devices: int) -> None:
    """``--devices`` against what the framework can use, where that is known without starting it (torch:
    GPUs, else CPU cores); TF and JAX Trainers check it themselves before the first step."""
    if DEVICE_SETUP[backend_name(backend)] == "processes":
        seen = trainer_module(backend).visible_devices()
        if devices > seen:
            raise ValueError(f"--devices {devices} is more than {backend} can use here ({seen})")


def prepare_devices(backend: str, devices: int) -> None:
    """Set up ``devices`` devices for ``backend`` in this process, before its framework starts, and check
    that the framework sees them (ValueError naming ``--devices`` otherwise)."""
    kind = DEVICE_SETUP[backend_name(backend)]
    if kind == "xla_host_devices" and devices > 1:
        flag = f"--xla_force_host_platform_device_count={devices}"
        current = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in current:
            os.environ["XLA_FLAGS"] = (current + " " + flag).strip()
    module = trainer_module(backend)
    if kind == "logical_cpus" and devices > 1 and hasattr(module, "use_cpu_devices"):
        module.use_cpu_devices(devices)
    if kind == "processes":
        check_devices(backend, devices)
        module.init_distributed()
    # TF and JAX: their Trainer refuses more devices than the framework sees, before the first step.


# ---------------------------------------------------------------------------------------------- inference
def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


@contextlib.contextmanager
def _inference(model):
    """Dropout off (and no autograd) for a torch module; other backends infer by default when called."""
    training = getattr(model, "training", None)
    torch = sys.modules.get("torch")
    if isinstance(training, bool) and hasattr(model, "eval"):
        model.eval()
        try:
            with (torch.no_grad() if torch is not None else contextlib.nullcontext()):
                yield
        finally:
            model.train(training)
    else:
        yield


def predictor(model, keys: Sequence[str]) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """``predict(batch) -> {key: fp32 array}``: the model's outputs ``keys`` for NumPy inputs, dropout off."""
    def predict(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with _inference(model):
            out = model(**{k: np.asarray(v) for k, v in batch.items()})
        return {k: _to_numpy(getattr(out, k) if hasattr(out, k) else out[k]) for k in keys}
    return predict


# ---------------------------------------------------------------------------------------------- checks
def vocab_file_hash(path: str) -> str:
    """The vocabulary hash of the pretraining manifests: SHA-256 of the vocab.txt bytes."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def open_data(path: str):
    """The pretraining dataset at ``--data`` (``bert_common.pretraining.shards.open_dataset``)."""
    from bert_common.pretraining.shards import open_dataset
    return open_dataset(path)


def check_data(manifest: Mapping[str, Any], config: BertConfig, data_path: str, config_path: str,
               vocab_file: str | None = None) -> None:
    """Shards that do not fit the model: another vocabulary (size, or hash against ``vocab_file``), or
    rows longer than the position table. ValueError naming both files."""
    size = manifest.get("vocab_size")
    if size is not None and int(size) != config.vocab_size:
        raise ValueError(f"--data {data_path} was made with a vocabulary of {size} tokens but --config "
                         f"{config_path} has vocab_size={config.vocab_size}: another vocabulary")
    want = manifest.get("vocab_hash")
    if want and vocab_file and os.path.isfile(vocab_file):
        have = vocab_file_hash(vocab_file)
        if have != want:
            raise ValueError(f"--data {data_path} was made with another vocabulary than {vocab_file} "
                             f"(vocabulary hash {want[:12]}... vs {have[:12]}...)")
    length = manifest.get("max_seq_length")
    if length is not None and int(length) > config.max_position_embeddings:
        raise ValueError(f"--data {data_path} has rows of {length} tokens but --config {config_path} has "
                         f"max_position_embeddings={config.max_position_embeddings}")


def load_config(path: str) -> tuple[BertConfig, str | None]:
    """(config, checkpoint directory or None) from ``--config``: a config.json file or a checkpoint dir."""
    if os.path.isdir(path):
        return BertConfig.from_pretrained(path), path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config {path}: no such file or directory")
    import json
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:
        raise ValueError(f"--config {path}: not valid JSON ({e})") from None
    return BertConfig.from_dict(data), None


def has_weights(directory: str | None) -> bool:
    if not directory:
        return False
    with contextlib.suppress(ImportError, ValueError, OSError):
        from bert_common.formats import detect_formats
        return bool(detect_formats(directory))
    return False



# ---------------------------------------------------------------------------------------------- CLI glue
def add_training_arguments(p, learning_rate: float, batch_size: int) -> None:
    """The flags ``pretrain`` and ``finetune`` share (names of issue 14; defaults as in BERT)."""
    p.add_argument("--backend", default=None, help="torch | tf | flax (default: $BERT_BACKEND, else the first "
                                                    "installed)")
    p.add_argument("--output", required=True, help="output directory: final model, checkpoint-*, log")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"global batch (default {batch_size})")
    p.add_argument("--learning-rate", type=float, default=learning_rate, help=f"peak rate (default {learning_rate})")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warmup steps (default: 10%% of the run)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--devices", type=int, default=1, help="data-parallel devices (torch: processes via torchrun)")
    p.add_argument("--parallelism", choices=("data", "fsdp"), default="data")
    p.add_argument("--no-dropout", action="store_true", help="train with dropout off (deterministic)")
    p.add_argument("--save-every", type=int, default=None, help="write a train-state checkpoint every K steps")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in --output")
    p.add_argument("--log", default=None, help="JSON Lines log (default OUTPUT/log.jsonl)")
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def to_argv(parser, ns) -> list[str]:
    """The command line that gives ``ns`` back (for re-executing under torchrun)."""
    out: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "func", "command"):
            continue
        value = getattr(ns, action.dest, None)
        if value is None or value is False:
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if value is True and action.nargs == 0:
            out.append(flag)
        else:
            out += [flag, str(value)]
    return out


def check_output(output: str, resume: bool) -> None:
    """A new run needs an empty or missing ``--output``; ``--resume`` needs checkpoints there."""
    from bert_common.training.state_io import list_checkpoints
    if resume:
        if not list_checkpoints(output):
            raise FileNotFoundError(f"--resume: {output} has no checkpoint-* to continue from")
        return
    if os.path.isdir(output) and os.listdir(output):
        raise FileExistsError(f"--output {output} exists and is not empty; pass --resume to continue its run, or "
                              f"choose a new directory")
    if os.path.exists(output) and not os.path.isdir(output):
        raise FileExistsError(f"--output {output} is a file")


__all__ = ["trainer_module", "model_module", "backend_name", "needs_launch", "launch_processes", "check_devices", "prepare_devices",
           "predictor", "check_data", "open_data", "add_training_arguments", "to_argv", "check_output", "load_config", "has_weights", "vocab_file_hash", "DEVICE_SETUP"]
