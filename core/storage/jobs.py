"""The jobs' table: one row per job, moved along ``JobState`` (``core.jobs.model``) one saved step at a time.

Every state change is ``transition``, a compare-and-set on (id, state, owner); ownership is a lease
(``claim``, ``renew``, ``release_leases``). See ``core.jobs.model`` for the model.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.errors import LeaseLost, NotFound
from imagine_bot.core.jobs.model import ACTIVE_STATES, Job, JobRequest, JobState, NewJob, ReplyTo, new_job_id
from imagine_bot.core.storage.db import Database, insert_rows, iso, skip_locked, transaction, utcnow
from imagine_bot.core.storage.errors import DuplicateRequest

# The only SQL here in SQLite's own dialect (``json_extract``, ``instr``): another database's store gives its
# own spelling of these two expressions.

#: ``Job.scope`` in SQL, over a ``jobs`` row
SCOPE_SQL = """CASE jobs.platform
    WHEN 'slack' THEN 'slack:' || substr(jobs.account, 7, instr(substr(jobs.account, 7), ':') - 1)
    WHEN 'discord' THEN 'discord:' || coalesce(json_extract(jobs.reply, '$.data.guild_id'), 'dm')
    ELSE jobs.platform END"""
#: the job's channel, over a ``jobs`` row
CHANNEL_SQL = "json_extract(jobs.reply, '$.channel')"



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




_NEW_COLUMNS = ("id", "account", "platform", "reply", "prompt", "params", "model", "cost", "state", "dedupe_key",
                "parent_id", "image_urls", "text_cost", "preset", "review", "created_at", "updated_at", "owner",
                "lease_until")
_INSERT = f"INSERT INTO jobs ({', '.join(_NEW_COLUMNS)}) VALUES "
_MARK = f"({', '.join('?' * len(_NEW_COLUMNS))})"


def _new_row(new: NewJob, now: str, owner: str | None, lease: str | None) -> tuple[Any, ...]:
    """The values of ``_NEW_COLUMNS`` for a new ``queued`` job."""
    r = new.request
    return (new.job_id, r.requester.key, r.reply.platform, r.reply.to_json(), r.prompt,
            json.dumps({**r.params, **r.extra_input}), new.model, new.cost, JobState.QUEUED.value, r.dedupe_key,
            r.parent_id, json.dumps(list(r.image_urls)) if r.image_urls else None, r.text_cost, r.preset,
            json.dumps(list(r.review)) if r.review else None, now, now, owner, lease)


class _NotPlain(Exception):
    """A value whose JSON may read back as something ``_as_read`` cannot tell without it."""


def _as_read(value: Any) -> Any:
    """What ``json.loads(json.dumps(value))`` gives, without the JSON: a new copy of each dict and list (a tuple
    becomes a list), the same strings, integers, booleans, None and finite floats (their JSON reads back
    exactly). ``_NotPlain`` for anything else (a dict key not a string, a float not finite, a subclass, an
    object ``json.dumps`` refuses): the JSON is read back then."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        raise _NotPlain
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _NotPlain
            of = type(item)
            out[key] = item if of is str or of is int or of is bool or item is None else _as_read(item)
        return out
    if kind is list or kind is tuple:
        return [_as_read(item) for item in value]
    raise _NotPlain


def _read_back(value: Any, text: str) -> Any:
    """``value`` as its JSON ``text`` reads back (``_as_read``, else ``json.loads``)."""
    try:
        return _as_read(value)
    except _NotPlain:
        return json.loads(text)


def _reply_read_back(reply: ReplyTo, text: str) -> ReplyTo:
    """``ReplyTo.from_json(text)``, ``text`` being ``reply``'s JSON (``_as_read`` where it tells)."""
    if type(reply.platform) is str and type(reply.channel) is str:
        try:
            return ReplyTo(reply.platform, reply.channel, _as_read(reply.data) or {})
        except _NotPlain:
            pass
    return ReplyTo.from_json(text)


def _new_job(new: NewJob, row: tuple[Any, ...], created: datetime, owner: str | None,
             lease_until: datetime | None) -> Job:
    """The job of a row ``_new_row`` gave, as ``get`` reads it back (every column not written starts empty),
    without reading it back: what the front end gave (its reply's data, the parameters) as its JSON reads back,
    the rest as written."""
    r = new.request
    return Job(id=new.job_id, requester=UserRef.parse(row[1]), reply=_reply_read_back(r.reply, row[3]),
               prompt=r.prompt, params=_read_back({**r.params, **r.extra_input}, row[5]), model=new.model,
               cost=new.cost, state=JobState.QUEUED, created_at=created, updated_at=created, dedupe_key=r.dedupe_key,
               parent_id=r.parent_id, image_urls=tuple(r.image_urls), text_cost=r.text_cost, preset=r.preset,
               review=tuple(r.review), owner=owner, lease_until=lease_until)


_ACTIVE = tuple(s.value for s in ACTIVE_STATES)
_ACTIVE_MARKS = ",".join("?" * len(_ACTIVE))


