"""The Discord front end: job events become edits of the interaction's response.

- ``Accepted``, ``Queued``, ``Progress``: the placeholder is edited with the core's text. The core's
  outbox sends these in the background, at most once per ``edit_interval`` per job (a newer text
  replaces one waiting its turn); a 429 makes it wait Retry-After, and discord.py itself waits out a
  token's exhausted bucket. A delivery edit goes after a status edit in flight (the same bucket), never
  after one that merely waits.
- ``Delivered``: the placeholder becomes the image(s), an embed (prompt, parameters, requester, cost,
  balance left) and the Reroll and Delete buttons. An image larger than the interaction's attachment
  limit is re-encoded to fit, or linked. If the interaction token is too old (15 minutes, with a
  margin) or Discord refuses the edit, the result is posted in the channel instead, mentioning the
  requester. If nothing can be posted, ``DeliveryError`` is raised and the core refunds; a dropped
  connection or a 5xx is ``DeliveryInterrupted`` instead, and the core hands the result again.
- ``Failed``: the placeholder says why (sent by the outbox as the job's final status: never dropped).

Delivery happens once: the message id is recorded as the job's receipt the moment Discord returns it,
and a ``Delivered`` handed again with that receipt (a crash between the post and the charge) posts
nothing. When the answer itself is lost (the connection dropped, a timeout, a 5xx after Discord made the
message), there is no id to record: every message the bot creates for a job carries a ``nonce`` made from
the job and what the message is for (``job_nonce``) with ``enforce_nonce``, so Discord answers the same
request sent again within a few minutes with the message it already made instead of making a second one.
The result edit of ``@original`` needs none: editing it again changes the same message.

In a channel with approvals (``job.review``) the interaction was deferred privately (ephemeral), so every
status and the result are the requester's only: ``Delivered`` becomes the image with "Sent for review" in
that ephemeral response (a DM when the token is too old). ``ReviewRequested`` DMs each reviewer the image
with Approve and Reject; ``Approved`` posts it in the channel as any result (image, embed, buttons),
"approved by @reviewer"; ``Rejected`` and ``ReviewExpired`` are DMs to the requester. Message ids are
recorded as the approval's receipt the moment Discord returns them, so nothing is sent twice.

Only the requester mention of a channel post may ping; every other message allows no mentions.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import discord

from imagine_bot.bots.discord import images, wording
from imagine_bot.bots.discord.buttons import result_view, review_view
from imagine_bot.bots.discord.hook import DEFAULT_ATTACHMENT_LIMIT, InteractionHook, ReplyData, token_gone
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat import messages
from imagine_bot.core.errors import ChatRateLimited, DeliveryError, DeliveryInterrupted
from imagine_bot.core.events import (
    Accepted,
    Approved,
    Delivered,
    Failed,
    ImageFile,
    JobEvent,
    Progress,
    Queued,
    Rejected,
    ReviewExpired,
    ReviewRequested,
)
from imagine_bot.core.jobs.model import Job
from imagine_bot.core.jobs.outbox import Pace

log = logging.getLogger(__name__)

EMBED_COLOUR = discord.Colour.blurple()

#: transport trouble discord.py lets through (it retries only a few resets itself): the request may or may
#: not have reached Discord, so a delivery it hits is a blip (``DeliveryInterrupted``), never a refusal
_DROPPED = (aiohttp.ClientError, OSError, TimeoutError)


#: Discord takes a nonce of at most 25 characters
NONCE_LEN = 25


def job_nonce(job_id: str, purpose: str) -> str:
    """The nonce of the message ``purpose`` of job ``job_id`` ("result", "approved", "review:USER", ...): the
    same on every attempt, in every process, so Discord (``enforce_nonce``) makes the message once."""
    return "ib" + hashlib.sha256(f"{job_id}:{purpose}".encode()).hexdigest()[:NONCE_LEN - 2]


#: status edits across every job: well under Discord's global 50 requests a second per bot
EDITS_PER_S = 20.0


class DiscordFrontEnd:
    platform = "discord"

    def __init__(self, client: discord.Client, core: ImagineCore, *, edit_interval: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.core = core
        self.edit_interval = edit_interval
        self.clock = clock
        self._saved: set[str] = set()  # jobs whose placeholder message id is recorded

    def pace(self, job: Job) -> Pace:
        """One status edit per ``edit_interval`` per job; discord.py keeps each token's bucket itself."""
        return Pace("discord", rate_per_s=EDITS_PER_S, burst=int(EDITS_PER_S), min_interval_s=self.edit_interval)

    async def publish(self, event: JobEvent) -> None:
        job = event.job
        match event:
            case Accepted():
                await self._status(job, messages.review_coming(job) if job.review else messages.accepted(job))
            case Queued(position=position):
                await self._status(job, messages.queued(job, position))
            case Progress(stage=stage, elapsed_s=elapsed_s, percent=percent):
                await self._status(job, messages.progress(job, stage, elapsed_s, percent))
            case Delivered() if job.review:
                await self._deliver_privately(event)
            case Delivered():
                await self._deliver(event)
            case Failed(error=error, refunded=refunded):
                await self._say(job, messages.failed(job, error, refunded))
            case ReviewRequested():
                await self._request_reviews(event)
            case Approved():
                await self._post_approved(event)
            case Rejected(reviewer=reviewer, reason=reason):
                await self._dm(job, messages.review_rejected_to_requester(job, job.reply.channel, reviewer.key,
                                                                          reason), "rejected")
            case ReviewExpired(hours=hours):
                await self._dm(job, messages.review_expired_to_requester(job, job.reply.channel, hours), "expired")
            case _:
                raise TypeError(f"unknown job event {type(event).__name__}")

    async def notify_operators(self, operators: list[UserRef], text: str) -> None:
        """A direct message to each operator (``discord:USER`` in ``ADMINS``)."""
        for operator in operators:
            try:
                channel = await self.client.create_dm(discord.Object(int(operator.user)))
                await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
            except (discord.HTTPException, ValueError) as error:
                log.warning("could not tell operator %s: %s", operator.key, error)

    async def close(self) -> None:
        """Nothing waits here: status edits live in the core's outbox."""
        self._saved.clear()

    # ------------------------------------------------------------------ status edits
    def _hook(self, data: ReplyData) -> InteractionHook:
        return InteractionHook(self.client, data.application_id, data.token)

    async def _status(self, job: Job, text: str) -> None:
        """One edit of the placeholder (the outbox decides when). A 429 is handed to the outbox."""
        data = ReplyData.from_dict(job.reply.data)
        if not data.token_usable(self.clock()):
            return  # the placeholder can no longer be edited; the result will go to the channel
        try:
            message = await self._hook(data).edit_original(content=text)
        except discord.HTTPException as error:
            if error.status == 429:
                raise ChatRateLimited(_retry_after(error), f"Discord: {error}") from error
            log.log(logging.INFO if token_gone(error) else logging.WARNING,
                    "job %s: could not update the Discord message: %s", job.id, error)
            return
        if job.id not in self._saved and data.message_id is None and message.get("id"):
            self.core.set_reply_data(job.id, message_id=str(message["id"]))
        self._saved.add(job.id)

    # ------------------------------------------------------------------ results
    async def _deliver(self, event: Delivered) -> None:
        """Post the result, recording the receipt the moment Discord returns the message; a ``Delivered``
        handed again with a receipt (a crash between the post and the charge) posts nothing twice."""
        job = event.job
        if event.receipt.get("message_id"):
            log.info("job %s: already posted as message %s (%s); not posting again", job.id,
                     event.receipt["message_id"], event.receipt.get("delivered_in"))
            return
        data = ReplyData.from_dict(job.reply.data)
        uploads, notes = await asyncio.to_thread(self._fit, job, event.images, data.attachment_size_limit)
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
            except _DROPPED as error:
                # the edit may have landed: not a refusal, and no channel post (that could show it twice). The
                # core hands Delivered again, which edits the same @original: it cannot post twice
                raise DeliveryInterrupted(f"job {job.id}: the connection dropped while editing the interaction "
                                          f"response: {type(error).__name__}: {error}") from error
            else:
                self._posted(job, str(message["id"]), "interaction")
                return
        posted = await self._post_in_channel(job, data, content, "result", embed=embed, files=_files(uploads),
                                             view=result_view(job.id))
        self._posted(job, str(posted.id), "channel")

    def _posted(self, job: Job, message_id: str, where: str) -> None:
        self.core.record_receipt(job.id, message_id=message_id, delivered_in=where)  # first: see FrontEnd
        self.core.set_reply_data(job.id, message_id=message_id, delivered_in=where)
        self._saved.discard(job.id)

    def _fit(self, job: Job, files: tuple[ImageFile, ...],
             limit: int) -> tuple[list[images.Upload], list[tuple[str, str | None]]]:
        """The uploads that fit, and a note (with the gateway URL, if any) for each image that does not."""
        uploads: list[images.Upload] = []
        notes: list[tuple[str, str | None]] = []
        for n, image in enumerate(files):
            data = image.read_bytes()
            upload = images.fit(image.filename, data, image.content_type, limit)
            if upload is not None:
                uploads.append(upload)
                continue
            url = job.result_urls[n] if n < len(job.result_urls) else None
            log.info("job %s: %s (%d bytes) does not fit %d bytes even re-encoded; linking it",
                     job.id, image.filename, len(data), limit)
            notes.append((wording.too_large(image.filename, len(data), limit, url), url))
        return uploads, notes

    async def _say(self, job: Job, text: str) -> None:
        """A final text (a failure): edit the placeholder, or post in the channel when the token is gone (a DM
        for a job of a channel with approvals: nothing of it goes to the channel)."""
        self._saved.discard(job.id)
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
            if job.review:
                await self._dm(job, text, "failed")
            else:
                await self._post_in_channel(job, data, text, "failed")
        except DeliveryError as error:
            log.warning("job %s: could not post the failure: %s", job.id, error.admin_message)

    # ------------------------------------------------------------------ channels with approvals
    async def _send_dm(self, user_id: str, what: str, content: str | None, nonce: str,
                       **parts: Any) -> discord.Message:
        """A DM; ``nonce`` (``job_nonce``) makes a repeat of it within Discord's few minutes the same message."""
        try:
            channel = await self.client.create_dm(discord.Object(int(user_id)))
            return await channel.send(content, allowed_mentions=discord.AllowedMentions.none(), nonce=nonce, **parts)
        except discord.HTTPException as error:
            failure = DeliveryInterrupted if error.status >= 500 or error.status == 429 else DeliveryError
            raise failure(f"could not send {what} to {user_id}: {error}") from error
        except _DROPPED as error:
            raise DeliveryInterrupted(f"could not send {what} to {user_id}: {type(error).__name__}") from error

    async def _dm(self, job: Job, text: str, purpose: str) -> None:
        """A note to the requester only (a rejection, an expiry, a late failure)."""
        await self._send_dm(job.requester.user, f"a note on job {job.id}", text, job_nonce(job.id, purpose))

    def _card(self, job: Job, files: tuple[ImageFile, ...], balance: int | None,
              limit: int) -> tuple[list[images.Upload], discord.Embed, list[str]]:
        uploads, notes = self._fit(job, files, limit)
        if not uploads and not any(url for _, url in notes):
            raise DeliveryError(f"job {job.id}: no image fits {limit} bytes and no URL to link")
        image_url = f"attachment://{uploads[0].filename}" if uploads else next(url for _, url in notes if url)
        return uploads, delivered_embed(job, balance, image_url), [text for text, _ in notes]

    async def _deliver_privately(self, event: Delivered) -> None:
        """The image for the requester only, "Sent for review": the ephemeral response, else a DM."""
        job = event.job
        if event.receipt.get("message_id"):
            return  # shown before the last attempt stopped
        data = ReplyData.from_dict(job.reply.data)
        uploads, embed, notes = await asyncio.to_thread(self._card, job, event.images, event.balance,
                                                        data.attachment_size_limit)
        content = "\n".join([messages.sent_for_review(job, job.reply.channel), *notes])
        if data.token_usable(self.clock()):
            try:
                message = await self._hook(data).edit_original(content=content, embed=embed,
                                                               attachments=_files(uploads), view=None)
            except discord.HTTPException as error:
                log.info("job %s: could not edit the private response (%s); sending a DM", job.id, error)
            else:
                self._posted(job, str(message["id"]), "private")
                return
        sent = await self._send_dm(job.requester.user, f"job {job.id}", content, job_nonce(job.id, "private"),
                                   embed=embed, files=_files(uploads))
        self._posted(job, str(sent.id), "dm")

    async def _request_reviews(self, event: ReviewRequested) -> None:
        """Each reviewer: a DM with the image and Approve / Reject. One Discord refuses (DMs closed) is skipped;
        a blip is raised after the others, to be tried again."""
        job = event.job
        text = messages.review_request(job, job.reply.channel, self.core.settings.APPROVAL_EXPIRE_H)
        uploads, embed, notes = await asyncio.to_thread(self._card, job, event.images, None,
                                                        DEFAULT_ATTACHMENT_LIMIT)
        blip: DeliveryError | None = None
        for reviewer in event.reviewers:
            key = f"review:{reviewer.user}"
            if reviewer.platform != "discord" or event.receipt.get(key):
                continue
            try:
                sent = await self._send_dm(reviewer.user, f"the review of job {job.id}",
                                           "\n".join([text, messages.review_buttons_text(job.reply.channel), *notes]),
                                           job_nonce(job.id, key), embed=embed, files=_files(uploads),
                                           view=review_view(job.id))
            except DeliveryError as error:
                if error.retryable:
                    blip = error
                else:
                    log.warning("job %s: cannot send the review to %s: %s", job.id, reviewer.key,
                                error.admin_message)
                continue
            self.core.record_review_receipt(job.id, **{key: str(sent.id)})
        if blip is not None:
            raise blip

    async def _post_approved(self, event: Approved) -> None:
        """The approved image in its channel as any result (image, embed, buttons), "approved by @reviewer"."""
        job = event.job
        if event.receipt.get("post_message_id"):
            return
        data = ReplyData.from_dict(job.reply.data)
        uploads, embed, notes = await asyncio.to_thread(self._card, job, event.images, event.balance,
                                                        data.attachment_size_limit)
        content = "\n".join([messages.approved_by(event.reviewer.key), *notes])
        try:
            message = await self._post_in_channel(job, data, content, "approved", embed=embed,
                                                  files=_files(uploads), view=result_view(job.id))
        except DeliveryError as error:
            if error.retryable:
                raise
            raise DeliveryError(error.admin_message, user_message=messages.review_cannot_post(
                job.reply.channel)) from error
        self.core.record_review_receipt(job.id, post_message_id=str(message.id))  # first: see FrontEnd
        self.core.set_reply_data(job.id, message_id=str(message.id), delivered_in="channel")

    async def _post_in_channel(self, job: Job, data: ReplyData, content: str | None, purpose: str,
                               **parts: Any) -> discord.Message:
        """A channel message mentioning the requester (the one mention that may ping), made once per ``purpose``
        of the job: its nonce (``job_nonce``) makes a repeat within Discord's few minutes the same message."""
        channel = self.client.get_partial_messageable(
            int(data.channel_id), guild_id=int(data.guild_id) if data.guild_id else None)
        requester = discord.Object(int(data.user_id))
        text = f"<@{data.user_id}>" + (f" {content}" if content else "")
        try:
            return await channel.send(text, allowed_mentions=discord.AllowedMentions(
                everyone=False, roles=False, replied_user=False, users=[requester]),
                nonce=job_nonce(job.id, purpose), **parts)
        except discord.HTTPException as error:
            failure = DeliveryInterrupted if error.status >= 500 or error.status == 429 else DeliveryError
            raise failure(f"could not post job {job.id} in channel {data.channel_id}: {error}") from error
        except _DROPPED as error:
            raise DeliveryInterrupted(f"could not post job {job.id} in channel {data.channel_id}: "
                                      f"{type(error).__name__}: {error}") from error


