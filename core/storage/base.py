"""The state seam: what the bot keeps, behind one small interface per concern.

Everything that must survive a restart or be shared between processes is in these stores: the credits
(``CreditStore``: accounts and their append-only ledger, with the ``BudgetStore`` over them), the jobs
(``JobRepository``), the gateway account (``GatewayAccountStore``), the places' bans and preferences,
the callback relay, the thumbnails, the dashboard's sign-in links and queries, the installations of a chat
app distributed to many workspaces (and its install flows' states), and the keys the bot makes for
itself. ``Stores`` bundles every store of one database and the one transaction that spans them.

Domain code (``core.app``, ``core.jobs.orchestrator``, ``core.credits.refunds``, ``core.gateway.balance``,
``core.chat``) is typed by these protocols only. One set of store classes implements them
(``core.storage.sqlite.SqliteStores`` builds them): on SQLite (WAL, ``BEGIN IMMEDIATE``), where several
``imagine-bot run`` processes on one machine share the file, or, with ``DATABASE_URL``, on PostgreSQL through
``core.storage.postgres.PgDatabase`` (the same entry points; an advisory write lock; claims with
``FOR UPDATE SKIP LOCKED``), where processes on several machines share it (``docs/scaling.md``).

Transactions: every store method is one short transaction of its own, and joins the caller's when called
inside ``Stores.transaction()``. Money moves are one transaction each *inside* the credit store: reserve,
capture and release move the user's balance and every budget over the job together. What spans stores
(reserve + insert the job, mark delivered + capture, mark failed + release) is one ``transaction()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.access.places import PlacePrefs, PlaceRules
from imagine_bot.core.chat.presets import Preset
from imagine_bot.core.credits.budgets import BudgetStatus
from imagine_bot.core.credits.ledger import Balance, Hold, LedgerEntry
from imagine_bot.core.errors import BudgetExhausted, InsufficientCredits
from imagine_bot.core.gateway.balance import AccountState
from imagine_bot.core.jobs.model import Job, JobRequest, JobState, NewJob
from imagine_bot.core.storage.approvals import Approval
from imagine_bot.core.storage.installations import InstallationRow, InstalledPlace
from imagine_bot.core.storage.secretbox import SecretBox

if TYPE_CHECKING:
    from imagine_bot.core.storage.dashboard import Queries


@runtime_checkable
class BudgetStore(Protocol):
    """Budgets above the user (``core.credits.budgets``): per place, per channel, and the global cap."""

    def reserve(self, scopes: Sequence[str], job_id: str, account: str, channel: str | None, cost: int) -> None:
        """Hold ``cost`` on every budget over the job; joins the caller's (the ledger's) transaction."""
        ...

    def check(self, scopes: Sequence[str], account: str, cost: int) -> None:
        """Raise the ``BudgetExhausted`` a reservation would meet now, changing nothing."""
        ...

    def settle(self, job_id: str, kind: str) -> None: ...

    def status(self, scope: str) -> BudgetStatus: ...

    def all(self) -> list[BudgetStatus]: ...

    def job_scopes(self, job_id: str) -> list[str]: ...

    def set_amount(self, scope: str, amount: int | None, *, actor: str, period: str | None = None,
                   unlimited: bool = False) -> BudgetStatus: ...

    def set_member_cap(self, scope: str, cap: int | None, *, actor: str) -> BudgetStatus: ...

    def spend_rows(self, scope: str, since: datetime | None) -> list[dict[str, Any]]: ...

    def verify(self) -> list[str]: ...

    def orphan_holds(self) -> list[str]: ...


@runtime_checkable
class CreditStore(Protocol):
    """Credits: balances, and the reserve -> capture | release life of each job's cost (each at most once)."""

    @property
    def budgets(self) -> BudgetStore:
        """The budgets over the users, moved in the same transactions as their balances."""
        ...

    def balance(self, who: UserRef) -> Balance: ...

    def available(self, who: UserRef) -> Balance:
        """The balance ``balance`` would give, changing nothing: what a precheck decides on."""
        ...

    def reserve(self, who: UserRef, job_id: str, cost: int, *, scopes: tuple[str, ...] = (),
                channel: str | None = None, new_job: bool = False) -> Balance:
        """Hold ``cost`` on the user's balance and, in the same transaction, on every budget over the job
        (``scopes`` and the global cap); refuse if any cannot cover it. A job reserved already changes
        nothing, unless ``new_job`` (the caller made its id just now: not looked up)."""
        ...

    #: whether ``reserve_many`` may reserve a batch at once (else it always answers None)
    reserves_together: bool

    def reserve_many(self, holds: Sequence[Hold]) -> list[InsufficientCredits | BudgetExhausted | None] | None:
        """Reserve new jobs of different users together, the same rules as ``reserve``: each hold's refusal
        (None: held), or None, with nothing written, where they must be reserved one at a time."""
        ...

    def capture(self, job_id: str) -> bool:
        """Charge a delivered job (balance and budgets, one transaction); False if already settled."""
        ...

    def release(self, job_id: str) -> bool:
        """Give a failed job's hold back (balance and budgets, one transaction); False if already settled."""
        ...

    def grant(self, who: UserRef, amount: int, *, actor: str, note: str | None = None) -> Balance: ...

    def set_allowance(self, who: UserRef, allowance: int | None, *, actor: str) -> Balance: ...

    def history(self, who: UserRef | None = None, *, limit: int = 50) -> list[LedgerEntry]: ...

    def accounts(self) -> list[Balance]: ...

    def report_rows(self, since: datetime | None = None) -> list[dict[str, object]]: ...

    def report_csv(self, since: datetime | None = None) -> str: ...

    def verify(self) -> list[str]: ...

    def orphan_holds(self) -> list[str]: ...


