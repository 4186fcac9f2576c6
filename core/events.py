"""Job events: what the core tells the front end that owns a job.

A front end turns each event into platform messages (opsdroid-style dispatch by type). ``Delivered`` is
special: the front end must post the images before returning, and raise ``DeliveryError`` (or any
exception) when it cannot; the core captures the credits only after it returns. It may be handed more
than once for one job (see ``Delivered.receipt`` and ``FrontEnd``).

In a channel with approvals (``Job.review`` set) the result is not the channel's: ``Delivered`` shows it to
the requester privately, saying it was sent for review, and the approval events follow
(``core.jobs.approvals``): ``ReviewRequested`` (to each reviewer, privately, with Approve and Reject),
``Approved`` (posted in the channel as any result, exactly once), ``Rejected`` and ``ReviewExpired`` (the
requester is told). Each is awaited like ``Delivered``, may be handed again after a crash with the receipt
recorded so far (``ImagineCore.record_review_receipt``), and must then finish, never repeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.errors import ImagineError
from imagine_bot.core.jobs.model import Job


@dataclass(frozen=True, slots=True)
class ImageFile:
    """One downloaded result, spooled on disk until delivered."""

    path: Path
    content_type: str
    size: int

    @property
    def filename(self) -> str:
        return self.path.name

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()


@dataclass(frozen=True, slots=True)
class Accepted:
    """Credits reserved, job recorded."""

    job: Job


@dataclass(frozen=True, slots=True)
class Queued:
    """Waiting for a free slot or for the gateway rate limit; ``position`` is 1-based."""

    job: Job
    position: int


@dataclass(frozen=True, slots=True)
class Progress:
    """The gateway is working: ``stage`` is ``submitted``, ``waiting`` or ``generating``."""

    job: Job
    stage: str
    elapsed_s: float
    percent: int | None = None


@dataclass(frozen=True, slots=True)
class Delivered:
    """The images are ready: post them. ``balance`` is what the requester will have left.

    ``receipt`` is what an earlier attempt recorded with ``ImagineCore.record_receipt`` (empty on the first
    attempt). The same job may be handed again after a crash or a takeover by another process: when the
    receipt shows the post was made, finish or repair it, never post again.
    """

    job: Job
    images: tuple[ImageFile, ...]
    balance: int
    receipt: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Failed:
    job: Job
    error: ImagineError
    refunded: bool


@dataclass(frozen=True, slots=True)
class ReviewRequested:
    """Show the finished image to each reviewer privately (a DM) with Approve and Reject buttons that carry the
    job id. A reviewer the receipt shows as sent is not sent it again. Raise ``DeliveryInterrupted`` to be
    handed it again later; a reviewer who cannot be reached is logged and skipped."""

    job: Job
    images: tuple[ImageFile, ...]
    reviewers: tuple[UserRef, ...]
    receipt: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Approved:
    """Post the image in the job's channel as any result (image, caption, buttons), naming who approved it.
    Exactly once: the receipt says what an earlier attempt posted."""

    job: Job
    images: tuple[ImageFile, ...]
    balance: int
    reviewer: UserRef
    receipt: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rejected:
    """Tell the requester, privately, that the image was rejected and why; the channel sees nothing."""

    job: Job
    reviewer: UserRef
    reason: str


@dataclass(frozen=True, slots=True)
class ReviewExpired:
    """Tell the requester, privately, that nobody decided within ``hours``; the channel sees nothing."""

    job: Job
    hours: float


JobEvent = Accepted | Queued | Progress | Delivered | Failed | ReviewRequested | Approved | Rejected | ReviewExpired
