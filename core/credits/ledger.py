"""The credit ledger: balances, holds for jobs in flight, a refilling allowance and an audit trail.

The model
---------
Every chat user has one account (keyed by ``UserRef.key``) with two numbers:

- ``balance``: the credits the user owns;
- ``held``: the credits reserved by the user's jobs in flight.

``available = balance - held`` is what a new job may reserve. The database itself refuses
``held < 0`` and ``balance < held``, so an account can never spend what it does not have.

A job moves credits in two steps. ``reserve`` puts its cost on hold (held += cost) before the job is
sent to the gateway. When the job delivers, ``capture`` takes the cost (balance -= cost,
held -= cost); when it fails, ``release`` gives the hold back (held -= cost). A job is reserved,
captured and released at most once each (a unique index on the ledger enforces it), and capture and
release exclude each other: a user is charged only for a job that delivered, and never twice.

The ``ledger`` table is append-only. Every change to an account writes one row: ``delta_balance``,
``delta_held``, the ``balance_after`` and ``held_after`` it produced, a kind (``grant``, ``refill``,
``reserve``, ``capture``, ``release``, ``adjust``), and the job, actor and note behind it. Every
balance and hold is therefore the sum of its deltas; ``verify()`` checks exactly that.

The allowance
-------------
Each account has an allowance (``CREDITS_ALLOWANCE``, or a per-user override set by an admin) and a
refill period (``CREDITS_PERIOD``): ``day`` (refills at 00:00 UTC), ``week`` (Monday 00:00 UTC),
``month`` (the 1st, 00:00 UTC) or ``never``. A new account is opened on first use with a ``refill``
row up to the allowance. At each period boundary the balance is topped *up* to the allowance
(``max(0, allowance - balance)``): unused allowance does not pile up, and credits granted above the
allowance are kept (there is no refill while the balance is at or above it). Refills are lazy: any
operation that touches an account first applies a refill that is due, so several missed periods
give a single refill.

Admin changes
-------------
``grant`` with a positive amount writes a ``grant`` row; a negative amount is a revoke (an ``adjust``
row) and may take the balance down to the credits on hold, no further: a larger revoke is refused
with the most that can be revoked. ``set_allowance`` writes an ``adjust`` row with no delta and a
note for the audit trail. Raising an allowance adds the raise at once (never past the new
allowance), so a user who spent 100 of 180 this period and is raised to 360 can spend 260 more now.
Lowering an allowance takes nothing back; the next refill simply tops up to the lower amount.

Every change is one short transaction in the store (``CreditStore`` in ``core.storage.base``; SQLite:
``core.storage.ledger.SqliteLedger``) that reads the account, checks, updates it, appends to the ledger
and moves every budget over the job; called inside a caller's transaction, it joins it. All times are
UTC from the injected clock.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.credits.budgets import MAX_CREDITS_CHANGE
from imagine_bot.core.errors import UserInputError

REPORT_FIELDS = (
    "account", "balance", "held", "allowance",
    "granted", "refilled", "spent", "jobs_charged", "jobs_refunded",
)


def check_size(amount: int) -> None:
    if abs(amount) > MAX_CREDITS_CHANGE:
        raise UserInputError(f"{amount:,} credits is more than one change may move (at most "
                             f"{MAX_CREDITS_CHANGE:,}). Nothing was changed.")


@dataclass(frozen=True, slots=True)
class Hold:
    """One reservation of a batch (``reserve_many``): a new job's cost on its requester's balance and on the
    budgets over it (``scopes``, and the global cap)."""

    who: UserRef
    job_id: str
    cost: int
    scopes: tuple[str, ...] = ()
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class Balance:
    """One account as of now. ``next_refill`` is None when the allowance never refills (or is 0)."""

    account: str
    balance: int
    held: int
    allowance: int
    period: str
    next_refill: datetime | None

    @property
    def available(self) -> int:
        """Credits a new job may reserve."""
        return self.balance - self.held


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One row of the append-only ledger."""

    id: int
    ts: datetime
    account: str
    kind: str
    delta_balance: int
    delta_held: int
    balance_after: int
    held_after: int
    job_id: str | None
    actor: str | None
    note: str | None


def report_csv(rows: list[dict[str, object]]) -> str:
    """``CreditStore.report_rows`` as CSV text, header row first."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=REPORT_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
