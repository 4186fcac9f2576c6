"""The credit ledger's tables (``accounts``, ``ledger``): the model is ``core.credits.ledger``'s docstring.

Every change is one short ``transaction`` that reads the account, checks, updates it, appends to the
ledger and moves every budget over the job (``SqliteBudgets``, same database); called inside a caller's
transaction (``Store.transaction``), it joins it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.credits.ledger import REPORT_FIELDS, Balance, Hold, LedgerEntry, check_size, report_csv
from imagine_bot.core.credits.periods import ADJECTIVES, PERIODS, describe_refill, next_boundary, period_start
from imagine_bot.core.errors import BudgetExhausted, ConfigError, InsufficientCredits, NotFound, UserInputError
from imagine_bot.core.jobs.model import ACTIVE_STATES
from imagine_bot.core.storage.budgets import SqliteBudgets
from imagine_bot.core.storage.db import (
    Database,
    execute_many,
    for_update,
    insert_rows,
    is_postgres,
    iso,
    iso_or_none,
    later,
    snapshot,
    transaction,
    utcnow,
)

ENTRY_COLUMNS = (
    "id", "ts", "account", "kind", "delta_balance", "delta_held", "balance_after", "held_after", "job_id",
    "actor", "note",
)
_ACTIVE = tuple(s.value for s in ACTIVE_STATES)


@dataclass(frozen=True, slots=True)
class _Account:
    """The stored account row (``allowance`` is the per-user override, None for the default)."""

    account: str
    balance: int
    held: int
    allowance: int | None
    period_start: datetime | None


@dataclass(frozen=True, slots=True)
class _Entry:
    """A ledger row to append: the change and the account after it."""

    after: _Account
    kind: str
    delta_balance: int
    delta_held: int
    job_id: str | None = None
    actor: str | None = None
    note: str | None = None


def _entry_row(stamp: str, e: _Entry) -> tuple[Any, ...]:
    """A ledger row's values, in the order of ``_ENTRIES``' columns."""
    return (stamp, e.after.account, e.kind, e.delta_balance, e.delta_held, e.after.balance, e.after.held, e.job_id,
            e.actor, e.note)


def _reserve_row(stamp: str, acct: _Account, cost: int, job_id: str) -> tuple[Any, ...]:
    """The ``reserve`` row of a hold of ``cost`` (``acct``: the account before it), as ``_entry_row`` gives it."""
    return (stamp, acct.account, "reserve", 0, cost, acct.balance, acct.held + cost, job_id, None, None)


#: ledger rows: this, then one ``_ENTRY`` for each row
_ENTRIES = ("INSERT INTO ledger (ts, account, kind, delta_balance, delta_held, balance_after, held_after, job_id,"
            " actor, note) VALUES ")
_ENTRY = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: a new account's row (``_open_row``)
_OPENS = ("INSERT INTO accounts (account, platform, workspace, \"user\", balance, held, allowance, period_start,"
          " created_at, updated_at) VALUES ")
_OPEN_MARK = "(?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)"
_OPEN = _OPENS + _OPEN_MARK


def _open_row(who: UserRef, balance: int, held: int, start: str | None, stamp: str) -> tuple[Any, ...]:
    """A new account's values, in the order of ``_OPEN``'s (``start``: its period's start, ``iso``)."""
    return (who.key, who.platform, who.workspace, who.user, balance, held, start, stamp, stamp)


class SqliteLedger:
    """Credit accounts and their ledger (see ``core.credits.ledger`` for the model)."""

    def __init__(
        self,
        db: Database,
        *,
        budgets: SqliteBudgets,
        allowance: int,
        period: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if period not in PERIODS:
            raise ConfigError("CREDITS_PERIOD", f"must be one of {', '.join(PERIODS)}, not {period!r}")
        if allowance < 0:
            raise ConfigError("CREDITS_ALLOWANCE", "must be 0 or more")
        if budgets.db is not db:
            raise ValueError("the ledger and its budgets must share one database (one transaction moves both)")
        self.db = db
        self.allowance = allowance
        self.period = period
        self.clock = clock
        #: the budgets above the user, moved in the same transactions (on the same database)
        self.budgets = budgets
        #: whether ``reserve_many`` can reserve a batch at once (SQLite's one writer; not PostgreSQL, where each
        #: reservation locks its own rows)
        self.reserves_together = not is_postgres(db)

    # --- reading and writing rows (always inside a transaction)

    def _now(self) -> datetime:
        now = self.clock()
        return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)

    def _load(self, key: str, *, lock: bool = True) -> _Account | None:
        """The account row; inside a transaction locked until its end (PostgreSQL: ``FOR UPDATE``), so the
        balance checked is the balance changed."""
        row = self.db.execute(
            "SELECT account, balance, held, allowance, period_start FROM accounts WHERE account = ?"
            + (for_update(self.db) if lock else ""), [key]
        ).fetchone()
        if row is None:
            return None
        start = datetime.fromisoformat(row[4]) if row[4] else None
        return _Account(row[0], row[1], row[2], row[3], start)

    def _allowance(self, acct: _Account) -> int:
        return self.allowance if acct.allowance is None else acct.allowance

    def _write(
        self,
        acct: _Account,
        stamp: str,
        kind: str,
        *,
        delta_balance: int = 0,
        delta_held: int = 0,
        job_id: str | None = None,
        actor: str | None = None,
        note: str | None = None,
    ) -> _Account:
        """Apply one change to an account read in this transaction and append its ledger row; returns the
        account after it. The balance after is computed here from the row as read: the row is ours until
        the commit (``FOR UPDATE``, or SQLite's one writer). Nothing reads their results: on PostgreSQL both
        go out with the transaction's next statement (``later``)."""
        later(self.db, "UPDATE accounts SET balance = balance + ?, held = held + ?, updated_at = ? WHERE account = ?",
              [delta_balance, delta_held, stamp, acct.account])
        after = replace(acct, balance=acct.balance + delta_balance, held=acct.held + delta_held)
        self._append(stamp, _Entry(after, kind, delta_balance, delta_held, job_id, actor, note))
        return after

    def _append(self, stamp: str, *entries: _Entry) -> None:
        """The ledger rows of changes already applied to the account, in order, in one ``INSERT``."""
        params = [value for e in entries for value in _entry_row(stamp, e)]
        later(self.db, _ENTRIES + ", ".join([_ENTRY] * len(entries)), params)

    def _opened(self, acct: _Account) -> _Entry:
        """The ``refill`` row of a new account (opened with its allowance)."""
        return _Entry(acct, "refill", self.allowance, 0, note="new account")

    def _refilled_entry(self, acct: _Account, amount: int) -> _Entry:
        """The ``refill`` row of a period's allowance (``acct``: the account after it)."""
        return _Entry(acct, "refill", amount, 0, note=f"{ADJECTIVES[self.period]} allowance")

    def _refill_due(self, acct: _Account, now: datetime) -> bool:
        if self.period == "never":
            return False
        if acct.period_start is None:
            return True
        boundary = next_boundary(acct.period_start, self.period)
        return boundary is not None and now >= boundary

    def _refilled(self, acct: _Account, now: datetime) -> tuple[_Account, int]:
        """The account after its due refill (if one is due), and the credits that refill adds; writes nothing."""
        if not self._refill_due(acct, now):
            return acct, 0
        start = period_start(now, self.period)
        assert start is not None
        amount = max(0, self._allowance(acct) - acct.balance)
        return replace(acct, balance=acct.balance + amount, period_start=start), amount

    def _refill(self, acct: _Account, now: datetime, stamp: str) -> _Account:
        """Top the balance up to the allowance if a period boundary has passed since the last refill; the
        account after it (not read back: the row is ours until the commit)."""
        after, amount = self._refilled(acct, now)
        if after is acct:
            return acct
        assert after.period_start is not None
        start = iso(after.period_start)
        if not amount:
            later(self.db, "UPDATE accounts SET period_start = ? WHERE account = ?", [start, acct.account])
            return after
        later(self.db, "UPDATE accounts SET period_start = ?, balance = balance + ?, updated_at = ? WHERE account = ?",
              [start, amount, stamp, acct.account])
        self._append(stamp, self._refilled_entry(after, amount))
        return after

    def _must_load(self, key: str) -> _Account:
        acct = self._load(key)
        if acct is None:
            raise NotFound(f"no credit account {key!r}", user_message="I could not find that account.")
        return acct

    def _touch(self, who: UserRef, now: datetime, stamp: str) -> _Account:
        """Load the account, opening it with its allowance on first use, and apply a due refill."""
        acct = self._load(who.key)
        if acct is not None:
            return self._refill(acct, now, stamp)
        return self._open(who, now, stamp)[0]

    def _open(self, who: UserRef, now: datetime, stamp: str, hold: tuple[str, int] | None = None
              ) -> tuple[_Account, bool]:
        """Open a new account: its row inserted with its allowance already in (no update after), then its
        ``refill`` row. ``hold`` (job id, cost): a reservation the caller knows is new and the allowance
        covers, held by the same insert, its ``reserve`` row written with the refill's. Another transaction
        opening the account at the same moment: theirs counts, loaded and refilled as usual, and nothing is
        held here. Returns the account and whether it holds the reservation."""
        start = period_start(now, self.period)
        held = 0 if hold is None else hold[1]
        opened = self.db.execute(_OPEN + " ON CONFLICT (account) DO NOTHING",
                                 _open_row(who, self.allowance, held, iso_or_none(start), stamp)).rowcount == 1
        if not opened:
            return self._refill(self._must_load(who.key), now, stamp), False
        acct = _Account(who.key, self.allowance, 0, None, start)  # as just written: not read back
        refill = self._opened(acct)
        if hold is None:
            self._append(stamp, refill)
            return acct, False
        acct = replace(acct, held=held)
        self._append(stamp, refill, _Entry(acct, "reserve", 0, held, job_id=hold[0]))
        return acct, True

    def _balance(self, acct: _Account) -> Balance:
        allowance = self._allowance(acct)
        nxt = None
        if self.period != "never" and allowance > 0 and acct.period_start is not None:
            nxt = next_boundary(acct.period_start, self.period)
        return Balance(acct.account, acct.balance, acct.held, allowance, self.period, nxt)

    # --- the API

    def balance(self, who: UserRef) -> Balance:
        """The user's balance now (opens the account and applies a due refill).

        A plain read, taking no write lock, unless the account must be opened or refilled."""
        now = self._now()
        acct = self._load(who.key, lock=False)
        if acct is not None and not self._refill_due(acct, now):
            return self._balance(acct)
        with transaction(self.db, rows=True):
            now = self._now()
            return self._balance(self._touch(who, now, iso(now)))

    def available(self, who: UserRef) -> Balance:
        """The balance as ``balance`` would give it, changing nothing (a precheck before an ack): an account
        not opened yet counts with its allowance, a refill that is due as made. One read, no write lock."""
        now = self._now()
        acct = self._load(who.key, lock=False)
        if acct is None:
            return self._balance(_Account(who.key, self.allowance, 0, None, period_start(now, self.period)))
        return self._balance(self._refilled(acct, now)[0])

    def reserve(self, who: UserRef, job_id: str, cost: int, *, scopes: tuple[str, ...] = (),
                channel: str | None = None, new_job: bool = False) -> Balance:
        """Hold ``cost`` credits for ``job_id``; raises ``InsufficientCredits`` when available < cost,
        and ``BudgetExhausted`` when a budget over the user (``scopes``, and the global cap) cannot cover it.

        Reserving a job that was already reserved changes nothing and returns the current balance.
        ``new_job``: the caller made ``job_id`` just now, so that is not looked up (the unique index
        ``ledger_job_kind`` still refuses a second reservation).
        """
        if cost < 0:
            raise ValueError(f"a job cannot cost {cost} credits")
        now = self._now()
        stamp = iso(now)
        with transaction(self.db, rows=True):  # the account's row and the budgets' rows, locked in that order
            acct = self._load(who.key)
            held = False
            if acct is None:
                hold = (job_id, cost) if new_job and cost <= self.allowance else None
                acct, held = self._open(who, now, stamp, hold)
            else:
                acct = self._refill(acct, now, stamp)
            if not held:
                if not new_job and self._entry(job_id, "reserve") is not None:
                    return self._balance(acct)
                if (refused := self._short(acct, cost, now)) is not None:
                    raise refused
                acct = self._write(acct, stamp, "reserve", delta_held=cost, job_id=job_id)
            self.budgets.reserve(scopes, job_id, who.key, channel, cost)
            return self._balance(acct)  # the row is ours until the commit

    def _short(self, acct: _Account, cost: int, now: datetime) -> InsufficientCredits | None:
        """The refusal of a reservation of ``cost`` on the account as it is (refilled), if it cannot cover it."""
        available = acct.balance - acct.held
        if available >= cost:
            return None
        nxt = self._balance(acct).next_refill
        return InsufficientCredits(balance=available, cost=cost, next_refill=describe_refill(nxt, now))

    def reserve_many(self, holds: Sequence[Hold]) -> list[InsufficientCredits | BudgetExhausted | None] | None:
        """Reserve new jobs of different accounts together (a batch of submits, ``Orchestrator._commit``):
        the same rules as ``reserve``, decided in memory from rows read once for the batch (each job against
        what the jobs before it hold), and written in a few statements for all of it. Returns each hold's
        refusal (None: held; a refusal writes nothing).

        Returns None, having written nothing, where the batch must be reserved one by one (``reserve``): on
        PostgreSQL (each reservation locks its own rows there), with an account twice, or where a budget over
        a job must be decided one job at a time (``SqliteBudgets.plain_rows``: not made yet, a member cap, a
        period to move on). Joins the caller's transaction; SQLite's one writer holds every row read until
        its commit."""
        keys = [h.who.key for h in holds]
        if not holds or not self.reserves_together or len(set(keys)) < len(keys) or any(h.cost < 0 for h in holds):
            return None  # (a negative cost: ``reserve`` refuses that one alone)
        now = self._now()
        stamp = iso(now)
        with transaction(self.db, rows=True):
            budgets = self.budgets.plain_rows([h.scopes for h in holds], now)
            if budgets is None:
                return None
            found = self._load_many(keys)
            answers: list[InsufficientCredits | BudgetExhausted | None] = []
            opened: list[tuple[Any, ...]] = []
            changed: list[tuple[Any, ...]] = []
            entries: list[tuple[Any, ...]] = []
            new_start = period_start(now, self.period)
            new_start_iso = iso_or_none(new_start)  # (the same for every account of the batch: written once)
            take = self.budgets.take
            for h, key, scopes in zip(holds, keys, budgets.scopes, strict=True):
                before = found.get(key)
                # the account as ``reserve`` would find it: opened with its allowance, or refilled if due
                acct, refill = ((_Account(key, self.allowance, 0, None, new_start), 0) if before is None
                                else self._refilled(before, now))
                refused = self._short(acct, h.cost, now) or take(budgets, scopes, h, stamp)
                answers.append(refused)
                if refused is not None:
                    continue
                if before is None:
                    opened.append(_open_row(h.who, acct.balance, h.cost, new_start_iso, stamp))
                    entries.append(_entry_row(stamp, self._opened(acct)))
                else:
                    if refill:
                        entries.append(_entry_row(stamp, self._refilled_entry(acct, refill)))
                    moved = acct.period_start if acct.period_start != before.period_start else None
                    changed.append((acct.balance, acct.held + h.cost, iso_or_none(moved), stamp, key))
                entries.append(_reserve_row(stamp, acct, h.cost, h.job_id))
            if opened:
                insert_rows(self.db, _OPENS, _OPEN_MARK, opened)
            if changed:
                execute_many(self.db, "UPDATE accounts SET balance = ?, held = ?,"
                                      " period_start = COALESCE(?, period_start), updated_at = ? WHERE account = ?",
                             changed)
            if entries:
                insert_rows(self.db, _ENTRIES, _ENTRY, entries)
            self.budgets.hold_many(budgets, stamp)
            return answers

    def _load_many(self, keys: Sequence[str]) -> dict[str, _Account]:
        """The accounts that exist among ``keys``, in one statement (``reserve_many``: SQLite only)."""
        marks = ", ".join("?" * len(keys))
        rows = self.db.execute("SELECT account, balance, held, allowance, period_start FROM accounts"
                               f" WHERE account IN ({marks})", list(keys)).fetchall()
        return {r[0]: _Account(r[0], r[1], r[2], r[3], datetime.fromisoformat(r[4]) if r[4] else None) for r in rows}

    def capture(self, job_id: str) -> bool:
        """Charge a delivered job its held cost. False (and no change) if it was already captured or
        released; ``NotFound`` if it was never reserved."""
        return self._settle(job_id, "capture")

    def release(self, job_id: str) -> bool:
        """Give a failed job's hold back. False (and no change) if it was already captured or
        released; ``NotFound`` if it was never reserved."""
        return self._settle(job_id, "release")

    def _entry(self, job_id: str, kind: str) -> tuple[str, int] | None:
        row = self.db.execute(
            "SELECT account, delta_held FROM ledger WHERE job_id = ? AND kind = ?", [job_id, kind]
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def _settle(self, job_id: str, kind: str) -> bool:
        now = self._now()
        with transaction(self.db, rows=True):
            # the reservation and its account, the account locked first: a settlement of the same job waits
            # here, then sees ours (PostgreSQL gives the locked row as it is after the wait)
            row = self.db.execute(
                "SELECT l.delta_held, a.account, a.balance, a.held, a.allowance, a.period_start FROM ledger l"
                " JOIN accounts a ON a.account = l.account WHERE l.job_id = ? AND l.kind = 'reserve'"
                + for_update(self.db, of="a"), [job_id]).fetchone()
            if row is None:
                raise NotFound(f"job {job_id!r} has no credit reservation")
            cost, key = row[0], row[1]
            acct = _Account(key, row[2], row[3], row[4], datetime.fromisoformat(row[5]) if row[5] else None)
            if self.db.execute("SELECT 1 FROM ledger WHERE job_id = ? AND kind IN ('capture', 'release')",
                               [job_id]).fetchone():
                return False
            stamp = iso(now)
            acct = self._refill(acct, now, stamp)
            self._write(acct, stamp, kind, delta_balance=-cost if kind == "capture" else 0, delta_held=-cost,
                        job_id=job_id)
            self.budgets.settle(job_id, kind)
            return True

    def grant(self, who: UserRef, amount: int, *, actor: str, note: str | None = None) -> Balance:
        """Give ``amount`` credits (a ``grant`` row), or take them back when negative (an ``adjust`` row).

        A revoke may leave the balance no lower than the credits on hold; a larger one is refused.
        """
        if amount == 0:
            raise UserInputError("Grant a number of credits other than 0 (negative to take credits back).")
        check_size(amount)
        now = self._now()
        with transaction(self.db):
            acct = self._touch(who, now, iso(now))
            revocable = acct.balance - acct.held
            if amount < 0 and -amount > revocable:
                raise UserInputError(
                    f"Cannot take back {-amount} credits: {who.key} has {acct.balance}"
                    f" with {acct.held} held by images in progress, so at most {revocable} can be taken back."
                    " Nothing was changed."
                )
            kind = "grant" if amount > 0 else "adjust"
            self._write(acct, iso(now), kind, delta_balance=amount, actor=actor, note=note)
            return self._balance(self._must_load(who.key))

    def set_allowance(self, who: UserRef, allowance: int | None, *, actor: str) -> Balance:
        """Set a per-user allowance (None: back to the default), noted in an ``adjust`` row.

        A raise is added at once, never past the new allowance; a cut takes nothing back.
        """
        if allowance is not None and allowance < 0:
            raise UserInputError("An allowance must be 0 or more credits.")
        if allowance is not None:
            check_size(allowance)
        now = self._now()
        stamp = iso(now)
        with transaction(self.db):
            acct = self._touch(who, now, stamp)
            old = self._allowance(acct)
            new = self.allowance if allowance is None else allowance
            self.db.execute("UPDATE accounts SET allowance = ? WHERE account = ?", [allowance, who.key])
            default = " (the default)" if allowance is None else ""
            after = self._write(acct, stamp, "adjust", actor=actor, note=f"allowance {old} -> {new}{default}")
            top_up = max(0, min(new - old, new - acct.balance))
            if top_up:
                raised = "allowance raised"
                self._write(after, stamp, "refill", delta_balance=top_up, actor=actor, note=raised)
            return self._balance(self._must_load(who.key))

    def history(self, who: UserRef | None = None, *, limit: int = 50) -> list[LedgerEntry]:
        """Ledger rows, newest first, for one user or everyone. Opens no account."""
        sql = f"SELECT {', '.join(ENTRY_COLUMNS)} FROM ledger"
        params: list[Any] = []
        if who is not None:
            sql += " WHERE account = ?"
            params.append(who.key)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(max(0, limit))
        entries = []
        for values in self.db.execute(sql, params).fetchall():
            row = dict(zip(ENTRY_COLUMNS, values, strict=True))
            row["ts"] = datetime.fromisoformat(row["ts"])
            entries.append(LedgerEntry(**row))
        return entries

    def accounts(self) -> list[Balance]:
        """Every account as of now (applying due refills), in key order."""
        now = self._now()
        with snapshot(self.db):  # a read: the write lock only when a refill is due
            keys = [r[0] for r in self.db.execute("SELECT account FROM accounts ORDER BY account").fetchall()]
            loaded = [acct for key in keys if (acct := self._load(key, lock=False)) is not None]
        if not any(self._refill_due(acct, now) for acct in loaded):
            return [self._balance(acct) for acct in loaded]
        with transaction(self.db):
            return [self._balance(self._refill(self._must_load(key), now, iso(now))) for key in keys]

    def report_rows(self, since: datetime | None = None) -> list[dict[str, object]]:
        """Per account: current balance, held and allowance, and the totals since ``since`` (all time
        when None) of credits granted (net of revokes), refilled and spent, and jobs charged and refunded."""
        totals: dict[str, dict[str, int]] = {}
        self.accounts()  # applies refills that are due (a short write, only then)
        with snapshot(self.db):  # one consistent read of balances and totals, no write lock
            balances = self.accounts()
            rows = self.db.execute(
                """
                SELECT account,
                    COALESCE(SUM(CASE WHEN kind IN ('grant', 'adjust') THEN delta_balance END), 0),
                    COALESCE(SUM(CASE WHEN kind = 'refill' THEN delta_balance END), 0),
                    COALESCE(-SUM(CASE WHEN kind = 'capture' THEN delta_balance END), 0),
                    COUNT(CASE WHEN kind = 'capture' THEN 1 END),
                    COUNT(CASE WHEN kind = 'release' THEN 1 END)
                FROM ledger WHERE ts >= ? GROUP BY account
                """,
                [iso(since) if since is not None else ""],
            ).fetchall()
        for key, *sums in rows:
            totals[key] = dict(zip(REPORT_FIELDS[4:], sums, strict=True))
        zero = dict.fromkeys(REPORT_FIELDS[4:], 0)
        return [
            {"account": b.account, "balance": b.balance, "held": b.held, "allowance": b.allowance,
             **totals.get(b.account, zero)}
            for b in balances
        ]

    def report_csv(self, since: datetime | None = None) -> str:
        """``report_rows`` as CSV text, header row first."""
        return report_csv(self.report_rows(since))

    def verify(self) -> list[str]:
        """One plain line per account whose balance or held differs from the sum of its ledger deltas."""
        rows = self.db.execute(
            """
            SELECT a.account, a.balance, a.held,
                COALESCE(SUM(l.delta_balance), 0), COALESCE(SUM(l.delta_held), 0)
            FROM accounts a LEFT JOIN ledger l ON l.account = a.account
            GROUP BY a.account ORDER BY a.account
            """
        ).fetchall()
        problems = self.budgets.verify()
        for key, balance, held, sum_balance, sum_held in rows:
            if balance != sum_balance or held != sum_held:
                problems.append(
                    f"{key}: balance {balance} but the ledger sums to {sum_balance};"
                    f" held {held} but the ledger sums to {sum_held}"
                )
        return problems

    def orphan_holds(self) -> list[str]:
        """One line per hold that no active job owns, on a user's account or on a budget: its job ended (or
        never existed) without the hold being captured or released, so those credits stay held for good."""
        rows = self.db.execute(
            "SELECT r.account, r.job_id, r.delta_held, j.state FROM ledger r LEFT JOIN jobs j ON j.id = r.job_id"
            " WHERE r.kind = 'reserve' AND r.job_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ledger s"
            " WHERE s.job_id = r.job_id AND s.kind IN ('capture', 'release'))"
            f" AND (j.id IS NULL OR j.state NOT IN ({','.join('?' * len(_ACTIVE))})) ORDER BY r.id",
            list(_ACTIVE)).fetchall()
        problems = [f"{account}: {held} credits held for job {job_id}, which is {state or 'not a known job'}:"
                    " nothing will ever release them" for account, job_id, held, state in rows]
        return problems + self.budgets.orphan_holds()
