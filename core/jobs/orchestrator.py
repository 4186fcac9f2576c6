"""The job orchestrator: submit -> reserve -> createTask -> track -> download -> deliver -> capture.

Every step is persisted before the next begins, so a restart resumes each job from its row:

- ``queued``: credits reserved; the job waits for admission (global cap + rate limit) and is resent.
- ``submitting``: createTask may have reached the gateway. Resending could double-spend, so a job found
  here after a restart is failed with ``JobInterrupted`` and refunded.
- ``running``: the gateway task id is known; tracking resumes (callback or polling).
- ``delivering``: images are in the spool (or are fetched again); delivery is retried.

Money: ``reserve`` with the job insert, ``capture`` with the ``delivered`` state, ``release`` with the
``failed`` state, each in one transaction. The ledger refuses a second capture or release of a job, so
no path charges twice, and a job that never delivered is never charged. A refused capture is an error
(``CaptureRefused``, logged), never "delivered". Submits arriving in the same turn of the event loop (a
burst) share one reserve-and-record transaction (``_together``): read once and written in a statement per
table where the batch allows (``_commit_together``), else a savepoint each; each is told after its COMMIT,
and their workers start once the burst's commands are answered (``core.jobs.lull``).

Several processes may share the database (a rolling deploy, a double start). Each job is owned by one
process through a lease (``core.jobs.leases``): this orchestrator claims jobs nobody holds, renews its
leases while it works, and takes over a job only once its owner's lease expired (the periodic sweep).
Every state change is a compare-and-set on the expected state and owner (``JobRepository.transition``); a
lost race raises ``LeaseLost`` and the local worker stops without touching money.

Stopping: ``drain`` (SIGTERM) refuses new jobs, stops the jobs that can be picked up anywhere (waiting,
tracking, downloading), lets createTask calls and deliveries in flight finish up to ``DRAIN_S``, then
``stop`` releases every lease for the next owner. A createTask call is bounded below ``DRAIN_S`` as a
whole, and one whose connection never opened is not tried again once the drain began: its job goes back
to ``queued``, nothing sent, nothing charged.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import shutil
import time
from collections.abc import Awaitable, Callable, KeysView
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TypeVar

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.chat.parsing import check_banned
from imagine_bot.core.credits.ledger import Hold
from imagine_bot.core.credits.periods import describe_refill
from imagine_bot.core.credits.refunds import fail_and_refund
from imagine_bot.core.errors import (
    CaptureRefused,
    DatabaseBusy,
    DeliveryError,
    DeliveryInterrupted,
    GatewayError,
    GatewayMaintenance,
    GatewayProtocolError,
    GatewayRateLimited,
    GatewayTimeout,
    ImagineError,
    InsufficientCredits,
    JobFailedByOperator,
    JobInterrupted,
    LeaseLost,
    ShuttingDown,
    TooManyActiveJobs,
    UnknownTask,
    is_transient,
)
from imagine_bot.core.events import Accepted, Delivered, Failed, ImageFile, JobEvent, Progress, Queued
from imagine_bot.core.frontend import FrontEnd
from imagine_bot.core.gateway import GatewayClient, TaskRecord, TaskStage
from imagine_bot.core.gateway.catalog import CATALOG, ModelSpec
from imagine_bot.core.jobs.admission import Admission
from imagine_bot.core.jobs.approvals import Approvals
from imagine_bot.core.jobs.leases import LeaseClock, new_owner_id
from imagine_bot.core.jobs.lull import Lull, LullQueue
from imagine_bot.core.jobs.model import Job, JobRequest, JobState, NewJob, ReplyTo, new_job_id
from imagine_bot.core.jobs.outbox import UNPACED, Outbox, Refresh, Send
from imagine_bot.core.jobs.ratelimit import RateLimiter
from imagine_bot.core.media.thumbnails import ThumbnailStore
from imagine_bot.core.storage.base import Store
from imagine_bot.core.storage.db import utcnow
from imagine_bot.core.storage.errors import DuplicateRequest, StoreClosed
from imagine_bot.core.web.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

#: a new task may be unknown to recordInfo for a while (gateway contract: about 90 s)
UNKNOWN_TASK_GRACE_S = 90.0
#: with callbacks configured, polling is only the fallback: first look after this long, then this often
CALLBACK_FALLBACK_FIRST_S = 45.0
CALLBACK_FALLBACK_EVERY_S = 30.0
#: waiters at these places hear each move; the ones further back are told their place once
QUEUE_PLACES_SHOWN = 5
#: callbacks remembered for tasks nobody waits on yet (a fast task's callback beats its tracker)
EARLY_CALLBACKS_KEPT = 1000
#: job phases a drain lets finish: the outcome of a createTask in flight cannot be known if it is cut,
#: and a delivery cut half-way may post twice
DRAIN_FINISHES = ("submitting", "delivering")
#: waits between delivery attempts after a chat-API blip (the last one repeats, up to DELIVERY_RETRY_S)
DELIVERY_BACKOFF_S = (2.0, 4.0, 8.0, 16.0, 30.0)
#: callback hints wake a task's tracker at most this often
URGENT_EVERY_S = 3.0
#: longest wait between two tries of saving an accepted task's id while the database is busy
SAVE_BACKOFF_CAP_S = 2.0


#: a submit waiting for its batch's transaction: told its job or refusal, and the job to reserve and record
_Waiting = tuple[asyncio.Future[Job], NewJob]


def _spool(path: Path, content: bytes) -> None:
    """Write a downloaded result into its job's spool folder (made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


class _Drained(Exception):
    """Internal: the process is draining and this job is left for the next owner at a safe point."""


