"""The BERTRIO_NO_SKIP switch for ``pytest --pyargs conformance`` (as in tests/conftest.py)."""
from __future__ import annotations

import pytest

from bert_common.testing import promote_missing_skip


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    promote_missing_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    promote_missing_skip(report)
    return report
