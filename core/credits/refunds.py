"""Ending a job as failed: the compare-and-set to ``failed`` and the refund, in one short transaction.

Shared by the orchestrator (a job that cannot go on) and ``imagine-bot jobs fail`` (an operator ending a
stranded job). Whoever calls it must hold the job (``owner``): a lost race raises ``LeaseLost`` and
changes nothing, so a job is never failed under the feet of the process delivering it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from imagine_bot.core.errors import ImagineError, JobFailedByOperator, UserInputError
from imagine_bot.core.jobs.model import Job, JobState
from imagine_bot.core.storage.base import Store
from imagine_bot.core.storage.db import iso, utcnow

log = logging.getLogger(__name__)


def fail_and_refund(store: Store, job: Job, error: ImagineError, *, owner: str | None,
                    notice_pending: bool = False) -> tuple[Job, bool]:
    """Move ``job`` (as last read, in ``job.state``) to ``failed`` and release its hold.

    Returns the failed row and whether credits were refunded (False: the hold was already settled, which
    is logged as an error: it should not happen).
    """
    with store.transaction():
        failed = store.jobs.transition(job.id, job.state, JobState.FAILED, owner=owner, error_code=error.code,
                                 error_message=error.admin_message[:1000], finished_at=utcnow(),
                                 notice_pending=int(notice_pending))
        refunded = store.ledger.release(job.id)
    if not refunded:
        log.error("job %s failed (%s) but its credit hold was already settled: nothing refunded", job.id,
                  error.code)
    return failed, refunded


def fail_stranded(store: Store, job_id: str, *, actor: str) -> Job:
    """``imagine-bot jobs fail JOB_ID``: end a job nobody is working on, refund it, and leave a notice so
    the requester is told when the job's front end runs. Refused while a live process holds the job."""
    job = store.jobs.get(job_id)
    if job.state.final:
        raise UserInputError(f"Job {job_id} is already {job.state.value}; nothing was changed.")
    now = utcnow()
    claimed = store.jobs.claim(job_id, actor, now + timedelta(seconds=60), now=now)
    if claimed is None:
        until = iso(job.lease_until) if job.lease_until else "?"
        raise UserInputError(f"Job {job_id} is being worked on by {job.owner} (lease until {until}). Stop that "
                             "process, or wait until its lease expires; nothing was changed.")
    error = JobFailedByOperator(f"failed by {actor} with `imagine-bot jobs fail` (was {job.state.value})")
    failed, _ = fail_and_refund(store, claimed, error, owner=actor, notice_pending=True)
    return failed
