"""The budgets' tables (``budgets``, ``budget_ledger``): the rules are ``core.credits.budgets``'.

Moved by the ledger's own reserve, capture and release, inside its transaction (``SqliteLedger`` calls
``reserve`` and ``settle`` here), so a budget never drifts from the money.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from imagine_bot.core.access.authority import GLOBAL, scope_noun
from imagine_bot.core.credits.budgets import MAX_CREDITS_CHANGE, UNLIMITED, BudgetStatus
from imagine_bot.core.credits.ledger import Hold
from imagine_bot.core.credits.periods import PERIODS, next_boundary, period_name, period_start, refill_words
from imagine_bot.core.errors import BudgetExhausted, UserInputError
from imagine_bot.core.jobs.model import ACTIVE_STATES
from imagine_bot.core.storage.db import (
    Database,
    execute_many,
    for_update,
    insert_rows,
    is_postgres,
    iso,
    iso_or_none,
    later,
    transaction,
    utcnow,
)

_ACTIVE = tuple(s.value for s in ACTIVE_STATES)
_ACTIVE_MARKS = ",".join("?" * len(_ACTIVE))
_COLUMNS = ("scope", "amount", "period", "period_start", "spent", "held", "member_cap", "updated_at")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM budgets WHERE scope = ?"
#: the key a row read locked carries (``_row``): its totals are the ones the commit changes
_LOCKED = "locked"


@lru_cache(maxsize=64)  # the same few period starts are parsed at every reservation
def _start(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _reset_due(row: dict[str, Any], now: datetime) -> bool:
    """Whether the budget's period must move on (a new period began, or it has none yet)."""
    if row["period"] == "never":
        return False
    start = _start(row["period_start"])
    if start is None:
        return True
    boundary = next_boundary(start, row["period"])
    return boundary is not None and now >= boundary


#: a reservation's budget rows: this, then one ``_HOLD`` for each row (``_hold_row``)
_HOLDS = ("INSERT INTO budget_ledger (ts, scope, kind, delta_spent, delta_held, spent_after, held_after, job_id,"
          " account, channel) VALUES ")
_HOLD = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _hold_row(stamp: str, scope: str, row: dict[str, Any], cost: int, job_id: str, account: str,
              channel: str | None) -> tuple[Any, ...]:
    """The ``reserve`` row of a hold of ``cost`` on a budget as read (``row``, before the hold)."""
    return (stamp, scope, "reserve", 0, cost, row["spent"], row["held"] + cost, job_id, account, channel)


def _over(scopes: Sequence[str], rows: dict[str, dict[str, Any]]) -> list[str]:
    """The budgets a job holds, in order: its place, its channel only if that has a budget (``rows``: the rows
    that exist), and the global cap."""
    return [*(s for s in scopes if "#" not in s or s in rows), GLOBAL]


@dataclass(slots=True)
class PlainRows:
    """A batch's budgets (``SqliteBudgets.plain_rows``): the rows read, by scope, as the batch's holds so far
    leave them; the scopes of each job; and the holds taken (``take``), written by ``hold_many``."""

    rows: dict[str, dict[str, Any]]
    scopes: list[list[str]]
    #: the budgets among ``rows`` that can refuse a hold (``SqliteBudgets._limited``: a limit; a batch changes none)
    limited: set[str] = field(default_factory=set)
    entries: list[tuple[Any, ...]] = field(default_factory=list)
    totals: Counter[str] = field(default_factory=Counter)


def _short(scope: str, status: BudgetStatus, cost: int) -> BudgetExhausted | None:
    """The refusal of a budget whose remaining amount cannot cover ``cost`` (None: it can, or no limit)."""
    if status.remaining is None or status.remaining >= cost:
        return None
    return BudgetExhausted(scope=scope, noun=scope_noun(scope), remaining=status.remaining, cost=cost,
                           period=period_name(status.period, status.period_start),
                           refill=refill_words(status.period, status.next_reset))


