"""What the dashboard shows, read from the database and always limited to the viewer's scope.

Spend is what delivered jobs cost (the ledger captures a job's cost exactly when it is delivered).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlite_utils

from imagine_bot.core.db import iso, utcnow
from imagine_bot.core.jobs import SCOPE_SQL, Job, JobStore


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


class Queries:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self.jobs = JobStore(db)

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
        expr = {"scope": SCOPE_SQL, "channel": f"({SCOPE_SQL}) || '#' || json_extract(jobs.reply, '$.channel')",
                "account": "jobs.account"}[column]
        where, args = f.where(time_column="jobs.finished_at")
        return self._rows(f"SELECT {expr} AS name, SUM(jobs.cost) AS credits, COUNT(*) AS images FROM jobs "
                          f"WHERE jobs.state = 'delivered' AND {where} GROUP BY name ORDER BY credits DESC, name "
                          f"LIMIT ?", [*args, limit])

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