def _retry_after(error: discord.HTTPException) -> float:
    """Seconds Discord asked us to wait (the ``Retry-After`` header, else ``retry_after`` in the body)."""
    header = error.response.headers.get("Retry-After") if error.response is not None else None
    try:
        return float(header) if header else 1.0
    except ValueError:
        return 1.0


def delivered_embed(job: Job, balance: int | None, image_url: str | None) -> discord.Embed:
    """The result card: the core's words for the prompt and parameters, laid out as fields (the requester's
    balance left unless ``balance`` is None: a reviewer's copy)."""
    embed = discord.Embed(colour=EMBED_COLOUR)
    embed.add_field(name="Prompt", value=f"`{messages.quote_prompt(job.prompt, 1000)}`", inline=False)
    if job.preset:
        embed.add_field(name="Preset", value=job.preset, inline=True)
    embed.add_field(name="Parameters", value=messages.describe_params(job.params) or "default", inline=True)
    embed.add_field(name="Requested by", value=f"<@{job.requester.user}>", inline=True)
    embed.add_field(name="Cost", value=f"{job.cost} credits", inline=True)
    if balance is not None:
        embed.add_field(name="Balance left", value=f"{balance} credits", inline=True)
    embed.set_footer(text=f"{messages.elapsed(job.elapsed_s)} · {job.id}")
    if image_url:
        embed.set_image(url=image_url)
    return embed


def _files(uploads: list[images.Upload]) -> list[discord.File]:
    """Fresh ``discord.File`` objects (discord.py closes them after each request)."""
    return [discord.File(io.BytesIO(u.data), filename=u.filename) for u in uploads]
