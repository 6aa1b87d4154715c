"""The CI recipe of docs/parity-in-ci.md works as written: its install line installs bertrio from a path,
and its parity line runs from that installation (on the shipped MiniLM, two backends, the forward check)."""
from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE = ROOT / "docs" / "parity-in-ci.md"


def _run_lines() -> list[str]:
    return re.findall(r"^\s+- run: (.+)$", RECIPE.read_text(encoding="utf-8"), re.M)


def test_recipe_installs_from_a_path_not_an_index():
    install, parity = _run_lines()[:2]
    assert install.startswith('pip install "./bertrio[all]"'), install
    assert parity.startswith("bertrio parity "), parity


@pytest.mark.slow
def test_recipe_commands_run(tmp_path, minilm_dir):
    install, parity = _run_lines()[:2]
    # The recipe's checkout step puts bertrio at ./bertrio; its dependencies are already in this venv, so the
    # install runs without them (and without build isolation, which would fetch setuptools).
    (tmp_path / "bertrio").symlink_to(ROOT)
    target = tmp_path / "site"
    pip = [sys.executable, "-m", *shlex.split(install), "--no-deps", "--no-build-isolation", "--target", str(target)]
    proc = subprocess.run(pip, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(p.name.startswith("bertrio-") and p.name.endswith(".dist-info") for p in target.iterdir())
    argv = shlex.split(parity.replace("./my-checkpoint", minilm_dir).replace("--heads all", "--heads BertModel"))
    argv += ["--backends", "torch,flax", "--checks", "forward"]
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import sys; from bert_common.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *argv[1:]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "parity: PASS" in proc.stdout
    assert (tmp_path / "parity.xml").is_file() and (tmp_path / "parity.md").is_file()
    # the installed copy, not the source tree, answered
    probe = subprocess.run([sys.executable, "-c", "import bert_common; print(bert_common.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True)
    assert probe.stdout.strip().startswith(str(target)), probe.stdout
