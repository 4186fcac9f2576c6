"""The credit calendar: allowance and budget periods, their boundaries and the words for them.

Pure functions of a time and a period name (no database, no clock of its own), shared by the user
ledger (``credits.ledger``) and the budgets over it (``credits.budgets``): the ledger builds on the
budgets, and neither imports the other for dates.

Periods are ``day`` (from 00:00 UTC), ``week`` (from Monday 00:00 UTC), ``month`` (from the 1st, 00:00
UTC) and ``never``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache

PERIODS = ("day", "week", "month", "never")
ADJECTIVES = {"day": "daily", "week": "weekly", "month": "monthly"}
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # not strftime: no locale surprises
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
               "October", "November", "December")


def period_start(now: datetime, period: str) -> datetime | None:
    """The start of the period containing ``now`` (None for ``never``)."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return midnight
    if period == "week":
        return midnight - timedelta(days=midnight.weekday())
    if period == "month":
        return midnight.replace(day=1)
    return None


@lru_cache(maxsize=64)  # pure, and asked for the same few period starts at every reservation
def next_boundary(start: datetime, period: str) -> datetime | None:
    """The first period boundary after the period containing ``start`` (None for ``never``)."""
    begin = period_start(start, period)
    if begin is None:
        return None
    if period == "day":
        return begin + timedelta(days=1)
    if period == "week":
        return begin + timedelta(weeks=1)
    return (begin + timedelta(days=32)).replace(day=1)


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


def describe_refill(next_refill: datetime | None, now: datetime) -> str | None:
    """Plain words for when the allowance refills, e.g. ``"in 3 hours"`` or
    ``"on Mon 1 Dec at 00:00 UTC (in 6 days)"``; None when it never does."""
    if next_refill is None:
        return None
    when = next_refill.astimezone(UTC)
    seconds = (when - now).total_seconds()
    if seconds <= 0:
        return "now"
    if seconds < 60:
        return "in under a minute"
    if seconds < 3600:
        return "in " + _plural(max(1, round(seconds / 60)), "minute")
    if seconds < 86400:
        return "in " + _plural(round(seconds / 3600), "hour")
    year = f" {when.year}" if when.year != now.astimezone(UTC).year else ""
    day = f"{WEEKDAYS[when.weekday()]} {when.day} {MONTHS[when.month - 1]}{year} at {when:%H:%M} UTC"
    return f"on {day} (in {_plural(round(seconds / 86400), 'day')})"


def period_name(period: str, start: datetime | None) -> str:
    """``for November``, ``for today``, ``for this week``; empty for ``never``."""
    if start is None or period == "never":
        return ""
    if period == "month":
        return f"for {MONTH_NAMES[start.month - 1]}"
    return "for today" if period == "day" else "for this week"


def refill_words(period: str, when: datetime | None) -> str:
    """``it refills on 1 Dec`` (or at midnight UTC, or on Mon 30 Nov); what never refills says so."""
    if when is None:
        return "it does not refill by itself; an operator can raise it"
    if period == "day":
        return "it refills at 00:00 UTC"
    day = f"{when.day} {MONTHS[when.month - 1]}"
    return f"it refills on {day}" if period == "month" else f"it refills on {WEEKDAYS[when.weekday()]} {day}"
