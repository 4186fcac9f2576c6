"""The stores of one database, built together: the one builder ``ImagineCore``, the command line and the
tests use (``SqliteStores.open(settings)``).

Each store implements a protocol in ``core.storage.base``; domain code is typed by those protocols, never
by these classes. The same classes run on the SQLite file and, with ``DATABASE_URL``, on PostgreSQL: their
portable SQL goes through the database object they are given (``sqlite_utils.Database``, or
``core.storage.postgres.PgDatabase`` with the same entry points); ``open`` chooses from the settings. The
credits are built here with their budgets, from the settings, so no command moves a user's credits without
the budgets that move with them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from functools import cached_property

from imagine_bot.core.settings import Settings
from imagine_bot.core.storage.approvals import SqliteApprovals
from imagine_bot.core.storage.budgets import SqliteBudgets
from imagine_bot.core.storage.checkpoints import BACKSTOP_PAGES, Checkpointer
from imagine_bot.core.storage.dashboard import Queries, SqliteLinkStore
from imagine_bot.core.storage.db import (
    CLI_BUSY_TIMEOUT_S,
    Database,
    is_postgres,
    open_database,
    read_only_database,
    savepoint,
    transaction,
    utcnow,
)
from imagine_bot.core.storage.gateway_account import SqliteGatewayAccount
from imagine_bot.core.storage.installations import (
    InstalledPlace,
    SqliteInstallations,
    SqliteOAuthStates,
    installed_places,
)
from imagine_bot.core.storage.jobs import SqliteJobStore
from imagine_bot.core.storage.ledger import SqliteLedger
from imagine_bot.core.storage.places import SqlitePlaces
from imagine_bot.core.storage.presets import SqlitePresets
from imagine_bot.core.storage.relay import SqliteRelayStore
from imagine_bot.core.storage.secretbox import SecretBox
from imagine_bot.core.storage.secrets import load_secret
from imagine_bot.core.storage.thumbnails import SqliteThumbnailIndex


class SqliteStores:
    """Every store of one database: the SQLite file (``IMAGINE_DB_PATH``), shared by the processes of one
    machine, or PostgreSQL (``DATABASE_URL``), shared by every host."""

    def __init__(self, db: Database, settings: Settings, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self._checkpointer: Checkpointer | None = None

    @classmethod
    def open(cls, settings: Settings, *, busy_timeout_s: float = CLI_BUSY_TIMEOUT_S,
             clock: Callable[[], datetime] = utcnow) -> SqliteStores:
        """Open (creating and migrating if needed) the database of ``settings``: PostgreSQL at ``DATABASE_URL``
        when set (``ConfigError`` naming the host and the cause if it cannot be reached), else SQLite."""
        return cls(open_database(settings, busy_timeout_s=busy_timeout_s), settings, clock=clock)

    @classmethod
    @contextmanager
    def read_only(cls, settings: Settings) -> Iterator[SqliteStores | None]:
        """The stores of ``settings``' database for reading only (no migration, no write lock: ``imagine-bot
        doctor``), or None when the database does not exist yet."""
        with read_only_database(settings) as db:
            yield None if db is None else cls(db, settings)

    def start_checkpoints(self, hold: Callable[[], bool] | None = None) -> object | None:
        """The running bot: the write-ahead log checkpointed in a thread of its own (``checkpoints``), not
        inside its commits on the event loop, and not while ``hold()`` says commands are being answered. None
        for PostgreSQL and an in-memory database."""
        if self._checkpointer is not None or is_postgres(self.db):
            return self._checkpointer
        path = str(self.settings.IMAGINE_DB_PATH)
        if path == ":memory:":
            return None
        self.db.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
        self._checkpointer = Checkpointer(path, hold=hold)
        self._checkpointer.start()
        return self._checkpointer

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.db.close()

    def transaction(self) -> AbstractContextManager[object]:
        """One short write transaction that every store call inside joins (all or nothing)."""
        return transaction(self.db)

    def savepoint(self) -> AbstractContextManager[None]:
        """Inside ``transaction``: a part that an error undoes alone, leaving the rest of the transaction."""
        return savepoint(self.db)

    def secret(self, name: str) -> bytes:
        """A key the bot made once and keeps (``refs``: /refs/ URLs; ``dashboard``: session cookies)."""
        return load_secret(self.db, name)

    def ping(self) -> None:
        """Raise if the database cannot be reached (``/healthz``)."""
        self.db.execute("SELECT 1").fetchone()

    @cached_property
    def ledger(self) -> SqliteLedger:
        """The credits as the bot runs them: the user ledger with the budgets over it, from the settings."""
        s = self.settings
        budgets = SqliteBudgets(self.db, default_amount=s.DEFAULT_SCOPE_BUDGET, period=s.SCOPE_BUDGET_PERIOD,
                                cap=s.SPEND_CAP, cap_period=s.SPEND_CAP_PERIOD, clock=self.clock)
        return SqliteLedger(self.db, budgets=budgets, allowance=s.CREDITS_ALLOWANCE, period=s.CREDITS_PERIOD,
                            clock=self.clock)

    @cached_property
    def jobs(self) -> SqliteJobStore:
        return SqliteJobStore(self.db)

    @cached_property
    def gateway_account(self) -> SqliteGatewayAccount:
        return SqliteGatewayAccount(self.db)

    @cached_property
    def places(self) -> SqlitePlaces:
        return SqlitePlaces(self.db)

    @cached_property
    def presets(self) -> SqlitePresets:
        return SqlitePresets(self.db)

    @cached_property
    def approvals(self) -> SqliteApprovals:
        return SqliteApprovals(self.db)

    @cached_property
    def relay(self) -> SqliteRelayStore:
        return SqliteRelayStore(self.db)

    @cached_property
    def thumbnails(self) -> SqliteThumbnailIndex:
        return SqliteThumbnailIndex(self.db)

    @cached_property
    def dashboard_links(self) -> SqliteLinkStore:
        return SqliteLinkStore(self.db)

    @cached_property
    def dashboard(self) -> Queries:
        return Queries(self.db)

    def installations(self, platform: str, box: SecretBox) -> SqliteInstallations:
        return SqliteInstallations(self.db, box, platform)

    def oauth_states(self, platform: str) -> SqliteOAuthStates:
        return SqliteOAuthStates(self.db, platform)

    def installed_places(self, platform: str | None = None) -> list[InstalledPlace]:
        return installed_places(self.db, platform)
