"""The database: opening, numbered migrations, and short IMMEDIATE transactions.

SQLite through sqlite-utils by default: one database file holds accounts, the append-only credit ledger and
jobs. WAL mode lets readers run beside the one writer; every change is one short ``BEGIN IMMEDIATE``
transaction (``transaction``). With ``DATABASE_URL`` the same stores run on PostgreSQL
(``core.storage.postgres.PgDatabase``, same entry points; ``open_database`` chooses).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import sqlite_utils

from imagine_bot.core.errors import ConfigError, DatabaseBusy, DataNotWritable
from imagine_bot.core.storage.errors import StoreClosed

if TYPE_CHECKING:
    from imagine_bot.core.settings import Settings
    from imagine_bot.core.storage.postgres import PgDatabase

log = logging.getLogger(__name__)

#: what the stores are given: the SQLite file, or PostgreSQL behind the same entry points
Database: TypeAlias = "sqlite_utils.Database | PgDatabase"
#: a constraint refused a write (unique, check, foreign key), on either database (PostgreSQL's is a subclass)
IntegrityError = sqlite3.IntegrityError

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_accounts_ledger(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE accounts (
            account TEXT PRIMARY KEY,          -- UserRef.key: slack:T:U, discord:U, terminal:U
            platform TEXT NOT NULL,
            workspace TEXT NOT NULL,
            user TEXT NOT NULL,
            balance INTEGER NOT NULL DEFAULT 0, -- credits owned (captures already taken off)
            held INTEGER NOT NULL DEFAULT 0,    -- credits reserved by jobs in flight
            allowance INTEGER,                  -- per-user override of CREDITS_ALLOWANCE (NULL: default)
            period_start TEXT,                  -- start of the allowance period last refilled
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            CHECK (held >= 0),
            CHECK (balance >= held)             -- never spend what is not there
        )
        """
    )
    db.execute(
        """
        CREATE TABLE ledger (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts TEXT NOT NULL,
            account TEXT NOT NULL REFERENCES accounts(account),
            kind TEXT NOT NULL CHECK (kind IN ('grant','refill','reserve','capture','release','adjust')),
            delta_balance INTEGER NOT NULL DEFAULT 0,
            delta_held INTEGER NOT NULL DEFAULT 0,
            balance_after INTEGER NOT NULL,
            held_after INTEGER NOT NULL,
            job_id TEXT,
            actor TEXT,
            note TEXT
        )
        """
    )
    db.execute("CREATE INDEX ledger_account ON ledger(account, id)")
    # a job is reserved, captured and released at most once each: the ledger itself forbids double charges
    db.execute("CREATE UNIQUE INDEX ledger_job_kind ON ledger(job_id, kind) WHERE job_id IS NOT NULL")