class Orchestrator:
    def __init__(
        self,
        *,
        store: Store,
        gateway: GatewayClient,
        model: ModelSpec,
        spool: Path,
        max_active_per_user: int,
        max_active: int,
        create_rate_per_10s: int,
        poll_interval_s: float,
        poll_max_interval_s: float,
        job_timeout_s: float,
        poll_rate_per_s: float = 8.0,
        callback_url: str | None = None,
        banned_words: tuple[str, ...] = (),
        monotonic: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
        resolve_refs: Callable[[list[str]], list[str]] | None = None,
        lease_s: float = 30.0,
        owner: str | None = None,
        thumbnails: ThumbnailStore | None = None,
        delivery_retry_s: float = 300.0,
        on_failure: Callable[[Job, ImagineError], None] | None = None,
        approvals: Approvals | None = None,
    ) -> None:
        #: the credits and the jobs, and the transaction that spans them
        self.store = store
        self.jobs = store.jobs
        self.ledger = store.ledger
        self.gateway = gateway
        self.model = model
        self.spool = spool
        self.max_active_per_user = max_active_per_user
        self.poll_interval_s = poll_interval_s
        self.poll_max_interval_s = poll_max_interval_s
        self.job_timeout_s = job_timeout_s
        self.delivery_retry_s = delivery_retry_s
        self.delivery_backoff_s = DELIVERY_BACKOFF_S
        self.callback_url = callback_url
        self.banned_words = banned_words
        self.monotonic = monotonic
        self.metrics = metrics or Metrics()
        self.thumbnails = thumbnails
        #: results of jobs with reviewers (``Job.review``) open an approval when they are delivered
        self.approvals = approvals
        self.metrics.watch(lambda: self.in_flight, lambda: self.admission.waiting)
        #: turns a job's stored references (``ref:<key>``) into URLs the gateway can fetch (``RefStore``)
        self.resolve_refs = resolve_refs or (lambda urls: list(urls))
        self.admission = Admission(max_active, create_rate_per_10s)
        # routine polls: a burst of 2 on top of the rate keeps their busiest second within the gateway's
        # ~10 recordInfo/s; callback confirmations may use a second's worth at once
        self.poll_limiter = RateLimiter(poll_rate_per_s, burst=2, urgent_burst=max(2, int(poll_rate_per_s)))
        self.frontends: dict[str, FrontEnd] = {}
        #: what follows an ack (a job's worker, its status messages) waits while commands are being decided
        self.lull = Lull()
        self.outbox = Outbox(monotonic, lull=self.lull)
        #: submits waiting to be reserved and recorded together (``_together``)
        self._batch: list[_Waiting] = []
        self._submitting = 0  # submits waiting for their batch (``wait_idle`` waits for them too)
        self._held = 0  # submits about to be made once the commands being answered are (``after_answers``)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: jobs to start once the commands being answered are (``_start``): one task waits for the lull for
        #: all of them, instead of a worker each during a burst. A job queued here counts as running here
        #: (``_here``, ``in_flight``): it is not started twice, nor its lease freed as idle
        self._queued: LullQueue[str] = LullQueue(self.lull, self._launch_queued, name="job-starter")
        #: jobs of a burst whose ``Accepted`` goes out with their start (``_accept``)
        self._unannounced: dict[str, Job] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        #: final answers from verified account webhooks, for the trackers they woke (no recordInfo needed)
        self._finals: dict[str, TaskRecord] = {}
        #: when each task was last woken by a callback hint (monotonic)
        self._last_urgent: dict[str, float] = {}
        self._deferred: dict[str, asyncio.TimerHandle] = {}
        #: the gateway sends a signed account webhook for every task (registered at start): createTask then
        #: carries no per-task callBackUrl, whose unsigned callback would cost a confirming recordInfo
        self.account_webhook = False
        self._early: dict[str, float] = {}  # task id -> when a callback came before its tracker waited
        self._phase: dict[str, str] = {}  # job id -> waiting | submitting | tracking | downloading | delivering
        #: told of every job failure, with the failed row (the gateway account pauses on 402/433, alerts on
        #: 401/505, and counts what was billed but not delivered)
        self.on_failure = on_failure
        self._accepting = True
        self._draining = False
        #: set when a drain begins: a createTask that could not connect is not tried again
        self._drain_begun = asyncio.Event()
        self._stopped = False
        self._halted = False
        self.owner = owner or new_owner_id()
        self.leases = LeaseClock(lease_s)
        self._housekeeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ front ends
    def register(self, frontend: FrontEnd) -> None:
        self.frontends[frontend.platform] = frontend
        if self.approvals is not None:
            self.approvals.register(frontend)

    async def _publish(self, event: JobEvent) -> None:
        """Deliver now (awaited: errors mean "not delivered", the caller refunds); hand anything else to
        the outbox, which sends it in the background: the job never waits on a chat API for a status."""
        if not isinstance(event, Delivered):
            self._post(event)
            return
        frontend = self.frontends.get(event.job.platform)
        if frontend is None:  # nothing posted is nothing delivered: refunded, never charged
            raise DeliveryError(f"no {event.job.platform} front end in this process to deliver job {event.job.id}")
        self.outbox.hold(event.job.id)
        await frontend.publish(event)

    def _post(self, event: JobEvent) -> None:
        """A status (anything but ``Delivered``) into the outbox."""
        frontend = self.frontends.get(event.job.platform)
        if frontend is None:
            log.warning("no front end for %s to publish %s of job %s", event.job.platform,
                        type(event).__name__, event.job.id)
            return
        pace_of = getattr(frontend, "pace", None)
        refresh: Refresh | None = None
        if isinstance(event, Progress):
            progress = event

            def refresh(later_s: float) -> Send:
                return partial(frontend.publish, replace(progress, elapsed_s=progress.elapsed_s + later_s))

        self.outbox.put(event.job.id, partial(frontend.publish, event),
                        pace=partial(pace_of, event.job) if pace_of is not None else UNPACED,
                        final=isinstance(event, Failed), refresh=refresh)

    # ------------------------------------------------------------------ submitting
    def precheck(self, requester: UserRef, cost: int | None = None) -> None:
        """Raise the refusal ``submit`` would make for this user (job limit, balance), reserving nothing.

        For front ends that must decide before they acknowledge (Discord: private or public reply);
        ``submit`` still enforces both atomically.
        """
        self.lull.touch()
        if (over := self._job_limit(self.jobs.count_active(requester.key))) is not None:
            raise over
        cost = self.model.cost if cost is None else cost
        balance = self.ledger.available(requester)  # a read: the account is opened by the reservation
        if balance.available < cost:
            raise InsufficientCredits(balance=balance.available, cost=cost,
                                      next_refill=describe_refill(balance.next_refill, utcnow()))

    def _job_limit(self, active: int) -> TooManyActiveJobs | None:
        """The refusal of a new job for a user with ``active`` jobs in flight, if that is the limit already."""
        return TooManyActiveJobs(self.max_active_per_user) if active >= self.max_active_per_user else None

    async def check_reply(self, reply: ReplyTo) -> None:
        """Raise ``CannotAnswerHere`` when the front end of ``reply`` says it cannot post there (``FrontEnd``:
        the optional ``check_reply``); front ends without one answer everywhere."""
        frontend = self.frontends.get(reply.platform)
        check: Callable[[ReplyTo], Awaitable[None]] | None = getattr(frontend, "check_reply", None)
        if check is not None:
            await check(reply)

    async def after_answers(self) -> None:
        """Wait for the lull before a submit that follows an ack (Discord's placeholder): the burst's other
        commands are answered first. ``wait_idle`` counts the submit as coming."""
        if not self._accepting:
            return  # the submit is refused at once (a drain, a stop)
        self._held += 1
        try:
            await self.lull.wait()
        finally:
            self._held -= 1

    async def submit(self, request: JobRequest, *, looked_up: bool = False) -> Job:
        """Reserve credits, record the job and start it. Raises a user-facing ``ImagineError``.

        The job's worker starts once commands stop arriving (``Lull``): nothing it does decides the answer.
        ``looked_up``: the caller found no job with the request's dedupe key, with nothing awaited since (the
        key is not looked up again; two deliveries at once still make one job: ``DuplicateRequest``)."""
        self.lull.touch()
        if not self._accepting:
            raise ShuttingDown("refused a new job: the process is stopping")
        if request.dedupe_key and not looked_up:
            existing = self.jobs.by_dedupe_key(request.dedupe_key)
            if existing is not None:
                log.info("redelivered request %s: job %s already exists", request.dedupe_key, existing.id)
                return existing
        check_banned(request.prompt, self.banned_words)
        await self.check_reply(request.reply)  # nothing is reserved or sent where the result cannot go
        if not self._accepting:  # a drain began while the front end was asked
            raise ShuttingDown("refused a new job: the process is stopping")
        job_id = new_job_id()
        model = request.model or self.model.id
        cost = self.model.cost if request.cost is None else request.cost
        self._submitting += 1
        try:
            return await self._accept(request, job_id, model, cost)
        finally:
            self._submitting -= 1

    async def _accept(self, request: JobRequest, job_id: str, model: str, cost: int) -> Job:
        try:
            job = await self._together(NewJob(request, model, cost, job_id))
        except DuplicateRequest:
            # the same request arrived twice at once: the other delivery made the job
            existing = self.jobs.by_dedupe_key(request.dedupe_key or "")
            if existing is None:
                raise
            return existing
        if self._queued.holding and not self._stopped and not self._here(job.id):
            # a burst (``_start`` queues it): its Accepted (its first status waits for the lull in the outbox
            # anyway) and its log line go with its start, once the burst is answered: none decides the ack
            self._unannounced[job.id] = job
        else:
            self._announce(job)
        self._start(job)
        return job

    def _announce(self, job: Job) -> None:
        """The accepted job's log line and its ``Accepted`` event. It is started even if a front end
        cancels it on Accepted: its worker reads the job's state first and does nothing for a job that is no
        longer queued (a read here would cost every command of a burst)."""
        log.info("job %s accepted for %s (%s)", job.id, job.requester.key, job.params)
        self._post(Accepted(job))

    def _launch_queued(self, job_id: str) -> None:
        """A job queued during a burst (``_start``, ``_accept``), once the burst is answered."""
        job = self._unannounced.pop(job_id, None)
        if job is not None:
            self._announce(job)
        self._launch(job_id, waited=True)

    def _record(self, new: NewJob) -> Job:
        """Reserve and record one job (inside the batch's transaction): the limit, the credits and every
        budget are checked against what the submits before it in the batch already hold."""
        request = new.request
        if (over := self._job_limit(self.jobs.count_active(request.requester.key))) is not None:
            raise over
        self.ledger.reserve(request.requester, new.job_id, new.cost, scopes=request.scopes,
                            channel=request.reply.channel, new_job=True)
        return self.jobs.insert(request, model=new.model, cost=new.cost, job_id=new.job_id, owner=self.owner,
                                lease_until=self.leases.until())

    async def _together(self, new: NewJob) -> Job:
        """Reserve and record with the other submits of this turn of the event loop: one write transaction
        for all (a burst's commands arrive together). Every submit hears its answer after the one COMMIT: a
        reservation is durable before its ack, and a refusal is decided before it."""
        loop = asyncio.get_running_loop()
        told: asyncio.Future[Job] = loop.create_future()
        self._batch.append((told, new))
        if len(self._batch) == 1:
            loop.call_soon(self._record_batch)
        return await told

    def _record_batch(self) -> None:
        batch, self._batch = self._batch, []
        self._tell(batch, self._commit(batch))

    def _commit(self, batch: list[_Waiting]) -> list[Job | Exception]:
        """One transaction for the batch: reserved and recorded at once where it can be (``_commit_together``),
        else one submit at a time, a savepoint each, so that a refusal (or a duplicate) undoes its own part."""
        outcomes: list[Job | Exception] = []
        try:
            with self.store.transaction():
                if len(batch) > 1 and self.ledger.reserves_together:
                    together = self._commit_together([new for _, new in batch])
                    if together is not None:
                        return together
                for _, new in batch:
                    if len(batch) == 1:  # alone: its error undoes the whole transaction
                        outcomes.append(self._record(new))
                        continue
                    try:
                        with self.store.savepoint():
                            outcomes.append(self._record(new))
                    except Exception as refused:  # a refusal (or a duplicate): its part only is undone
                        outcomes.append(refused)
        except Exception as failed:  # nothing of the batch was written (the write lock not had, the COMMIT)
            outcomes = [failed] * len(batch)
        return outcomes

    def _commit_together(self, batch: list[NewJob]) -> list[Job | Exception] | None:
        """The batch in a few statements for all of it (``ledger.reserve_many``, ``jobs.insert_many``), the same
        rules as ``_record`` decided in memory: a refusal writes nothing. None, with nothing written, where it
        must go one submit at a time: a user twice or a budget with a member cap (``reserve_many``), or a redelivery
        among them (``DuplicateRequest``: its part is undone here, and each submit is recorded on its own)."""
        keys = [new.request.requester.key for new in batch]
        if len(set(keys)) < len(keys):
            return None
        try:
            with self.store.savepoint():
                active = self.jobs.count_active_many(keys)
                outcomes: list[Job | Exception | None] = [self._job_limit(active.get(key, 0)) for key in keys]
                admitted = [new for new, outcome in zip(batch, outcomes, strict=True) if outcome is None]
                refusals = self.ledger.reserve_many([
                    Hold(new.request.requester, new.job_id, new.cost, new.request.scopes, new.request.reply.channel)
                    for new in admitted]) if admitted else []
                if refusals is None:
                    return None
                reserved = [new for new, refused in zip(admitted, refusals, strict=True) if refused is None]
                jobs = iter(self.jobs.insert_many(reserved, owner=self.owner, lease_until=self.leases.until())
                            if reserved else [])
        except DuplicateRequest:
            return None
        answers = iter(refusals)
        told: list[Job | Exception] = []
        for outcome in outcomes:  # refused for the job limit, else the ledger's refusal, else the job
            if outcome is None:
                outcome = next(answers) or next(jobs)
            told.append(outcome)
        return told

    def _tell(self, batch: list[_Waiting], outcomes: list[Job | Exception]) -> None:
        """After the COMMIT: each submit hears its job or its refusal."""
        for (told, _), outcome in zip(batch, outcomes, strict=True):
            if told.cancelled():  # its command went away meanwhile: the job is recorded, so it is started
                if isinstance(outcome, Job):
                    log.warning("job %s recorded after its submit was cancelled; starting it", outcome.id)
                    self._start(outcome)
            elif isinstance(outcome, Exception):
                told.set_exception(outcome)
            else:
                told.set_result(outcome)

    def _start(self, job: Job) -> None:
        if self._stopped:  # a submit that raced a stop: leave the job to the next owner at once
            self.jobs.release_leases(self.owner, [job.id])
            return
        if self._here(job.id):  # already running here (a sweep picked it up first)
            return
        if self._queued.holding:  # a burst: started with the others once it is answered
            self._queued.add(job.id)
            return
        self._launch(job.id)

    def _here(self, job_id: str) -> bool:
        """The job runs in this process, or is queued to (``_queued``)."""
        return job_id in self._tasks or job_id in self._queued

    def _launch(self, job_id: str, *, waited: bool = False) -> None:
        task = asyncio.create_task(self._run(job_id, waited=waited), name=f"job-{job_id}")
        self._tasks[job_id] = task

        def forget(_: asyncio.Task[None]) -> None:
            self._tasks.pop(job_id, None)
            self._phase.pop(job_id, None)

        task.add_done_callback(forget)

    def _unqueue(self) -> None:
        """Start none of the queued jobs (a drain, a stop): they stay as they are, for the next owner."""
        self._unannounced.clear()
        if left := self._queued.clear():
            log.info("%d job(s) accepted during a burst not started here: left for the next owner", left)

    # ------------------------------------------------------------------ lifecycle
    async def resume(self) -> int:
        """Claim every job nobody holds (left by a stopped or dead process) for the registered front ends,
        and keep doing so: the housekeeping loop renews our leases and sweeps for expired ones."""
        if self._stopped:
            return 0
        if self._housekeeper is None:
            self._housekeeper = asyncio.create_task(self._housekeep(), name="job-leases")
        return await self._sweep()

    async def _sweep(self) -> int:
        """Take over jobs whose lease expired; fail the stranded jobs of platforms not running here after
        ``JOB_TIMEOUT_S``; tell users about failures they have not heard of. Returns how many jobs started."""
        started = 0
        now = utcnow()
        for job in self.jobs.claimable(now=now):
            if self._here(job.id) or self._stopped or self._draining:
                continue
            running_here = job.platform in self.frontends
            stranded = (now - job.created_at).total_seconds() > self.job_timeout_s
            if not running_here and not stranded:
                continue
            claimed = self.jobs.claim(job.id, self.owner, self.leases.until(now), now=now)
            if claimed is None:
                continue  # another process was quicker
            if not running_here:
                error = JobFailedByOperator(f"job {job.id} stranded: no {job.platform} front end ran for it "
                                            f"within JOB_TIMEOUT_S ({self.job_timeout_s:.0f}s)")
                await self._bill_check(claimed)
                await self._fail(job.id, error, notice_pending=True)
                continue
            if job.owner is not None:
                log.warning("taking over job %s (%s) from %s, whose lease expired", job.id, job.state, job.owner)
            else:
                log.info("resuming job %s in state %s", job.id, job.state)
            if claimed.state in (JobState.RUNNING, JobState.DELIVERING):
                self.admission.hold(job.id)
            self._start(claimed)
            started += 1
        await self._tell_pending()
        return started

    async def _bill_check(self, job: Job) -> None:
        """Before a job at the gateway is failed without being followed (stranded): ask the gateway whether
        it made (and billed) the image, so that the job counts as billed but not delivered if it did."""
        if not job.task_id or job.billed_at is not None or job.state is not JobState.RUNNING:
            return
        try:
            self._billed(job, await self.gateway.record_info(job.task_id))
        except (GatewayError, LeaseLost, DatabaseBusy) as error:
            log.warning("job %s: could not tell whether the gateway billed task %s (%s)", job.id, job.task_id,
                        error.admin_message)

    async def _tell_pending(self) -> None:
        """Failures decided while the job's front end was not running (an operator, a stranded job)."""
        for job in self.jobs.pending_notices(self.frontends):
            if self.jobs.take_notice(job.id):
                await self._publish(Failed(job, JobFailedByOperator(job.error_message), refunded=True))

    async def _housekeep(self) -> None:
        """Renew our leases every third of the lease; stop local workers whose job another process took;
        sweep for jobs whose owner's lease expired."""
        while True:
            await asyncio.sleep(self.leases.renew_every_s)
            try:
                held = self.jobs.renew(self.owner, self.leases.until())
                idle = held - self._tasks.keys() - self._queued.keys()
                if idle:  # ours but nobody works on them here (a worker that died): free for any sweep
                    self.jobs.release_leases(self.owner, idle)
                for job_id in [job_id for job_id in self._queued.keys() if job_id not in held]:
                    row = self.jobs.find(job_id)
                    if row is not None and not row.state.final and row.owner != self.owner:
                        log.warning("job %s is now owned by %s: not starting it here", job_id, row.owner)
                        self._queued.discard(job_id)
                        self._unannounced.pop(job_id, None)
                for job_id, task in list(self._tasks.items()):
                    if job_id in held or task.done():
                        continue
                    row = self.jobs.find(job_id)
                    if row is not None and not row.state.final and row.owner != self.owner:
                        log.warning("job %s is now owned by %s: stopping the local worker", job_id, row.owner)
                        task.cancel()
                if not self._draining:
                    await self._sweep()
            except Exception:
                log.exception("lease housekeeping failed; trying again")

    async def drain(self, timeout_s: float) -> None:
        """SIGTERM: refuse new jobs, let createTask calls and deliveries in flight finish (up to
        ``timeout_s``), leave everything else for the next owner, then ``stop``."""
        self._accepting = False
        self._draining = True
        self._drain_begun.set()
        for job_id, task in list(self._tasks.items()):
            if self._phase.get(job_id) not in DRAIN_FINISHES:
                task.cancel()  # waiting, tracking or downloading: safe to pick up anywhere
        self._unqueue()  # not started yet: as the waiting ones
        # submits held for a burst's answers (``after_answers``) go now: refused, their users are told so
        self.lull.release()
        deadline = self.monotonic() + timeout_s
        pending = [t for t in self._tasks.values() if not t.done()]
        if pending:
            log.info("draining: waiting up to %.0fs for %d createTask call(s) and deliveries", timeout_s,
                     len(pending))
            _, left = await asyncio.wait(pending, timeout=timeout_s)
            if left:
                log.warning("draining: %d job(s) still busy after %.0fs; stopping them", len(left), timeout_s)
        try:  # the last words of finished jobs (done or failed) in the time left; other statuses are dropped
            await asyncio.wait_for(self.outbox.flush_finals(), max(0.0, deadline - self.monotonic()))
        except TimeoutError:
            log.warning("draining: %d final status message(s) not sent", self.outbox.busy)
        await self.stop()

    async def halt(self) -> None:
        """Stop at once, as a process killed with SIGKILL does: the workers, the lease renewals and the
        sweeps end and nothing more is written. The jobs stay as they are and keep this process's leases
        until they expire; only then may another process take them over. ``stop`` after it releases
        nothing. For a process that must not touch the database any more, and for tests of a crash."""
        self._halted = True
        self._accepting = False
        self._stopped = True
        self._unqueue()
        tasks = [t for t in (self._housekeeper, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Stop taking jobs, cancel the workers and release every lease; rows stay as they are, for the
        next owner (this process after a restart, or another one) to pick up."""
        self._accepting = False
        self._stopped = True
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            await asyncio.gather(self._housekeeper, return_exceptions=True)
        self._unqueue()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.outbox.close()
        if self.approvals is not None:
            await self.approvals.stop()
        if self._halted:
            return
        try:
            released = self.jobs.release_leases(self.owner)
        except StoreClosed:  # the database is already closed
            return
        if released:
            log.info("released %d job(s) for the next owner", released)

    async def wait_idle(self) -> None:
        """Wait until no job is in flight and no status waits in the outbox (tests, the CLI)."""
        while (self.in_flight or self._submitting or self._held or self.outbox.busy
               or (self.approvals is not None and self.approvals.busy)):
            if self._held:  # let go with them (first in, first out), then they submit
                await self.lull.wait()
            if self._submitting or self._held:  # told at the next turn of the loop, then started
                await asyncio.sleep(0)
            await self.wait_jobs()
            await self.outbox.wait_idle()
            if self.approvals is not None:
                await self.approvals.wait_idle()

    async def wait_jobs(self, timeout_s: float | None = None) -> bool:
        """Wait until no job runs or is queued to run here (the outbox is not waited for), or ``timeout_s``;
        True if none is left."""
        deadline = None if timeout_s is None else self.monotonic() + timeout_s
        while self.in_flight:
            starter = self._queued.task
            workers = [*self._tasks.values(), *([starter] if starter is not None else [])]
            left = None if deadline is None else deadline - self.monotonic()
            if left is not None and left <= 0:
                break
            await asyncio.wait(workers, timeout=left)
        return not self.in_flight

    async def cancel(self, job_id: str, error: ImagineError) -> None:
        """Stop a job that cannot go on (its front end cannot post in the channel, ...): refund and report."""
        self._queued.discard(job_id)  # not started yet: it never will be
        task = self._tasks.get(job_id)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.admission.leave(job_id)
        await self._fail(job_id, error)

    def notify(self, task_id: str, final: TaskRecord | None = None) -> bool:
        """A gateway callback named this task: look at it now instead of at the next poll.

        ``final`` is the task's final answer from a verified account webhook (``read_callback``): the
        tracker acts on it as on a recordInfo answer, without asking the gateway again.

        A callback for a task nobody waits on yet (a fast task whose callback beat its tracker) is
        remembered, so the tracker looks at once; returns whether a tracker was woken now.
        """
        event = self._wakeups.get(task_id)
        if final is not None and final.task_id == task_id:
            self._finals[task_id] = final
        if event is None:
            if len(self._early) >= EARLY_CALLBACKS_KEPT:
                oldest = next(iter(self._early))
                del self._early[oldest]
                self._finals.pop(oldest, None)
            self._early[task_id] = self.monotonic()
            return False
        if final is None or final.task_id != task_id:
            # a hint costs an urgent recordInfo: at most one per task every URGENT_EVERY_S, so a flood of
            # forged callbacks cannot starve the routine polls of every other job
            # (one arriving too soon is not dropped: it is coalesced into one wake when the interval is up)
            now = self.monotonic()
            wait = self._last_urgent.get(task_id, float("-inf")) + URGENT_EVERY_S - now
            if wait > 0:
                if task_id not in self._deferred:
                    self._deferred[task_id] = asyncio.get_running_loop().call_later(
                        wait, self._deferred_wake, task_id)
                return True
            self._last_urgent[task_id] = now
        event.set()
        return True

    def _deferred_wake(self, task_id: str) -> None:
        self._deferred.pop(task_id, None)
        event = self._wakeups.get(task_id)
        if event is not None:
            self._last_urgent[task_id] = self.monotonic()
            event.set()

    @property
    def tracking(self) -> KeysView[str]:
        """The task ids whose trackers run in this process (a callback for another is not ours to act on)."""
        return self._wakeups.keys()

    @property
    def in_flight(self) -> int:
        """Jobs running here, or queued to (``_queued``)."""
        return len(self._tasks) + len(self._queued)

    # ------------------------------------------------------------------ one job
    def _move(self, job: Job, new: JobState, **fields: object) -> Job:
        """Compare-and-set the job from the state we last saw to ``new``, as its owner (or ``LeaseLost``)."""
        return self.jobs.transition(job.id, job.state, new, owner=self.owner, **fields)

    def _enter(self, job: Job, phase: str) -> None:
        """Mark the job's phase; while draining, only a delivery may still begin."""
        if self._draining and phase != "delivering":
            raise _Drained(phase)
        self._phase[job.id] = phase

    async def _run(self, job_id: str, *, waited: bool = False) -> None:
        if not waited:  # (a job queued during a burst waited already)
            await self.lull.wait()  # after the acks of the commands being decided now
        job = self.jobs.get(job_id)
        gateway_done: float | None = None  # when the gateway said success (for the delivery overhead)
        try:
            if job.state is JobState.QUEUED:
                job = await self._admit_and_create(job)
            elif job.state is JobState.SUBMITTING:
                raise JobInterrupted(f"job {job.id} was mid-createTask when its process stopped")
            if job.state is JobState.RUNNING:
                self._enter(job, "tracking")
                record = await self._track(job)
                gateway_done = time.monotonic()
                self._enter(job, "downloading")
                job = await self._download(job, record)
            self.admission.leave(job_id)  # the gateway's part is done: the next job may go while we post
            if job.state is JobState.DELIVERING:
                self._enter(job, "delivering")
                await self._deliver(job, gateway_done)
        except asyncio.CancelledError:
            raise
        except _Drained as drained:
            log.info("job %s left for the next owner (draining at %s)", job_id, drained)
        except LeaseLost as lost:
            log.info("job %s: %s; stopping here", job_id, lost.admin_message)
        except DatabaseBusy as busy:  # not the job's fault: it resumes from its row (the housekeeper frees it)
            log.error("job %s: %s; left as it is, to resume", job_id, busy.admin_message)
        except ImagineError as error:
            await self._fail(job_id, error)
        except Exception as exc:  # a bug: still refund and tell the user
            log.exception("job %s crashed", job_id)
            await self._fail(job_id, ImagineError(f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            self.admission.leave(job_id)

    async def _admit_and_create(self, job: Job) -> Job:
        told = False

        async def on_position(place: int) -> None:
            nonlocal told
            if place <= QUEUE_PLACES_SHOWN or not told:  # the ones far back hear "queued" once
                told = True
                await self._publish(Queued(job, place))

        deadline = self.monotonic() + self.job_timeout_s
        refused = False
        while True:
            self._phase[job.id] = "waiting"
            await self.admission.enter(job.id, on_position, first=refused)
            self._enter(job, "submitting")
            spec = CATALOG.get(job.model, self.model)
            inputs = {"prompt": job.prompt, **spec.fixed, **job.params}
            if job.image_urls:  # stored references are signed now: the gateway gets a fresh hour
                inputs["image_urls"] = self.resolve_refs(list(job.image_urls))
            job = self._move(job, JobState.SUBMITTING)
            try:
                task_id = await self.gateway.create_task(
                    job.model, inputs, None if self.account_webhook else self.callback_url,
                    stop=self._drain_begun)
            except GatewayError as error:
                if error.unsent and self._draining:
                    # the request never left and the process is stopping: no new attempt (a drain must not
                    # start a createTask it may have to cut); the job is back in line for the next owner
                    self._move(job, JobState.QUEUED)
                    raise _Drained("submitting (createTask not sent)") from error
                if not isinstance(error, (GatewayRateLimited, GatewayMaintenance)):
                    raise
                # not accepted by the gateway: back to admission, at the head of the line (the job keeps
                # its place), and nobody is admitted until the gateway's Retry-After has passed
                job = self._move(job, JobState.QUEUED)
                self.admission.leave(job.id)
                self.admission.pause(_retry_after(error))
                if self.monotonic() + _retry_after(error) > deadline:
                    raise
                log.warning("job %s: createTask refused (%s); back in line for %.1fs", job.id, error.code,
                            _retry_after(error))
                refused = True
                continue
            # in the log first: the gateway bills this task, and the row may not take its id at once
            log.info("job %s submitted as task %s", job.id, task_id)
            job = await self._save_task_id(job, task_id)
            await self._publish(Progress(job, "submitted", job.elapsed_s))
            return job

    async def _save_task_id(self, job: Job, task_id: str) -> Job:
        """Record the task the gateway accepted (and will bill). A write lock held elsewhere past the busy
        timeout (``DatabaseBusy``, transient) is waited out, however long: never a reason to fail the job or
        to lose its task id. Only another owner (``LeaseLost``) or a stop ends the wait."""
        submitted_at = utcnow()
        troubles = 0
        while True:
            try:
                return self._move(job, JobState.RUNNING, task_id=task_id, submitted_at=submitted_at)
            except ImagineError as error:
                if not is_transient(error):
                    raise
                troubles += 1
                wait = min(SAVE_BACKOFF_CAP_S, 0.05 * 2 ** min(troubles, 6))
                log.warning("job %s: could not save its task %s yet (%s); trying again in %.2fs", job.id, task_id,
                            error.admin_message, wait)
                await asyncio.sleep(wait)

    def _next_interval(self, age_s: float) -> float:
        """Poll politely (gateway contract): fast at first, slower as the job ages, capped."""
        base = self.poll_interval_s
        if age_s < 30:
            interval = base
        elif age_s < 120:
            interval = max(base, 5.0)
        else:
            interval = max(base, 15.0)
        return min(interval, self.poll_max_interval_s)

    async def _track(self, job: Job) -> TaskRecord:
        assert job.task_id is not None
        wake = self._wakeups.setdefault(job.task_id, asyncio.Event())
        if self._early.pop(job.task_id, None) is not None:
            wake.set()  # its callback came before we waited: look now
        submitted = job.submitted_at or job.created_at
        troubles = 0
        last_stage: str | None = None
        # with callbacks, the first look is the fallback, well after the callback should have come;
        # a job resumed after a restart is looked at at once (its callback may have been missed)
        fresh = (utcnow() - submitted).total_seconds() < 1.0
        wait = CALLBACK_FALLBACK_FIRST_S if (self.callback_url and fresh) else 0.0
        try:
            while True:
                age = (utcnow() - submitted).total_seconds()
                if age > self.job_timeout_s:
                    raise GatewayTimeout(f"task {job.task_id} still not done after {age:.0f}s")
                if wait > 0:
                    try:
                        await asyncio.wait_for(wake.wait(), timeout=min(wait, self.job_timeout_s - age))
                    except TimeoutError:
                        pass
                called_back = wake.is_set()
                wake.clear()
                wait = CALLBACK_FALLBACK_EVERY_S if self.callback_url else self._next_interval(age)
                final = self._finals.pop(job.task_id, None)
                try:
                    if final is not None:  # a verified account webhook: as good as recordInfo
                        record = final
                    else:
                        # every recordInfo shares the key's rate; confirming a callback goes before routine polls
                        await self.poll_limiter.acquire(urgent=called_back)
                        record = await self.gateway.record_info(job.task_id)
                except UnknownTask:
                    if (utcnow() - submitted).total_seconds() < UNKNOWN_TASK_GRACE_S:
                        continue
                    raise
                except GatewayError as error:
                    if not is_transient(error):
                        raise
                    # a blip (timeout, 5xx, 401 in a key rotation, a malformed answer): recordInfo is
                    # idempotent, so look again with backoff until JOB_TIMEOUT_S
                    troubles += 1
                    wait = min(self.poll_max_interval_s, wait * 2 ** min(troubles, 5))
                    log.warning("job %s: recordInfo trouble (%s), looking again in %.1fs", job.id, error.code,
                                wait)
                    continue
                troubles = 0
                if record.stage is TaskStage.SUCCESS:
                    return record
                if record.stage is TaskStage.FAIL:
                    raise self.gateway.failure(record)
                stage = record.stage.value
                if stage != last_stage or record.progress is not None:
                    last_stage = stage
                    await self._publish(Progress(job, stage, job.elapsed_s, record.progress))
        finally:
            self._wakeups.pop(job.task_id, None)
            self._finals.pop(job.task_id, None)
            self._last_urgent.pop(job.task_id, None)
            deferred = self._deferred.pop(job.task_id, None)
            if deferred is not None:
                deferred.cancel()

    def _billed(self, job: Job, record: TaskRecord) -> Job:
        """The gateway said the task succeeded: it has charged the account (``consumeCredits``, else the
        job's price). Kept on the row at once, so that if the image then never reaches anyone the job is
        counted as billed but not delivered, by whichever process ends it."""
        if job.billed_at is not None or record.stage is not TaskStage.SUCCESS:
            return job
        cost = job.cost if record.consume_credits is None else record.consume_credits
        return self._move(job, job.state, billed_at=utcnow(), gateway_cost=cost)

    async def _download(self, job: Job, record: TaskRecord) -> Job:
        job = self._billed(job, record)
        if not record.result_urls:
            raise GatewayProtocolError(f"task {job.task_id} succeeded without result URLs")
        folder = self.spool / job.id
        files: list[Path] = []
        for n, url in enumerate(record.result_urls):
            result = await self._patiently(job, "download", partial(self.gateway.download, url))
            ext = mimetypes.guess_extension(result.content_type.split(";")[0].strip()) or ".png"
            path = folder / f"{job.id}-{n}{ext}"
            await asyncio.to_thread(_spool, path, result.content)  # the disk, off the event loop
            files.append(path)
        return self._move(job, JobState.DELIVERING, result_urls=list(record.result_urls), files=files)

    async def _patiently(self, job: Job, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """An idempotent gateway request about a task the gateway has billed (a result download, a
        recordInfo): a blip (``is_transient``: 5xx, 429, a timeout, a dropped connection) is tried again,
        with backoff up to ``POLL_MAX_INTERVAL_S`` (or the error's Retry-After), for up to ``JOB_TIMEOUT_S``,
        as the tracker does for recordInfo; result URLs stay valid for hours."""
        deadline = self.monotonic() + self.job_timeout_s
        troubles = 0
        while True:
            try:
                return await call()
            except GatewayError as error:
                left = deadline - self.monotonic()
                if not is_transient(error) or left <= 0:
                    raise
                troubles += 1
                wait = min(self.poll_max_interval_s, self.poll_interval_s * 2 ** min(troubles, 6))
                wait = min(max(wait, getattr(error, "retry_after", None) or 0.0), left)
                log.warning("job %s: %s trouble (%s), trying again in %.1fs", job.id, what, error.admin_message, wait)
                await asyncio.sleep(wait)

    async def _deliver(self, job: Job, gateway_done: float | None = None) -> None:
        if not job.files or not all(p.is_relative_to(self.spool) and p.exists() for p in job.files):
            if not job.task_id:
                raise DeliveryError(f"job {job.id} has neither files nor a task id")
            # files lost, or in another host's data folder (a job taken over; nothing on disk is shared between
            # hosts on PostgreSQL): fetch them again into ours
            record = await self._patiently(job, "recordInfo", partial(self.gateway.record_info, job.task_id))
            job = await self._download(job, record)
        images = tuple(ImageFile(p, mimetypes.guess_type(p.name)[0] or "image/png", p.stat().st_size)
                       for p in job.files)
        job = await self._post_result(job, images)
        with self.store.transaction():
            job = self._move(job, JobState.DELIVERED, finished_at=utcnow())
            if not self.ledger.capture(job.id):  # rolls the "delivered" back: never delivered uncharged
                raise CaptureRefused(f"job {job.id} was delivered but the ledger refused to charge it "
                                     "(already captured or released)",
                                     user_message="Your image was posted, but I could not settle its cost. "
                                                  "An admin has been told.")
            if job.review and self.approvals is not None:  # shown to the requester only: now the reviewers
                self.approvals.opened(job)
        log.info("job %s delivered and charged %d", job.id, job.cost)
        if job.review and self.approvals is not None:
            self.approvals.kick(job.id)
        self.metrics.delivered(job.platform, job.scope, job.cost, job.elapsed_s,
                               None if gateway_done is None else time.monotonic() - gateway_done)
        # the images stay in the spool for the Vary and Remix buttons (``RefStore.cleanup`` ends them)
        await self._thumbnail(job, images)

    async def _post_result(self, job: Job, images: tuple[ImageFile, ...]) -> Job:
        """Hand the result to the front end; on a chat-API blip (``is_transient``) hand it again, with the
        latest receipt, after a backoff, for up to ``delivery_retry_s``. The job stays ``delivering`` (its
        lease renewed by the housekeeper); a drain leaves a retrying delivery for the next owner."""
        deadline = self.monotonic() + self.delivery_retry_s
        attempt = 0
        while True:
            balance = self.ledger.balance(job.requester).available
            try:
                await self._publish(Delivered(job, images, balance, dict(job.receipt)))
                return job
            except ImagineError as error:
                failure = error
            except (TimeoutError, ConnectionError) as exc:  # transport trouble a front end did not sort out
                failure = DeliveryInterrupted(f"front end {job.platform}: {type(exc).__name__}: {exc}")
            except Exception as exc:
                raise DeliveryError(f"front end {job.platform} could not deliver: {type(exc).__name__}: {exc}") from exc
            left = deadline - self.monotonic()
            if not is_transient(failure) or left <= 0:
                raise failure
            if self._draining:
                raise _Drained("delivering (retrying)")
            wait = min(self.delivery_backoff_s[min(attempt, len(self.delivery_backoff_s) - 1)], left)
            attempt += 1
            log.warning("job %s: delivery attempt %d failed (%s); trying again in %.1fs", job.id, attempt,
                        failure.admin_message, wait)
            self._phase[job.id] = "retrying delivery"  # not a phase a drain waits for: it cancels us
            await asyncio.sleep(wait)
            self._enter(job, "delivering")
            job = self.jobs.get(job.id)  # with the receipt the last attempt recorded, if any
            if job.state is not JobState.DELIVERING or job.owner != self.owner:
                raise LeaseLost(f"job {job.id} is {job.state} and owned by {job.owner} now")

    async def _thumbnail(self, job: Job, images: tuple[ImageFile, ...]) -> None:
        """Keep a small thumbnail for the dashboard's gallery; never a reason to touch the delivered job."""
        if self.thumbnails is None or not images:
            return
        try:
            await self.thumbnails.save(job.id, images[0].path)
        except Exception as exc:
            log.warning("job %s: no thumbnail (%s: %s)", job.id, type(exc).__name__, exc)

    async def _fail(self, job_id: str, error: ImagineError, *, notice_pending: bool = False) -> None:
        """Fail and refund a job we own, and tell its user (or leave ``notice_pending`` for later)."""
        current = self.jobs.find(job_id)
        if current is None or current.state.final or current.owner != self.owner:
            log.info("job %s: not failing it here (%s, owner %s)", job_id, current and current.state,
                     current and current.owner)
            return
        level = logging.ERROR if error.code in ("gateway_auth", "gateway_out_of_credits", "capture_refused",
                                                "gateway_feature_disabled", "error") else logging.WARNING
        log.log(level, "job %s failed: %s (%s)", job_id, error.admin_message, error.code)
        try:
            job, refunded = fail_and_refund(self.store, current, error, owner=self.owner,
                                            notice_pending=notice_pending)
        except LeaseLost:
            log.info("job %s was taken over before it could be failed here", job_id)
            return
        except DatabaseBusy as busy:  # nothing written: the job resumes from its row, where it was
            log.error("job %s: could not record its failure (%s); left as it is", job_id, busy.admin_message)
            return
        shutil.rmtree(self.spool / job_id, ignore_errors=True)
        self.metrics.failed(job.platform)
        if self.on_failure is not None:
            try:
                self.on_failure(job, error)
            except Exception:
                log.exception("on_failure hook failed for job %s", job_id)
        if not notice_pending:
            await self._publish(Failed(job, error, refunded))


#: a refused createTask's wait in admission when the gateway names none (``Retry-After``), and the least one
#: (a ``Retry-After: 0`` is honoured as "soon", never as a tight loop of refusals)
RETRY_AFTER_DEFAULT_S = 5.0
RETRY_AFTER_MIN_S = 1.0


def _retry_after(error: GatewayError) -> float:
    value = getattr(error, "retry_after", None)
    return RETRY_AFTER_DEFAULT_S if value is None else max(RETRY_AFTER_MIN_S, float(value))