class SqliteJobStore:
    """Job rows. Every write is one short transaction; the caller may wrap several in ``Store.transaction``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, request: JobRequest, *, model: str, cost: int, job_id: str | None = None,
               owner: str | None = None, lease_until: datetime | None = None) -> Job:
        """Record a new ``queued`` job (owned by ``owner`` when given). Plain SQL: joins the caller's
        transaction (sqlite-utils' ``Table.insert`` would commit it half-way)."""
        return self.insert_many([NewJob(request, model, cost, job_id or new_job_id())], owner=owner,
                                lease_until=lease_until)[0]

    def insert_many(self, new: Sequence[NewJob], *, owner: str | None = None,
                    lease_until: datetime | None = None) -> list[Job]:
        """Record new ``queued`` jobs in one statement (a batch of submits, ``Orchestrator._commit``); all or
        none: ``DuplicateRequest`` if a dedupe key among them is taken."""
        now = iso(utcnow())
        lease = iso(lease_until) if lease_until else None
        rows = [_new_row(n, now, owner, lease) for n in new]
        try:
            with transaction(self.db):
                insert_rows(self.db, _INSERT, _MARK, rows)
        except sqlite3.IntegrityError as exc:
            if all(n.request.dedupe_key is None for n in new):
                raise
            keys = ", ".join(n.request.dedupe_key or "-" for n in new)
            raise DuplicateRequest(f"a job for one of the requests {keys} exists already ({exc})") from exc
        created = datetime.fromisoformat(now)
        owned = _dt(lease)
        return [_new_job(n, row, created, owner, owned) for n, row in zip(new, rows, strict=True)]

    def get(self, job_id: str) -> Job:
        rows = list(self.db.query("SELECT * FROM jobs WHERE id = ?", [job_id]))
        if not rows:
            raise NotFound(f"no job {job_id}", user_message="I could not find that image job.")
        return _row_to_job(rows[0])

    def state(self, job_id: str) -> JobState:
        """The job's state alone (no row to build)."""
        row = self.db.execute("SELECT state FROM jobs WHERE id = ?", [job_id]).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}", user_message="I could not find that image job.")
        return JobState(row[0])

    def find(self, job_id: str) -> Job | None:
        rows = list(self.db.query("SELECT * FROM jobs WHERE id = ?", [job_id]))
        return _row_to_job(rows[0]) if rows else None

    def by_dedupe_key(self, key: str) -> Job | None:
        """The job of a request already made. Asked before every submit with a key, and nearly always
        none: one plain statement (``query`` would wrap it in a savepoint), the row read only if found."""
        row = self.db.execute("SELECT id FROM jobs WHERE dedupe_key = ?", [key]).fetchone()
        return self.find(row[0]) if row is not None else None

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
        (the owner stays, as a record of who finished the job). A change that keeps the state (``fields``
        only: the gateway's bill) leaves ``state`` out of its ``SET``, so that the ``jobs_lease`` index
        keyed by it is not rewritten."""
        values = self._values(fields if new is expected and fields else {**fields, "state": new})
        if new.final:
            values["lease_until"] = None
        cols = ", ".join(f"{k} = ?" for k in values)
        sql = f"UPDATE jobs SET {cols} WHERE id = ? AND state = ?"
        args = [*values.values(), job_id, expected.value]
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        with transaction(self.db):  # the row as changed comes back with the change (no second read)
            cursor = self.db.execute(sql + " RETURNING *", args)
            rows = cursor.fetchall()
        if len(rows) != 1:
            raise LeaseLost(f"job {job_id}: not {expected.value} and owned by {owner} any more")
        return _row_to_job(dict(zip([d[0] for d in cursor.description or ()], rows[0], strict=True)))

    # ------------------------------------------------------------------ leases
    def claim(self, job_id: str, owner: str, until: datetime, *, now: datetime | None = None) -> Job | None:
        """Take an active job that nobody holds (no owner, or an expired lease), or renew our own.
        None when another process holds it or it is final."""
        now = now or utcnow()
        # one statement, atomic on its own (a caller's transaction is joined). On PostgreSQL the row another
        # host is claiming this very moment is skipped, not waited for (``FOR UPDATE SKIP LOCKED``): its claim
        # wins, and this process's event loop never blocks on a row lock
        sql = (f"UPDATE jobs SET owner = ?, lease_until = ? WHERE id = (SELECT id FROM jobs WHERE id = ?"
               f" AND state IN ({_ACTIVE_MARKS}) AND (owner IS NULL OR owner = ? OR lease_until IS NULL"
               f" OR lease_until < ?){skip_locked(self.db)})")
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
            if not ids:  # nothing to give up (and ``IN ()`` is SQLite's only, not PostgreSQL's)
                return 0
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

    def count_active_many(self, accounts: Sequence[str]) -> dict[str, int]:
        """``count_active`` of several accounts in one statement (an account with none is left out)."""
        marks = ", ".join("?" * len(accounts))
        rows = self.db.execute(
            f"SELECT account, COUNT(*) FROM jobs WHERE account IN ({marks}) AND state IN ({_ACTIVE_MARKS})"
            " GROUP BY account", [*accounts, *_ACTIVE]).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def recent(self, account: str | None = None, *, limit: int = 20,
               states: Iterable[JobState] | None = None) -> list[Job]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", list[Any]()
        if account is not None:
            sql += " AND account = ?"
            args.append(account)
        if states is not None:
            vals = [s.value for s in states]
            if not vals:  # no state asked for: no job (``IN ()`` is SQLite's only)
                return []
            sql += f" AND state IN ({','.join('?' * len(vals))})"
            args.extend(vals)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        return [_row_to_job(r) for r in self.db.query(sql, args)]
