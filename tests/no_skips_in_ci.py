"""A pytest plugin: under ``CI=true`` a skipped test is a failed one.

Locally a test may skip when this machine lacks what it needs (Chromium, a non-root user); in CI that
would be a green run with checks not run, so there the skip fails with its reason: install what the test
needs (``.ci/tools``) or fix the test. Skips at collection (a module's ``pytest.skip``) fail the same way.
An expected failure (``xfail``) is not a skip and is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _reason(longrepr: Any) -> str:
    # a skip's longrepr is (path, line, "Skipped: reason")
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _fail(report: pytest.TestReport | pytest.CollectReport) -> None:
    report.outcome = "failed"
    report.longrepr = (f"{_reason(report.longrepr)}\nA skip fails under CI=true: CI runs every test "
                       "(install what it needs in .ci/tools, or run it another way)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        _fail(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, Any]:
    report = yield
    if report.skipped and in_ci():
        _fail(report)
    return report
