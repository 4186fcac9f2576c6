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


async def test_no_checkpoint_while_commands_are_answered_and_one_soon_after(tmp_path, monkeypatch):
    """``hold`` (the bot: a burst being answered) puts each checkpoint off, looking again every
    ``HOLD_RETRY_S``; the checkpoint comes once the hold ends, or after ``HOLD_MOST_S`` however long it lasts."""
    from imagine_bot.core.storage import checkpoints

    monkeypatch.setattr(checkpoints, "HOLD_RETRY_S", 0.005)
    path = tmp_path / "log.db"
    bot = fill_log(path)
    answering = {"now": True}
    checkpointer = Checkpointer(path, every_s=0.01, hold=lambda: answering["now"])
    checkpointer.start()
    try:
        await until(lambda: checkpointer.held >= 5)
        assert checkpointer.runs == 0 and checkpointer.last is None  # nothing copied while held
        answering["now"] = False
        await until(lambda: checkpointer.runs >= 1)
        pages, copied = checkpointer.last or (0, 0)
        assert pages >= PAGES and copied == pages
    finally:
        checkpointer.stop()
    monkeypatch.setattr(checkpoints, "HOLD_MOST_S", 0.05)
    always = Checkpointer(path, every_s=0.01, hold=lambda: True)
    always.start()
    try:
        await until(lambda: always.runs >= 1)  # commands that never stop still get their log copied back
        assert always.held >= 1
    finally:
        always.stop()
        bot.close()


async def test_a_started_bot_holds_its_checkpoints_while_it_answers_a_command(make_settings):
    async with ImagineCore.open(make_settings()) as core:
        await core.start()
        checkpointer = core.stores.start_checkpoints()
        assert isinstance(checkpointer, Checkpointer) and checkpointer.hold is not None
        with core.answering():
            assert checkpointer.hold()
        await until(lambda: not checkpointer.hold())  # the lull: a little after the answer
