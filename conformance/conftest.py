"""The BERTRIO_NO_SKIP switch for ``pytest --pyargs conformance`` (conformance/pytest_hooks.py)."""
from conformance.pytest_hooks import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401
