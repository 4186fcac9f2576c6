"""The Slack front end: job events in, Slack messages out.

One progress message per job, posted in the channel and edited in place as the job moves::

    Accepted  -> chat.postMessage   "@requester Got it: ..."        (ts stored in ReplyTo.data)
    Queued    -> chat.update        "@requester Queued: place 2 ..." (throttled)
    Progress  -> chat.update        "@requester Working on it: generating (12s)." (throttled, ticking)
    Delivered -> files_upload_v2 into the message's thread (shares the file in the channel), then
                 chat.update into the result: caption, the image inline (Block Kit slack_file), Reroll /
                 Delete; the caption and buttons alone if Slack refuses the image block (see ``inline``).
                 With ``result_in_thread`` (SLACK_RESULT_IN_THREAD) the caption goes with the upload in the
                 thread and the message keeps only the caption and buttons.
    Failed    -> chat.update        "@requester Could not make ...", or the slash command's response_url

Edits are throttled to one per ``min_edit_interval`` per job: a newer text replaces a waiting one, and the
final edit (done or failed) is never dropped. Everything needed after a restart (channel, message ts, the
uploaded file ids, the slash command's response_url) lives in ``ReplyTo.data``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from imagine_bot.core import messages
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import DeliveryError
from imagine_bot.core.events import Accepted, Delivered, Failed, ImageFile, JobEvent, Progress, Queued
from imagine_bot.core.jobs import Job

from . import blocks, inline
from .errors import SlackError, slack_error_code
from .mentions import escape_keep_user_mentions

log = logging.getLogger(__name__)

#: chat.postMessage / files errors that mean "the bot cannot post in this conversation"
CHANNEL_ERRORS = frozenset({"not_in_channel", "channel_not_found", "is_archived", "restricted_action",
                            "cannot_dm_bot", "not_allowed_token_type"})


def invite_advice(bot_name: str) -> str:
    return (f"I'm not a member of this channel, so I can't post the image here. Type `/invite @{bot_name}` "
            "in the channel, then try again. Nothing was charged.")


async def respond_ephemeral(session: aiohttp.ClientSession, response_url: str, text: str) -> bool:
    """Post a private reply through an interaction's response_url (works even where the bot is not a member)."""
    client = AsyncWebhookClient(response_url, session=session)
    try:
        response = await client.send_dict({"response_type": "ephemeral", "replace_original": False,
                                           "text": escape_keep_user_mentions(text)})
    except SlackError as exc:
        log.warning("response_url reply failed: %s", slack_error_code(exc))
        return False
    if response.status_code != 200:
        log.warning("response_url reply refused: %s %s", response.status_code, response.body[:200])
        return False
    return True


