"""What the dashboard shows, read from the database and always limited to the viewer's scope.

Spend is what delivered jobs cost (the ledger captures a job's cost exactly when it is delivered).

Reconciliation (operators): per day, the drop of the gateway balance (from the readings the bot keeps,
``core.gateway.balance``) beside the credits captured for delivered jobs and those the gateway billed
for jobs never delivered; what remains is spent by something else on the same key (or a price that
differs).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any

from imagine_bot.core.jobs.model import Job
from imagine_bot.core.storage.db import Database, iso, transaction, utcnow
from imagine_bot.core.storage.jobs import CHANNEL_SQL, SCOPE_SQL, SqliteJobStore


@dataclass(frozen=True, slots=True)
class Filter:
    """The viewer's scope (None: everything) and the page's own filters."""

    scope: str | None
    days: int = 30
    state: str | None = None
    platform: str | None = None
    text: str | None = None

    @property
    def since(self) -> datetime:
        return utcnow() - timedelta(days=self.days)

    def where(self, *, time_column: str = "jobs.created_at") -> tuple[str, list[Any]]:
        sql, args = [f"{time_column} >= ?"], [iso(self.since)]
        if self.scope is not None:
            sql.append(f"({SCOPE_SQL}) = ?")
            args.append(self.scope)
        if self.state:
            sql.append("jobs.state = ?")
            args.append(self.state)
        if self.platform:
            sql.append("jobs.platform = ?")
            args.append(self.platform)
        if self.text:
            sql.append("(jobs.prompt LIKE ? OR jobs.account LIKE ? OR jobs.id = ?)")
            args.extend([f"%{self.text}%", f"%{self.text}%", self.text])
        return " AND ".join(sql), args


@dataclass(frozen=True, slots=True)
class ReconciledDay:
    """One day (UTC) of the gateway account. ``balance_drop`` is the sum of the falls between consecutive
    balance readings ending that day (a top-up is not a spend: rises are left out); None: no readings."""

    day: date
    balance_drop: int | None
    captured: int
    undelivered: int

    @property
    def difference(self) -> int | None:
        """The drop that delivered jobs do not explain (billed-but-not-delivered, other users of the key)."""
        return None if self.balance_drop is None else self.balance_drop - self.captured


def balance_readings(db: Database, since: datetime) -> list[tuple[datetime, int]]:
    """The gateway balance as the bot read it (``core.gateway.balance``) since ``since``, with the last
    reading before it, oldest first."""
    rows = db.execute(
        "SELECT ts, balance FROM (SELECT ts, balance, id FROM gateway_balance_log WHERE ts < ?"
        " ORDER BY ts DESC, id DESC LIMIT 1) AS earlier UNION ALL SELECT ts, balance FROM gateway_balance_log"
        " WHERE ts >= ?"
        " ORDER BY ts", [iso(since), iso(since)]).fetchall()
    return [(datetime.fromisoformat(ts), int(balance)) for ts, balance in rows]


class Queries:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.jobs = SqliteJobStore(db)

    def _rows(self, sql: str, args: list[Any]) -> list[dict[str, Any]]:
        return list(self.db.query(sql, args))

    # ------------------------------------------------------------------ usage
    def spend_per_day(self, f: Filter) -> list[tuple[date, int]]:
        where, args = f.where(time_column="jobs.finished_at")
        rows = self._rows(f"SELECT substr(jobs.finished_at, 1, 10) AS day, SUM(jobs.cost) AS credits FROM jobs "
                          f"WHERE jobs.state = 'delivered' AND {where} GROUP BY day", args)
        by_day = {r["day"]: int(r["credits"]) for r in rows}
        today = utcnow().date()
        days = [today - timedelta(days=n) for n in range(f.days - 1, -1, -1)]
        return [(d, by_day.get(d.isoformat(), 0)) for d in days]

    def spend_by(self, f: Filter, column: str, limit: int = 20) -> list[dict[str, Any]]:
        """Credits and images per ``scope``, ``channel`` or ``account``, most spent first."""
        expr = {"scope": SCOPE_SQL, "channel": f"({SCOPE_SQL}) || '#' || {CHANNEL_SQL}",
                "account": "jobs.account"}[column]
        where, args = f.where(time_column="jobs.finished_at")
        return self._rows(f"SELECT {expr} AS name, SUM(jobs.cost) AS credits, COUNT(*) AS images FROM jobs "
                          f"WHERE jobs.state = 'delivered' AND {where} GROUP BY name ORDER BY credits DESC, name "
                          f"LIMIT ?", [*args, limit])

    def billed_not_delivered(self, f: Filter) -> tuple[int, int]:
        """Credits the gateway billed for jobs that then failed in this period, and how many jobs."""
        where, args = f.where(time_column="jobs.finished_at")
        row = self.db.execute(f"SELECT COALESCE(SUM(jobs.gateway_cost), 0), COUNT(*) FROM jobs WHERE "
                              f"jobs.state = 'failed' AND jobs.billed_at IS NOT NULL AND {where}", args).fetchone()
        return int(row[0]), int(row[1])

    def reconciliation(self, days: int) -> list[ReconciledDay]:
        """The last ``days`` days of the whole gateway account (every place), newest first; days with
        neither a reading nor a finished job are left out."""
        today = utcnow().date()
        first = today - timedelta(days=days - 1)
        since = datetime(first.year, first.month, first.day, tzinfo=UTC)
        drops: dict[date, int] = {}
        readings = balance_readings(self.db, since)
        for (_, before), (at, after) in pairwise(readings):
            drops[at.date()] = drops.get(at.date(), 0) + max(0, before - after)
        sums: dict[str, dict[date, int]] = {}
        for name, cond, column in (("captured", "jobs.state = 'delivered'", "jobs.cost"),
                                   ("undelivered", "jobs.state = 'failed' AND jobs.billed_at IS NOT NULL",
                                    "jobs.gateway_cost")):
            rows = self._rows(f"SELECT substr(jobs.finished_at, 1, 10) AS day, SUM({column}) AS credits FROM jobs "
                              f"WHERE {cond} AND jobs.finished_at >= ? GROUP BY day", [iso(since)])
            sums[name] = {date.fromisoformat(r["day"]): int(r["credits"] or 0) for r in rows}
        shown = sorted({d for d in (*drops, *sums["captured"], *sums["undelivered"]) if d >= first}, reverse=True)
        return [ReconciledDay(d, drops.get(d), sums["captured"].get(d, 0), sums["undelivered"].get(d, 0))
                for d in shown]

    # ------------------------------------------------------------------ jobs
    def recent_jobs(self, f: Filter, limit: int = 100) -> list[Job]:
        where, args = f.where()
        rows = self._rows(f"SELECT jobs.id FROM jobs WHERE {where} ORDER BY jobs.created_at DESC LIMIT ?",
                          [*args, limit])
        return [self.jobs.get(r["id"]) for r in rows]

    def failures_by_cause(self, f: Filter) -> list[tuple[str, int]]:
        where, args = f.where()
        rows = self._rows(f"SELECT coalesce(jobs.error_code, 'unknown') AS cause, COUNT(*) AS n FROM jobs "
                          f"WHERE jobs.state = 'failed' AND {where} GROUP BY cause ORDER BY n DESC, cause", args)
        return [(r["cause"], int(r["n"])) for r in rows]

    # ------------------------------------------------------------------ gallery
    def gallery(self, f: Filter, limit: int = 60) -> list[Job]:
        where, args = f.where()
        rows = self._rows(f"SELECT jobs.id FROM jobs JOIN thumbnails ON thumbnails.job_id = jobs.id "
                          f"WHERE jobs.state = 'delivered' AND {where} ORDER BY jobs.finished_at DESC LIMIT ?",
                          [*args, limit])
        return [self.jobs.get(r["id"]) for r in rows]

    # ------------------------------------------------------------------ scopes
    def known_scopes(self, limit: int = 200) -> list[str]:
        """The servers and workspaces the bot knows: where jobs were made, or a budget was set."""
        rows = self._rows(f"SELECT DISTINCT {SCOPE_SQL} AS scope FROM jobs UNION SELECT scope FROM budgets "
                          "WHERE scope != 'global' AND instr(scope, '#') = 0 ORDER BY scope LIMIT ?", [limit])
        return [str(r["scope"]) for r in rows if r["scope"]]

    def scope_known(self, scope: str) -> bool:
        row = self.db.execute(f"SELECT EXISTS (SELECT 1 FROM jobs WHERE ({SCOPE_SQL}) = ?) OR EXISTS "
                              "(SELECT 1 FROM budgets WHERE scope = ?)", [scope, scope]).fetchone()
        return bool(row[0])

    def scope_of(self, job_id: str) -> str | None:
        row = self.db.execute(f"SELECT {SCOPE_SQL} FROM jobs WHERE jobs.id = ?", [job_id]).fetchone()
        return None if row is None else str(row[0])


def message_link(job: Job) -> str | None:
    """A link to the job's message in Slack or Discord, from what its front end recorded."""
    data, receipt = job.reply.data, job.receipt
    if job.platform == "discord":
        message = receipt.get("message_id") or data.get("message_id")
        channel = data.get("channel_id") or job.reply.channel
        if message:
            return f"https://discord.com/channels/{data.get('guild_id') or '@me'}/{channel}/{message}"
        return None
    if job.platform == "slack":
        ts = receipt.get("ts") or data.get("progress_ts") or data.get("thread_ts")
        channel = receipt.get("channel") or data.get("progress_channel") or job.reply.channel
        if ts:
            return f"https://slack.com/archives/{channel}/p{str(ts).replace('.', '')}"
    return None