@migration
def m002_jobs(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            platform TEXT NOT NULL,
            reply TEXT NOT NULL,              -- JSON: platform-neutral reply address (ReplyTo)
            prompt TEXT NOT NULL,
            params TEXT NOT NULL,             -- JSON: model inputs (aspect_ratio, quality, ...)
            model TEXT NOT NULL,
            cost INTEGER NOT NULL,
            state TEXT NOT NULL,
            task_id TEXT,
            result_urls TEXT,                 -- JSON list
            files TEXT,                       -- JSON list of downloaded file paths
            error_code TEXT,
            error_message TEXT,
            dedupe_key TEXT UNIQUE,           -- a platform's request id: a redelivered request makes no 2nd job
            parent_id TEXT,                   -- the job this one rerolls
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            submitted_at TEXT,
            finished_at TEXT
        )
        """
    )
    db.execute("CREATE INDEX jobs_state ON jobs(state)")
    db.execute("CREATE INDEX jobs_account ON jobs(account, created_at)")
    db.execute("CREATE INDEX jobs_task ON jobs(task_id)")


@migration
def m010_job_receipt(db: sqlite_utils.Database) -> None:
    # JSON: what the front end recorded as soon as the platform accepted the post (message id, file ids),
    # handed back with a repeated ``Delivered`` so that a retry finishes the post instead of posting again
    db.execute("ALTER TABLE jobs ADD COLUMN receipt TEXT")


@migration
def m030_budgets_and_places(db: sqlite_utils.Database) -> None:
    """Budgets per scope with their own append-only ledger (core/credits/budgets.py); bans and preferences per
    server or workspace (core/access/places.py); the gateway account's last known state (core/gateway/balance.py)."""
    db.execute(
        """
        CREATE TABLE budgets (
            scope TEXT PRIMARY KEY,            -- global, discord:GUILD, slack:TEAM, ...#CHANNEL
            amount INTEGER,                    -- credits per period; NULL: the default; -1: unlimited
            period TEXT NOT NULL,
            period_start TEXT,
            spent INTEGER NOT NULL DEFAULT 0,  -- captured this period
            held INTEGER NOT NULL DEFAULT 0,   -- reserved by jobs in flight
            member_cap INTEGER,                -- most one member may spend of it per period (community admins)
            updated_at TEXT NOT NULL,
            CHECK (held >= 0),
            CHECK (spent >= 0)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE budget_ledger (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts TEXT NOT NULL,
            scope TEXT NOT NULL REFERENCES budgets(scope),
            kind TEXT NOT NULL CHECK (kind IN ('reserve','capture','release','reset','set')),
            delta_spent INTEGER NOT NULL DEFAULT 0,
            delta_held INTEGER NOT NULL DEFAULT 0,
            spent_after INTEGER NOT NULL,
            held_after INTEGER NOT NULL,
            job_id TEXT,
            account TEXT,
            channel TEXT,
            actor TEXT,
            note TEXT
        )
        """
    )
    db.execute("CREATE UNIQUE INDEX budget_ledger_job ON budget_ledger(job_id, scope, kind) WHERE job_id IS NOT NULL")
    db.execute("CREATE INDEX budget_ledger_scope ON budget_ledger(scope, account, ts)")
    db.execute("CREATE TABLE place_bans (place TEXT NOT NULL, account TEXT NOT NULL, actor TEXT, ts TEXT NOT NULL,"
               " PRIMARY KEY (place, account))")
    db.execute("CREATE TABLE place_prefs (place TEXT PRIMARY KEY, channels TEXT, aspect_ratio TEXT, quality TEXT,"
               " updated_by TEXT, updated_at TEXT NOT NULL)")
    db.execute("CREATE TABLE gateway_account (id INTEGER PRIMARY KEY CHECK (id = 1), balance INTEGER,"
               " checked_at TEXT, paused TEXT, paused_since TEXT, detail TEXT)")


@migration
def m040_edit_references(db: sqlite_utils.Database) -> None:
    # an edit job's reference images (JSON list: public URLs or ref:<key>), and the text-to-image price
    # when it differed (said in the reply)
    db.execute("ALTER TABLE jobs ADD COLUMN image_urls TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN text_cost INTEGER")
    # secrets this install makes for itself (the /refs/ signing key), shared by every process on the file
    db.execute("CREATE TABLE IF NOT EXISTS app_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)")


@migration
def m011_job_lease(db: sqlite_utils.Database) -> None:
    # one process owns a job at a time: ``owner`` (host:pid:random) holds it until ``lease_until`` (ISO UTC),
    # renewed while it works; another process takes a job over only once the lease has expired
    db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN lease_until TEXT")
    # a failed job whose user was not told yet (failed by an operator, or while its platform was not running)
    db.execute("ALTER TABLE jobs ADD COLUMN notice_pending INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX jobs_lease ON jobs(state, lease_until)")


