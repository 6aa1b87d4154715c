"""Import cost as behaviour: what importing each package does NOT load (benchmarks/bench_import.py has the
seconds). Each check runs in a fresh interpreter, since this test process has long imported everything.

What is kept out, and what it would cost (docs/performance.md, "Import time"): ``torch._dynamo`` (~2.4 s,
as much as ``import torch``; pulled by ``torch.compiler.disable`` at decoration time), ``ml_dtypes`` (~1.3 s;
PyTorch does not import it, TensorFlow and JAX do), the test oracles (``transformers``), the parity suite
(``conformance``) and the sibling frameworks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ORACLES = ("transformers", "sentence_transformers")
FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "flax", "optax")
# Every bert_common module a backend or the CLI imports at import time, plus the checkpoint I/O.
COMMON_MODULES = ("bert_common", "bert_common.config", "bert_common.weights", "bert_common.semantics",
                  "bert_common.validation", "bert_common.outputs", "bert_common.generation", "bert_common.pretrained",
                  "bert_common.checkpoint", "bert_common.formats", "bert_common.convert", "bert_common.auto",
                  "bert_common.cli", "bert_common.testing")


def loaded_after(code: str, watch: tuple[str, ...]) -> list[str]:
    """Run ``code`` in a fresh interpreter; return the names in ``watch`` found in its ``sys.modules``."""
    probe = f"\nimport json, sys\nprint(json.dumps([m for m in {list(watch)!r} if m in sys.modules]))"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bert_common_and_cli_help_load_no_ml_dtypes_oracle_or_framework():
    watch = ("ml_dtypes", "conformance", "tokenizers", *ORACLES, *FRAMEWORKS)
    assert loaded_after("import " + ", ".join(COMMON_MODULES), watch) == []
    # `bertrio --help` builds every subcommand's parser, the entry-point ones (conformance's `parity`) included.
    code = "from bert_common.cli import build_parser\nbuild_parser().format_help()"
    assert loaded_after(code, watch) == ["conformance"]


def test_fp32_checkpoint_round_trip_loads_no_ml_dtypes(tmp_path):
    # ml_dtypes is imported by the first bf16 tensor only (bert_common.formats.base.bfloat16).
    code = f"""
from bert_common import testing
from bert_common.checkpoint import load_checkpoint, save_checkpoint
from bert_common.convert import convert_checkpoint
config = testing.tiny_config()
save_checkpoint({os.fspath(tmp_path / 'a')!r}, config, testing.random_weights(config, "BertModel", seed=1))
convert_checkpoint({os.fspath(tmp_path / 'a')!r}, {os.fspath(tmp_path / 'b')!r}, to="safetensors", dtype="float16",
                   overwrite=True)
_, state, fmt = load_checkpoint({os.fspath(tmp_path / 'b')!r})
assert fmt == "safetensors"
assert state["embeddings.word_embeddings.weight"].dtype.name == "float16"
"""
    assert loaded_after(code, ("ml_dtypes",)) == []
    bf16 = code.replace('dtype="float16"', 'dtype="bfloat16"').replace('.name == "float16"', '.name == "bfloat16"')
    assert loaded_after(bf16, ("ml_dtypes",)) == ["ml_dtypes"]  # the same path, asked for bf16, does load it


def test_import_bert_torch_and_eager_checks_load_no_dynamo():
    pytest.importorskip("torch")
    # The three eager-only checks run (and reject bad input), and layers are built on the meta device, without
    # importing Dynamo.
    code = """
import numpy as np, torch
from torch import nn
import bert_torch
from bert_torch import _runtime
with _runtime.meta_device():
    layers = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Embedding(10, 5, padding_idx=0))
assert all(p.is_meta for p in layers.parameters())
from bert_common.testing import tiny_config
config = tiny_config()
ids = torch.ones((2, 5), dtype=torch.long)
_runtime.validate(config, ids, None, None, torch.ones_like(ids), None, 0, None, None)
assert _runtime.all_ones(torch.ones_like(ids))
_runtime.validate_labels(config, "BertForSequenceClassification", {"labels": torch.tensor([0, 1])}, (2, 5))
try:
    _runtime.validate(config, ids * 10**6, None, None, None, None, 0, None, None)
    raise SystemExit("an out-of-range id was not refused")
except ValueError as e:
    assert "input_ids" in str(e), e
model = bert_torch.BertModel(config, seed=1)  # building a model (meta device, then filled) stays light too
assert not any(p.is_meta for p in model.parameters())
"""
    watch = ("torch._dynamo", "torch._inductor", "sympy", "ml_dtypes", "conformance", *ORACLES,
             "tensorflow", "keras", "jax", "flax")
    assert loaded_after(code, watch) == []


def test_eager_only_compiles_like_torch_compiler_disable():
    torch = pytest.importorskip("torch")
    from bert_torch._runtime import eager_only

    seen = []

    def check(x):
        seen.append(torch.compiler.is_compiling())  # False: the body runs eagerly, never traced
        if bool((x > 100).any()):
            raise ValueError(f"x has a value > 100: {x.max().item()}")

    def graphs_with(wrapped):
        graphs = []

        def backend(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        def f(x):
            y = x * 2
            wrapped(y)
            return y.sin() + 1

        torch._dynamo.reset()
        compiled = torch.compile(f, backend=backend)
        x = torch.linspace(-1, 1, 6)
        torch.testing.assert_close(compiled(x), f(x), rtol=0, atol=0)
        with pytest.raises(ValueError, match="value > 100"):
            compiled(x + 1000)
        return len(graphs)

    n_lazy = graphs_with(eager_only(check))
    n_disable = graphs_with(torch.compiler.disable(check))
    assert n_lazy == n_disable == 2  # one graph on each side of the break
    assert seen and not any(seen)


@pytest.mark.slow  # importing TensorFlow alone takes ~10 s of CPU
def test_import_bert_tf_loads_no_other_backend_or_oracle():
    pytest.importorskip("tensorflow")
    # jax too: TensorFlow's own tensorflow.lite.python.util imports it whenever it is installed, unless
    # bert_tf loads TensorFlow under bert_common.backend.own_framework_only (which the next import undoes).
    watch = ("torch", "jax", "flax", "optax", "conformance", *ORACLES)
    assert loaded_after("import bert_tf", watch) == []
    assert loaded_after("import bert_tf, jax, torch", watch) == ["torch", "jax"]


def test_own_framework_only_refuses_foreign_frameworks_inside_the_block_only():
    """Inside the block, a sibling framework not yet imported fails to import as if not installed, without
    touching sys.modules; frameworks loaded before stay usable, and after the block everything imports."""
    code = """
import sys
from bert_common.backend import own_framework_only
with own_framework_only("torch"):
    assert "jax" not in sys.modules and sys.modules.get("flax") is None
    try:
        import jax
        raise SystemExit("jax imported inside the block")
    except ModuleNotFoundError as e:
        assert e.name == "jax", e
    try:
        import optax.tree_utils
        raise SystemExit("optax imported inside the block")
    except ModuleNotFoundError:
        pass
import jax, optax
"""
    assert loaded_after(code, ("jax", "optax", "torch")) == ["jax", "optax"]


def test_import_bert_flax_loads_no_other_backend_or_oracle():
    pytest.importorskip("flax")
    watch = ("torch", "tensorflow", "keras", "optax", "conformance", *ORACLES)
    assert loaded_after("import bert_flax", watch) == []