class SqliteLinkStore:
    """One-time sign-in links (``dashboard_links``), kept as hashes only (``core.web.dashboard.auth``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, token_hash: str, *, scope: str | None, actor: str, now: datetime, expires: datetime) -> None:
        with transaction(self.db):
            self.db.execute("INSERT INTO dashboard_links (token_hash, scope, actor, created_at, expires_at) "
                            "VALUES (?, ?, ?, ?, ?)", [token_hash, scope, actor, iso(now), iso(expires)])

    def use(self, token_hash: str, now: datetime, *, forget_before: datetime) -> tuple[str, str | None] | None:
        """Mark a live, unused link used, once: its (actor, scope), or None. Links expired before
        ``forget_before`` are deleted on the way."""
        with transaction(self.db):
            row = self.db.execute("SELECT actor, scope FROM dashboard_links WHERE token_hash = ? AND used_at IS NULL "
                                  "AND expires_at > ?", [token_hash, iso(now)]).fetchone()
            if row is None:
                return None
            used = self.db.execute("UPDATE dashboard_links SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
                                   [iso(now), token_hash])
            if used.rowcount != 1:
                return None
            self.db.execute("DELETE FROM dashboard_links WHERE expires_at < ?", [iso(forget_before)])
        return str(row[0]), row[1]
