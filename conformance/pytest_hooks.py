"""The BERTRIO_NO_SKIP switch as pytest hooks, shared by ``tests/conftest.py`` and ``conformance/conftest.py``:
with ``BERTRIO_NO_SKIP=1`` a skip caused by a missing backend or oracle becomes a failure
(``bert_common.testing.promote_missing_skip``); other skips (no GPU) stay skips."""
from __future__ import annotations

import pytest

from bert_common.testing import promote_missing_skip


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that skipped for a missing dependency."""
    report = yield
    promote_missing_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped at import (``pytest.importorskip`` at module level)."""
    report = yield
    promote_missing_skip(report)
    return report