@runtime_checkable
class JobRepository(Protocol):
    """Job rows: one per request, moved along ``JobState`` one saved step at a time."""

    def insert(self, request: JobRequest, *, model: str, cost: int, job_id: str | None = None,
               owner: str | None = None, lease_until: datetime | None = None) -> Job:
        """Record a new ``queued`` job; ``DuplicateRequest`` (``core.storage.errors``) if its dedupe key
        is taken."""
        ...

    def insert_many(self, new: Sequence[NewJob], *, owner: str | None = None,
                    lease_until: datetime | None = None) -> list[Job]:
        """Record new ``queued`` jobs at once, all or none (``DuplicateRequest`` as ``insert``)."""
        ...

    def get(self, job_id: str) -> Job: ...

    def state(self, job_id: str) -> JobState:
        """The job's state alone (cheaper than ``get``)."""
        ...

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

    def release_leases(self, owner: str, job_ids: Iterable[str] | None = None) -> int:
        """``StoreClosed`` (``core.storage.errors``) once the database is closed."""
        ...

    def pending_notices(self, platforms: Iterable[str]) -> list[Job]: ...

    def take_notice(self, job_id: str) -> bool: ...

    def set_reply_data(self, job_id: str, **data: Any) -> Job: ...

    def record_receipt(self, job_id: str, **ids: Any) -> Job: ...

    def billed_not_delivered(self, since: datetime | None = None) -> tuple[int, int]: ...

    def active(self, account: str | None = None) -> list[Job]: ...

    def count_active(self, account: str) -> int: ...

    def count_active_many(self, accounts: Sequence[str]) -> dict[str, int]:
        """``count_active`` of each account (those with none left out), in one read."""
        ...

    def recent(self, account: str | None = None, *, limit: int = 20,
               states: Iterable[JobState] | None = None) -> list[Job]: ...


class GatewayAccountStore(Protocol):
    """The operator's gateway account as every process sees it (``core.gateway.balance``). Each change is a
    compare-and-set: True only for the one process that made it."""

    def read(self) -> AccountState: ...

    def record_balance(self, balance: int, now: datetime, *, forget_before: datetime) -> None: ...

    def pause(self, cause: str, since: datetime, detail: str) -> bool: ...

    def resume(self) -> bool: ...

    def mark_undelivered_told(self, day: str) -> bool: ...


