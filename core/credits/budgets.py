"""Budgets above the single user: per server or workspace, optionally per channel, and the operator's cap.

A job runs only when the user's balance **and** every budget over it cover its cost. Each budget is a row
of ``budgets`` (scope, amount per period, ``spent`` and ``held`` this period) with an append-only
``budget_ledger``, moved by the user ledger's own reserve, capture and release in the same transaction
(``BudgetStore``; SQLite: ``core.storage.budgets``), so a budget never drifts from the money: ``verify``
sums the rows like the user ledger does.

Scopes (see ``core.access.authority``):

- ``global``: every job. Its amount is ``SPEND_CAP`` per ``SPEND_CAP_PERIOD`` (unset: unlimited, spend
  still counted), so the operator's account is protected even from their own settings;
- a place, ``discord:GUILD`` or ``slack:TEAM``: every job there. Its amount is set by an operator
  (``imagine-bot budget set``), else ``DEFAULT_SCOPE_BUDGET`` (unset: unlimited);
- a channel, ``discord:GUILD#CHANNEL``: only once an operator set a budget for it.

At each period boundary (``day``, ``week``, ``month`` or ``never``) ``spent`` starts again from 0 with a
``reset`` row; holds of jobs in flight stay. A community admin may cap what one member spends of their
place's budget per period (``member_cap``); that can only lower what the place spends.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: stored amount meaning "explicitly unlimited" (NULL means "the default")
UNLIMITED = -1
#: the most credits any amount may be: one grant, revoke or allowance (``credits.ledger``), a budget or a
#: member cap. Far beyond any real use, and far below SQLite's 64-bit integers (a bigger number is refused
#: in plain words, not an OverflowError); the number parser in front (``chat.parsing.whole_number``) uses it
MAX_CREDITS_CHANGE = 1_000_000_000


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One budget as of now. ``amount`` None: unlimited."""

    scope: str
    amount: int | None
    period: str
    spent: int
    held: int
    period_start: datetime | None
    next_reset: datetime | None
    member_cap: int | None
    #: the amount follows ``DEFAULT_SCOPE_BUDGET`` (or ``SPEND_CAP``) rather than an operator's setting
    default: bool

    @property
    def remaining(self) -> int | None:
        return None if self.amount is None else max(0, self.amount - self.spent - self.held)


SPEND_FIELDS = ("scope", "account", "channel", "credits_spent", "images")


def spend_csv(rows: list[dict[str, Any]]) -> str:
    """``BudgetStore.spend_rows`` as CSV text, header first."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=SPEND_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
