"""The terminal front end: the same job events as Slack and Discord, shown in a terminal.

It proves the core is platform-free, serves ``imagine-bot imagine`` and ``imagine-bot chat``, and is the
recording front end tests and benchmarks use (``events`` keeps every event it was given).

Delivery is idempotent (the ``FrontEnd`` contract): once the images are saved, the paths are recorded as
the job's receipt; a ``Delivered`` handed again with that receipt saves nothing twice. The last image saved
is also ``out/latest.png``, a name that never changes (``--image out/latest.png`` edits it).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from imagine_bot.core.chat import messages
from imagine_bot.core.events import (
    Accepted,
    Approved,
    Delivered,
    Failed,
    JobEvent,
    Queued,
    Rejected,
    ReviewExpired,
    ReviewRequested,
)
from imagine_bot.core.events import Progress as ProgressEvent
from imagine_bot.core.media.imaging import sniff

if TYPE_CHECKING:
    from imagine_bot.core.app import ImagineCore


#: the last image saved, under a name that does not change: ``--image out/latest.png`` edits it
LATEST = "latest.png"


def _save_png(source: Path, target: Path) -> None:
    """``source`` as a PNG at ``target`` (copied as it is when it is one already), replaced atomically."""
    partial = target.with_name(f".{target.name}.partial")
    with source.open("rb") as handle:
        is_png = sniff(handle.read(16)) == "image/png"
    if is_png:
        shutil.copyfile(source, partial)
    else:
        with Image.open(source) as image:
            image.save(partial, format="PNG")
    partial.replace(target)


class TerminalFrontEnd:
    platform = "terminal"

    def __init__(self, out_dir: Path, console: Console | None = None, *, bar: bool = True,
                 core: ImagineCore | None = None) -> None:
        self.out_dir = out_dir
        self.core = core  # where receipts are recorded (None: a bare recorder, as in some tests)
        self.console = console or Console()
        self.events: list[JobEvent] = []
        self.saved: dict[str, list[Path]] = {}
        self._bar = bar and self.console.is_terminal
        self._progress: Progress | None = None
        self._bars: dict[str, TaskID] = {}

    # a rich progress bar when attached to a terminal, plain lines otherwise (CI, pipes)
    def __enter__(self) -> TerminalFrontEnd:
        if self._bar:
            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                      TimeElapsedColumn(), console=self.console, transient=True)
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _status(self, job_id: str, text: str, percent: int | None = None) -> None:
        if self._progress is None:
            self.console.print(f"[dim]{job_id}[/dim] {text}", highlight=False)
            return
        if job_id not in self._bars:
            self._bars[job_id] = self._progress.add_task(text, total=100)
        self._progress.update(self._bars[job_id], description=text,
                              completed=percent if percent is not None else None)

    async def publish(self, event: JobEvent) -> None:
        self.events.append(event)
        job = event.job
        match event:
            case Accepted():
                self._status(job.id, messages.accepted(job))
            case Queued(position=position):
                self._status(job.id, messages.queued(job, position))
            case ProgressEvent(stage=stage, elapsed_s=elapsed_s, percent=percent):
                self._status(job.id, messages.progress(job, stage, elapsed_s, percent), percent)
            case Delivered(images=images, balance=balance, receipt=receipt):
                if receipt.get("saved"):  # an earlier attempt saved them: never twice
                    self.saved[job.id] = [Path(p) for p in receipt["saved"]]
                    return
                self.out_dir.mkdir(parents=True, exist_ok=True)
                paths = []
                for image in images:
                    target = self.out_dir / image.filename
                    shutil.copyfile(image.path, target)
                    paths.append(target.resolve())
                latest = self.out_dir / LATEST
                if paths:
                    _save_png(paths[-1], latest)
                if self.core is not None:
                    self.core.record_receipt(job.id, saved=[str(p) for p in paths])
                self.saved[job.id] = paths
                if self._progress is not None and job.id in self._bars:
                    self._progress.update(self._bars[job.id], completed=100, visible=False)
                self.console.print(messages.delivered(job, balance), highlight=False, markup=False)
                for n, path in enumerate(paths, 1):
                    also = f" (also {latest})" if n == len(paths) else ""
                    self.console.print(f"saved {path}{also}", highlight=False, markup=False)
            case Failed(error=error, refunded=refunded):
                if self._progress is not None and job.id in self._bars:
                    self._progress.update(self._bars[job.id], visible=False)
                self.console.print(messages.failed(job, error, refunded), style="red", highlight=False,
                                   markup=False)
            case ReviewRequested(reviewers=reviewers):  # the terminal has no channels: only shown
                self.console.print(f"{job.id} sent for review to {', '.join(r.key for r in reviewers)}",
                                   highlight=False, markup=False)
            case Approved(balance=balance, reviewer=reviewer):
                self.console.print(messages.approved_caption(job, balance, reviewer.key), highlight=False,
                                   markup=False)
            case Rejected(reviewer=reviewer, reason=reason):
                self.console.print(messages.review_rejected_to_requester(job, job.reply.channel, reviewer.key,
                                                                         reason), highlight=False, markup=False)
            case ReviewExpired(hours=hours):
                self.console.print(messages.review_expired_to_requester(job, job.reply.channel, hours),
                                   highlight=False, markup=False)
            case _:
                raise TypeError(f"unknown job event {type(event).__name__}")
