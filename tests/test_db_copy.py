"""``imagine-bot db copy --to postgresql://...``: an install moves from SQLite to PostgreSQL with every row
(the ledger's history included), checked, or not at all."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import psycopg
from rich.console import Console

from imagine_bot.bots.cli.main import main
from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.storage.db import open_db
from imagine_bot.core.storage.postgres import open_postgres

ALICE = UserRef("terminal", "local", "alice")
BOB = UserRef("discord", "-", "42")
REPLY = ReplyTo("terminal", "tty")


async def _a_used_install(make_settings, tmp_path: Path) -> Path:
    """A real SQLite install after some use: delivered and refunded jobs, a grant, a budget, a ban, a relayed
    callback, a sign-in link, the gateway account's readings."""
    settings = make_settings(SPEND_CAP=100000)
    async with ImagineCore.open(settings) as core:
        core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
        await core.start()
        for who, prompt in ((ALICE, "a lighthouse"), (BOB, "a fox"), (ALICE, "a heron")):
            await core.imagine(who, REPLY, prompt)
            await core.orchestrator.wait_idle()
        core.ledger.grant(BOB, 50, actor="operator", note="welcome")
        core.ledger.budgets.set_amount("discord:7", 500, actor="operator")
        core.stores.places.ban("discord:7", "discord:66", actor="operator")
        core.stores.relay.put("task-x", None, "elsewhere")
        core.stores.dashboard_links.add("h" * 64, scope=None, actor="operator", now=core.jobs.recent()[0].created_at,
                                        expires=core.jobs.recent()[0].created_at)
        await core.account.refresh()
        assert [j.state for j in core.jobs.recent()] == [JobState.DELIVERED] * 3
    return settings.IMAGINE_DB_PATH


def _rows(conn: sqlite3.Connection | psycopg.Connection, table: str, columns: list[str]) -> list[tuple]:
    quoted = ", ".join(f'"{c}"' for c in columns)
    rows = conn.execute(f'SELECT {quoted} FROM "{table}" ORDER BY 1').fetchall()  # type: ignore[arg-type]
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]


async def test_every_row_is_copied_and_checked(make_settings, tmp_path, pg_url, pg_cluster, capsys):
    path = await _a_used_install(make_settings, tmp_path)
    assert main(["db", "copy", "--from", str(path), "--to", pg_url]) == 0
    out = capsys.readouterr()
    assert "balances and holds against their ledger sums" in out.out
    assert pg_cluster.password not in out.out + out.err

    source = sqlite3.connect(path)
    tables = [r[0] for r in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                           " AND name NOT LIKE 'sqlite_%' AND name <> '_migrations'")]
    with psycopg.connect(pg_url) as target:
        nonempty = 0
        for table in tables:
            columns = [r[1] for r in source.execute(f'PRAGMA table_info("{table}")')]
            rows = _rows(source, table, columns)
            assert _rows(target, table, columns) == rows, table
            nonempty += bool(rows)
            assert f"{table}" in out.out
        assert nonempty >= 11  # the ledger, budgets, jobs, thumbnails, relay, places, secrets, links, gateway...
        assert target.execute("SELECT COUNT(*) FROM ledger WHERE kind = 'capture'").fetchone() == (3,)

    # the copy is a working database: new rows continue after the copied ids
    db = open_postgres(pg_url)
    try:
        last = db.execute("SELECT MAX(id) FROM ledger").fetchone()[0]
        db.execute("INSERT INTO ledger (ts, account, kind, balance_after, held_after) VALUES ('t', ?, 'grant', 0, 0)",
                   [ALICE.key])
        assert db.execute("SELECT MAX(id) FROM ledger").fetchone()[0] == last + 1
    finally:
        db.close()


async def test_a_target_that_holds_data_is_refused(make_settings, tmp_path, pg_url):
    path = await _a_used_install(make_settings, tmp_path)
    assert main(["db", "copy", "--from", str(path), "--to", pg_url]) == 0
    with psycopg.connect(pg_url) as target:
        before = target.execute("SELECT COUNT(*) FROM ledger").fetchone()
    assert main(["db", "copy", "--from", str(path), "--to", pg_url]) == 1
    with psycopg.connect(pg_url) as target:
        assert target.execute("SELECT COUNT(*) FROM ledger").fetchone() == before


async def test_a_copy_that_does_not_check_out_leaves_the_target_empty(make_settings, tmp_path, pg_url, capsys):
    path = await _a_used_install(make_settings, tmp_path)
    with sqlite3.connect(path) as source:  # a balance that no longer equals its ledger sum
        source.execute("UPDATE accounts SET balance = balance + 7 WHERE account = ?", [ALICE.key])
    assert main(["db", "copy", "--from", str(path), "--to", pg_url]) == 1
    err = capsys.readouterr().err
    assert f"accounts {ALICE.key}: balance" in err and "nothing was kept" in err and "same drift already" in err
    with psycopg.connect(pg_url) as target:
        assert target.execute("SELECT COUNT(*) FROM accounts").fetchone() == (0,)
        assert target.execute("SELECT COUNT(*) FROM ledger").fetchone() == (0,)


def test_the_url_comes_from_database_url_and_a_bad_one_is_named(tmp_path, monkeypatch, capsys, pg_cluster):
    monkeypatch.setenv("IMAGINE_DB_PATH", str(tmp_path / "some.db"))
    open_db(tmp_path / "some.db").close()
    assert main(["db", "copy"]) == 2
    assert "--to" in capsys.readouterr().err
    monkeypatch.setenv("DATABASE_URL", pg_cluster.url("db_copy_url").replace(pg_cluster.password, "s3cret-pw"))
    assert main(["db", "copy"]) == 2  # that database does not exist, and the password is wrong
    err = capsys.readouterr().err
    assert "DATABASE_URL: cannot connect to PostgreSQL at 127.0.0.1:" in err and "s3cret-pw" not in err
