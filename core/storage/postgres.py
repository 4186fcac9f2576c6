"""PostgreSQL under the same stores: an adapter with the entry points of SQLite's database object.

The stores (``core/storage/``, ``core/credits/``, ``core/jobs/``...) hold one set of portable SQL (``?``
placeholders; ``ON CONFLICT``, ``RETURNING``, ISO-text timestamps) and call four things on the database they
are given: ``execute(sql, params)`` (a cursor: ``fetchone``, ``fetchall``, ``rowcount``), ``query(sql,
params)`` (dict rows), and ``transaction(db)`` / ``snapshot(db)`` from ``core.storage.db``. ``PgDatabase``
is that database on PostgreSQL, through psycopg 3 and a ``psycopg_pool.ConnectionPool``:

- ``?`` becomes ``%s`` outside quotes and comments, and every ``%`` is doubled (psycopg reads placeholders
  even inside quotes); ``LIKE`` becomes
  ``ILIKE`` (SQLite's ``LIKE`` ignores ASCII case; the dashboard's search relies on it). Translations
  are cached.
- Rows come back as SQLite gives them: tuples (``execute``) or dicts (``query``), a whole ``SUM`` of
  ``BIGINT`` columns (PostgreSQL's ``numeric``) as an ``int``, a ``bool`` parameter stored as 0 or 1.
- ``transaction(db)`` is SQLite's ``BEGIN IMMEDIATE``: ``BEGIN`` and ``pg_advisory_xact_lock`` on one
  key, sent together, so that write transactions run one at a time across every process and host, exactly
  as they do on one SQLite file; the stores' read-check-write steps keep their meaning with no change. The
  money transactions, ``transaction(db, rows=True)`` (reserve, capture, release: the ledger's and the
  budgets' own), take that key *shared* instead and lock each row they decide on (``SELECT ... FOR
  UPDATE``: the account first, then the budgets in one order), so reservations of different users run side
  by side while every other write still runs alone; they write only the money tables. The lock waits
  ``DB_BUSY_TIMEOUT_S`` (``lock_timeout``), then ``DatabaseBusy``. Nested use joins the outer transaction.
- ``later(sql, params)`` (``core.storage.db.later``) is a write whose result nobody reads (a ledger row,
  a balance moved): it is held and sent with the transaction's next statement or its ``COMMIT``, bound on
  this side into one string (one round trip for all); a write refused there ends the whole transaction.
- A statement outside a transaction is one atomic statement of its own (autocommit) and takes no lock:
  what a compare-and-set needs (``UPDATE jobs ... WHERE id = ? AND state = ? AND owner = ?``: PostgreSQL
  re-reads the row under its row lock), and how claims skip the rows another host is taking
  (``FOR UPDATE SKIP LOCKED``). The stores write that way only where one statement is the whole change.
- ``snapshot(db)`` is a ``REPEATABLE READ`` transaction that takes no lock: one consistent read.
- The connection of a transaction is the calling thread's (the store interface is synchronous and a
  transaction never spans an ``await``); a statement outside one borrows a pooled connection (autocommit).
- Prepared statements are off (``prepare_threshold=None``) so PgBouncer in transaction mode works; so does
  everything here, since nothing holds session state between transactions (the locks are
  transaction-scoped). ``LISTEN`` (the callback relay's wake-up) needs a session: behind PgBouncer the relay
  falls back to polling.

Errors keep SQLite's meaning for the stores: a refused constraint is an ``IntegrityError`` (a subclass of
``sqlite3.IntegrityError``, the portable name ``core.storage.db.IntegrityError``), a lock or pool wait past
the busy timeout, a serialization failure or a lost connection is ``DatabaseBusy`` (nothing written, try
again), a closed database is ``StoreClosed``.

The schema is ``MIGRATIONS`` below: the SQLite migrations' tables, columns, ``CHECK`` constraints and unique
and partial indexes, with PostgreSQL's types (``BIGINT`` identities for ``AUTOINCREMENT``, ``BYTEA`` for
``BLOB``, timestamps kept as ISO text so the SQL stays portable), applied at start inside one transaction
under an advisory lock: hosts starting together never race. The same names as SQLite's, in the same order.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg import adapt, postgres
from psycopg import sql as pgsql
from psycopg.rows import dict_row, tuple_row

from imagine_bot.core.errors import ConfigError, DatabaseBusy
from imagine_bot.core.storage.errors import StoreClosed
from imagine_bot.core.storage.url import DatabaseUrl

log = logging.getLogger(__name__)

#: the advisory lock every write transaction takes (SQLite's one write lock); and the migrations' own
WRITE_LOCK = 0x696D6167  # "imag"
MIGRATION_LOCK = 0x6D696772  # "migr"
#: the oldest server the migrations are written for (identity columns, ``DROP DATABASE ... WITH (FORCE)``)
MIN_SERVER_VERSION = 130000


# ---------------------------------------------------------------------- portable SQL -> psycopg's


_TOKENS = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|\?|%|\bI?LIKE\b""", re.S | re.I)


@lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """The stores' SQL as psycopg takes it: ``?`` -> ``%s`` and ``LIKE`` -> ``ILIKE`` outside string literals,
    quoted names and comments; every ``%`` doubled (psycopg reads placeholders everywhere)."""

    def one(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "?":
            return "%s"
        if token == "%":
            return "%%"
        if token.upper() == "LIKE":
            return "ILIKE"
        return token.replace("%", "%%")  # psycopg reads % everywhere, quotes and comments included

    return _TOKENS.sub(one, sql)


class _NumericLoader(adapt.Loader):
    """``numeric`` as SQLite would give it: a whole number (``SUM`` of ``BIGINT``) is an ``int``."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        return int(text) if text.lstrip("-").isdigit() else float(text)


class _BoolAsIntDumper(adapt.Dumper):
    """A ``bool`` parameter is 0 or 1, as SQLite stores it (the columns are integers)."""

    oid = postgres.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


# ---------------------------------------------------------------------- errors


class IntegrityError(sqlite3.IntegrityError):
    """A constraint refused the write (unique, check, foreign key): what SQLite raises, for the stores."""


_BUSY = (psycopg.errors.LockNotAvailable, psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
         psycopg.errors.QueryCanceled)


@contextmanager
def _errors(url: DatabaseUrl) -> Iterator[None]:
    try:
        yield
    except psycopg.IntegrityError as exc:
        raise IntegrityError(url.scrub(str(exc))) from exc
    except _BUSY as exc:
        raise DatabaseBusy(f"PostgreSQL at {url.host}: {url.scrub(str(exc)).strip()}") from exc
    except psycopg_pool.PoolTimeout as exc:
        raise DatabaseBusy(f"no connection to PostgreSQL at {url.host} came free in time") from exc
    except psycopg_pool.PoolClosed as exc:
        raise StoreClosed("the database is closed") from exc
    except psycopg.OperationalError as exc:  # the connection dropped: nothing committed that was not answered
        raise DatabaseBusy(f"PostgreSQL at {url.host}: {cause(exc, url)}") from exc


def cause(exc: BaseException, url: DatabaseUrl) -> str:
    """The one line that says why a connection failed (libpq's first line, without the password)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    # 'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  password ...'
    text = re.sub(r'^(connection failed: )?connection to server at "[^"]*"(?: \([^)]*\))?, port \d+ failed: ', "",
                  text)
    text = re.sub(r"^FATAL:\s+", "", text)
    return url.scrub(text)


# ---------------------------------------------------------------------- results


class Rows:
    """A finished statement: its rows (already fetched: the connection went back to the pool) and how
    many rows it changed. What the stores use of a ``sqlite3.Cursor``."""

    def __init__(self, rows: list[Any], rowcount: int, description: Sequence[Any] | None) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount
        self.description = description
        self.lastrowid = None

    def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        rest, self._next = self._rows[self._next:], len(self._rows)
        return rest

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


# ---------------------------------------------------------------------- the database


class _State(threading.local):
    conn: psycopg.Connection[Any] | None = None
    #: the write lock this thread's transaction holds: None (a snapshot), "shared" (a money transaction)
    #: or "exclusive"
    locked: str | None = None
    #: writes whose results nobody reads (``later``), sent with the next statement or the ``COMMIT``
    pending: list[tuple[str, list[Any]]]

    def __init__(self) -> None:
        self.pending = []


class PgDatabase:
    """The stores' database on PostgreSQL (see the module docstring)."""

    dialect = "postgresql"

    def __init__(self, url: DatabaseUrl | str, *, busy_timeout_s: float = 30.0, pool_size: int = 8,
                 connect_timeout_s: float = 10.0) -> None:
        self.url = url if isinstance(url, DatabaseUrl) else DatabaseUrl.parse(url)
        self.busy_timeout_s = busy_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._lock_timeout_ms = max(1, int(busy_timeout_s * 1000))
        self._lock = {mode: f"SET LOCAL lock_timeout = {self._lock_timeout_ms}; SELECT {fn}({WRITE_LOCK})"
                      for mode, fn in (("exclusive", "pg_advisory_xact_lock"),
                                       ("shared", "pg_advisory_xact_lock_shared"))}
        self._state = _State()
        self.pool = psycopg_pool.ConnectionPool(
            self.url.url, min_size=1, max_size=max(1, pool_size), open=False, timeout=busy_timeout_s,
            name="imagine", configure=self._configure,
            kwargs={"autocommit": True, "prepare_threshold": None, "connect_timeout": max(1, int(connect_timeout_s)),
                    "application_name": "imagine-bot"},
        )

    def __repr__(self) -> str:
        return f"PgDatabase({self.url.redacted!r})"

    @staticmethod
    def _configure(conn: psycopg.Connection[Any]) -> None:
        conn.adapters.register_loader("numeric", _NumericLoader)
        conn.adapters.register_dumper(bool, _BoolAsIntDumper)

    # ------------------------------------------------------------------ opening and closing
    def open(self) -> PgDatabase:
        """Connect (the pool's first connection), or ``ConfigError`` naming the host and the cause."""
        try:
            with psycopg.connect(self.url.url, connect_timeout=max(1, int(self.connect_timeout_s)),
                                 prepare_threshold=None, autocommit=True) as conn:
                version = conn.info.server_version
        except psycopg.Error as exc:
            raise ConfigError("DATABASE_URL", f"cannot connect to PostgreSQL at {self.url.host}: "
                                              f"{cause(exc, self.url)}") from None
        if version < MIN_SERVER_VERSION:
            raise ConfigError("DATABASE_URL", f"PostgreSQL at {self.url.host} is version {version // 10000}; "
                                              f"imagine-bot needs {MIN_SERVER_VERSION // 10000} or later")
        self.pool.open(wait=True, timeout=self.connect_timeout_s + 5)
        return self

    def close(self) -> None:
        self.pool.close()

    # ------------------------------------------------------------------ statements
    def _run(self, conn: psycopg.Connection[Any], sql: str, params: Sequence[Any] | None, dicts: bool) -> Rows:
        with conn.cursor(row_factory=dict_row if dicts else tuple_row) as cur:
            pending = self._state.pending
            if pending:  # the pending writes and this statement in one string: one round trip; its rows are the last
                self._state.pending = []
                cur.execute(self._inline(conn, [*pending, (sql, list(params or ()))]))
                while cur.nextset():
                    pass
            else:
                cur.execute(translate(sql), list(params or ()))
            rows = cur.fetchall() if cur.description is not None else []
            return Rows(rows, cur.rowcount, cur.description)

    def _statement(self, sql: str, params: Sequence[Any] | None, *, dicts: bool) -> Rows:
        if params is not None and not isinstance(params, Sequence):
            raise TypeError("PostgreSQL statements take positional ? parameters (a list)")
        with _errors(self.url):
            ours = self._state.conn
            if ours is not None:
                return self._run(ours, sql, params, dicts)
            with self.pool.connection() as conn:
                return self._run(conn, sql, params, dicts)

    def later(self, sql: str, params: Sequence[Any]) -> None:
        """A write whose result nobody reads: inside a transaction it goes out with the next statement or
        the ``COMMIT``, bound into the same query (``_inline``; ``core.storage.db.later``); outside one it runs
        now."""
        if self._state.conn is None:
            self.execute(sql, params)
        else:
            self._state.pending.append((sql, list(params)))

    @staticmethod
    def _inline(conn: psycopg.Connection[Any], statements: Sequence[tuple[str, list[Any]]]) -> bytes:
        """Statements with their parameters bound by psycopg on this side (``mogrify``: quoted as the
        server's literals), joined into one string that goes out as one query: one round trip for all."""
        binder = psycopg.ClientCursor(conn)
        return b";\n".join(binder.mogrify(translate(sql), params).encode() for sql, params in statements)

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Rows:
        return self._statement(sql, params, dicts=False)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> Iterator[dict[str, Any]]:
        return iter(self._statement(sql, params, dicts=True).fetchall())

    # ------------------------------------------------------------------ transactions
    @property
    def in_transaction(self) -> bool:
        return self._state.conn is not None

    @contextmanager
    def transaction(self, *, rows: bool = False) -> Iterator[PgDatabase]:
        """A write transaction: the write lock exclusive (one at a time across every process and host), or
        with ``rows=True`` shared with the other money transactions, which lock the rows they decide on
        (see the module docstring). Nested use joins the outer one, taking the write lock then if the outer
        one is a snapshot; a transaction that needs the lock exclusive inside a shared one is a bug (two
        such would deadlock), refused."""
        state = self._state
        mode = "shared" if rows else "exclusive"
        if state.conn is not None:
            if state.locked == "shared" and mode == "exclusive":
                raise RuntimeError("a transaction that needs the write lock alone, inside a money transaction")
            if state.locked is None:  # sent ahead of the next statement
                state.pending.append((self._lock[mode], []))
                state.locked = mode
            yield self
            return
        with self._session(f"BEGIN; {self._lock[mode]}", locked=mode):
            yield self

    @contextmanager
    def snapshot(self) -> Iterator[PgDatabase]:
        """A consistent read of several tables (``REPEATABLE READ``), taking no lock."""
        if self._state.conn is not None:
            yield self
            return
        with self._session("BEGIN ISOLATION LEVEL REPEATABLE READ", locked=None):
            yield self

    @contextmanager
    def _session(self, begin: str, *, locked: str | None) -> Iterator[None]:
        state = self._state
        with _errors(self.url), self.pool.connection() as conn:
            # BEGIN (and the write lock) go out with the first statement: a round trip fewer; the lock not had
            # in time raises there, inside the transaction, which then rolls back
            state.conn, state.locked, state.pending = conn, locked, [(begin, [])]
            try:
                yield
            except BaseException:
                state.conn = None
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:  # never mask the real error
                    log.exception("rollback failed (the original error follows)")
                raise
            else:
                state.conn = None
                if not state.pending:
                    conn.execute("COMMIT")
                    return
                try:  # a pending write refused at the end: nothing of the transaction stays
                    pending, state.pending = state.pending, []
                    conn.execute(self._inline(conn, [*pending, ("COMMIT", [])]))
                except psycopg.Error:
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                state.conn, state.locked, state.pending = None, None, []

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Append ``rows`` to ``table`` with ``COPY`` (the fast path, ``imagine-bot db copy``), inside the
        current transaction."""
        conn = self._state.conn
        if conn is None:
            raise RuntimeError("copy_rows runs inside transaction(db)")
        names = pgsql.SQL(", ").join(pgsql.Identifier(c) for c in columns)
        if self._state.pending:
            pending, self._state.pending = self._state.pending, []
            with _errors(self.url):
                conn.execute(self._inline(conn, pending))
        with _errors(self.url), conn.cursor() as cur, cur.copy(
                pgsql.SQL("COPY {} ({}) FROM STDIN").format(pgsql.Identifier(table), names)) as copy:
            for row in rows:
                copy.write_row(row)

    # ------------------------------------------------------------------ LISTEN / NOTIFY
    def notify(self, channel: str) -> None:
        """Wake every process listening on ``channel`` once the current transaction commits."""
        self.execute("SELECT pg_notify(?, '')", [channel])

    def listen(self, channel: str, wake: Callable[[], None], *, retry_s: float = 5.0) -> Callable[[], None]:
        """Call ``wake()`` (from a thread of its own) on each ``NOTIFY channel``, and once on every (re)connection
        (a notification sent while disconnected is lost: the caller then reads what it missed). One connection
        of its own, outside the pool. Returns the function that stops listening."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", channel):
            raise ValueError(f"not a channel name: {channel!r}")
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                try:
                    with psycopg.connect(self.url.url, autocommit=True, prepare_threshold=None,
                                         connect_timeout=max(1, int(self.connect_timeout_s))) as conn:
                        conn.execute(f"LISTEN {channel}")
                        wake()
                        while not stop.is_set():
                            for _ in conn.notifies(timeout=0.5):
                                wake()
                except psycopg.Error as exc:
                    if not stop.is_set():
                        log.warning("LISTEN %s on PostgreSQL at %s: %s (polling meanwhile; again in %.0f s)",
                                    channel, self.url.host, cause(exc, self.url), retry_s)
                        stop.wait(retry_s)

        thread = threading.Thread(target=run, name=f"pg-listen-{channel}", daemon=True)
        thread.start()

        def close() -> None:
            stop.set()
            thread.join(timeout=5)

        return close

    # ------------------------------------------------------------------ facts (doctor)
    def server_version(self) -> str:
        row = self.execute("SHOW server_version").fetchone()
        return str(row[0])


# ---------------------------------------------------------------------- the schema

#: (name, DDL) in the order of ``core.storage.db.MIGRATIONS``, with the same names; a test holds them together
MIGRATIONS: list[tuple[str, str]] = [
    ("m001_accounts_ledger", """
        -- the two SQLite functions the portable SQL uses that PostgreSQL lacks
        CREATE OR REPLACE FUNCTION instr(haystack TEXT, needle TEXT) RETURNS INTEGER
            LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT strpos(haystack, needle) $$;
        CREATE OR REPLACE FUNCTION json_extract(doc TEXT, path TEXT) RETURNS TEXT
            LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT (doc::jsonb) #>> string_to_array(substr(path, 3), '.') $$;
        CREATE TABLE accounts (
            account TEXT PRIMARY KEY,
            platform TEXT NOT NULL,
            workspace TEXT NOT NULL,
            "user" TEXT NOT NULL,
            balance BIGINT NOT NULL DEFAULT 0,
            held BIGINT NOT NULL DEFAULT 0,
            allowance BIGINT,
            period_start TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            CHECK (held >= 0),
            CHECK (balance >= held)
        );
        CREATE TABLE ledger (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            ts TEXT NOT NULL,
            account TEXT NOT NULL REFERENCES accounts(account),
            kind TEXT NOT NULL CHECK (kind IN ('grant','refill','reserve','capture','release','adjust')),
            delta_balance BIGINT NOT NULL DEFAULT 0,
            delta_held BIGINT NOT NULL DEFAULT 0,
            balance_after BIGINT NOT NULL,
            held_after BIGINT NOT NULL,
            job_id TEXT,
            actor TEXT,
            note TEXT
        );
        CREATE INDEX ledger_account ON ledger(account, id);
        CREATE UNIQUE INDEX ledger_job_kind ON ledger(job_id, kind) WHERE job_id IS NOT NULL;
    """),
    ("m002_jobs", """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            platform TEXT NOT NULL,
            reply TEXT NOT NULL,
            prompt TEXT NOT NULL,
            params TEXT NOT NULL,
            model TEXT NOT NULL,
            cost BIGINT NOT NULL,
            state TEXT NOT NULL,
            task_id TEXT,
            result_urls TEXT,
            files TEXT,
            error_code TEXT,
            error_message TEXT,
            dedupe_key TEXT UNIQUE,
            parent_id TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            submitted_at TEXT,
            finished_at TEXT
        );
        CREATE INDEX jobs_state ON jobs(state);
        CREATE INDEX jobs_account ON jobs(account, created_at);
        CREATE INDEX jobs_task ON jobs(task_id);
    """),
    ("m010_job_receipt", "ALTER TABLE jobs ADD COLUMN receipt TEXT"),
    ("m030_budgets_and_places", """
        CREATE TABLE budgets (
            scope TEXT PRIMARY KEY,
            amount BIGINT,
            period TEXT NOT NULL,
            period_start TEXT,
            spent BIGINT NOT NULL DEFAULT 0,
            held BIGINT NOT NULL DEFAULT 0,
            member_cap BIGINT,
            updated_at TEXT NOT NULL,
            CHECK (held >= 0),
            CHECK (spent >= 0)
        );
        CREATE TABLE budget_ledger (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            ts TEXT NOT NULL,
            scope TEXT NOT NULL REFERENCES budgets(scope),
            kind TEXT NOT NULL CHECK (kind IN ('reserve','capture','release','reset','set')),
            delta_spent BIGINT NOT NULL DEFAULT 0,
            delta_held BIGINT NOT NULL DEFAULT 0,
            spent_after BIGINT NOT NULL,
            held_after BIGINT NOT NULL,
            job_id TEXT,
            account TEXT,
            channel TEXT,
            actor TEXT,
            note TEXT
        );
        CREATE UNIQUE INDEX budget_ledger_job ON budget_ledger(job_id, scope, kind) WHERE job_id IS NOT NULL;
        CREATE INDEX budget_ledger_scope ON budget_ledger(scope, account, ts);
        CREATE TABLE place_bans (place TEXT NOT NULL, account TEXT NOT NULL, actor TEXT, ts TEXT NOT NULL,
                                 PRIMARY KEY (place, account));
        CREATE TABLE place_prefs (place TEXT PRIMARY KEY, channels TEXT, aspect_ratio TEXT, quality TEXT,
                                  updated_by TEXT, updated_at TEXT NOT NULL);
        CREATE TABLE gateway_account (id BIGINT PRIMARY KEY CHECK (id = 1), balance BIGINT, checked_at TEXT,
                                      paused TEXT, paused_since TEXT, detail TEXT);
    """),
    ("m040_edit_references", """
        ALTER TABLE jobs ADD COLUMN image_urls TEXT;
        ALTER TABLE jobs ADD COLUMN text_cost BIGINT;
        CREATE TABLE IF NOT EXISTS app_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    """),
    ("m011_job_lease", """
        ALTER TABLE jobs ADD COLUMN owner TEXT;
        ALTER TABLE jobs ADD COLUMN lease_until TEXT;
        ALTER TABLE jobs ADD COLUMN notice_pending BIGINT NOT NULL DEFAULT 0;
        CREATE INDEX jobs_lease ON jobs(state, lease_until);
    """),
    ("m060_dashboard", """
        CREATE TABLE dashboard_links (
            token_hash TEXT PRIMARY KEY,
            scope TEXT,
            actor TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT
        );
        CREATE TABLE thumbnails (
            job_id TEXT PRIMARY KEY,
            webp BYTEA NOT NULL,
            width BIGINT NOT NULL,
            height BIGINT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX thumbnails_created ON thumbnails(created_at);
    """),
    ("m080_callback_relay", """
        CREATE TABLE callback_relay (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            task_id TEXT NOT NULL,
            final TEXT,
            origin TEXT NOT NULL,
            received_at TEXT NOT NULL
        );
        CREATE INDEX callback_relay_received ON callback_relay(received_at);
    """),
    ("m090_billed_not_delivered", """
        ALTER TABLE jobs ADD COLUMN billed_at TEXT;
        ALTER TABLE jobs ADD COLUMN gateway_cost BIGINT;
        CREATE INDEX jobs_undelivered ON jobs(finished_at) WHERE billed_at IS NOT NULL AND state = 'failed';
        CREATE TABLE gateway_balance_log (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, ts TEXT NOT NULL,
                                          balance BIGINT NOT NULL);
        CREATE INDEX gateway_balance_log_ts ON gateway_balance_log(ts);
        ALTER TABLE gateway_account ADD COLUMN undelivered_told_day TEXT;
    """),
    ("m100_installations", """
        CREATE TABLE installations (
            platform TEXT NOT NULL,
            org TEXT NOT NULL DEFAULT '',
            workspace TEXT NOT NULL DEFAULT '',
            installer TEXT NOT NULL DEFAULT '',
            org_wide BIGINT NOT NULL DEFAULT 0,
            name TEXT NOT NULL DEFAULT '',
            data TEXT NOT NULL,
            bot_token TEXT,
            bot_refresh_token TEXT,
            user_token TEXT,
            user_refresh_token TEXT,
            installed_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (platform, org, workspace, installer)
        );
        CREATE INDEX installations_workspace ON installations(platform, workspace, installed_at);
        CREATE TABLE oauth_states (state TEXT PRIMARY KEY, platform TEXT NOT NULL, expires_at TEXT NOT NULL);
    """),
    ("m110_presets", """
        CREATE TABLE presets (
            scope TEXT NOT NULL,
            name TEXT NOT NULL,
            template TEXT NOT NULL,
            aspect_ratio TEXT,
            quality TEXT,
            images TEXT,
            updated_by TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (scope, name)
        );
        CREATE TABLE channel_presets (channel TEXT PRIMARY KEY, preset TEXT NOT NULL, updated_by TEXT,
                                      updated_at TEXT NOT NULL);
        ALTER TABLE jobs ADD COLUMN preset TEXT;
    """),
    ("m111_approvals", """
        ALTER TABLE jobs ADD COLUMN review TEXT;
        CREATE TABLE approval_channels (channel TEXT PRIMARY KEY, reviewers TEXT NOT NULL, updated_by TEXT,
                                        updated_at TEXT NOT NULL);
        CREATE TABLE approvals (
            job_id TEXT PRIMARY KEY REFERENCES jobs(id),
            channel TEXT NOT NULL,
            reviewers TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'expired')),
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            decided_by TEXT,
            decided_at TEXT,
            reason TEXT,
            notified_at TEXT,
            posted_at TEXT,
            told_at TEXT,
            receipt TEXT,
            lease_owner TEXT,
            lease_until TEXT
        );
        CREATE INDEX approvals_state ON approvals(state, expires_at);
    """),
    # fewer index entries a new job and a state change write (SQLite's m112 says why): jobs_lease(state, ...)
    # serves every lookup by state; jobs_task holds only the jobs with a task id (task_id = ? still uses it)
    ("m112_jobs_fewer_indexes", """
        DROP INDEX jobs_state;
        DROP INDEX jobs_task;
        CREATE INDEX jobs_task ON jobs(task_id) WHERE task_id IS NOT NULL;
    """),
]


def applied_migrations(db: PgDatabase) -> set[str]:
    """The migrations this database has (none if it is new)."""
    row = db.execute("SELECT to_regclass('_migrations') IS NOT NULL").fetchone()
    if not row[0]:
        return set()
    return {r[0] for r in db.execute("SELECT name FROM _migrations").fetchall()}


def migrate(db: PgDatabase) -> list[str]:
    """Apply the migrations the database lacks, in one transaction under an advisory lock: a second host
    starting at the same moment waits, then finds them applied. An up-to-date database is only read.
    Returns the names applied now."""
    if {name for name, _ in MIGRATIONS} <= applied_migrations(db):
        return []
    applied: list[str] = []
    with _errors(db.url), db.pool.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = {r[0] for r in conn.execute("SELECT name FROM _migrations").fetchall()}
        for name, ddl in MIGRATIONS:
            if name not in done:
                conn.execute(ddl, prepare=False)  # several statements, no parameters
                conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (%s, %s)",
                             [name, datetime.now(UTC).isoformat(timespec="milliseconds")])
                applied.append(name)
    if applied:
        log.info("PostgreSQL at %s: applied %s", db.url.host, ", ".join(applied))
    return applied


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What ``imagine-bot doctor`` reports of the server, read without migrating anything."""

    version: str
    version_num: int
    read_only: bool
    applied: set[str]


class ServerUnreachable(Exception):
    """The server could not be reached or refused the login: the one line saying why (no password)."""


def inspect_postgres(url: DatabaseUrl, *, connect_timeout_s: float = 5.0) -> ServerFacts:
    """Connect once and read the server's version, whether it takes writes, and the migrations applied."""
    try:
        with psycopg.connect(url.url, connect_timeout=max(1, int(connect_timeout_s)), autocommit=True,
                             prepare_threshold=None) as conn:
            version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            read_only = conn.execute("SHOW transaction_read_only").fetchone()[0] == "on"  # type: ignore[index]
            has = conn.execute("SELECT to_regclass('_migrations') IS NOT NULL").fetchone()[0]  # type: ignore[index]
            applied = {r[0] for r in conn.execute("SELECT name FROM _migrations")} if has else set()
            return ServerFacts(version, conn.info.server_version, bool(read_only), applied)
    except psycopg.Error as exc:
        raise ServerUnreachable(cause(exc, url)) from None


def open_postgres(url: DatabaseUrl | str, *, busy_timeout_s: float = 30.0, pool_size: int = 8) -> PgDatabase:
    """Connect (``ConfigError`` naming the host and the cause if the server cannot be used) and migrate."""
    db = PgDatabase(url, busy_timeout_s=busy_timeout_s, pool_size=pool_size).open()
    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db
