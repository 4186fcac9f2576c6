"""The throwaway PostgreSQL cluster of the tests (``tests/pg.py``): fresh databases per test, and the rule
that PostgreSQL tests are skipped, with a note, only outside CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_each_test_gets_an_empty_database_of_its_own(pg_cluster, pg_url):
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE mine (x INTEGER)")
    other = pg_cluster.create_database()
    try:
        with psycopg.connect(other) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'mine'").fetchone() == (0,)
    finally:
        pg_cluster.drop_database(other)


def test_the_server_is_reached_over_tcp_with_a_password(pg_cluster, pg_url):
    """The bot connects as it would to a real server: a wrong password is refused."""
    wrong = pg_url.replace(pg_cluster.password, "not-the-password")
    try:
        psycopg.connect(wrong, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc)
    else:
        raise AssertionError("a wrong password was accepted")


def _run_without_binaries(tmp_path: Path, ci: str | None, workers: str = "0") -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_needs_pg.py"
    test.write_text("def test_needs_pg(pg_url):\n    assert pg_url\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PG_BINDIR"] = str(tmp_path / "no-binaries-here")
    if ci is not None:
        env["CI"] = ci
    # the suite's conftest loaded as a plugin, on a test file outside the suite
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), "-n", workers, str(test)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


# as one test runs alone (-n0) and as the suite runs (pyproject.toml's addopts): in an xdist worker, whose
# skip reaches the note through its report
@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"], ids=["alone", "xdist"])
def test_without_the_binaries_a_pg_test_is_skipped_with_a_note(tmp_path, workers):
    result = _run_without_binaries(tmp_path, None, workers)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "NOTE: PostgreSQL's server binaries are not installed" in result.stdout


@pytest.mark.slow
def test_without_the_binaries_under_ci_a_pg_test_fails(tmp_path):
    result = _run_without_binaries(tmp_path, "true")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "CI=true: PostgreSQL's server binaries are not installed" in result.stdout
