"""Approvals in SQLite (``core.storage.base.ApprovalStore``): the reviewers of each channel
(``approval_channels``) and one row per finished job that waits for, or had, a decision (``approvals``).
The rules and the steps are ``core.jobs.approvals``.

Every change is a compare-and-set, so several processes on one database agree: a decision is taken only
from ``pending`` (the first wins), expiry likewise, and the steps after it (reviewers told, the channel post,
the requester told) are done by the one process holding the approval's short lease.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from imagine_bot.core.storage.db import Database, iso, transaction, utcnow

PENDING, APPROVED, REJECTED, EXPIRED = "pending", "approved", "rejected", "expired"


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True, slots=True)
class Approval:
    job_id: str
    #: ``place#CHANNEL``: where the image goes once approved
    channel: str
    #: user keys of who may decide (besides operators)
    reviewers: tuple[str, ...]
    state: str
    created_at: datetime
    expires_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str | None = None
    notified_at: datetime | None = None
    posted_at: datetime | None = None
    told_at: datetime | None = None
    receipt: dict[str, Any] = field(default_factory=dict)

    @property
    def channel_id(self) -> str:
        return self.channel.split("#", 1)[1]

    @property
    def needs_work(self) -> bool:
        """A step is still to do: tell the reviewers, post the approved image, or tell the requester."""
        return ((self.state == PENDING and self.notified_at is None) or (self.state == APPROVED and self.posted_at
                is None) or (self.state in (REJECTED, EXPIRED) and self.told_at is None))


def _approval(row: dict[str, Any]) -> Approval:
    return Approval(
        job_id=row["job_id"], channel=row["channel"], reviewers=tuple(json.loads(row["reviewers"])),
        state=row["state"], created_at=datetime.fromisoformat(row["created_at"]),
        expires_at=datetime.fromisoformat(row["expires_at"]), decided_by=row["decided_by"],
        decided_at=_dt(row["decided_at"]), reason=row["reason"], notified_at=_dt(row["notified_at"]),
        posted_at=_dt(row["posted_at"]), told_at=_dt(row["told_at"]), receipt=json.loads(row["receipt"] or "{}"))


class SqliteApprovals:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ channels
    def reviewers(self, channel: str) -> tuple[str, ...]:
        """The reviewers of a channel (``place#CHANNEL``); empty: approvals are off there."""
        row = self.db.execute("SELECT reviewers FROM approval_channels WHERE channel = ?", [channel]).fetchone()
        return tuple(json.loads(row[0])) if row else ()

    def set_reviewers(self, channel: str, reviewers: Iterable[str], *, actor: str) -> None:
        """Turn approvals on with these reviewers (none: off)."""
        chosen = list(dict.fromkeys(reviewers))
        with transaction(self.db):
            if not chosen:
                self.db.execute("DELETE FROM approval_channels WHERE channel = ?", [channel])
            else:
                self.db.execute("INSERT INTO approval_channels (channel, reviewers, updated_by, updated_at) VALUES "
                                "(?, ?, ?, ?) ON CONFLICT (channel) DO UPDATE SET reviewers = excluded.reviewers, "
                                "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
                                [channel, json.dumps(chosen), actor, iso(utcnow())])

    # ------------------------------------------------------------------ approvals
    def open(self, job_id: str, channel: str, reviewers: tuple[str, ...], expires_at: datetime) -> None:
        """A finished job's approval, pending (joins the caller's transaction: the job's ``delivered``)."""
        now = iso(utcnow())
        with transaction(self.db):
            self.db.execute("INSERT INTO approvals (job_id, channel, reviewers, state, created_at, expires_at) "
                            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
                            [job_id, channel, json.dumps(list(reviewers)), PENDING, now, iso(expires_at)])

    def get(self, job_id: str) -> Approval | None:
        rows = list(self.db.query("SELECT * FROM approvals WHERE job_id = ?", [job_id]))
        return _approval(rows[0]) if rows else None

    def for_jobs(self, job_ids: Iterable[str]) -> dict[str, Approval]:
        ids = list(job_ids)
        if not ids:
            return {}
        rows = self.db.query(f"SELECT * FROM approvals WHERE job_id IN ({','.join('?' * len(ids))})", ids)
        return {r["job_id"]: _approval(r) for r in rows}

    def decide(self, job_id: str, state: str, *, by: str, reason: str | None, now: datetime) -> bool:
        """Compare-and-set from ``pending`` (and not yet expired) to ``approved`` or ``rejected``: True for the
        one decision that counts."""
        with transaction(self.db):
            return bool(self.db.execute(
                "UPDATE approvals SET state = ?, decided_by = ?, decided_at = ?, reason = ? "
                "WHERE job_id = ? AND state = ? AND expires_at > ?",
                [state, by, iso(now), reason, job_id, PENDING, iso(now)]).rowcount == 1)

    def expire(self, now: datetime) -> list[str]:
        """Every pending approval past its time becomes ``expired``; returns their job ids."""
        with transaction(self.db):
            ids = [r[0] for r in self.db.execute(
                "SELECT job_id FROM approvals WHERE state = ? AND expires_at <= ?", [PENDING, iso(now)]).fetchall()]
            for job_id in ids:
                self.db.execute("UPDATE approvals SET state = ?, decided_at = ? WHERE job_id = ? AND state = ?",
                                [EXPIRED, iso(now), job_id, PENDING])
        return ids

    def mark(self, job_id: str, step: str) -> None:
        """A step is done: ``notified_at``, ``posted_at`` or ``told_at``."""
        assert step in ("notified_at", "posted_at", "told_at")
        with transaction(self.db):
            self.db.execute(f"UPDATE approvals SET {step} = ? WHERE job_id = ?", [iso(utcnow()), job_id])

    def record_receipt(self, job_id: str, **ids: Any) -> Approval:
        """Merge what a front end recorded (message ids, file ids) into the approval's receipt."""
        with transaction(self.db):
            row = self.db.execute("SELECT receipt FROM approvals WHERE job_id = ?", [job_id]).fetchone()
            receipt = {**json.loads((row[0] if row else None) or "{}"), **ids}
            self.db.execute("UPDATE approvals SET receipt = ? WHERE job_id = ?", [json.dumps(receipt), job_id])
        found = self.get(job_id)
        assert found is not None
        return found

    # ------------------------------------------------------------------ who does the next step
    def claim(self, job_id: str, owner: str, until: datetime, *, now: datetime | None = None) -> bool:
        """Take the approval's lease (free, expired, or ours already) to do its next step."""
        with transaction(self.db):
            return bool(self.db.execute(
                "UPDATE approvals SET lease_owner = ?, lease_until = ? WHERE job_id = ? AND (lease_owner IS NULL "
                "OR lease_owner = ? OR lease_until IS NULL OR lease_until < ?)",
                [owner, iso(until), job_id, owner, iso(now or utcnow())]).rowcount == 1)

    def release(self, job_id: str, owner: str) -> None:
        with transaction(self.db):
            self.db.execute("UPDATE approvals SET lease_owner = NULL, lease_until = NULL WHERE job_id = ? AND "
                            "lease_owner = ?", [job_id, owner])

    def due(self, platforms: Iterable[str], *, limit: int = 50) -> list[Approval]:
        """Approvals of jobs on these platforms with a step still to do, oldest first."""
        names = list(platforms)
        if not names:
            return []
        rows = self.db.query(
            "SELECT approvals.* FROM approvals JOIN jobs ON jobs.id = approvals.job_id "
            f"WHERE jobs.platform IN ({','.join('?' * len(names))}) AND ("
            "(approvals.state = 'pending' AND approvals.notified_at IS NULL) OR "
            "(approvals.state = 'approved' AND approvals.posted_at IS NULL) OR "
            "(approvals.state IN ('rejected', 'expired') AND approvals.told_at IS NULL)) "
            "ORDER BY approvals.created_at LIMIT ?", [*names, limit])
        return [_approval(r) for r in rows]

    def waiting_jobs(self) -> set[str]:
        """Jobs whose image must stay in the spool: pending, or approved and not posted yet."""
        rows = self.db.execute("SELECT job_id FROM approvals WHERE state = 'pending' OR "
                               "(state = 'approved' AND posted_at IS NULL)").fetchall()
        return {str(r[0]) for r in rows}
