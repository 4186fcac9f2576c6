"""The state seam: what the bot keeps (credits and jobs), behind one small interface.

Everything that must survive a restart or be shared between processes is in two stores: the credit
``Ledger`` (tables ``accounts`` and ``ledger``) and the ``JobStore`` (table ``jobs``), written in short
transactions. Today both are SQLite (``sqlite_utils``, WAL, ``BEGIN IMMEDIATE``): several
``imagine-bot run`` processes on one machine may share the file. Across machines the state needs a
networked database; PostgreSQL would be a second implementation of the ``Store`` protocol below, in one
new module, with the same three tables, claiming jobs with ``SELECT ... FOR UPDATE SKIP LOCKED`` (see
``docs/scaling.md``). Nothing else would change: the orchestrator, the front ends and the admin commands
use only what these protocols name.

``SqliteStore`` is today's implementation: it only bundles the existing ``Ledger`` and ``JobStore`` (no
behaviour changes); ``ImagineCore.store`` is one, and mypy checks that it satisfies ``Store``.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import sqlite_utils

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.access.places import PlacePrefs
from imagine_bot.core.chat.presets import Preset
from imagine_bot.core.credits.ledger import Balance, Ledger, LedgerEntry
from imagine_bot.core.jobs.model import Job, JobRequest, JobState, JobStore
from imagine_bot.core.storage.approvals import Approval
from imagine_bot.core.storage.db import transaction


@runtime_checkable
class CreditStore(Protocol):
    """Credits: balances, and the reserve -> capture | release life of each job's cost (each at most once)."""

    def balance(self, who: UserRef) -> Balance: ...

    def reserve(self, who: UserRef, job_id: str, cost: int, *, scopes: tuple[str, ...] = (),
                channel: str | None = None) -> Balance:
        """Hold ``cost`` on the user's balance and, in the same transaction, on every budget over the job
        (``scopes`` and the global cap: ``core.budgets``); refuse if any cannot cover it."""
        ...

    def capture(self, job_id: str) -> bool: ...

    def release(self, job_id: str) -> bool: ...

    def grant(self, who: UserRef, amount: int, *, actor: str, note: str | None = None) -> Balance: ...

    def set_allowance(self, who: UserRef, allowance: int | None, *, actor: str) -> Balance: ...

    def history(self, who: UserRef | None = None, *, limit: int = 50) -> list[LedgerEntry]: ...

    def report_rows(self, since: datetime | None = None) -> list[dict[str, object]]: ...

    def verify(self) -> list[str]: ...


@runtime_checkable
class JobRepository(Protocol):
    """Job rows: one per request, moved along ``JobState`` one saved step at a time."""

    def insert(self, request: JobRequest, *, model: str, cost: int, job_id: str | None = None,
               owner: str | None = None, lease_until: datetime | None = None) -> Job: ...

    def get(self, job_id: str) -> Job: ...

    def find(self, job_id: str) -> Job | None: ...

    def by_dedupe_key(self, key: str) -> Job | None: ...

    def by_task_id(self, task_id: str) -> Job | None: ...

    def update(self, job_id: str, **fields: Any) -> Job: ...

    # ownership: one process works on a job at a time (PostgreSQL: ``FOR UPDATE SKIP LOCKED``)
    def transition(self, job_id: str, expected: JobState, new: JobState, *, owner: str | None,
                   **fields: Any) -> Job: ...

    def claim(self, job_id: str, owner: str, until: datetime, *, now: datetime | None = None) -> Job | None: ...

    def claimable(self, *, now: datetime | None = None) -> list[Job]: ...

    def renew(self, owner: str, until: datetime) -> set[str]: ...

    def release_leases(self, owner: str, job_ids: Iterable[str] | None = None) -> int: ...

    def active(self, account: str | None = None) -> list[Job]: ...

    def count_active(self, account: str) -> int: ...

    def recent(self, account: str | None = None, *, limit: int = 20,
               states: Iterable[JobState] | None = None) -> list[Job]: ...


class PlaceStore(Protocol):
    """Bans and preferences per server or workspace (``core.access.places``)."""

    def is_banned(self, place: str, account: str) -> bool: ...

    def ban(self, place: str, account: str, *, actor: str) -> bool: ...

    def unban(self, place: str, account: str) -> bool: ...

    def banned(self, place: str) -> list[str]: ...

    def prefs(self, place: str) -> PlacePrefs: ...

    def set_channels(self, place: str, channels: tuple[str, ...], *, actor: str) -> PlacePrefs: ...

    def set_defaults(self, place: str, defaults: dict[str, str | None], *, actor: str) -> PlacePrefs: ...


