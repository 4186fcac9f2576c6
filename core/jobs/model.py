"""Jobs: the typed job record and its SQLite store.

Every job is one row: who asked, where to reply (platform-neutral), prompt, params, the gateway task id,
state, timestamps, result URLs, files, error and cost. The state machine::

    queued -> submitting -> running -> delivering -> delivered
        \\__________\\____________\\___________\\----> failed

``queued``: credits reserved, waiting for a slot. ``submitting``: createTask may be on the wire.
``running``: the gateway has a task id. ``delivering``: images downloaded to the spool, handed to the
front end. ``delivered`` and ``failed`` are final.

Ownership: one process works on a job at a time. ``owner`` names it (``host:pid:random``) and
``lease_until`` says until when; the owner renews the lease while it works (``renew``), another process
takes the job over only once the lease has expired (``claim``, a compare-and-set), and a process that
stops releases its leases (``release_leases``). Every state change is ``transition``: a compare-and-set on
the expected state and owner whose lost race raises ``LeaseLost`` (the local worker then stops quietly).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlite_utils

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.errors import LeaseLost, NotFound
from imagine_bot.core.storage.db import iso, transaction, utcnow


class JobState(StrEnum):
    QUEUED = "queued"
    SUBMITTING = "submitting"
    RUNNING = "running"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (JobState.DELIVERED, JobState.FAILED)


ACTIVE_STATES = (JobState.QUEUED, JobState.SUBMITTING, JobState.RUNNING, JobState.DELIVERING)


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where a job's messages go, in the owning front end's own terms.

    ``channel`` is the chat channel; ``data`` is the front end's private state (Slack message ts,
    Discord interaction token, ...), persisted with the job so that it survives a restart.
    """

    platform: str
    channel: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"platform": self.platform, "channel": self.channel, "data": self.data})

    @classmethod
    def from_json(cls, raw: str) -> ReplyTo:
        obj = json.loads(raw)
        return cls(obj["platform"], obj["channel"], obj.get("data") or {})


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a front end asks the core for: one validated ``/imagine``."""

    requester: UserRef
    reply: ReplyTo
    prompt: str
    params: dict[str, Any]
    #: a platform request id (Slack trigger id, Discord interaction id): a redelivery makes no new job
    dedupe_key: str | None = None
    parent_id: str | None = None
    #: extra gateway inputs decided by the front end (Discord: nsfw_checker for non-NSFW channels)
    extra_input: dict[str, Any] = field(default_factory=dict)
    #: the budgets over the job besides the global cap (``core.budgets``): its server or workspace, a channel
    scopes: tuple[str, ...] = ()
    #: the gateway model and its price (None: the configured text-to-image model at its price)
    model: str | None = None
    cost: int | None = None
    #: reference images for an edit: public URLs, or ``ref:<key>`` for images we serve (``core.refs``)
    image_urls: tuple[str, ...] = ()
    #: what a text-to-image job costs now, when this job's price differs (said in the reply)
    text_cost: int | None = None
    #: the brand preset whose template made the prompt (``core.chat.presets``), named in the caption
    preset: str | None = None
    #: who must approve the result before it goes to the channel (``core.jobs.approvals``); empty: nobody
    review: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    requester: UserRef
    reply: ReplyTo
    prompt: str
    params: dict[str, Any]
    model: str
    cost: int
    state: JobState
    created_at: datetime
    updated_at: datetime
    task_id: str | None = None
    result_urls: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()
    error_code: str | None = None
    error_message: str | None = None
    dedupe_key: str | None = None
    parent_id: str | None = None
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    #: the process working on the job (host:pid:random) and until when its lease holds
    owner: str | None = None
    lease_until: datetime | None = None
    #: failed, and the requester not told yet (told when the job's front end runs)
    notice_pending: bool = False
    #: what the front end recorded when the platform accepted the delivery (empty: nothing posted yet)
    receipt: dict[str, Any] = field(default_factory=dict)
    image_urls: tuple[str, ...] = ()
    text_cost: int | None = None
    #: when the gateway reported the task succeeded (it charges the account then) and what it charged
    billed_at: datetime | None = None
    gateway_cost: int | None = None
    preset: str | None = None
    #: reviewers of the result: it is shown to the requester privately and posted only once approved
    review: tuple[str, ...] = ()

    @property
    def platform(self) -> str:
        return self.reply.platform

    @property
    def scope(self) -> str:
        """The community the job belongs to: ``slack:TEAM``, ``discord:GUILD`` (``discord:dm`` outside a
        server) or the platform alone. Same as ``SCOPE_SQL``."""
        if self.platform == "slack":
            return f"slack:{self.requester.workspace}"
        if self.platform == "discord":
            return f"discord:{self.reply.data.get('guild_id') or 'dm'}"
        return self.platform

    @property
    def elapsed_s(self) -> float:
        end = self.finished_at or utcnow()
        return max(0.0, (end - self.created_at).total_seconds())


#: ``Job.scope`` in SQL, over a ``jobs`` row
SCOPE_SQL = """CASE jobs.platform
    WHEN 'slack' THEN 'slack:' || substr(jobs.account, 7, instr(substr(jobs.account, 7), ':') - 1)
    WHEN 'discord' THEN 'discord:' || coalesce(json_extract(jobs.reply, '$.data.guild_id'), 'dm')
    ELSE jobs.platform END"""


def new_job_id() -> str:
    return "j" + secrets.token_hex(6)


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _row_to_job(row: dict[str, Any]) -> Job:
    return Job(
        id=row["id"],
        requester=UserRef.parse(row["account"]),
        reply=ReplyTo.from_json(row["reply"]),
        prompt=row["prompt"],
        params=json.loads(row["params"]),
        model=row["model"],
        cost=row["cost"],
        state=JobState(row["state"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        task_id=row["task_id"],
        result_urls=tuple(json.loads(row["result_urls"] or "[]")),
        files=tuple(Path(p) for p in json.loads(row["files"] or "[]")),
        error_code=row["error_code"],
        error_message=row["error_message"],
        dedupe_key=row["dedupe_key"],
        parent_id=row["parent_id"],
        submitted_at=_dt(row["submitted_at"]),
        finished_at=_dt(row["finished_at"]),
        receipt=json.loads(row.get("receipt") or "{}"),
        image_urls=tuple(json.loads(row.get("image_urls") or "[]")),
        text_cost=row.get("text_cost"),
        preset=row.get("preset"),
        review=tuple(json.loads(row.get("review") or "[]")),
        owner=row.get("owner"),
        lease_until=_dt(row.get("lease_until")),
        notice_pending=bool(row.get("notice_pending")),
        billed_at=_dt(row.get("billed_at")),
        gateway_cost=row.get("gateway_cost"),
    )


_ACTIVE = tuple(s.value for s in ACTIVE_STATES)
_ACTIVE_MARKS = ",".join("?" * len(_ACTIVE))


class JobStore:
    """Job rows. Every write is one short transaction; the caller may wrap several in ``transaction``."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def insert(self, request: JobRequest, *, model: str, cost: int, job_id: str | None = None,
               owner: str | None = None, lease_until: datetime | None = None) -> Job:
        """Record a new ``queued`` job (owned by ``owner`` when given). Plain SQL: joins the caller's
        transaction (sqlite-utils' ``Table.insert`` would commit it half-way)."""
        now = iso(utcnow())
        row: dict[str, Any] = {
            "id": job_id or new_job_id(),
            "account": request.requester.key,
            "platform": request.reply.platform,
            "reply": request.reply.to_json(),
            "prompt": request.prompt,
            "params": json.dumps({**request.params, **request.extra_input}),
            "model": model,
            "cost": cost,
            "state": JobState.QUEUED.value,
            "dedupe_key": request.dedupe_key,
            "parent_id": request.parent_id,
            "image_urls": json.dumps(list(request.image_urls)) if request.image_urls else None,
            "text_cost": request.text_cost,
            "preset": request.preset,
            "review": json.dumps(list(request.review)) if request.review else None,
            "created_at": now,
            "updated_at": now,
            "owner": owner,
            "lease_until": iso(lease_until) if lease_until else None,
        }
        cols = ", ".join(row)
        with transaction(self.db):
            self.db.execute(f"INSERT INTO jobs ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
        return self.get(row["id"])

    def get(self, job_id: str) -> Job:
        rows = list(self.db.query("SELECT * FROM jobs WHERE id = ?", [job_id]))
        if not rows:
            raise NotFound(f"no job {job_id}", user_message="I could not find that image job.")
        return _row_to_job(rows[0])

    def find(self, job_id: str) -> Job | None:
        rows = list(self.db.query("SELECT * FROM jobs WHERE id = ?", [job_id]))
        return _row_to_job(rows[0]) if rows else None

    def by_dedupe_key(self, key: str) -> Job | None:
        rows = list(self.db.query("SELECT * FROM jobs WHERE dedupe_key = ?", [key]))
        return _row_to_job(rows[0]) if rows else None

    def by_task_id(self, task_id: str) -> Job | None:
        rows = list(self.db.query("SELECT * FROM jobs WHERE task_id = ?", [task_id]))
        return _row_to_job(rows[0]) if rows else None

    @staticmethod
    def _values(fields: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, value in fields.items():
            if isinstance(value, JobState):
                value = value.value
            elif isinstance(value, ReplyTo):
                value = value.to_json()
            elif isinstance(value, datetime):
                value = iso(value)
            elif key in ("result_urls", "files"):
                value = json.dumps([str(v) for v in value])
            values[key] = value
        values["updated_at"] = iso(utcnow())
        return values

    def update(self, job_id: str, **fields: Any) -> Job:
        """Set columns (enums, lists, datetimes and ReplyTo converted) and bump ``updated_at``.

        Not for state changes of a running job: those go through ``transition``.
        """
        values = self._values(fields)
        cols = ", ".join(f"{k} = ?" for k in values)
        with transaction(self.db):
            self.db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", [*values.values(), job_id])
        return self.get(job_id)

    def transition(self, job_id: str, expected: JobState, new: JobState, *, owner: str | None,
                   **fields: Any) -> Job:
        """Compare-and-set: move the job from ``expected`` to ``new`` only if it is still there and still
        owned by ``owner``; otherwise raise ``LeaseLost`` and change nothing. A final state ends the lease
        (the owner stays, as a record of who finished the job)."""
        values = self._values({**fields, "state": new})
        if new.final:
            values["lease_until"] = None
        cols = ", ".join(f"{k} = ?" for k in values)
        sql = f"UPDATE jobs SET {cols} WHERE id = ? AND state = ?"
        args = [*values.values(), job_id, expected.value]
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        with transaction(self.db):
            if self.db.execute(sql, args).rowcount != 1:
                raise LeaseLost(f"job {job_id}: not {expected.value} and owned by {owner} any more")
        return self.get(job_id)

    # ------------------------------------------------------------------ leases
    def claim(self, job_id: str, owner: str, until: datetime, *, now: datetime | None = None) -> Job | None:
        """Take an active job that nobody holds (no owner, or an expired lease), or renew our own.
        None when another process holds it or it is final."""
        now = now or utcnow()
        sql = (f"UPDATE jobs SET owner = ?, lease_until = ? WHERE id = ? AND state IN ({_ACTIVE_MARKS})"
               " AND (owner IS NULL OR owner = ? OR lease_until IS NULL OR lease_until < ?)")
        with transaction(self.db):
            taken = self.db.execute(sql, [owner, iso(until), job_id, *_ACTIVE, owner, iso(now)]).rowcount == 1
        return self.get(job_id) if taken else None

    def claimable(self, *, now: datetime | None = None) -> list[Job]:
        """Active jobs nobody holds: never owned, released, or whose owner's lease expired."""
        sql = (f"SELECT * FROM jobs WHERE state IN ({_ACTIVE_MARKS})"
               " AND (owner IS NULL OR lease_until IS NULL OR lease_until < ?) ORDER BY created_at")
        return [_row_to_job(r) for r in self.db.query(sql, [*_ACTIVE, iso(now or utcnow())])]

    def renew(self, owner: str, until: datetime) -> set[str]:
        """Extend every lease ``owner`` holds on an active job; returns the ids it still holds."""
        with transaction(self.db):
            self.db.execute(f"UPDATE jobs SET lease_until = ? WHERE owner = ? AND state IN ({_ACTIVE_MARKS})",
                            [iso(until), owner, *_ACTIVE])
            rows = self.db.execute(f"SELECT id FROM jobs WHERE owner = ? AND state IN ({_ACTIVE_MARKS})",
                                   [owner, *_ACTIVE]).fetchall()
        return {r[0] for r in rows}

    def release_leases(self, owner: str, job_ids: Iterable[str] | None = None) -> int:
        """Give up ``owner``'s leases on active jobs (all of them, or ``job_ids``): free for the next owner."""
        sql = f"UPDATE jobs SET owner = NULL, lease_until = NULL WHERE owner = ? AND state IN ({_ACTIVE_MARKS})"
        args: list[Any] = [owner, *_ACTIVE]
        if job_ids is not None:
            ids = list(job_ids)
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            args.extend(ids)
        with transaction(self.db):
            return int(self.db.execute(sql, args).rowcount)

    def pending_notices(self, platforms: Iterable[str]) -> list[Job]:
        """Failed jobs of these platforms whose requester was not told yet."""
        names = list(platforms)
        if not names:
            return []
        sql = (f"SELECT * FROM jobs WHERE notice_pending = 1 AND platform IN ({','.join('?' * len(names))})"
               " ORDER BY created_at")
        return [_row_to_job(r) for r in self.db.query(sql, names)]

    def take_notice(self, job_id: str) -> bool:
        """Compare-and-set: True for the one process that gets to tell the requester."""
        with transaction(self.db):
            return bool(self.db.execute("UPDATE jobs SET notice_pending = 0 WHERE id = ? AND notice_pending = 1",
                                        [job_id]).rowcount == 1)

    def set_reply_data(self, job_id: str, **data: Any) -> Job:
        """Merge front-end state into the job's reply address (persisted for restarts)."""
        with transaction(self.db):
            job = self.get(job_id)
            reply = replace(job.reply, data={**job.reply.data, **data})
            self.db.execute("UPDATE jobs SET reply = ? WHERE id = ?", [reply.to_json(), job_id])
        return self.get(job_id)

    def record_receipt(self, job_id: str, **ids: Any) -> Job:
        """Merge delivery ids (message id, file ids, ...) into the job's receipt, in one short transaction."""
        with transaction(self.db):
            row = self.db.execute("SELECT receipt FROM jobs WHERE id = ?", [job_id]).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id}", user_message="I could not find that image job.")
            receipt = {**json.loads(row[0] or "{}"), **ids}
            self.db.execute("UPDATE jobs SET receipt = ? WHERE id = ?", [json.dumps(receipt), job_id])
        return self.get(job_id)

    def billed_not_delivered(self, since: datetime | None = None) -> tuple[int, int]:
        """Credits the gateway billed for jobs that then failed (nobody received the image; the user was
        refunded), and how many jobs: all of them, or those that ended since ``since``."""
        sql = ("SELECT COALESCE(SUM(gateway_cost), 0), COUNT(*) FROM jobs"
               " WHERE billed_at IS NOT NULL AND state = 'failed'")
        args: list[Any] = []
        if since is not None:
            sql += " AND finished_at >= ?"
            args.append(iso(since))
        row = self.db.execute(sql, args).fetchone()
        return int(row[0]), int(row[1])

    def active(self, account: str | None = None) -> list[Job]:
        states = [s.value for s in ACTIVE_STATES]
        marks = ",".join("?" * len(states))
        sql = f"SELECT * FROM jobs WHERE state IN ({marks})"
        args: list[Any] = list(states)
        if account is not None:
            sql += " AND account = ?"
            args.append(account)
        return [_row_to_job(r) for r in self.db.query(sql + " ORDER BY created_at", args)]

    def count_active(self, account: str) -> int:
        states = [s.value for s in ACTIVE_STATES]
        marks = ",".join("?" * len(states))
        row = self.db.execute(
            f"SELECT COUNT(*) FROM jobs WHERE account = ? AND state IN ({marks})", [account, *states]
        ).fetchone()
        return int(row[0])

    def recent(self, account: str | None = None, *, limit: int = 20,
               states: Iterable[JobState] | None = None) -> list[Job]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", list[Any]()
        if account is not None:
            sql += " AND account = ?"
            args.append(account)
        if states is not None:
            vals = [s.value for s in states]
            sql += f" AND state IN ({','.join('?' * len(vals))})"
            args.extend(vals)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        return [_row_to_job(r) for r in self.db.query(sql, args)]
