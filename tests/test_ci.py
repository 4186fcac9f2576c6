"""CI cannot be green with checks not run: under CI=true a skip fails (tests/no_skips_in_ci.py), the
container test fails where it would skip, and .ci/run installs the browser without swallowing a failure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SKIPPING = '''
import pytest

def test_skips():
    pytest.skip("no Chromium here")

@pytest.mark.skipif(True, reason="root may write anywhere")
def test_skipped_by_mark():
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_to_fail():
    assert False

def test_runs():
    pass
'''


@pytest.fixture
def skipping_suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest('pytest_plugins = ["tests.no_skips_in_ci"]')
    pytester.makepyfile(test_skipping=SKIPPING)
    pytester.makepyfile(test_skipped_module='import pytest\npytest.skip("no browser", allow_module_level=True)\n')
    return pytester


def test_outside_ci_a_skip_is_a_skip(skipping_suite, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    result = skipping_suite.runpytest_inprocess("-rs")
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    assert result.ret == 0


@pytest.mark.parametrize("value", ["true", "1"])
def test_under_ci_a_skip_fails_with_its_reason(skipping_suite, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    result = skipping_suite.runpytest_inprocess("--continue-on-collection-errors")
    # the skip in the test fails, the skip mark fails its setup (an error), the skipped module is a collection
    # error (which alone stops a run); the xfail and the passing test are kept
    result.assert_outcomes(passed=1, failed=1, errors=2, xfailed=1)
    assert result.ret == 1
    output = result.stdout.str()
    for reason in ("no Chromium here", "root may write anywhere", "no browser"):
        assert reason in output
    assert "A skip fails under CI=true" in output


@pytest.mark.slow
def test_under_ci_a_skip_fails_in_xdist_workers_too(skipping_suite, monkeypatch):
    """The suite runs in pytest-xdist workers (pyproject.toml's addopts): the skip fails there, and the
    failure is what reaches the run's summary and exit code."""
    monkeypatch.setenv("CI", "true")
    result = skipping_suite.runpytest_inprocess("-n", "2", "--continue-on-collection-errors")
    result.assert_outcomes(passed=1, failed=1, errors=2, xfailed=1)
    assert result.ret == 1
    output = result.stdout.str()
    # the tests ran in the workers (which worker reports a failure depends on how the items were shared)
    assert "created: 2/2 workers" in output and re.search(r"\[gw[01]\]", output)
    for reason in ("no Chromium here", "root may write anywhere", "no browser"):
        assert reason in output
    assert "A skip fails under CI=true" in output


def container_test(*, ci: bool, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """scripts/container_test.py on a PATH with no docker, podman or apt-get: it cannot run a container."""
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PATH": str(empty)}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "container_test.py")], capture_output=True,
                          text=True, env=env, timeout=60)


def test_container_test_skips_where_no_container_can_run_but_fails_under_ci(tmp_path):
    local = container_test(ci=False, tmp_path=tmp_path)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "container-test: SKIPPED: no Docker daemon answers" in local.stdout

    ci = container_test(ci=True, tmp_path=tmp_path)
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "no Docker daemon answers" in ci.stdout
    assert ci.stdout.strip().splitlines()[-1] == "container-test: 0 passed, 1 failed"


def test_ci_tools_fail_when_a_tool_is_missing_and_cannot_be_installed(tmp_path):
    # a PATH with `id` alone: no chromium, no chromedriver, no setpriv, and no apt-get to install them
    only_id = tmp_path / "bin"
    only_id.mkdir()
    (only_id / "id").symlink_to(shutil.which("id"))
    result = subprocess.run(["/bin/bash", str(ROOT / ".ci" / "tools")], capture_output=True, text=True,
                            env={"PATH": str(only_id)}, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "chromium chromium-driver util-linux missing" in result.stderr


def test_ci_run_installs_the_tools_before_the_tests_and_swallows_no_failure():
    run = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in run and "|| echo" not in run and "|| true" not in run
    assert run.index("\n.ci/tools\n") < run.index("\nmake test\n")
    # make test under CI=true installs them too, so a fresh machine runs the browser tests
    assert '.ci/tools' in (ROOT / "Makefile").read_text()