class PresetStore(Protocol):
    """Brand presets per place (``global``: every place) and each channel's default (``core.chat.presets``)."""

    def get(self, scope: str, name: str) -> Preset | None: ...

    def in_scopes(self, scopes: list[str]) -> list[Preset]: ...

    def put(self, preset: Preset, *, actor: str) -> Preset: ...

    def remove(self, scope: str, name: str) -> tuple[bool, list[str]]: ...

    def channel_default(self, channel: str) -> str | None: ...

    def set_channel_default(self, channel: str, name: str | None, *, actor: str) -> None: ...

    def channel_defaults(self, place: str) -> dict[str, str]: ...


class ApprovalStore(Protocol):
    """Reviewers per channel and one approval per reviewed job (``core.jobs.approvals``): every change a
    compare-and-set, the steps after a decision under a short lease."""

    def reviewers(self, channel: str) -> tuple[str, ...]: ...

    def set_reviewers(self, channel: str, reviewers: Iterable[str], *, actor: str) -> None: ...

    def open(self, job_id: str, channel: str, reviewers: tuple[str, ...], expires_at: datetime) -> None: ...

    def get(self, job_id: str) -> Approval | None: ...

    def for_jobs(self, job_ids: Iterable[str]) -> dict[str, Approval]: ...

    def decide(self, job_id: str, state: str, *, by: str, reason: str | None, now: datetime) -> bool: ...

    def expire(self, now: datetime) -> list[str]: ...

    def mark(self, job_id: str, step: str) -> None: ...

    def record_receipt(self, job_id: str, **ids: Any) -> Approval: ...

    def claim(self, job_id: str, owner: str, until: datetime, *, now: datetime | None = None) -> bool: ...

    def release(self, job_id: str, owner: str) -> None: ...

    def due(self, platforms: Iterable[str], *, limit: int = 50) -> list[Approval]: ...

    def waiting_jobs(self) -> set[str]: ...


class RelayStore(Protocol):
    """Callbacks passed between processes (``core.jobs.relay``); ids only grow."""

    def last_id(self) -> int: ...

    def put(self, task_id: str, final: str | None, origin: str) -> None: ...

    def after(self, seen: int, origin: str) -> list[tuple[int, str, str | None]]: ...

    def prune(self, before: datetime) -> int: ...


class ThumbnailIndex(Protocol):
    """One small WebP per delivered job (``core.media.thumbnails``)."""

    def put(self, job_id: str, webp: bytes, width: int, height: int) -> None: ...

    def get(self, job_id: str) -> tuple[bytes, int, int] | None: ...

    def delete_before(self, cutoff: datetime) -> int: ...


class LinkStore(Protocol):
    """The dashboard's one-time sign-in links, by hash (``core.web.dashboard.auth``)."""

    def add(self, token_hash: str, *, scope: str | None, actor: str, now: datetime, expires: datetime) -> None: ...

    def use(self, token_hash: str, now: datetime, *, forget_before: datetime) -> tuple[str, str | None] | None: ...


class Stores(Protocol):
    """Every store of one database, and its keys (``core.storage.sqlite.SqliteStores`` is one)."""

    def secret(self, name: str) -> bytes: ...

    def ping(self) -> None: ...

    @property
    def places(self) -> PlaceStore: ...

    @property
    def presets(self) -> PresetStore: ...

    @property
    def approvals(self) -> ApprovalStore: ...

    @property
    def relay(self) -> RelayStore: ...

    @property
    def thumbnails(self) -> ThumbnailIndex: ...

    @property
    def dashboard_links(self) -> LinkStore: ...


@runtime_checkable
class Store(Protocol):
    """Both stores, and one transaction that spans them (reserve + insert, capture + delivered, ...)."""

    @property
    def ledger(self) -> CreditStore: ...

    @property
    def jobs(self) -> JobRepository: ...

    def transaction(self) -> AbstractContextManager[object]: ...

    def ping(self) -> None:
        """Raise if the database cannot be reached (``/healthz``)."""
        ...


@dataclass(frozen=True, slots=True)
class SqliteStore:
    """Today's store: one SQLite file (``IMAGINE_DB_PATH``), shared by the processes of one machine."""

    db: sqlite_utils.Database
    ledger: Ledger
    jobs: JobStore

    def transaction(self) -> AbstractContextManager[object]:
        return transaction(self.db)

    def ping(self) -> None:
        self.db.execute("SELECT 1").fetchone()
