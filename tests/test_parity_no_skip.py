"""BERTRIO_NO_SKIP=1: a skip for a missing backend or oracle fails; other skips stay skips."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bert_common.testing import MISSING_PREFIX, is_missing_dependency, missing_reason

HERE = Path(__file__).resolve().parent

PROBE = '''
import pytest
from bert_common.testing import missing_reason

def test_missing_backend():
    pytest.importorskip("safetensors.no_such_submodule")  # as if it were not installed (light to import)

@pytest.mark.skipif(True, reason=missing_reason("need two backends, have ['torch']"))
def test_one_backend():
    pass

def test_no_gpu():
    pytest.skip("no GPU visible")

def test_not_a_backend():
    pytest.importorskip("tf_keras_is_not_a_backend")
'''
MODULE_SKIP = 'import pytest\npytest.importorskip("msgpack.no_such_module")\n\ndef test_x():\n    pass\n'


def test_reasons_are_classified():
    assert is_missing_dependency("could not import 'torch': No module named 'torch'")
    assert is_missing_dependency("Skipped: could not import 'jax.numpy': no")
    assert is_missing_dependency(missing_reason("the HF oracle (transformers)"))
    assert missing_reason("x").startswith(MISSING_PREFIX)
    assert not is_missing_dependency("could not import 'tf_keras': No module named 'tf_keras'")
    assert not is_missing_dependency("no GPU visible")


def _run(tmp_path, env_value):
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    env = {k: v for k, v in os.environ.items() if k != "BERTRIO_NO_SKIP"}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only our conftest's hooks: fast and deterministic
    if env_value is not None:
        env["BERTRIO_NO_SKIP"] = env_value
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", "-rA",
                           "--continue-on-collection-errors",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("value", [None, "0"])
def test_without_the_switch_everything_skips(tmp_path, value):
    out = _run(tmp_path, value)
    assert "5 skipped" in out and "failed" not in out and "error" not in out, out


def test_with_the_switch_missing_backends_fail_and_other_skips_stay(tmp_path):
    out = _run(tmp_path, "1")
    assert "FAILED test_probe.py::test_missing_backend" in out, out
    assert "ERROR test_probe.py::test_one_backend" in out  # a skipif mark fails at setup
    assert "ERROR test_module_skip.py" in out  # a module skipped at import fails its collection
    assert "SKIPPED [1] test_probe.py" in out and "no GPU visible" in out
    assert "tf_keras_is_not_a_backend" in out  # a module outside the test extras stays a skip
    assert "BERTRIO_NO_SKIP=1 turns this skip into a failure" in out