class SqliteBudgets:
    """The budgets' rows (``budgets``, ``budget_ledger``): see ``core.credits.budgets`` for the rules."""

    def __init__(self, db: Database, *, default_amount: int | None, period: str = "month",
                 cap: int | None = None, cap_period: str = "month",
                 clock: Callable[[], datetime] = utcnow) -> None:
        for name, value in (("SCOPE_BUDGET_PERIOD", period), ("SPEND_CAP_PERIOD", cap_period)):
            if value not in PERIODS:
                raise ValueError(f"{name} must be one of {', '.join(PERIODS)}")
        self.db = db
        self.default_amount = default_amount
        self.period = period
        self.cap = cap
        self.cap_period = cap_period
        self.clock = clock

    def _now(self) -> datetime:
        now = self.clock()
        return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)

    # ------------------------------------------------------------------ rows
    def _row(self, scope: str) -> dict[str, Any] | None:
        """The budget's row; inside a transaction locked until its end (PostgreSQL: ``FOR UPDATE``)."""
        row = self.db.execute(_SELECT + for_update(self.db), [scope]).fetchone()
        return None if row is None else {**dict(zip(_COLUMNS, row, strict=True)), _LOCKED: True}

    def _rows_to_decide(self, scopes: list[str], now: datetime) -> dict[str, dict[str, Any]]:
        """The budget rows over a job, by scope, read at once; each that a reservation must decide on (a limit,
        a member cap, a period to reset) read again locked (``FOR UPDATE``), one by one in the order given
        (place, channel, global: the order settle writes them in, so two never wait on each other). An
        unlimited budget is only added to (an atomic ``UPDATE`` sent with the commit): the busiest row, the
        global budget, stays unlocked until then, and reservations of different users do not queue on it.
        What could change a limit or a period between the read and the commit (``set_amount``, ...) takes
        the write lock alone, so it never runs during a money transaction."""
        rows = self._read(scopes)
        for scope in scopes:
            row = rows.get(scope)
            if row is not None and self._to_decide(row, now) and (locked := self._row(scope)) is not None:
                rows[scope] = locked
        return rows

    def _read(self, scopes: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The rows of these scopes that exist, by scope, in one statement (not locked)."""
        marks = ", ".join("?" * len(scopes))
        found = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM budgets WHERE scope IN ({marks})",
                                list(scopes)).fetchall()
        return {r[0]: dict(zip(_COLUMNS, r, strict=True)) for r in found}

    def _may_refuse(self, scopes: Sequence[str], rows: dict[str, dict[str, Any]]) -> bool:
        """Whether any budget a reservation over ``scopes`` would hold has a limit or a member cap (``rows``:
        the rows that exist): an unlimited budget refuses nothing, whatever its period."""
        for scope in [*scopes, GLOBAL]:
            row = rows.get(scope)
            if row is not None:
                if self._limited(row):
                    return True
            elif "#" not in scope and (self.cap if scope == GLOBAL else self.default_amount) is not None:
                return True  # a place's budget made on first use, with the default amount (or the cap)
        return False

    def _to_decide(self, row: dict[str, Any], now: datetime) -> bool:
        """Whether a reservation decides anything on this budget: a limit or a member cap to check, or its
        period to move on (``_touch``)."""
        return self._limited(row) or self._period_moves(row, now)

    def _period_moves(self, row: dict[str, Any], now: datetime) -> bool:
        """Whether a reservation moves the budget's period on (``_touch``): a new period began, or the global
        cap's kind of period changed (``SPEND_CAP_PERIOD``)."""
        return (row["scope"] == GLOBAL and row["period"] != self.cap_period) or _reset_due(row, now)

    def _limited(self, row: dict[str, Any]) -> bool:
        """Whether the budget can refuse a reservation: it has a limit or a member cap."""
        return self._amount(row)[0] is not None or row["member_cap"] is not None

    def _amount(self, row: dict[str, Any]) -> tuple[int | None, bool]:
        """The effective amount (None: unlimited) and whether it is the default."""
        if row["scope"] == GLOBAL:
            return self.cap, True
        if row["amount"] is None:
            return self.default_amount, True
        return (None if row["amount"] == UNLIMITED else int(row["amount"])), False

    def _status(self, row: dict[str, Any]) -> BudgetStatus:
        amount, default = self._amount(row)
        start = _start(row["period_start"])
        nxt = next_boundary(start, row["period"]) if start is not None else None
        return BudgetStatus(row["scope"], amount, row["period"], row["spent"], row["held"], start, nxt,
                            row["member_cap"], default)

    def _touch(self, scope: str, now: datetime, rows: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The budget row, created on first use, with a due period reset applied (``rows``: the rows read
        just before in the same transaction, by scope; a scope missing there has none)."""
        row = self._row(scope) if rows is None else rows.get(scope)
        wanted = self.cap_period if scope == GLOBAL else None
        if row is None:
            period = wanted or self.period
            start = period_start(now, period)
            self.db.execute(
                "INSERT INTO budgets (scope, amount, period, period_start, spent, held, member_cap, updated_at)"
                " VALUES (?, NULL, ?, ?, 0, 0, NULL, ?) ON CONFLICT (scope) DO NOTHING",
                [scope, period, iso_or_none(start), iso(now)])
            row = self._row(scope)
            assert row is not None
            return row
        if wanted and row["period"] != wanted:  # SPEND_CAP_PERIOD changed: start a period of the new kind
            self.db.execute("UPDATE budgets SET period = ?, period_start = NULL WHERE scope = ?", [wanted, scope])
            row = {**row, "period": wanted, "period_start": None}
        if _reset_due(row, now):
            new_start = period_start(now, row["period"])
            assert new_start is not None
            self.db.execute("UPDATE budgets SET period_start = ? WHERE scope = ?", [iso(new_start), scope])
            if row["spent"]:
                self._write(scope, iso(now), "reset", delta_spent=-row["spent"], note=f"new {row['period']}")
            row = self._row(scope)
            assert row is not None
        return row

    def _write(self, scope: str, stamp: str, kind: str, *, delta_spent: int = 0, delta_held: int = 0,
               job_id: str | None = None, account: str | None = None, channel: str | None = None,
               actor: str | None = None, note: str | None = None, row: dict[str, Any] | None = None) -> None:
        """Apply one change to a budget and append its row (with the totals after it); nothing reads their
        results (``later``: on PostgreSQL they go out with the transaction's next statement). ``row``: the
        budget as read in this transaction, not changed since: where it is ours until the commit (SQLite's
        one writer, or read ``FOR UPDATE``), the totals after are computed from it instead of read back."""
        later(self.db, "UPDATE budgets SET spent = spent + ?, held = held + ?, updated_at = ? WHERE scope = ?",
              [delta_spent, delta_held, stamp, scope])
        if row is not None and self._ours(row):
            later(self.db,
                  "INSERT INTO budget_ledger (ts, scope, kind, delta_spent, delta_held, spent_after, held_after,"
                  " job_id, account, channel, actor, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  [stamp, scope, kind, delta_spent, delta_held, row["spent"] + delta_spent, row["held"] + delta_held,
                   job_id, account, channel, actor, note])
            return
        later(self.db,
              "INSERT INTO budget_ledger (ts, scope, kind, delta_spent, delta_held, spent_after, held_after, job_id,"
              " account, channel, actor, note) SELECT ?, scope, ?, ?, ?, spent, held, ?, ?, ?, ?, ? FROM budgets"
              " WHERE scope = ?",
              [stamp, kind, delta_spent, delta_held, job_id, account, channel, actor, note, scope])

    def _ours(self, row: dict[str, Any]) -> bool:
        """Whether a row read in this transaction is the one its commit changes: nothing else can write it
        until then (SQLite's one writer, or read ``FOR UPDATE``)."""
        return bool(row.get(_LOCKED)) or not is_postgres(self.db)

    def _hold(self, touched: list[tuple[str, dict[str, Any]]], stamp: str, cost: int, job_id: str, account: str,
              channel: str | None) -> None:
        """A reservation's hold on every budget over the job (``touched``: scope and row as read, in order).
        Every row ours (``_ours``): one ``UPDATE`` of them all and one ``INSERT`` of their rows, in that order,
        the totals after computed from the rows (no row lock is taken anew, so there is no order to keep);
        else one budget at a time, in order (place, channel, global)."""
        if len(touched) == 1 or not all(self._ours(row) for _, row in touched):
            for scope, row in touched:
                self._write(scope, stamp, "reserve", delta_held=cost, job_id=job_id, account=account,
                            channel=channel, row=row)
            return
        scopes = [scope for scope, _ in touched]
        marks = ", ".join("?" * len(scopes))
        later(self.db, f"UPDATE budgets SET held = held + ?, updated_at = ? WHERE scope IN ({marks})",
              [cost, stamp, *scopes])
        params = [value for scope, row in touched
                  for value in _hold_row(stamp, scope, row, cost, job_id, account, channel)]
        later(self.db, _HOLDS + ", ".join([_HOLD] * len(touched)), params)

    def _member_spend(self, scope: str, account: str, since: datetime | None) -> int:
        row = self.db.execute(
            "SELECT COALESCE(SUM(delta_held), 0) FROM budget_ledger WHERE scope = ? AND account = ?"
            " AND kind IN ('reserve', 'release') AND ts >= ?",
            [scope, account, iso(since) if since else ""]).fetchone()
        return max(0, int(row[0]))

    # ------------------------------------------------------------------ money (inside the ledger's transaction)
    def reserve(self, scopes: Sequence[str], job_id: str, account: str, channel: str | None, cost: int) -> None:
        """Hold ``cost`` on the global budget and every scope given (a channel only if it has a budget);
        raise ``BudgetExhausted`` naming the first that cannot cover it. Joins the caller's transaction."""
        now = self._now()
        with transaction(self.db, rows=True):
            rows = self._rows_to_decide([*scopes, GLOBAL], now)
            touched = []
            for scope in _over(scopes, rows):
                row = self._touch(scope, now, rows)
                touched.append((scope, row))
                if not self._limited(row):
                    continue  # unlimited, no member cap: nothing to check
                status = self._status(row)
                if (short := _short(scope, status, cost)) is not None:
                    raise short
                if status.member_cap is not None:
                    used = self._member_spend(scope, account, status.period_start)
                    if used + cost > status.member_cap:
                        raise BudgetExhausted(scope=scope, noun=scope_noun(scope), remaining=status.member_cap - used,
                                              cost=cost, period=period_name(status.period, status.period_start),
                                              refill=refill_words(status.period, status.next_reset),
                                              member_cap=status.member_cap)
            self._hold(touched, iso(now), cost, job_id, account, channel)

    def plain_rows(self, scope_lists: Sequence[Sequence[str]], now: datetime) -> PlainRows | None:
        """For a batch of reservations (``SqliteLedger.reserve_many``): the rows of the budgets over each job,
        read in one statement, and each job's scopes in the order ``reserve`` holds them. None where a budget
        must be decided one job at a time: one not made yet, one with a member cap (its spend is read per
        member) or with a period to move on (``_one_by_one``); the batch is then reserved one job at a time."""
        rows = self._read(sorted({s for scopes in scope_lists for s in scopes} | {GLOBAL}))
        if any(self._one_by_one(row, now) for row in rows.values()):
            return None
        touched: list[list[str]] = []
        seen: dict[tuple[str, ...], list[str]] = {}  # a burst's jobs mostly share their scopes
        for scopes in scope_lists:
            key = tuple(scopes)
            over = seen.get(key)
            if over is None:
                over = seen[key] = _over(scopes, rows)
                if any(scope not in rows for scope in over):
                    return None
            touched.append(over)
        return PlainRows(rows, touched, {scope for scope, row in rows.items() if self._limited(row)})

    def _one_by_one(self, row: dict[str, Any], now: datetime) -> bool:
        """Whether a batch cannot decide on this budget in memory (``plain_rows``)."""
        return row["member_cap"] is not None or self._period_moves(row, now)

    def take(self, plain: PlainRows, scopes: Sequence[str], hold: Hold, stamp: str) -> BudgetExhausted | None:
        """One reservation of a batch on its budgets (``scopes`` from ``plain_rows``): the refusal of the first
        that cannot cover it, as ``reserve`` decides (nothing taken then), else its holds, noted in ``plain``
        (the rows as this batch leaves them) for ``hold_many``."""
        cost = hold.cost
        for scope in scopes:
            if scope in plain.limited and (short := _short(scope, self._status(plain.rows[scope]), cost)) is not None:
                return short
        account = hold.who.key
        for scope in scopes:
            row = plain.rows[scope]
            plain.entries.append(_hold_row(stamp, scope, row, cost, hold.job_id, account, hold.channel))
            row["held"] += cost
            plain.totals[scope] += cost
        return None

    def hold_many(self, plain: PlainRows, stamp: str) -> None:
        """Write the holds a batch took (``take``): one ``UPDATE`` for each budget and every ``budget_ledger``
        row in one statement, the totals after each computed from the rows as read (ours until the commit)."""
        if plain.totals:
            execute_many(self.db, "UPDATE budgets SET held = held + ?, updated_at = ? WHERE scope = ?",
                         [(total, stamp, scope) for scope, total in plain.totals.items()])
            insert_rows(self.db, _HOLDS, _HOLD, plain.entries)

    def check(self, scopes: Sequence[str], account: str, cost: int) -> None:
        """Raise the ``BudgetExhausted`` a reservation would meet now, changing nothing. Where no budget over
        the job has a limit or a member cap, one read decides (no write lock, no savepoint)."""
        if not self._may_refuse(scopes, self._read([*scopes, GLOBAL])):
            return
        with transaction(self.db, rows=True):
            self.db.execute("SAVEPOINT budget_check")
            try:
                self.reserve(scopes, "-precheck-", account, None, cost)
            finally:
                self.db.execute("ROLLBACK TO budget_check")
                self.db.execute("RELEASE budget_check")

    def settle(self, job_id: str, kind: str) -> None:
        """Capture or release every budget hold of a job that has not been settled yet."""
        now = self._now()
        with transaction(self.db, rows=True):
            held = self.db.execute(
                "SELECT r.scope, r.delta_held, r.account, r.channel FROM budget_ledger r WHERE r.job_id = ?"
                " AND r.kind = 'reserve' AND NOT EXISTS (SELECT 1 FROM budget_ledger s WHERE s.job_id = r.job_id"
                " AND s.scope = r.scope AND s.kind IN ('capture', 'release')) ORDER BY r.id", [job_id]).fetchall()
            for scope, cost, account, channel in held:
                self._write(scope, iso(now), kind, delta_spent=cost if kind == "capture" else 0, delta_held=-cost,
                            job_id=job_id, account=account, channel=channel)

    # ------------------------------------------------------------------ reading and setting
    def status(self, scope: str) -> BudgetStatus:
        """A budget as of now (created on first look, so a place shows its default)."""
        with transaction(self.db):
            return self._status(self._touch(scope, self._now()))

    def all(self) -> list[BudgetStatus]:
        now = self._now()
        with transaction(self.db):
            scopes = [r[0] for r in self.db.execute("SELECT scope FROM budgets ORDER BY scope").fetchall()]
            return [self._status(self._touch(s, now)) for s in scopes]

    def job_scopes(self, job_id: str) -> list[str]:
        """The scopes a job was reserved against (its place first)."""
        rows = self.db.execute("SELECT scope FROM budget_ledger WHERE job_id = ? AND kind = 'reserve' ORDER BY id",
                               [job_id]).fetchall()
        return [r[0] for r in rows]

    def set_amount(self, scope: str, amount: int | None, *, actor: str, period: str | None = None,
                   unlimited: bool = False) -> BudgetStatus:
        """Operators only (the caller checks): set a scope's amount per period (None: back to the default;
        ``unlimited``: no limit). The global cap is a setting (``SPEND_CAP``), not set here."""
        if scope == GLOBAL:
            raise UserInputError("The global cap is the SPEND_CAP setting; change it there and restart.")
        if amount is not None and not 0 <= amount <= MAX_CREDITS_CHANGE:
            raise UserInputError(f"A budget must be from 0 to {MAX_CREDITS_CHANGE:,} credits. Nothing was changed.")
        if period is not None and period not in PERIODS:
            raise UserInputError(f"A budget period is one of {', '.join(PERIODS)}.")
        now = self._now()
        with transaction(self.db):
            row = self._touch(scope, now)
            stored = UNLIMITED if unlimited else amount
            self.db.execute("UPDATE budgets SET amount = ? WHERE scope = ?", [stored, scope])
            if period is not None and period != row["period"]:
                start = period_start(now, period)
                self.db.execute("UPDATE budgets SET period = ?, period_start = ? WHERE scope = ?",
                                [period, iso_or_none(start), scope])
            shown = "unlimited" if unlimited else ("the default" if amount is None else str(amount))
            self._write(scope, iso(now), "set", actor=actor, note=f"budget {shown} per {period or row['period']}")
            return self._status(self._touch(scope, now))

    def set_member_cap(self, scope: str, cap: int | None, *, actor: str) -> BudgetStatus:
        """What one member may spend of the scope's budget per period (None: no cap)."""
        if cap is not None and not 0 <= cap <= MAX_CREDITS_CHANGE:
            raise UserInputError(f"A member cap must be from 0 to {MAX_CREDITS_CHANGE:,} credits. "
                                 "Nothing was changed.")
        now = self._now()
        with transaction(self.db):
            self._touch(scope, now)
            self.db.execute("UPDATE budgets SET member_cap = ? WHERE scope = ?", [cap, scope])
            self._write(scope, iso(now), "set", actor=actor, note=f"member cap {'none' if cap is None else cap}")
            return self._status(self._touch(scope, now))

    def spend_rows(self, scope: str, since: datetime | None) -> list[dict[str, Any]]:
        """Credits captured in ``scope`` since ``since``, per account and channel (most first)."""
        rows = self.db.execute(
            "SELECT account, COALESCE(channel, ''), SUM(delta_spent), COUNT(*) FROM budget_ledger"
            " WHERE scope = ? AND kind = 'capture' AND ts >= ? GROUP BY account, channel"
            " ORDER BY SUM(delta_spent) DESC, account",
            [scope, iso(since) if since else ""]).fetchall()
        return [{"scope": scope, "account": a, "channel": c, "credits_spent": s, "images": n} for a, c, s, n in rows]

    def verify(self) -> list[str]:
        """One line per budget whose spent or held differs from the sum of its rows."""
        rows = self.db.execute(
            "SELECT b.scope, b.spent, b.held, COALESCE(SUM(l.delta_spent), 0), COALESCE(SUM(l.delta_held), 0)"
            " FROM budgets b LEFT JOIN budget_ledger l ON l.scope = b.scope GROUP BY b.scope ORDER BY b.scope"
        ).fetchall()
        return [f"budget {scope}: spent {spent} but its rows sum to {s_spent}; held {held} but they sum to {s_held}"
                for scope, spent, held, s_spent, s_held in rows if spent != s_spent or held != s_held]

    def orphan_holds(self) -> list[str]:
        """One line per budget hold that no active job owns: its job ended (or never existed) without the
        hold being captured or released, so the budget stays that much smaller for good."""
        rows = self.db.execute(
            "SELECT r.scope, r.job_id, r.delta_held, r.account, j.state FROM budget_ledger r"
            " LEFT JOIN jobs j ON j.id = r.job_id WHERE r.kind = 'reserve' AND r.job_id IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM budget_ledger s WHERE s.job_id = r.job_id AND s.scope = r.scope"
            " AND s.kind IN ('capture', 'release'))"
            f" AND (j.id IS NULL OR j.state NOT IN ({_ACTIVE_MARKS})) ORDER BY r.id", list(_ACTIVE)).fetchall()
        return [f"budget {scope}: {held} credits held for job {job_id} ({account or '?'}), which is "
                f"{state or 'not a known job'}: nothing will ever release them"
                for scope, job_id, held, account, state in rows]
