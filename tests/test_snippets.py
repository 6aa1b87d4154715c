"""Every Python snippet of the README and the docs runs as written, in every backend it claims to work in.

A snippet is a fenced ``python`` block. The backends it runs under follow from what it imports:
``bert_common.auto`` (backend-neutral code) runs under each installed backend via ``BERT_BACKEND``;
``bert_torch`` / ``bert_tf`` / ``bert_flax`` pin that backend; anything else runs once. Placeholder paths
are replaced by real checkpoints: ``path/to/checkpoint`` by the shipped MiniLM, ``path/to/mlm-checkpoint``
by a small masked-LM checkpoint made here (random weights, MiniLM's vocabulary). A snippet passes when it
exits 0 and writes no Python warning to stderr: a new user following the docs sees none.

A block that cannot run on one machine as written (it needs another host, or the files a command shown
just before it writes) is marked by the line ``<!-- snippet: fragment (why) -->`` right above its fence;
the reason is required, and such blocks are still compiled.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from bert_common.backend import installed_backends

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(<!-- snippet: fragment \((?P<why>[^)]+)\) -->\n)?```python\n(?P<code>.*?)^```", re.S | re.M)
PINNED = {"bert_torch": "torch", "bert_tf": "tf", "bert_flax": "flax"}
WARNING = re.compile(r"\b\w*Warning\b")


def snippets():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for i, m in enumerate(FENCE.finditer(text)):
            code = m.group("code")
            if m.group("why"):
                yield pytest.param(code, "fragment", id=f"{page.relative_to(ROOT)}#{i}-fragment")
                continue
            pinned = sorted({b for mod, b in PINNED.items() if re.search(rf"\b{mod}\b", code)})
            if "bert_common.auto" in code:
                backends = installed_backends()
            else:
                backends = pinned or [None]
            for backend in backends:
                yield pytest.param(code, backend, id=f"{page.relative_to(ROOT)}#{i}-{backend or 'any'}")


@pytest.fixture(scope="session")
def mlm_checkpoint(tmp_path_factory, minilm_dir):
    """A small BertForMaskedLM checkpoint in the canonical layout with MiniLM's vocabulary."""
    import shutil

    from bert_common.checkpoint import save_checkpoint
    from bert_common.config import BertConfig
    from bert_common.weights import init_weights
    out = tmp_path_factory.mktemp("mlm")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    save_checkpoint(out, config, init_weights(config, "BertForMaskedLM", seed=0),
                    architectures=["BertForMaskedLM"])
    shutil.copy(os.path.join(minilm_dir, "vocab.txt"), out)
    return str(out)


@pytest.mark.slow
@pytest.mark.parametrize("code,backend", list(snippets()))
def test_snippet_runs(code, backend, tmp_path, minilm_dir, mlm_checkpoint):
    if backend == "fragment":  # cannot run here (see the module docstring); it must at least compile
        compile(code, "<snippet>", "exec")
        return
    code = code.replace("path/to/mlm-checkpoint", mlm_checkpoint).replace("path/to/checkpoint", minilm_dir)
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    if backend:
        env["BERT_BACKEND"] = backend
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if WARNING.search(line)]
    assert not warnings, "the snippet caused warnings:\n" + "\n".join(warnings[:10])
