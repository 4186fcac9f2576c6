"""The one small interface every front end (Slack, Discord, terminal) implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.events import JobEvent


@runtime_checkable
class FrontEnd(Protocol):
    """A chat front end. The core is handed to it; it never subclasses the core.

    ``platform`` names the jobs it owns (``ReplyTo.platform``). ``publish`` turns a job event into
    platform messages: render the event, send it, no throttling of its own.

    - ``Delivered`` is awaited by the job: post the images before returning, and raise when you cannot
      (the core then refunds and reports the failure).
    - Every other event (``Accepted``, ``Queued``, ``Progress``, ``Failed``) is sent by the core's outbox
      (``core/jobs/outbox.py``) in the background: per job in order, latest wins (a status may be skipped when
      a newer one came), ``Failed`` never dropped. Raise ``ChatRateLimited(retry_after)`` on a 429 and the
      outbox tries again after Retry-After; other errors are logged and do not change the job.
    - Optionally ``pace(job) -> Pace``: the budget a job's status messages share (a workspace's edit rate
      limit), the least time between two statuses of one job, and how often to refresh a progress
      status with nothing new. Without it statuses are not paced.
    - Optionally ``async check_reply(reply: ReplyTo) -> None``: raise ``CannotAnswerHere`` when the front end
      cannot post where it was asked (Slack: a channel the bot is not in). The core calls it before it
      reserves anything or sends anything to the gateway, so that a job is only taken where its result
      can be posted. It runs before the command is answered: keep it quick (cached, time-bounded) and let
      a job through when it cannot tell. Without it every reply address is taken as reachable (Discord:
      an interaction's response always is).
    - Where the job was asked may refuse later (the bot removed from the channel, the channel archived):
      a job whose task went to the gateway is billed, so ``Delivered`` must still reach the requester
      (privately: a direct message) rather than raise; raise only when nothing can reach them.

    Delivery is at-least-once, so posting must be idempotent. ``Delivered`` may be handed again for the
    same job: after a crash between the post and the charge, or when another process takes the job over
    once this one's lease expired. Therefore a front end:

    - records a receipt with ``ImagineCore.record_receipt(job_id, **ids)`` AS SOON AS the platform returns
      a message id or file ids (before any further call), so that a crash right after the post is known;
    - when ``event.receipt`` shows the post was already made, must not post again: it finishes or repairs
      what is missing (the final edit, the buttons) and returns normally, so the core captures the credits.
    """

    platform: str

    async def publish(self, event: JobEvent) -> None: ...


@runtime_checkable
class OperatorNotifier(Protocol):
    """A front end that can reach operators privately (a DM). The core's ``Alerts`` hands it the operators
    on its platform (from ``ADMINS``) and the text; it must not raise (log instead)."""

    platform: str

    async def notify_operators(self, operators: list[UserRef], text: str) -> None: ...
