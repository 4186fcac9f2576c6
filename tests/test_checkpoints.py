"""SQLite's write-ahead log is copied back into the database file by a thread of its own, not inside a commit
on the event loop (``core.storage.checkpoints``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from imagine_bot.core.app import ImagineCore
from imagine_bot.core.storage.checkpoints import BACKSTOP_PAGES, Checkpointer

from .conftest import until

PAGES = 1_500  # past SQLite's default automatic checkpoint (1,000 pages)


def fill_log(path: Path) -> sqlite3.Connection:
    """About ``PAGES`` pages of commits into the log, by a connection set as the bot's is (the backstop); the
    connection stays open, as the bot's does (the last one to close checkpoints the whole log itself)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
    conn.execute("CREATE TABLE scratch (b BLOB)")
    for _ in range(PAGES // 25):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO scratch VALUES (?)", [(bytes(4000),)] * 25)
        conn.execute("COMMIT")
    return conn


async def test_the_thread_copies_back_the_log_the_commits_left(tmp_path):
    """The commits past 1,000 pages did not checkpoint (the log holds them all); the thread then copies every
    page back, and stops when told."""
    path = tmp_path / "log.db"
    bot = fill_log(path)
    checkpointer = Checkpointer(path, every_s=0.01)
    checkpointer.start()
    try:
        await until(lambda: checkpointer.last is not None)
        pages, copied = checkpointer.last or (0, 0)
        assert pages >= PAGES  # written, and left in the log by the commits themselves
        assert copied == pages  # ... and every page copied back by the thread
    finally:
        checkpointer.stop()
        bot.close()
    assert checkpointer._thread is None


async def test_a_started_bot_leaves_its_checkpoints_to_the_thread(make_settings, backend):
    """On SQLite the bot's connection checkpoints only past the backstop and the thread runs until the stores
    close; PostgreSQL keeps its own log (no thread)."""
    async with ImagineCore.open(make_settings()) as core:
        await core.start()
        checkpointer = core.stores.start_checkpoints()  # started by ``start``: the same one again
        if backend == "postgres":
            assert checkpointer is None
            return
        assert core.stores.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BACKSTOP_PAGES
        assert isinstance(checkpointer, Checkpointer) and checkpointer._thread is not None
        await until(lambda: checkpointer.runs >= 1)
    assert checkpointer._thread is None  # closing the stores stops it


def test_a_database_in_memory_has_no_checkpoints(make_settings):
    from imagine_bot.core.storage.sqlite import SqliteStores

    stores = SqliteStores.open(make_settings(IMAGINE_DB_PATH=":memory:"))
    try:
        assert stores.start_checkpoints() is None
    finally:
        stores.close()
