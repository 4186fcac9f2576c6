"""Job events: what the core tells the front end that owns a job.

A front end turns each event into platform messages (opsdroid-style dispatch by type). ``Delivered`` is
special: the front end must post the images before returning, and raise ``DeliveryError`` (or any
exception) when it cannot; the core captures the credits only after it returns. It may be handed more
than once for one job (see ``Delivered.receipt`` and ``FrontEnd``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


JobEvent = Accepted | Queued | Progress | Delivered | Failed
