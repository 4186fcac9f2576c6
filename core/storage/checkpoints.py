"""The write-ahead log's checkpoints, off the event loop (SQLite only).

In WAL mode every commit appends to ``<db>-wal``; a *checkpoint* copies those pages back into the database
file and syncs it to disk. By default SQLite runs one inside the commit that takes the log past 1,000 pages,
on the connection that commits: in the bot that is the event loop's connection, so every few hundred jobs
one command's commit (and every ack waiting behind it) would also wait for the copy and the ``fsync`` (a few
ms here, far more on a slow network disk).

``Checkpointer`` does it instead in a thread of its own, on a connection of its own: a ``PASSIVE``
checkpoint every ``every_s`` (it never waits for a lock, so neither readers nor the writer wait for it;
whatever a reader still needs is copied next time), put off while the bot answers a burst of commands
(``hold``: the lull's). The bot's own connection keeps SQLite's automatic
checkpoint as a backstop only, past ``BACKSTOP_PAGES``. A core that is started (``ImagineCore.start``:
the bot, ``imagine-bot imagine`` and ``chat``, the tests that start one) runs the thread; the other commands
keep SQLite's default: they write little and end soon.

The log starts again from its beginning only when a commit finds every page copied back, which happens in
any pause of the writes. Writes that never pause (one-job commits back to back, about 1,400 a second here)
keep it growing up to the backstop, and the commit that reaches it checkpoints on the loop as before: the
longest commit in 600 of them was 43-58 ms, once every 10,000 pages, where SQLite's default took 10-13 ms
every 1,000 pages and 118-206 ms in its worst rounds; the average commit went from 310 to 200 µs.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: the bot's connection checkpoints by itself only past this many pages (about 40 MB; SQLite's default 1,000)
BACKSTOP_PAGES = 10_000
#: how often the thread checkpoints
EVERY_S = 1.0
#: while ``hold`` says commands are being answered, the thread looks again this often ...
HOLD_RETRY_S = 0.05
#: ... and checkpoints anyway once it has waited this long (commands that never stop)
HOLD_MOST_S = 10.0


class Checkpointer:
    """``hold``: called from the thread before each checkpoint; True defers it (the running bot: commands are
    being answered, ``Lull.holding``). A checkpoint copies the pages of every commit since the last one and
    syncs the file: 20 ms and 18 MB for a burst of 200 jobs and their completions, measured here, on the
    core and the disk a burst's acks need; the log just grows meanwhile (``HOLD_MOST_S`` at most)."""

    def __init__(self, path: Path | str, every_s: float = EVERY_S, *,
                 hold: Callable[[], bool] | None = None) -> None:
        self.path = str(path)
        self.every_s = every_s
        self.hold = hold
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: checkpoints run, and the last one's (pages in the log, pages copied back), for the tests
        self.runs = 0
        self.last: tuple[int, int] | None = None
        #: checkpoints put off because ``hold`` said so (a look each ``HOLD_RETRY_S``), for the tests
        self.held = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=0.1)
        except sqlite3.Error as exc:
            log.warning("could not open %s for checkpoints (%s): the commits checkpoint by themselves", self.path, exc)
            return
        try:
            wait, held_since = self.every_s, None
            while not self._stop.wait(wait):
                now = time.monotonic()
                if self._holding() and (held_since is None or now - held_since < HOLD_MOST_S):
                    held_since = now if held_since is None else held_since
                    self.held += 1
                    wait = HOLD_RETRY_S
                    continue
                wait, held_since = self.every_s, None
                self.checkpoint(conn)
            self.checkpoint(conn)  # what the last commits wrote, before the process ends
        finally:
            conn.close()

    def _holding(self) -> bool:
        try:
            return self.hold is not None and bool(self.hold())
        except Exception:  # a hold that fails never stops the checkpoints
            log.exception("checkpoint hold failed; checkpointing anyway")
            return False

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            _busy, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # another process's checkpoint at the same moment: next time
            log.debug("checkpoint of %s skipped: %s", self.path, exc)
            return
        self.runs += 1
        self.last = (pages, copied)
