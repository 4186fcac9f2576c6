"""The Discord front end: job events become edits of the interaction's response.

- ``Accepted``, ``Queued``, ``Progress``: the placeholder is edited with the core's text, at most once
  per ``edit_interval`` (a newer text replaces one waiting its turn; the last one is sent when due).
- ``Delivered``: the placeholder becomes the image(s), an embed (prompt, parameters, requester, cost,
  balance left) and the Reroll and Delete buttons. An image larger than the interaction's attachment
  limit is re-encoded to fit, or linked. If the interaction token is too old (15 minutes, with a
  margin) or Discord refuses the edit, the result is posted in the channel instead, mentioning the
  requester. If nothing can be posted, ``DeliveryError`` is raised and the core refunds.
- ``Failed``: the placeholder says why (the final edit is never throttled away).

Only the requester mention of a channel fallback may ping; every other message allows no mentions.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import discord

from imagine_bot.core import messages
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import DeliveryError
from imagine_bot.core.events import Accepted, Delivered, Failed, JobEvent, Progress, Queued
from imagine_bot.core.jobs import Job

from . import images, wording
from .buttons import result_view
from .hook import InteractionHook, ReplyData, token_gone

log = logging.getLogger(__name__)

EMBED_COLOUR = discord.Colour.blurple()


@dataclass(eq=False)
class _Status:
    """The status line of one job: what was last sent when, and what waits for its turn."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last: float = float("-inf")
    pending: tuple[Job, str] | None = None
    flusher: asyncio.Task[None] | None = None
    message_id_saved: bool = False


