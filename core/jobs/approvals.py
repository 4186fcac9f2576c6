"""Approval before an image goes public: in a channel with reviewers, a finished image goes to the requester
privately and to the reviewers, and into the channel only once one of them approves it.

    /imagine in the channel      the job carries the channel's reviewers (``Job.review``), as they are then
    delivered                    shown to the requester privately ("Sent for review") and charged, as any
                                 image; in the same transaction the approval is opened (pending)
    -> ReviewRequested           each reviewer gets it by DM with Approve and Reject
    Approve (the first decision) -> Approved: posted in the channel as any result, "approved by @reviewer"
    Reject, with a reason        -> Rejected: the requester is told why; the channel sees nothing
    nobody within APPROVAL_EXPIRE_H  -> expired: the requester is told

Who decides: a listed reviewer or an operator; never the requester on their own image, unless they are
the channel's only reviewer (then they are told so). The decision is a compare-and-set from ``pending``:
the first press wins, a later one is told what was decided, by whom and when.

Every step after a decision is persisted before and after it is done (``core.storage.approvals``): a step
is taken under the approval's short lease by one process, its front end records a receipt as it goes, and
a step left undone (a crash, a chat-API blip) is done again by the sweep, which runs at start and every
``sweep_every_s``. So the channel post happens exactly once, across restarts and processes.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any

from imagine_bot.core.access.authority import Actor
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.chat import messages
from imagine_bot.core.errors import DeliveryError, ImagineError, NotFound, PermissionDenied, ReviewClosed, is_transient
from imagine_bot.core.events import Approved, ImageFile, Rejected, ReviewExpired, ReviewRequested
from imagine_bot.core.frontend import FrontEnd
from imagine_bot.core.jobs.model import Job
from imagine_bot.core.storage.approvals import APPROVED, EXPIRED, PENDING, REJECTED, Approval
from imagine_bot.core.storage.base import ApprovalStore, CreditStore, JobRepository
from imagine_bot.core.storage.db import utcnow

log = logging.getLogger(__name__)

#: how often the sweep expires old approvals and retries steps left undone
SWEEP_EVERY_S = 60.0
#: how long one step may hold an approval before another process may take it over
STEP_LEASE_S = 120.0


def channel_of(job: Job) -> str:
    """The ``place#CHANNEL`` a job's image goes to once approved."""
    return f"{job.scope}#{job.reply.channel}"