@migration
def m060_dashboard(db: sqlite_utils.Database) -> None:
    """The /admin dashboard: one-time sign-in links (stored hashed) and a small WebP thumbnail per
    delivered job (kept ``THUMBNAIL_KEEP_DAYS``). Its cookie key is in ``app_secrets`` (``dashboard``)."""
    db.execute(
        """
        CREATE TABLE dashboard_links (
            token_hash TEXT PRIMARY KEY,       -- sha256 of the link's token: the token itself is never stored
            scope TEXT,                        -- NULL: everything (operators); else discord:GUILD / slack:TEAM
            actor TEXT NOT NULL,               -- who asked for it
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT                       -- set once, compare-and-set: a link signs in once
        )
        """
    )
    db.execute(
        """
        CREATE TABLE thumbnails (
            job_id TEXT PRIMARY KEY,
            webp BLOB NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX thumbnails_created ON thumbnails(created_at)")


@migration
def m080_callback_relay(db: sqlite_utils.Database) -> None:
    """Gateway callbacks received by a process that does not track their task, for the one that does
    (several processes on one database behind one load balancer; ``core/jobs/relay.py``)."""
    db.execute(
        """
        CREATE TABLE callback_relay (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id TEXT NOT NULL,
            final TEXT,                       -- JSON TaskRecord of a verified final account webhook; NULL: a hint
            origin TEXT NOT NULL,             -- the process that received it (it does not read its own rows)
            received_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX callback_relay_received ON callback_relay(received_at)")


@migration
def m090_billed_not_delivered(db: sqlite_utils.Database) -> None:
    """What the gateway billed: the moment it reported a job's task succeeded (it charges the account on
    success) and what it charged, so a job that then fails (billed, never delivered) is counted by every
    process and after restarts; the gateway balance as read over time, for the per-day reconciliation; the
    day the operators were last told about undelivered credits (compare-and-set: one DM a day)."""
    db.execute("ALTER TABLE jobs ADD COLUMN billed_at TEXT")          # NULL: the gateway never said success
    db.execute("ALTER TABLE jobs ADD COLUMN gateway_cost INTEGER")    # consumeCredits, else the job's price
    db.execute("CREATE INDEX jobs_undelivered ON jobs(finished_at) WHERE billed_at IS NOT NULL AND state = 'failed'")
    db.execute("CREATE TABLE gateway_balance_log (id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL,"
               " balance INTEGER NOT NULL)")
    db.execute("CREATE INDEX gateway_balance_log_ts ON gateway_balance_log(ts)")
    db.execute("ALTER TABLE gateway_account ADD COLUMN undelivered_told_day TEXT")


@migration
def m100_installations(db: sqlite_utils.Database) -> None:
    """A chat app installed by the admins of many workspaces (core/storage/installations.py): one row per
    installer of each workspace or organisation, tokens sealed with the operator's key; and the one-time
    states of the install flows (each consumed once, before it expires)."""
    db.execute(
        """
        CREATE TABLE installations (
            platform TEXT NOT NULL,
            org TEXT NOT NULL DEFAULT '',        -- the organisation (Slack Enterprise Grid); '' when none
            workspace TEXT NOT NULL DEFAULT '',  -- the workspace; '' for an organisation-wide installation
            installer TEXT NOT NULL DEFAULT '',  -- the user who installed it; '' when unknown
            org_wide INTEGER NOT NULL DEFAULT 0,
            name TEXT NOT NULL DEFAULT '',       -- the workspace's (or organisation's) name, for people
            data TEXT NOT NULL,                  -- JSON: the platform's installation record, without tokens
            bot_token TEXT,                      -- tokens: 'enc1:' + Fernet token, or plain without a key
            bot_refresh_token TEXT,
            user_token TEXT,
            user_refresh_token TEXT,
            installed_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (platform, org, workspace, installer)
        )
        """
    )
    db.execute("CREATE INDEX installations_workspace ON installations(platform, workspace, installed_at)")
    db.execute("CREATE TABLE oauth_states (state TEXT PRIMARY KEY, platform TEXT NOT NULL, expires_at TEXT NOT NULL)")


@migration
def m110_presets(db: sqlite_utils.Database) -> None:
    """Brand presets (core/chat/presets.py, stored by core/storage/presets.py): named prompt templates of a
    server or workspace (or ``global``, the operators'), the preset a channel uses by default, and the preset
    a job was made with (named in its caption)."""
    db.execute(
        """
        CREATE TABLE presets (
            scope TEXT NOT NULL,               -- discord:GUILD, slack:TEAM, or global
            name TEXT NOT NULL,                -- one short lowercase word
            template TEXT NOT NULL,            -- the prompt, with {prompt} where the user's words go
            aspect_ratio TEXT,                 -- defaults a flag the user types still overrides
            quality TEXT,
            images TEXT,                       -- JSON list of reference image URLs (an edit), or NULL
            updated_by TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (scope, name)
        )
        """
    )
    db.execute("CREATE TABLE channel_presets (channel TEXT PRIMARY KEY, preset TEXT NOT NULL, updated_by TEXT,"
               " updated_at TEXT NOT NULL)")
    db.execute("ALTER TABLE jobs ADD COLUMN preset TEXT")


@migration
def m111_approvals(db: sqlite_utils.Database) -> None:
    """Approval before an image goes public (core/jobs/approvals.py, stored by core/storage/approvals.py): the
    reviewers of a channel, the reviewers a job waits for (set when it is asked), and one approval per
    finished job: its decision and the steps done since (reviewers told, the channel post, the requester told)."""
    db.execute("ALTER TABLE jobs ADD COLUMN review TEXT")  # JSON list of reviewer keys; NULL: posted at once
    db.execute("CREATE TABLE approval_channels (channel TEXT PRIMARY KEY, reviewers TEXT NOT NULL,"
               " updated_by TEXT, updated_at TEXT NOT NULL)")
    db.execute(
        """
        CREATE TABLE approvals (
            job_id TEXT PRIMARY KEY REFERENCES jobs(id),
            channel TEXT NOT NULL,             -- place#CHANNEL the image would be posted in
            reviewers TEXT NOT NULL,           -- JSON list of user keys who may decide
            state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'expired')),
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            decided_by TEXT,
            decided_at TEXT,
            reason TEXT,                       -- a rejection's reason
            notified_at TEXT,                  -- every reviewer was sent the image (or could not be)
            posted_at TEXT,                    -- approved: posted in the channel
            told_at TEXT,                      -- rejected or expired: the requester was told
            receipt TEXT,                      -- JSON: what the front end recorded (review DMs, the channel post)
            lease_owner TEXT,                  -- the process doing the next step, until lease_until
            lease_until TEXT
        )
        """
    )
    db.execute("CREATE INDEX approvals_state ON approvals(state, expires_at)")


@migration
def m112_jobs_fewer_indexes(db: sqlite_utils.Database) -> None:
    """Fewer index entries written by each new job (a burst commits many at once) and each state change.
    ``jobs_state`` goes: ``jobs_lease(state, lease_until)`` starts with ``state``, so every lookup by state
    uses that one (the planner already chose it). ``jobs_task`` keeps only the jobs that have a task id (a
    job gets one once it is sent to the gateway, so each queued job added a NULL entry): a partial index
    ``WHERE task_id IS NOT NULL``, which ``task_id = ?`` still uses (on PostgreSQL too)."""
    db.execute("DROP INDEX jobs_state")
    db.execute("DROP INDEX jobs_task")
    db.execute("CREATE INDEX jobs_task ON jobs(task_id) WHERE task_id IS NOT NULL")


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds")


def iso_or_none(ts: datetime | None) -> str | None:
    return None if ts is None else iso(ts)


#: how long a statement waits for another process's write lock: the bot's is short (``DB_BUSY_TIMEOUT_S``,
#: 5 s: its event loop must not freeze behind an admin command; every write is one short transaction), the
#: command line's longer
CLI_BUSY_TIMEOUT_S = 30.0


def open_db(path: Path | str, *, busy_timeout_s: float = CLI_BUSY_TIMEOUT_S) -> sqlite_utils.Database:
    """Open (creating if needed) and migrate the database. ``":memory:"`` works for tests."""
    if str(path) != ":memory:":
        check_writable(Path(path))
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=busy_timeout_s, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
    except sqlite3.OperationalError as exc:  # what the checks above cannot see (a read-only mount, ...)
        if "unable to open" in str(exc) or "readonly" in str(exc):
            raise _not_writable(Path(path), str(exc)) from None
        raise
    conn.execute("PRAGMA synchronous = NORMAL")
    # the undo pages of a savepoint (every submit of a grouped batch has one) in memory, not a temporary
    # file: nothing of the database's own durability depends on them
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA foreign_keys = ON")
    db = sqlite_utils.Database(conn)
    migrate(db)
    return db


def open_database(settings: Settings, *, busy_timeout_s: float = CLI_BUSY_TIMEOUT_S) -> Database:
    """The database the settings name, opened and migrated: PostgreSQL at ``DATABASE_URL`` when set (an
    unreachable server is a ``ConfigError`` naming its host and the cause, never the password), else the
    SQLite file at ``IMAGINE_DB_PATH``."""
    url = settings.database_url
    if url is None:
        return open_db(settings.IMAGINE_DB_PATH, busy_timeout_s=busy_timeout_s)
    try:
        from imagine_bot.core.storage.postgres import open_postgres
    except ImportError as exc:
        raise ConfigError("DATABASE_URL", f"PostgreSQL needs the postgres extra ({exc.name} is not installed): "
                                          "pip install 'imagine-bot[postgres]'") from None
    return open_postgres(url, busy_timeout_s=busy_timeout_s, pool_size=settings.DATABASE_POOL_SIZE)


def is_postgres(db: Database) -> bool:
    return not isinstance(db, sqlite_utils.Database)


def skip_locked(db: Database) -> str:
    """What ends a ``SELECT`` of rows to take (claims) so that rows another connection is taking are skipped,
    not waited for: PostgreSQL's ``FOR UPDATE SKIP LOCKED``; nothing on SQLite, where one writer at a time
    never meets a locked row."""
    return " FOR UPDATE SKIP LOCKED" if is_postgres(db) else ""


def for_update(db: Database, of: str | None = None) -> str:
    """What ends a ``SELECT`` of the rows a money transaction (``transaction(db, rows=True)``) reads to decide
    and then changes: PostgreSQL's ``FOR UPDATE`` (the row stays locked until the commit, so no other
    transaction changes it in between; ``of``: only the rows of that table or alias of a join); nothing on
    SQLite, where the one writer holds the whole file."""
    if not is_postgres(db):
        return ""
    return f" FOR UPDATE OF {of}" if of else " FOR UPDATE"


def later(db: Database, sql: str, params: Sequence[Any]) -> None:
    """A write inside a transaction whose result nobody reads: on PostgreSQL it travels with the
    transaction's next statement or its ``COMMIT`` (one round trip for all; an error it meets ends the
    transaction there, as it would have here); on SQLite it runs now."""
    if isinstance(db, sqlite_utils.Database):
        db.execute(sql, list(params))
    else:
        db.later(sql, params)


def execute_many(db: Database, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """One statement run for each row of parameters: on SQLite prepared once (``executemany``), on
    PostgreSQL one after another."""
    if isinstance(db, sqlite_utils.Database):
        db.conn.executemany(sql, rows)
        return
    for row in rows:
        db.execute(sql, row)


#: the row counts of ``insert_rows``' statements, largest first: few distinct statements (each prepared once and
#: kept in the connection's statement cache), few statements for a batch
_CHUNKS = (64, 16, 4, 1)
#: the most ``?`` one SQLite statement may have (SQLite before 3.32 allowed 999)
_MAX_MARKS = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


def insert_rows(db: Database, head: str, mark: str, rows: Sequence[Sequence[Any]]) -> None:
    """``INSERT`` rows in order: ``head`` (``INSERT INTO t (columns) VALUES ``) and ``mark`` (one row's
    ``(?, ...)``). On SQLite several rows to a statement (64, 16, 4 or 1 of them: one statement's overhead, its
    statement journal and its ``AUTOINCREMENT`` counter's update for many rows, where ``executemany`` pays them
    for each row); on PostgreSQL one row a statement, one after another (``execute_many``). As with
    ``execute_many``, a row refused undoes its own statement only: the caller's transaction undoes the rest."""
    if not isinstance(db, sqlite_utils.Database):
        execute_many(db, head + mark, rows)
        return
    execute = db.conn.execute
    done, left = 0, len(rows)
    width = len(rows[0]) if rows else 1
    for size in _CHUNKS:
        if left < size or (size > 1 and size * width > _MAX_MARKS):
            continue
        sql = head + ", ".join([mark] * size)
        while left >= size:
            execute(sql, list(chain.from_iterable(rows[done:done + size])))
            done += size
            left -= size


def notify(db: Database, channel: str) -> None:
    """Tell the processes listening on ``channel`` (PostgreSQL's ``NOTIFY``, sent at commit); SQLite has no
    such thing: they find the change when they next poll."""
    if not isinstance(db, sqlite_utils.Database):
        db.notify(channel)


def listen(db: Database, channel: str, wake: Callable[[], None]) -> Callable[[], None] | None:
    """Call ``wake()`` from a thread on each ``notify(db, channel)`` of any process (PostgreSQL's ``LISTEN``);
    returns the function that stops it, or None where the database cannot push (SQLite: poll)."""
    if isinstance(db, sqlite_utils.Database):
        return None
    return db.listen(channel, wake)


class DatabaseUnopenable(Exception):
    """The file cannot be opened for reading and writing."""


class DatabaseUnwritable(Exception):
    """The file opens but is not a writable SQLite database."""


def inspect_database(path: Path) -> set[str]:
    """The migrations applied to the database at ``path``, after checking it can take the write lock; the
    database is neither created nor migrated (``imagine-bot doctor``)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise DatabaseUnopenable(str(exc)) from exc
    try:
        conn.execute("BEGIN IMMEDIATE")  # takes the write lock: the file and its folder are writable
        conn.execute("ROLLBACK")
        has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_migrations'").fetchone()
        return {row[0] for row in conn.execute("SELECT name FROM _migrations")} if has_table else set()
    except sqlite3.Error as exc:
        raise DatabaseUnwritable(str(exc)) from exc
    finally:
        conn.close()


@contextmanager
def read_only(path: Path) -> Iterator[sqlite_utils.Database | None]:
    """The database at ``path`` for reading only (no migration, no write lock; ``imagine-bot doctor``), or
    None when there is no database file yet."""
    if str(path) == ":memory:" or not Path(path).exists():
        yield None
        return
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        yield sqlite_utils.Database(conn)
    finally:
        conn.close()


@contextmanager
def read_only_database(settings: Settings) -> Iterator[Database | None]:
    """The database ``settings`` name, for reading only (no migration, no write lock; ``imagine-bot doctor``),
    or None when there is none yet: no SQLite file, or a PostgreSQL server that cannot be reached (the
    database check says why)."""
    url = settings.database_url
    if url is None:
        with read_only(settings.IMAGINE_DB_PATH) as db:
            yield db
        return
    try:
        from imagine_bot.core.storage.postgres import PgDatabase
    except ImportError:
        yield None
        return
    try:
        pg = PgDatabase(url, busy_timeout_s=5, pool_size=1, connect_timeout_s=5).open()
    except ConfigError:
        yield None
        return
    try:
        yield pg
    finally:
        pg.close()


def has_table(db: Database, name: str) -> bool:
    """Whether the table exists (a database opened without migrating it)."""
    if isinstance(db, sqlite_utils.Database):
        row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name]).fetchone()
        return row is not None
    return bool(db.execute("SELECT to_regclass(?) IS NOT NULL", [name]).fetchone()[0])


def check_writable(path: Path) -> None:
    """Create the database's folder and make sure this user may write there (SQLite adds -wal and -shm
    files beside the database), else one ``DataNotWritable`` line instead of SQLite's traceback."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _not_writable(path, (exc.strerror or type(exc).__name__).lower()) from None
    for target in (path.parent, path):
        if target.exists() and not os.access(target, os.W_OK):
            raise _not_writable(path, "permission denied")
    try:
        # balances and the audit trail are nobody else's business: create the file owner-only
        # (SQLite gives its -wal and -shm files the database file's mode)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    except OSError as exc:
        raise _not_writable(path, (exc.strerror or type(exc).__name__).lower()) from None


def _not_writable(path: Path, reason: str) -> DataNotWritable:
    path = Path(os.path.abspath(path))
    return DataNotWritable(str(path), str(path.parent), reason, os.geteuid())


def _all_applied(db: sqlite_utils.Database) -> bool:
    try:
        done = {row[0] for row in db.execute("SELECT name FROM _migrations").fetchall()}
    except sqlite3.OperationalError:  # a new file: no table yet
        return False
    return all(name in done for name, _ in MIGRATIONS)


def migrate(db: sqlite_utils.Database) -> None:
    """Apply the migrations this file lacks. An up-to-date file is only read: an admin command opening the
    database beside a running bot takes no write lock."""
    if _all_applied(db):
        return
    with transaction(db):
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = {row[0] for row in db.execute("SELECT name FROM _migrations").fetchall()}
        for name, fn in MIGRATIONS:
            if name not in done:
                fn(db)
                db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", [name, iso(utcnow())])


def _in_transaction(conn: sqlite3.Connection) -> bool:
    try:
        return conn.in_transaction
    except sqlite3.ProgrammingError as exc:  # the connection was closed (the process is stopping)
        raise StoreClosed(str(exc)) from exc


@contextmanager
def transaction(db: Database, *, rows: bool = False) -> Iterator[object]:
    """One short write transaction, taken with BEGIN IMMEDIATE so writers queue instead of deadlocking
    (PostgreSQL: the same, with an advisory lock: ``PgDatabase.transaction``).

    ``rows=True`` is a money transaction (the ledger's and the budgets' own): on PostgreSQL it takes the
    write lock shared with the other money transactions, and locks each row it decides on instead
    (``for_update``), so reservations of different users run side by side; it may write only the
    accounts, ledger, budgets and budget_ledger tables. On SQLite it is the same ``BEGIN IMMEDIATE``.

    Nested use joins the outer transaction. A write lock held elsewhere past the busy timeout raises
    ``DatabaseBusy`` (transient: nothing was written).
    """
    if not isinstance(db, sqlite_utils.Database):
        with db.transaction(rows=rows):
            yield db
        return
    conn = db.conn
    if _in_transaction(conn):
        yield conn
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.ProgrammingError as exc:  # the connection was closed
        raise StoreClosed(str(exc)) from exc
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:
            raise DatabaseBusy(f"the database's write lock stayed taken by another connection ({exc})") from exc
        raise
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # something may have ended it already: never mask the real error
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback failed (the original error follows)")
        raise
    else:
        conn.execute("COMMIT")


@contextmanager
def savepoint(db: Database, name: str = "part") -> Iterator[None]:
    """A part of the current transaction that an error undoes alone (``SAVEPOINT``; the same on PostgreSQL,
    where it also ends the aborted state a failed statement leaves): the error is raised, the transaction
    goes on."""
    db.execute(f"SAVEPOINT {name}")
    try:
        yield
        db.execute(f"RELEASE {name}")  # on PostgreSQL with the part's writes still to send (``later``)
    except BaseException:
        db.execute(f"ROLLBACK TO {name}")
        db.execute(f"RELEASE {name}")
        raise


@contextmanager
def snapshot(db: Database) -> Iterator[object]:
    """A consistent read of several tables that takes no write lock (a deferred transaction: with WAL,
    readers never wait for the writer and never make it wait; PostgreSQL: ``REPEATABLE READ``). Nested use
    joins the outer transaction."""
    if not isinstance(db, sqlite_utils.Database):
        with db.snapshot():
            yield db
        return
    conn = db.conn
    if _in_transaction(conn):
        yield conn
        return
    try:
        conn.execute("BEGIN")
    except sqlite3.ProgrammingError as exc:  # the connection was closed
        raise StoreClosed(str(exc)) from exc
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