class DiscordFrontEnd:
    platform = "discord"

    def __init__(self, client: discord.Client, core: ImagineCore, *, edit_interval: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.core = core
        self.edit_interval = edit_interval
        self.clock = clock
        self._status: dict[str, _Status] = {}

    async def publish(self, event: JobEvent) -> None:
        job = event.job
        match event:
            case Accepted():
                await self._update(job, messages.accepted(job))
            case Queued(position=position):
                await self._update(job, messages.queued(job, position))
            case Progress(stage=stage, elapsed_s=elapsed_s, percent=percent):
                await self._update(job, messages.progress(job, stage, elapsed_s, percent))
            case Delivered():
                await self._final(job, self._deliver(event))
            case Failed(error=error, refunded=refunded):
                await self._final(job, self._say(job, messages.failed(job, error, refunded)))
            case _:
                raise TypeError(f"unknown job event {type(event).__name__}")

    async def close(self) -> None:
        """Stop the waiting status edits (jobs stay saved; their next event edits again)."""
        flushers = [s.flusher for s in self._status.values() if s.flusher is not None]
        for flusher in flushers:
            flusher.cancel()
        await asyncio.gather(*flushers, return_exceptions=True)
        self._status.clear()

    # ------------------------------------------------------------------ status edits
    def _hook(self, data: ReplyData) -> InteractionHook:
        return InteractionHook(self.client, data.application_id, data.token)

    async def _update(self, job: Job, text: str) -> None:
        data = ReplyData.from_dict(job.reply.data)
        if not data.token_usable(self.clock()):
            return  # the placeholder can no longer be edited; the result will go to the channel
        status = self._status.setdefault(job.id, _Status())
        due = status.last + self.edit_interval - time.monotonic()
        if status.flusher is None and due <= 0 and not status.lock.locked():
            await self._send_status(job, status, text)
            return
        status.pending = (job, text)
        if status.flusher is None:
            status.flusher = asyncio.create_task(self._flush(job.id, status), name=f"discord-status-{job.id}")

    async def _flush(self, job_id: str, status: _Status) -> None:
        try:
            while status.pending is not None:
                await asyncio.sleep(max(0.0, status.last + self.edit_interval - time.monotonic()))
                job, text = status.pending
                status.pending = None
                await self._send_status(job, status, text)
        finally:
            status.flusher = None

    async def _send_status(self, job: Job, status: _Status, text: str) -> None:
        async with status.lock:
            status.last = time.monotonic()
            data = ReplyData.from_dict(job.reply.data)
            try:
                message = await self._hook(data).edit_original(content=text)
            except discord.HTTPException as error:
                log.log(logging.INFO if token_gone(error) else logging.WARNING,
                        "job %s: could not update the Discord message: %s", job.id, error)
                return
            if not status.message_id_saved and data.message_id is None and message.get("id"):
                self.core.jobs.set_reply_data(job.id, message_id=str(message["id"]))
            status.message_id_saved = True

    async def _final(self, job: Job, action: Awaitable[None]) -> None:
        """Run the last edit of a job after any waiting status edit is dropped."""
        status = self._status.pop(job.id, None)
        if status is None:
            await action
            return
        status.pending = None
        if status.flusher is not None:
            status.flusher.cancel()
            await asyncio.gather(status.flusher, return_exceptions=True)
        async with status.lock:
            await action

    # ------------------------------------------------------------------ results
    async def _deliver(self, event: Delivered) -> None:
        job = event.job
        data = ReplyData.from_dict(job.reply.data)
        uploads, notes = await asyncio.to_thread(self._fit, event, data.attachment_size_limit)
        if not uploads and not any(url for _, url in notes):
            raise DeliveryError(f"job {job.id}: no image fits {data.attachment_size_limit} bytes and no URL to link")
        image_url = f"attachment://{uploads[0].filename}" if uploads else next(url for _, url in notes if url)
        embed = delivered_embed(job, event.balance, image_url)
        content = "\n".join(text for text, _ in notes) or None

        if data.token_usable(self.clock()):
            try:
                message = await self._hook(data).edit_original(
                    content=content, embed=embed, attachments=_files(uploads), view=result_view(job.id))
            except discord.HTTPException as error:
                log.log(logging.INFO if token_gone(error) else logging.WARNING,
                        "job %s: could not edit the interaction response (%s); posting in the channel", job.id, error)
            else:
                self.core.jobs.set_reply_data(job.id, message_id=str(message["id"]), delivered_in="interaction")
                return
        message = await self._post_in_channel(job, data, content, embed=embed, files=_files(uploads),
                                              view=result_view(job.id))
        self.core.jobs.set_reply_data(job.id, message_id=str(message.id), delivered_in="channel")

    def _fit(self, event: Delivered, limit: int) -> tuple[list[images.Upload], list[tuple[str, str | None]]]:
        """The uploads that fit, and a note (with the gateway URL, if any) for each image that does not."""
        uploads: list[images.Upload] = []
        notes: list[tuple[str, str | None]] = []
        for n, image in enumerate(event.images):
            data = image.read_bytes()
            upload = images.fit(image.filename, data, image.content_type, limit)
            if upload is not None:
                uploads.append(upload)
                continue
            url = event.job.result_urls[n] if n < len(event.job.result_urls) else None
            log.info("job %s: %s (%d bytes) does not fit %d bytes even re-encoded; linking it",
                     event.job.id, image.filename, len(data), limit)
            notes.append((wording.too_large(image.filename, len(data), limit, url), url))
        return uploads, notes

    async def _say(self, job: Job, text: str) -> None:
        """A final text (a failure): edit the placeholder, or post in the channel when the token is gone."""
        data = ReplyData.from_dict(job.reply.data)
        if data.token_usable(self.clock()):
            try:
                await self._hook(data).edit_original(content=text, embed=None, attachments=[], view=None)
                return
            except discord.HTTPException as error:
                if not token_gone(error):
                    log.warning("job %s: could not post the failure: %s", job.id, error)
                    return
        try:
            await self._post_in_channel(job, data, text)
        except DeliveryError as error:
            log.warning("job %s: could not post the failure: %s", job.id, error.admin_message)

    async def _post_in_channel(self, job: Job, data: ReplyData, content: str | None, **parts: Any) -> discord.Message:
        """A channel message mentioning the requester (the one mention that may ping)."""
        channel = self.client.get_partial_messageable(
            int(data.channel_id), guild_id=int(data.guild_id) if data.guild_id else None)
        requester = discord.Object(int(data.user_id))
        text = f"<@{data.user_id}>" + (f" {content}" if content else "")
        try:
            return await channel.send(text, allowed_mentions=discord.AllowedMentions(
                everyone=False, roles=False, replied_user=False, users=[requester]), **parts)
        except discord.HTTPException as error:
            raise DeliveryError(f"could not post job {job.id} in channel {data.channel_id}: {error}") from error


def delivered_embed(job: Job, balance: int, image_url: str | None) -> discord.Embed:
    """The result card: the core's words for the prompt and parameters, laid out as fields."""
    embed = discord.Embed(colour=EMBED_COLOUR)
    embed.add_field(name="Prompt", value=f"`{messages.quote_prompt(job.prompt, 1000)}`", inline=False)
    embed.add_field(name="Parameters", value=messages.describe_params(job.params) or "default", inline=True)
    embed.add_field(name="Requested by", value=f"<@{job.requester.user}>", inline=True)
    embed.add_field(name="Cost", value=f"{job.cost} credits", inline=True)
    embed.add_field(name="Balance left", value=f"{balance} credits", inline=True)
    embed.set_footer(text=f"{messages.elapsed(job.elapsed_s)} · {job.id}")
    if image_url:
        embed.set_image(url=image_url)
    return embed


def _files(uploads: list[images.Upload]) -> list[discord.File]:
    """Fresh ``discord.File`` objects (discord.py closes them after each request)."""
    return [discord.File(io.BytesIO(u.data), filename=u.filename) for u in uploads]