@dataclass(eq=False)
class _Live:
    """A progress message being edited: where it is, the throttle state and the background edits."""

    channel: str
    ts: str
    last_edit: float = float("-inf")
    pending: dict[str, Any] | None = None
    flusher: asyncio.Task[None] | None = None
    ticker: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def stop_background(self) -> None:
        self.pending = None
        tasks = [t for t in (self.flusher, self.ticker) if t is not None and t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.flusher = self.ticker = None


class SlackFrontEnd:
    platform = "slack"

    def __init__(self, core: ImagineCore, client: AsyncWebClient, session: aiohttp.ClientSession, *,
                 min_edit_interval: float = 1.0, tick_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, result_in_thread: bool = False,
                 inline_waits: tuple[float, ...] = inline.WAITS) -> None:
        self.core = core
        self.result_in_thread = result_in_thread
        self.inline_waits = inline_waits
        self.client = client
        self.session = session
        self.min_edit_interval = min_edit_interval
        self.tick_s = tick_s
        self.clock = clock
        #: the bot's user name, for the /invite advice (set from auth.test at start)
        self.bot_name = "imagine"
        self._live: dict[str, _Live] = {}
        self._unpostable: dict[str, str] = {}

    # ------------------------------------------------------------------ the FrontEnd protocol
    async def publish(self, event: JobEvent) -> None:
        job = event.job
        match event:
            case Accepted():
                await self._post_first(job, messages.accepted(job))
            case Queued(position=position):
                await self._stop_ticker(job.id)
                await self._show(job, messages.queued(job, position))
            case Progress(stage=stage, elapsed_s=elapsed_s, percent=percent):
                await self._show(job, messages.progress(job, stage, elapsed_s, percent))
                self._start_ticker(job, stage, elapsed_s, percent)
            case Delivered(images=images, balance=balance):
                await self._deliver(event, images, balance)
            case Failed(error=error, refunded=refunded):
                await self._fail(job, messages.failed(job, error, refunded))
            case _:
                raise TypeError(f"unknown job event {type(event).__name__}")

    # ------------------------------------------------------------------ for the handlers and the service
    def post_failure(self, job_id: str) -> str | None:
        """The Slack error that kept the first progress message from being posted, if any."""
        return self._unpostable.get(job_id)

    def channel_failure(self, code: str) -> DeliveryError:
        return DeliveryError(f"Slack refused to post: {code}", user_message=invite_advice(self.bot_name))

    async def close(self) -> None:
        """Stop every pending edit and ticker (jobs stay in the database; a restart picks them up)."""
        lives = list(self._live.values())
        self._live.clear()
        await asyncio.gather(*(live.stop_background() for live in lives), return_exceptions=True)

    # ------------------------------------------------------------------ the progress message
    def _data(self, job: Job) -> dict[str, Any]:
        """The job's front-end state, fresh from the database (the event's copy may predate an update)."""
        fresh = self.core.jobs.find(job.id)
        return (fresh or job).reply.data

    def _live_for(self, job: Job) -> _Live | None:
        live = self._live.get(job.id)
        if live is None:
            data = self._data(job)
            if data.get("progress_ts"):
                live = self._live[job.id] = _Live(data["progress_channel"], data["progress_ts"])
        return live

    async def _post(self, job: Job, payload: dict[str, Any]) -> _Live:
        response = await self.client.chat_postMessage(channel=job.reply.channel, unfurl_links=False,
                                                      unfurl_media=False, **payload)
        live = self._live[job.id] = _Live(str(response["channel"]), str(response["ts"]), last_edit=self.clock())
        self.core.jobs.set_reply_data(job.id, progress_channel=live.channel, progress_ts=live.ts)
        return live

    async def _post_first(self, job: Job, text: str) -> None:
        if self._live_for(job) is not None:
            return
        try:
            await self._post(job, blocks.status(job.requester.user, text))
        except SlackError as exc:
            code = slack_error_code(exc)
            log.warning("job %s: cannot post the progress message in %s: %s", job.id, job.reply.channel, code)
            if code in CHANNEL_ERRORS:
                self._unpostable[job.id] = code

    async def _show(self, job: Job, text: str) -> None:
        """A non-final status: edit the progress message (throttled), or post it if it is missing."""
        if job.id in self._unpostable:
            return
        live = self._live_for(job)
        if live is None:
            await self._post_first(job, text)
            return
        await self._edit(live, blocks.status(job.requester.user, text))

    async def _update(self, live: _Live, payload: dict[str, Any]) -> None:
        async with live.lock:
            await self.client.chat_update(channel=live.channel, ts=live.ts, **payload)

    async def _edit(self, live: _Live, payload: dict[str, Any]) -> None:
        if live.flusher is not None or self.clock() - live.last_edit < self.min_edit_interval:
            live.pending = payload  # a newer text replaces a waiting one
            if live.flusher is None:
                live.flusher = asyncio.create_task(self._flush(live))
            return
        live.last_edit = self.clock()
        try:
            await self._update(live, payload)
        except SlackError as exc:
            log.warning("progress edit failed: %s", slack_error_code(exc))

    async def _flush(self, live: _Live) -> None:
        try:
            while live.pending is not None:
                delay = live.last_edit + self.min_edit_interval - self.clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                payload, live.pending = live.pending, None
                if payload is None:
                    break
                live.last_edit = self.clock()
                try:
                    await self._update(live, payload)
                except SlackError as exc:
                    log.warning("progress edit failed: %s", slack_error_code(exc))
        finally:
            if live.flusher is asyncio.current_task():
                live.flusher = None

    async def _finish(self, job: Job) -> _Live | None:
        """The progress message, for its last edit: pending edits and the ticker are cancelled."""
        live = self._live_for(job)
        if live is None:
            return None
        await live.stop_background()
        self._live.pop(job.id, None)
        live.last_edit = self.clock()
        return live

    async def _final(self, job: Job, payload: dict[str, Any]) -> _Live | None:
        """The last edit of a job: never dropped or delayed."""
        live = await self._finish(job)
        if live is not None:
            await self._update(live, payload)
        return live

    def _start_ticker(self, job: Job, stage: str, elapsed_s: float, percent: int | None) -> None:
        """Keep the elapsed time moving between gateway updates (one edit every ``tick_s``)."""
        live = self._live.get(job.id)
        if live is None or self.tick_s <= 0:
            return
        if live.ticker is not None:
            live.ticker.cancel()
        live.ticker = asyncio.create_task(self._tick(job, live, stage, elapsed_s, percent))

    async def _tick(self, job: Job, live: _Live, stage: str, elapsed_s: float, percent: int | None) -> None:
        started = self.clock()
        while True:
            await asyncio.sleep(self.tick_s)
            elapsed = elapsed_s + self.clock() - started
            await self._edit(live, blocks.status(job.requester.user,
                                                 messages.progress(job, stage, elapsed, percent)))

    async def _stop_ticker(self, job_id: str) -> None:
        live = self._live.get(job_id)
        if live is not None and live.ticker is not None:
            live.ticker.cancel()
            await asyncio.gather(live.ticker, return_exceptions=True)
            live.ticker = None

    # ------------------------------------------------------------------ the end of a job
    async def _deliver(self, event: Delivered, images: tuple[ImageFile, ...], balance: int) -> None:
        """Upload into the progress message's thread before returning; raise ``DeliveryError`` if we cannot.
        Then turn the progress message into the result (the image inline, or caption and buttons only)."""
        job = event.job
        caption = messages.delivered(job, balance)
        data = self._data(job)
        file_ids: list[str] = list(data.get("file_ids") or [])
        try:
            live = self._live_for(job) or await self._post(job, blocks.status(job.requester.user,
                                                                              messages.accepted(job)))
            if not file_ids:  # not uploaded by a previous process that stopped right after
                uploads = [{"file": await asyncio.to_thread(image.read_bytes), "filename": image.filename,
                            "title": messages.quote_prompt(job.prompt, 80),
                            "alt_txt": messages.quote_prompt(job.prompt, 1000)} for image in images]
                comment = ({"initial_comment": blocks.status(job.requester.user, caption)["text"]}
                           if self.result_in_thread else {})  # inline, the caption is on the result itself
                response = await self.client.files_upload_v2(
                    file_uploads=uploads, channel=live.channel, thread_ts=live.ts, **comment)
                file_ids = [str(f["id"]) for f in response.get("files") or []]
                self.core.jobs.set_reply_data(job.id, file_ids=file_ids, thread_ts=live.ts)
        except SlackError as exc:
            code = slack_error_code(exc)
            await self._stop_ticker(job.id)
            if code in CHANNEL_ERRORS:
                raise self.channel_failure(code) from exc
            raise DeliveryError(f"Slack upload failed: {code}") from exc
        in_thread = blocks.delivered(job.requester.user, caption, job.id)
        try:
            if self.result_in_thread or not file_ids:
                await self._final(job, in_thread)
            elif (live := await self._finish(job)) is not None:
                shown = blocks.delivered(job.requester.user, caption, job.id, file_ids=file_ids, prompt=job.prompt)
                async with live.lock:
                    await inline.show_result(self.client, live.channel, live.ts, file_ids, shown, in_thread,
                                             self.inline_waits)
        except SlackError as exc:  # the images are posted; only the buttons are missing
            log.warning("job %s: final edit failed: %s", job.id, slack_error_code(exc))

    async def _fail(self, job: Job, text: str) -> None:
        self._unpostable.pop(job.id, None)
        try:
            if await self._final(job, blocks.status(job.requester.user, text)) is not None:
                return
        except SlackError as exc:
            log.warning("job %s: could not edit the progress message: %s", job.id, slack_error_code(exc))
        response_url = self._data(job).get("response_url")
        if response_url:
            await respond_ephemeral(self.session, response_url, text)
        else:
            log.warning("job %s failed and the requester could not be told", job.id)