class Approvals:
    def __init__(self, store: ApprovalStore, jobs: JobRepository, ledger: CreditStore, *, expire_h: float, owner: str,
                 sweep_every_s: float = SWEEP_EVERY_S, lease_s: float = STEP_LEASE_S) -> None:
        self.store = store
        self.jobs = jobs
        self.ledger = ledger
        self.expire_h = expire_h
        self.owner = owner
        self.sweep_every_s = sweep_every_s
        self.lease_s = lease_s
        self.frontends: dict[str, FrontEnd] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped = False

    def register(self, frontend: FrontEnd) -> None:
        self.frontends[frontend.platform] = frontend

    # ------------------------------------------------------------------ the channel's reviewers
    def reviewers_for(self, actor: Actor) -> tuple[str, ...]:
        """The reviewers a job asked by ``actor`` waits for (empty: its image is posted at once)."""
        return self.store.reviewers(actor.channel_scope) if actor.channel_scope else ()

    # ------------------------------------------------------------------ a job's approval
    def opened(self, job: Job) -> None:
        """The job was delivered to its requester (called in the same transaction as its charge)."""
        self.store.open(job.id, channel_of(job), job.review, utcnow() + timedelta(hours=self.expire_h))

    def kick(self, job_id: str) -> None:
        """Do the approval's next step now, in the background (the sweep does it if this process stops)."""
        if not self._stopped:
            self._track(self._step(job_id), f"approval-{job_id}")

    def _track(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def check(self, actor: Actor, job_id: str, *, operator: bool) -> tuple[Approval, Job, bool]:
        """May ``actor`` decide on this image? The approval, the job and whether it is the actor's own image
        (allowed when they are the only reviewer). Raises ``ReviewClosed`` when it is already decided."""
        approval = self.store.get(job_id)
        job = self.jobs.find(job_id)
        if approval is None or job is None:
            raise NotFound(f"no approval for job {job_id}", user_message=messages.review_gone())
        own = job.requester == actor.user
        if own and approval.reviewers != (actor.key,):
            raise PermissionDenied(f"{actor.key} tried to decide on their own job {job_id}",
                                   user_message=messages.review_own_image())
        if actor.key not in approval.reviewers and not operator:
            raise PermissionDenied(f"{actor.key} is not a reviewer of {approval.channel}",
                                   user_message=messages.review_not_reviewer(approval.channel_id))
        if approval.state == PENDING and approval.expires_at <= utcnow():
            self._expire_now()
            approval = self.store.get(job_id) or approval
        if approval.state != PENDING:
            raise ReviewClosed(messages.review_decided(approval.state, approval.decided_by, approval.reason,
                                                       approval.decided_at))
        return approval, job, own

    async def decide(self, actor: Actor, job_id: str, *, approve: bool, reason: str | None = None,
                     operator: bool = False) -> str:
        """Approve or reject (``reason`` given); the text for whoever pressed. The first decision counts;
        the approved image is posted before this returns (or the reason it could not be yet)."""
        try:
            approval, job, own = self.check(actor, job_id, operator=operator)
        except ReviewClosed:
            current = self.store.get(job_id)
            if approve and current is not None and current.state == APPROVED and current.posted_at is None:
                # approved, but the post did not go through (the bot was not in the channel, ...): try again
                self.store.record_receipt(job_id, failed=None)
                problem = await self._step(job_id)
                return (messages.review_approved_not_posted(current.channel_id, problem) if problem
                        else messages.review_approved(current.channel_id))
            raise
        if not approve and not (reason or "").strip():
            raise PermissionDenied("a rejection without a reason", user_message=messages.reject_reason_needed())
        state = APPROVED if approve else REJECTED
        note = None if approve else (reason or "").strip()
        if not self.store.decide(job_id, state, by=actor.key, reason=note, now=utcnow()):
            current = self.store.get(job_id) or approval
            raise ReviewClosed(messages.review_decided(current.state, current.decided_by, current.reason,
                                                       current.decided_at))
        log.info("job %s %s by %s", job_id, state, actor.key)
        problem = await self._step(job_id)
        if not approve:
            return messages.review_rejected(job.requester.key, own=own)
        if problem:
            return messages.review_approved_not_posted(approval.channel_id, problem)
        done = self.store.get(job_id)
        if done is None or done.posted_at is None:  # the step is running elsewhere (the reviewers' DMs)
            return messages.review_approved_soon(approval.channel_id, own=own)
        return messages.review_approved(approval.channel_id, own=own)

    # ------------------------------------------------------------------ the steps
    async def _step(self, job_id: str) -> str | None:
        """The approval's next step, under its lease: tell the reviewers, post the approved image, or tell the
        requester. Returns what went wrong (for whoever pressed), None when done or done elsewhere."""
        now = utcnow()
        if not self.store.claim(job_id, self.owner, now + timedelta(seconds=self.lease_s), now=now):
            return None  # another process is on it
        try:
            done: set[str] = set()
            while True:  # a decision may come while the reviewers are being told: then post it too
                approval = self.store.get(job_id)
                job = self.jobs.find(job_id)
                if approval is None or job is None or not approval.needs_work or approval.state in done:
                    return None
                frontend = self.frontends.get(job.platform)
                if frontend is None:
                    return None  # a process running that platform does it
                done.add(approval.state)
                try:
                    await self._do(frontend, approval, job)
                except ImagineError as error:
                    return self._failed(approval, error)
                except (TimeoutError, ConnectionError) as exc:
                    log.warning("approval of job %s: %s: %s; the sweep tries again", job_id, type(exc).__name__,
                                exc)
                    return messages.review_retrying()
        finally:
            self.store.release(job_id, self.owner)

    async def _do(self, frontend: FrontEnd, approval: Approval, job: Job) -> None:
        if approval.state == PENDING:
            reviewers = tuple(UserRef.parse(k) for k in approval.reviewers)
            await frontend.publish(ReviewRequested(job, self._images(job), reviewers, dict(approval.receipt)))
            self.store.mark(job.id, "notified_at")
        elif approval.state == APPROVED:
            assert approval.decided_by is not None
            balance = self.ledger.balance(job.requester).available
            await frontend.publish(Approved(job, self._images(job), balance, UserRef.parse(approval.decided_by),
                                            dict(approval.receipt)))
            self.store.mark(job.id, "posted_at")
            log.info("job %s: approved image posted in %s", job.id, approval.channel)
        elif approval.state == REJECTED:
            assert approval.decided_by is not None
            await frontend.publish(Rejected(job, UserRef.parse(approval.decided_by), approval.reason or ""))
            self.store.mark(job.id, "told_at")
        elif approval.state == EXPIRED:
            await frontend.publish(ReviewExpired(job, self.expire_h))
            self.store.mark(job.id, "told_at")

    def _failed(self, approval: Approval, error: ImagineError) -> str:
        """A step that failed: a blip is left for the sweep; anything else is logged, and the step is given
        up (an approved post waits for the next press on Approve)."""
        if is_transient(error):
            log.warning("approval of job %s (%s): %s; the sweep tries again", approval.job_id, approval.state,
                        error.admin_message)
            return messages.review_retrying()
        log.error("approval of job %s (%s) failed: %s", approval.job_id, approval.state, error.admin_message)
        if approval.state == APPROVED:
            self.store.record_receipt(approval.job_id, failed=error.admin_message)
        else:
            self.store.mark(approval.job_id, "notified_at" if approval.state == PENDING else "told_at")
        generic = (ImagineError.default_user_message, DeliveryError.default_user_message)
        return messages.review_refused() if error.user_message in generic else error.user_message

    @staticmethod
    def _images(job: Job) -> tuple[ImageFile, ...]:
        """The job's images, kept in the spool while its approval waits (``waiting_jobs``)."""
        if not job.files or not all(p.exists() for p in job.files):
            raise DeliveryError(f"job {job.id}: its images are no longer in the spool",
                                user_message="The image is no longer kept, so it cannot be posted.")
        return tuple(ImageFile(p, mimetypes.guess_type(p.name)[0] or "image/png", p.stat().st_size)
                     for p in job.files)

    # ------------------------------------------------------------------ expiry and the sweep
    def _expire_now(self, now: datetime | None = None) -> list[str]:
        expired = self.store.expire(now or utcnow())
        for job_id in expired:
            log.info("job %s: nobody decided within %g hours; its approval expired", job_id, self.expire_h)
        return expired

    async def expire_due(self, now: datetime | None = None) -> int:
        """Expire every approval pending past ``APPROVAL_EXPIRE_H`` (at ``now``) and tell the requesters."""
        expired = self._expire_now(now)
        for job_id in expired:
            await self._step(job_id)
        return len(expired)

    async def run_due(self) -> None:
        """Every step left undone on the platforms running here (reviewers not told, an approved image not
        posted, a requester not told), except approved posts given up until the next press."""
        for approval in self.store.due(self.frontends):
            if approval.state == APPROVED and approval.receipt.get("failed"):
                continue
            await self._step(approval.job_id)

    async def start(self) -> None:
        """Finish what earlier processes left (in the background, at once), then sweep every
        ``sweep_every_s``."""
        if self._sweeper is None and not self._stopped:
            self._track(self._sweep_once(), "approvals-resume")
            self._sweeper = asyncio.create_task(self._sweep(), name="approvals-sweep")

    async def _sweep_once(self) -> None:
        try:
            await self.expire_due()
            await self.run_due()
        except Exception:
            log.exception("approvals sweep failed; trying again")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every_s)
            await self._sweep_once()

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    async def wait_idle(self) -> None:
        """Wait until no step started here is running (tests, the CLI)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        self._stopped = True
        tasks = [t for t in (self._sweeper, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sweeper = None
