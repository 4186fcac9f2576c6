"""The one small interface every front end (Slack, Discord, terminal) implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .events import JobEvent


@runtime_checkable
class FrontEnd(Protocol):
    """A chat front end. The core is handed to it; it never subclasses the core.

    ``platform`` names the jobs it owns (``ReplyTo.platform``). ``publish`` turns a job event into
    platform messages; it is awaited in order for each job. For ``Delivered`` it must post the images
    before it returns and raise when it cannot (the core then refunds and reports the failure). Errors
    raised for other events are logged and do not change the job.
    """

    platform: str

    async def publish(self, event: JobEvent) -> None: ...
