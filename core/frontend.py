"""The one small interface every front end (Slack, Discord, terminal) implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .events import JobEvent
from .identity import UserRef


@runtime_checkable
class FrontEnd(Protocol):
    """A chat front end. The core is handed to it; it never subclasses the core.

    ``platform`` names the jobs it owns (``ReplyTo.platform``). ``publish`` turns a job event into
    platform messages; it is awaited in order for each job. For ``Delivered`` it must post the images
    before it returns and raise when it cannot (the core then refunds and reports the failure). Errors
    raised for other events are logged and do not change the job.

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
