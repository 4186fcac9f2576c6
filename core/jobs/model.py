"""Jobs: the typed job record (its rows: ``core.storage.jobs``).

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
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.storage.db import utcnow


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
    #: the budgets over the job besides the global cap (``core.credits.budgets``): its server or workspace, a channel
    scopes: tuple[str, ...] = ()
    #: the gateway model and its price (None: the configured text-to-image model at its price)
    model: str | None = None
    cost: int | None = None
    #: reference images for an edit: public URLs, or ``ref:<key>`` for images we serve (``core.media.refstore``)
    image_urls: tuple[str, ...] = ()
    #: what a text-to-image job costs now, when this job's price differs (said in the reply)
    text_cost: int | None = None
    #: the brand preset whose template made the prompt (``core.chat.presets``), named in the caption
    preset: str | None = None
    #: who must approve the result before it goes to the channel (``core.jobs.approvals``); empty: nobody
    review: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job about to be recorded (``JobRepository.insert_many``): the request, its model and price, and the id
    made for it."""

    request: JobRequest
    model: str
    cost: int
    job_id: str


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
        server) or the platform alone. Same as ``SCOPE_SQL`` (``core.storage.jobs``)."""
        if self.platform == "slack":
            return f"slack:{self.requester.workspace}"
        if self.platform == "discord":
            return f"discord:{self.reply.data.get('guild_id') or 'dm'}"
        return self.platform

    @property
    def elapsed_s(self) -> float:
        end = self.finished_at or utcnow()
        return max(0.0, (end - self.created_at).total_seconds())


def new_job_id() -> str:
    """A new job's id: ``j``, the time in milliseconds (11 hex digits) and 32 random bits (8 hex digits), like
    ``j1a23c4a4690cf4240b3``. Ids sort in the order they were made (within a millisecond, at random): the
    indexes keyed by the job id (the jobs' own, the ledger's and the budgets' ledger's ``job_id``) grow at
    their end, so a batch's commit writes the few pages there instead of one page of each index per job at a
    random place (``benchmarks/commit.py``). Two ids are the same only if made in the same millisecond with
    the same 32 random bits. Older ids (``j`` and 12 random hex digits) stay valid everywhere."""
    return f"j{time.time_ns() // 1_000_000:011x}{secrets.randbits(32):08x}"