class PlaceStore(Protocol):
    """Bans and preferences per server or workspace (``core.access.places``)."""

    def is_banned(self, place: str, account: str) -> bool: ...

    def rules(self, place: str, account: str, channel: str | None = None) -> PlaceRules:
        """The ban, the place's preferences and the channel's default preset and reviewers in one read, never
        cached: what ``check_place`` decides on."""
        ...

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

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake()`` (from another thread) when a row is put; the stopper, or None: poll only."""
        ...


class ThumbnailIndex(Protocol):
    """One small WebP per delivered job (``core.media.thumbnails``)."""

    def put(self, job_id: str, webp: bytes, width: int, height: int) -> None: ...

    def get(self, job_id: str) -> tuple[bytes, int, int] | None: ...

    def delete_before(self, cutoff: datetime) -> int: ...


class LinkStore(Protocol):
    """The dashboard's one-time sign-in links, by hash (``core.web.dashboard.auth``)."""

    def add(self, token_hash: str, *, scope: str | None, actor: str, now: datetime, expires: datetime) -> None: ...

    def use(self, token_hash: str, now: datetime, *, forget_before: datetime) -> tuple[str, str | None] | None: ...


class InstallationStore(Protocol):
    """A chat app's installations in many workspaces, tokens sealed (``core.storage.installations``)."""

    def save(self, row: InstallationRow) -> None: ...

    def latest(self, *, org: str | None, workspace: str, installer: str | None = None,
               with_token: str | None = None) -> InstallationRow | None: ...

    def clear_tokens(self, *, org: str | None, workspace: str, names: Iterable[str],
                     installer: str | None = None) -> int: ...

    def delete(self, *, org: str | None, workspace: str, installer: str | None = None) -> int: ...

    def reseal(self) -> int: ...


class OAuthStateStore(Protocol):
    """The one-time states of an install flow: issued with an expiry, consumed at most once."""

    def issue(self, state: str, ttl_s: float) -> None: ...

    def consume(self, state: str) -> bool: ...


@runtime_checkable
class Store(Protocol):
    """The credits and the jobs, and one transaction that spans them (reserve + insert, capture + delivered,
    fail + release): what the orchestrator needs."""

    @property
    def ledger(self) -> CreditStore: ...

    @property
    def jobs(self) -> JobRepository: ...

    def transaction(self) -> AbstractContextManager[object]:
        """One short write transaction; every store call inside it joins it (all or nothing)."""
        ...

    def savepoint(self) -> AbstractContextManager[None]:
        """Inside ``transaction``: a part that an error undoes alone (the error is raised; the transaction
        goes on). Several submits share one transaction, each in a savepoint (``Orchestrator.submit``)."""
        ...

    def ping(self) -> None:
        """Raise if the database cannot be reached (``/healthz``)."""
        ...


@runtime_checkable
class Stores(Store, Protocol):
    """Every store of one database, and its keys (``core.storage.sqlite.SqliteStores`` is one)."""

    def secret(self, name: str) -> bytes: ...

    def start_checkpoints(self, hold: Callable[[], bool] | None = None) -> object | None:
        """The running bot's database log maintained in the background, if it has one (SQLite's
        ``checkpoints.Checkpointer``), waiting while ``hold()`` is True; None where there is none to keep."""
        ...

    def close(self) -> None: ...

    @property
    def gateway_account(self) -> GatewayAccountStore: ...

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

    @property
    def dashboard(self) -> Queries: ...

    def installations(self, platform: str, box: SecretBox) -> InstallationStore:
        """``platform``'s installations (distributed chat apps), their tokens sealed and opened by ``box``."""
        ...

    def oauth_states(self, platform: str) -> OAuthStateStore: ...

    def installed_places(self, platform: str | None = None) -> list[InstalledPlace]:
        """Where the app is installed, for people (doctor, dashboard): reads no token."""
        ...
