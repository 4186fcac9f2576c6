"""The Slack front end: job events in, Slack messages out.

One progress message per job, posted in the channel and edited in place as the job moves::

    Accepted  -> chat.postMessage   "@requester Got it: ..."        (ts stored in ReplyTo.data)
    Queued    -> chat.update        "@requester Queued: place 2 ..."
    Progress  -> chat.update        "@requester Working on it: generating (12s)."
    Delivered -> files_upload_v2's three steps into the message's thread (``upload``: the file ids are in
                 the receipt before the files are shared, so a retry never uploads twice), then
                 chat.update into the result: caption, the image inline (Block Kit slack_file), Reroll /
                 Delete; the caption and buttons alone if Slack refuses the image block (see ``inline``).
                 With ``result_in_thread`` (SLACK_RESULT_IN_THREAD) the caption goes with the upload in the
                 thread and the message keeps only the caption and buttons.
    Failed    -> chat.update        "@requester Could not make ...", or the slash command's response_url

Before a job is taken (``check_reply``, called by the core before it reserves anything or sends anything
to the gateway) ``conversations.info`` says whether the bot can post where it was asked: a member of the
channel, not archived, or its own direct message with the requester. Otherwise the requester is told
privately how to add the bot, and nothing is charged or sent. A "yes" is cached per channel for
``CHANNEL_OK_S`` and dropped the moment Slack refuses a post there; when Slack does not answer in time
the job goes ahead, and a first post refused while the job still waits to be sent stops it, refunded.
If the channel refuses once the task was sent (the bot removed mid-job, the channel archived), the
result goes to the requester's direct message with the bot instead (``conversations.open``): billed
tasks are delivered and charged, never refunded for where they were asked.

In a channel with approvals (``job.review``) nothing goes to the channel until a reviewer approves:

    Accepted..Progress -> once, privately through the response_url ("Got it ... goes to review")
    Delivered       -> the image uploaded into the requester's DM with the bot, "Sent for review"
    ReviewRequested -> each reviewer: the image uploaded into their DM, then Approve / Reject buttons
    Approved        -> in the channel as any result (message, upload into its thread, the image inline,
                       the buttons), "approved by @reviewer"
    Rejected, ReviewExpired -> a DM to the requester

Each step records its ids first (the job's or the approval's receipt), so a step handed again finishes
what is missing and never posts twice. A new message whose answer was lost (no ts to record) is found
before it is posted again: ``posts.post_once`` (the job's metadata on the message, the attempt's start
recorded first, ``conversations.history`` on the next attempt).

Each event is one call; when it goes out is the core's outbox's business (``core/jobs/outbox.py``): every job
of a workspace shares its chat.update budget (``pace``), a newer status replaces a waiting one, a 429
waits Retry-After without holding up any job, and the final edit (done or failed) is never dropped.
Everything needed after a restart (channel, message ts, the uploaded file ids, the slash command's
response_url, the workspace and its Enterprise Grid organisation) lives in ``ReplyTo.data``.

Every call is made with the token of the job's workspace (``workspaces``: one token, or each workspace's
installation in distributed mode), looked up when the call is made, so a job resumed after a restart, or
taken over by another process, finds its token in the database. A workspace that removed the app gets
nothing more: a job still waiting for the gateway is cancelled (refunded, never sent), a later one ends at
its delivery (``AppRemoved``: refunded, and counted as billed but not delivered when the gateway billed
it), and no status or failure is posted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from imagine_bot.bots.slack import blocks, inline, posts, upload
from imagine_bot.bots.slack.errors import SlackError, slack_error_code
from imagine_bot.bots.slack.mentions import escape, escape_keep_user_mentions
from imagine_bot.bots.slack.workspaces import Clients, Workspaces
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat import messages
from imagine_bot.core.errors import AppRemoved, CannotAnswerHere, ChatRateLimited, DeliveryError, DeliveryInterrupted
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
from imagine_bot.core.jobs.model import Job, JobState, ReplyTo
from imagine_bot.core.jobs.outbox import Pace, Send

log = logging.getLogger(__name__)

#: chat.postMessage / files errors that mean "the bot cannot post in this conversation"
CHANNEL_ERRORS = frozenset({"not_in_channel", "channel_not_found", "is_archived", "restricted_action",
                            "cannot_dm_bot", "not_allowed_token_type"})

#: errors that will not pass by trying the same delivery again (any other failure is a blip, tried again)
REFUSALS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
                      "missing_scope", "no_permission", "invalid_arguments", "invalid_blocks", "msg_too_long",
                      "file_too_large", "not_allowed", "team_access_not_granted", "ekm_access_denied"})

#: conversations.open answers meaning this reviewer cannot be sent a DM at all (skipped, never retried)
UNREACHABLE = frozenset({"user_not_found", "user_disabled", "cannot_dm_bot", "messages_tab_disabled"})

#: how long "the bot can post in this channel" (conversations.info) is trusted; dropped at once when Slack
#: refuses a post there
CHANNEL_OK_S = 300.0
#: when conversations.info does not answer (timeout, 429, an install without its scopes), jobs in that
#: channel go ahead for this long before it is asked again
CHANNEL_UNKNOWN_S = 30.0
#: the most conversations.info may add to a slash command's answer (Slack wants the ack within 3 s)
CHANNEL_CHECK_TIMEOUT_S = 1.5
#: channels remembered at most (expired ones are dropped past this)
CHANNELS_KEPT = 10_000

#: chat.update is Tier 3: about 50 a minute per workspace, with short bursts
EDITS_PER_MIN = 50.0
EDIT_BURST = 5
#: chat.postMessage: about one a second per channel
POSTS_PER_S = 1.0


async def _status_call(call: Awaitable[Any]) -> Any:
    """A status call: a 429 becomes ``ChatRateLimited`` (the outbox waits Retry-After; nothing sleeps here)."""
    try:
        return await call
    except SlackApiError as exc:
        if exc.response.status_code == 429:
            raise ChatRateLimited(_retry_after(exc.response.headers), f"Slack: {slack_error_code(exc)}") from exc
        raise


def _retry_after(headers: Any) -> float:
    for name, value in dict(headers or {}).items():
        if name.lower() == "retry-after":
            try:
                return float(value)
            except ValueError:
                break
    return 1.0


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


def enterprise_of(job: Job) -> str | None:
    """The Enterprise Grid organisation of the job's workspace (None outside Grid)."""
    return job.reply.data.get("enterprise_id") or None


@dataclass(frozen=True, slots=True)
class _Message:
    """A job's progress message: where it is."""

    channel: str
    ts: str


class SlackFrontEnd:
    """Renders job events as Slack messages; the core's outbox decides when status messages go out.

    Each workspace has two Web API clients sharing one session (``workspaces``): ``api`` (deliveries, the
    handlers) lets slack_sdk retry a 429 after Retry-After; ``edits`` (status messages) has no rate-limit
    retry, so that a 429 never sleeps inside a call: it becomes ``ChatRateLimited`` and the outbox waits,
    for the whole workspace.
    """

    platform = "slack"

    def __init__(self, core: ImagineCore, workspaces: Workspaces, session: aiohttp.ClientSession, *,
                 min_edit_interval: float = 1.0, tick_s: float = 10.0,
                 edits_per_min: float = EDITS_PER_MIN, posts_per_s: float = POSTS_PER_S,
                 result_in_thread: bool = False, inline_waits: tuple[float, ...] = inline.WAITS) -> None:
        self.core = core
        self.result_in_thread = result_in_thread
        self.inline_waits = inline_waits
        self.workspaces = workspaces
        self.session = session
        self.min_edit_interval = min_edit_interval
        self.tick_s = tick_s
        self.edits_per_min = edits_per_min
        self.posts_per_s = posts_per_s
        #: the bot's user name, for the /invite advice (set from auth.test at start)
        self.bot_name = "imagine"
        self._messages: dict[str, _Message] = {}
        self._unpostable: dict[str, str] = {}
        #: (workspace, channel) -> until when (monotonic) jobs asked there are taken without asking
        #: conversations.info (a channel shared between workspaces has a bot of each)
        self._channels: dict[tuple[str, str], float] = {}
        self._asking: dict[tuple[str, str], asyncio.Future[messages.Unanswerable | None]] = {}
        self.channel_check_timeout_s = CHANNEL_CHECK_TIMEOUT_S

    # ------------------------------------------------------------------ the FrontEnd protocol
    def pace(self, job: Job) -> Pace:
        """Edits share the workspace's chat.update budget (Tier 3); the first post, the channel's."""
        team = job.requester.workspace
        if self._message(job) is None:
            return Pace(f"slack:{team}:post:{job.reply.channel}", rate_per_s=self.posts_per_s, burst=3,
                        min_interval_s=self.min_edit_interval, tick_s=self.tick_s)
        return Pace(f"slack:{team}:edit", rate_per_s=self.edits_per_min / 60, burst=EDIT_BURST,
                    min_interval_s=self.min_edit_interval, tick_s=self.tick_s)

    async def publish(self, event: JobEvent) -> None:
        job = event.job
        match event:
            case Accepted() | Queued() | Progress() if job.review:
                await self._review_status(job)
            case Delivered() if job.review:
                await self._deliver_privately(event)
            case ReviewRequested():
                await self._request_reviews(event)
            case Approved():
                await self._post_approved(event)
            case Rejected(reviewer=reviewer, reason=reason):
                await self._tell_requester(job, messages.review_rejected_to_requester(
                    job, job.reply.channel, reviewer.key, reason))
            case ReviewExpired(hours=hours):
                await self._tell_requester(job, messages.review_expired_to_requester(job, job.reply.channel, hours))
            case Accepted():
                await self._show(job, messages.accepted(job))
            case Queued(position=position):
                await self._show(job, messages.queued(job, position))
            case Progress(stage=stage, elapsed_s=elapsed_s, percent=percent):
                await self._show(job, messages.progress(job, stage, elapsed_s, percent))
            case Delivered(images=images, balance=balance):
                await self._deliver(event, images, balance)
            case Failed(error=error, refunded=refunded):
                await self._fail(job, messages.failed(job, error, refunded))
            case _:
                raise TypeError(f"unknown job event {type(event).__name__}")

    # ------------------------------------------------------------------ the OperatorNotifier protocol
    async def notify_operators(self, operators: list[UserRef], text: str) -> None:
        """A direct message to each operator (``slack:TEAM:USER`` in ``ADMINS``) this bot can reach."""
        for operator in operators:
            try:
                clients = await self.workspaces.clients(operator.workspace)
                if clients is None:
                    log.warning("could not tell operator %s: the app is not installed in %s", operator.key,
                                operator.workspace)
                    continue
                opened = await clients.api.conversations_open(users=operator.user)
                await clients.api.chat_postMessage(channel=opened["channel"]["id"], text=escape(text))
            except SlackError as exc:
                log.warning("could not tell operator %s: %s", operator.key, slack_error_code(exc))

    # ------------------------------------------------------------------ before a job is taken
    def channel_known(self, team: str, channel: str) -> bool:
        """Whether ``check_reply`` can answer for ``channel`` without asking Slack (a fresh answer)."""
        return self._channels.get((team, channel), 0.0) > time.monotonic()

    async def check_reply(self, reply: ReplyTo) -> None:
        """Raise ``CannotAnswerHere`` when the bot cannot post in ``reply.channel`` (``FrontEnd``): the core
        asks before it reserves anything or sends anything to the gateway."""
        channel, team = reply.channel, str(reply.data.get("team_id") or "")
        key = (team, channel)
        if self.channel_known(team, channel):
            return
        clients = await self.workspaces.clients(team, reply.data.get("enterprise_id") or None)
        if clients is None:  # not installed there (any more): its first status ends the job, nothing sent
            return
        asking = self._asking.get(key)
        if asking is None:  # one conversations.info for a burst of commands in one channel
            asking = self._asking[key] = asyncio.ensure_future(self._refusal(clients, key))
            asking.add_done_callback(lambda done: self._asking.pop(key, None) if self._asking.get(key)
                                     is done else None)
        why = await asyncio.shield(asking)  # a waiter that goes away does not cut the others' answer
        if why is not None:
            raise CannotAnswerHere(f"slack: cannot post in {channel} ({why})",
                                   user_message=messages.cannot_answer_here(why, self.bot_name))

    async def _refusal(self, clients: Clients, key: tuple[str, str]) -> messages.Unanswerable | None:
        """Why the bot cannot post in the channel (conversations.info), or None: it can, or Slack cannot tell."""
        channel = key[1]
        try:
            async with asyncio.timeout(self.channel_check_timeout_s):  # no rate-limit retry on this client
                answer = await clients.edits.conversations_info(channel=channel)
        except SlackApiError as exc:
            if slack_error_code(exc) == "channel_not_found":  # private, or a DM between other people
                return "others_dm" if channel.startswith("D") else "not_member"
            self._cannot_tell(key, exc)
            return None
        except SlackError as exc:
            self._cannot_tell(key, exc)
            return None
        info = answer.get("channel") or {}
        if info.get("is_archived"):
            return "archived"
        if not (info.get("is_member") or info.get("is_im") or info.get("is_mpim")):
            return "not_member"
        self._trust(key, CHANNEL_OK_S)
        return None

    def _cannot_tell(self, key: tuple[str, str], exc: BaseException) -> None:
        code = slack_error_code(exc)
        hint = (": add channels:read, groups:read, im:read and mpim:read to the app and reinstall it"
                if code == "missing_scope" else "")
        log.warning("slack: conversations.info for %s failed (%s); taking jobs there for %.0fs without knowing "
                    "whether the bot can post%s", key[1], code, CHANNEL_UNKNOWN_S, hint)
        self._trust(key, CHANNEL_UNKNOWN_S)

    def _trust(self, key: tuple[str, str], seconds: float) -> None:
        now = time.monotonic()
        if len(self._channels) >= CHANNELS_KEPT:
            self._channels = {c: until for c, until in self._channels.items() if until > now}
        self._channels[key] = now + seconds

    def _refused(self, job: Job, channel: str) -> None:
        """Slack refused a post in ``channel`` (of ``job``'s workspace): the next job asked there is checked again."""
        self._channels.pop((job.requester.workspace, channel), None)

    def cannot_answer(self, code: str, channel: str) -> CannotAnswerHere:
        """Slack refused a post in ``channel`` with ``code`` (one of ``CHANNEL_ERRORS``): the error to stop a
        job with, worded as ``check_reply`` words it."""
        why: messages.Unanswerable = ("archived" if code == "is_archived" else
                                      "others_dm" if channel.startswith("D") else "not_member")
        return CannotAnswerHere(f"Slack refused to post in {channel}: {code}",
                                user_message=messages.cannot_answer_here(why, self.bot_name))

    async def close(self) -> None:
        """Forget the cached message addresses (jobs stay in the database; a restart picks them up)."""
        self._messages.clear()
        self._unpostable.clear()
        self._channels.clear()

    # ------------------------------------------------------------------ the workspace's token
    async def clients(self, job: Job) -> Clients | None:
        """The job's workspace's clients; None when the workspace removed the app."""
        return await self.workspaces.clients(job.requester.workspace, enterprise_of(job))

    async def _gone(self, job: Job) -> None:
        """A status for a workspace that removed the app: post nothing; a job not yet sent to the gateway
        is cancelled (refunded, never billed), any other ends at its delivery."""
        if job.id in self._unpostable:
            return
        self._unpostable[job.id] = "app_removed"
        log.warning("job %s: workspace %s removed the app: no message is posted for it", job.id,
                    job.requester.workspace)
        fresh = self.core.find_job(job.id)
        if fresh is not None and fresh.state is JobState.QUEUED:
            await self.core.cancel(job.id, AppRemoved(
                f"slack workspace {job.requester.workspace} removed the app before the job was sent"))

    # ------------------------------------------------------------------ the progress message
    def _data(self, job: Job) -> dict[str, Any]:
        """The job's front-end state, fresh from the database (the event's copy may predate an update)."""
        fresh = self.core.find_job(job.id)
        return (fresh or job).reply.data

    def _message(self, job: Job) -> _Message | None:
        message = self._messages.get(job.id)
        if message is None:
            data = self._data(job)
            if data.get("progress_ts"):
                message = self._messages[job.id] = _Message(data["progress_channel"], data["progress_ts"])
        return message

    async def _post(self, job: Job, payload: dict[str, Any], client: AsyncWebClient) -> _Message:
        """The job's message, posted once (``posts.post_once``: an attempt whose answer was lost is found)."""
        # a job asked from a message (the Remix shortcut) answers in that message's thread
        thread = {"thread_ts": job.reply.data["in_thread_of"]} if job.reply.data.get("in_thread_of") else {}
        channel, ts = await posts.post_once(
            client, job.id, "progress", started=self._data(job).get("progress_posting"),
            begin=lambda at: self.core.set_reply_data(job.id, progress_posting=at),
            channel=job.reply.channel, unfurl_links=False, unfurl_media=False, **thread, **payload)
        message = self._messages[job.id] = _Message(channel, ts)
        self.core.set_reply_data(job.id, progress_channel=message.channel, progress_ts=message.ts)
        return message

    async def _show(self, job: Job, text: str) -> None:
        """A status: edit the progress message, or post it if there is none yet (one call; the outbox paces)."""
        if job.id in self._unpostable:
            return
        clients = await self.clients(job)
        if clients is None:
            await self._gone(job)
            return
        payload = blocks.status(job.requester.user, text)
        message = self._message(job)
        try:
            if message is None:
                await _status_call(self._post(job, payload, clients.edits))
            else:
                await _status_call(clients.edits.chat_update(channel=message.channel, ts=message.ts, **payload))
        except SlackError as exc:
            code = slack_error_code(exc)
            if code not in CHANNEL_ERRORS:
                log.warning("job %s: status message failed: %s", job.id, code)
                return
            self._unpostable[job.id] = code  # no more statuses for this job here, and its result goes by DM
            where = message.channel if message is not None else job.reply.channel
            self._refused(job, where)
            # nothing went to the gateway yet (the check could not tell, or the bot left since): stop the job,
            # refunded, and the requester hears why privately. The state is read and the job cancelled with
            # no await between: a job still queued has no createTask on the wire.
            fresh = self.core.find_job(job.id)
            if message is None and fresh is not None and fresh.state is JobState.QUEUED:
                log.warning("job %s: cannot post the progress message in %s (%s): stopped before it was sent",
                            job.id, where, code)
                await self.core.cancel(job.id, self.cannot_answer(code, where))
                return
            # its task is (or may be) at the gateway, billed: the image goes to the requester by DM
            log.warning("job %s: %s refuses status messages (%s); the result will go to the requester's direct "
                        "messages", job.id, where, code)

    # ------------------------------------------------------------------ the end of a job
    async def _deliver(self, event: Delivered, images: tuple[ImageFile, ...], balance: int) -> None:
        """Upload into the progress message's thread before returning; raise ``DeliveryError`` if we cannot.

        Turning the progress message into the result (the image inline, or caption and buttons only) is the
        final status edit: the outbox sends it after any edit still in flight, and the job does not wait."""
        job = event.job
        clients = await self.clients(job)
        if clients is None:  # nothing is posted with a dead token
            raise AppRemoved(f"slack workspace {job.requester.workspace} removed the app (its installation and "
                             "token are gone)")
        data = self._data(job)
        # a receipt: an earlier attempt uploaded them (and died before the charge): never upload twice
        file_ids: list[str] = list(event.receipt.get("file_ids") or data.get("file_ids") or [])
        moved = bool(data.get("moved_from"))  # an earlier attempt moved the result to the requester's DM
        # the channel refused this job's statuses: straight to the DM (unless an upload is already there)
        refused = None if moved or file_ids else self._unpostable.get(job.id)
        try:
            if refused is None:
                try:
                    live = self._message(job) or await self._post(job, blocks.status(job.requester.user,
                                                                                     messages.accepted(job)),
                                                                  clients.posts)
                    if not file_ids:  # not uploaded by a previous process that stopped right after
                        thread = live.ts if moved else data.get("in_thread_of") or live.ts
                        file_ids = await self._upload_once(job, clients, images, self._caption(job, balance, moved),
                                                           live, thread,
                                                           list(event.receipt.get("pending_file_ids") or []))
                        self.core.set_reply_data(job.id, file_ids=file_ids, thread_ts=live.ts)
                except SlackError as exc:
                    refused = slack_error_code(exc)
                    if refused not in CHANNEL_ERRORS or moved:
                        raise
            if refused is not None:
                # the channel refuses now (the bot was removed, the channel archived), but the task was sent
                # and billed: the image goes to the requester's direct messages, delivered and charged
                self._refused(job, job.reply.channel)
                log.warning("job %s: %s refuses the result (%s): sending it to %s by direct message", job.id,
                            job.reply.channel, refused, job.requester.key)
                moved = True
                live = await self._move_to_requester(job, clients)
                file_ids = await self._upload_once(job, clients, images, self._caption(job, balance, moved), live,
                                                   live.ts, [])
                self.core.set_reply_data(job.id, file_ids=file_ids, thread_ts=live.ts)
        except SlackError as exc:
            code = slack_error_code(exc)
            if code in CHANNEL_ERRORS:  # neither where it was asked nor by direct message
                raise DeliveryError(f"Slack refused the result in {job.reply.channel} and by DM: {code}",
                                    user_message=messages.undeliverable()) from exc
            if code in REFUSALS:
                raise DeliveryError(f"Slack upload failed: {code}") from exc
            raise DeliveryInterrupted(f"Slack upload failed: {code}") from exc  # a blip: the core tries again
        caption = self._caption(job, balance, moved)
        in_thread = blocks.delivered(job.requester.user, caption, job.id)
        result: Send
        if self.result_in_thread or not file_ids:
            result = partial(self._final_edit, job, live, in_thread)
        else:
            shown = blocks.delivered(job.requester.user, caption, job.id, file_ids=file_ids, prompt=job.prompt)
            result = partial(self._show_result, job, live, file_ids, shown, in_thread)
        self.core.post_final(job.id, result, pace=partial(self.pace, job))

    @staticmethod
    def _caption(job: Job, balance: int, moved: bool) -> str:
        caption = messages.delivered(job, balance)
        return f"{messages.delivered_elsewhere(job.reply.channel)}\n{caption}" if moved else caption

    async def _move_to_requester(self, job: Job, clients: Clients) -> _Message:
        """The job's message, anew in the requester's direct message with the bot (``conversations.open``),
        recorded as the job's message at once: a later attempt delivers there too."""
        opened = await clients.api.conversations_open(users=job.requester.user)
        channel, ts = await posts.post_once(
            clients.posts, job.id, "moved", started=self._data(job).get("moved_posting"),
            begin=lambda at: self.core.set_reply_data(job.id, moved_posting=at),
            channel=str(opened["channel"]["id"]), unfurl_links=False, unfurl_media=False,
            **blocks.status(job.requester.user, messages.delivered_elsewhere(job.reply.channel)))
        message = self._messages[job.id] = _Message(channel, ts)
        self.core.set_reply_data(job.id, progress_channel=message.channel, progress_ts=message.ts,
                                      moved_from=job.reply.channel)
        return message

    async def _upload_once(self, job: Job, clients: Clients, images: tuple[ImageFile, ...], caption: str,
                           live: _Message, thread_ts: str, pending: list[str]) -> list[str]:
        """Upload the images into the thread, the file ids in the receipt before they are shared (``upload``).

        ``pending``: ids an earlier attempt reserved without seeing the upload complete. Shared in the
        channel, they are the delivery; unknown or never shared, the upload starts anew."""
        comment = blocks.status(job.requester.user, caption)["text"] if self.result_in_thread else None
        return await self._upload(clients.api, job, images, live.channel, thread_ts, comment, pending,
                                  partial(self.core.record_receipt, job.id), first={"channel": live.channel,
                                                                                   "ts": live.ts})

    async def _upload(self, client: AsyncWebClient, job: Job, images: tuple[ImageFile, ...], channel: str,
                      thread_ts: str | None, comment: str | None, pending: list[str], record: Callable[..., object],
                      *, first: dict[str, Any] | None = None) -> list[str]:
        """Upload the images into ``channel`` (a thread, a DM) at most once: ``record`` keeps the file ids
        before they are shared (``pending_file_ids``, with ``first``) and once they are (``file_ids``)."""
        if pending:
            done = await upload.shared(client, pending, channel, self.inline_waits)
            if done:
                log.info("job %s: files %s were shared before the last attempt stopped: not uploading again",
                         job.id, pending)
                record(file_ids=pending)
                return pending
            if done is None:
                log.warning("job %s: cannot tell whether files %s were shared (the token lacks files:read): "
                            "uploading again, so the image may show twice; add files:read to the app", job.id,
                            pending)
        title = messages.quote_prompt(job.prompt, 80)
        files = [upload.NewFile(image.filename, await asyncio.to_thread(image.read_bytes), title,
                                messages.quote_prompt(job.prompt, 1000)) for image in images]
        reserved = await upload.reserve(client, files)
        file_ids = [r.file_id for r in reserved]
        record(pending_file_ids=file_ids, **(first or {}))  # first
        for one in reserved:
            await upload.send(client, self.session, one)
        where: dict[str, Any] = {"thread_ts": thread_ts} if thread_ts else {}
        if comment:
            where["initial_comment"] = comment
        try:
            await client.files_completeUploadExternal(
                files=[{"id": r.file_id, "title": r.file.title} for r in reserved], channel_id=channel, **where)
        except SlackError as exc:
            if not upload.answer_lost(exc):
                raise
            code = slack_error_code(exc)
            log.warning("job %s: no answer from files.completeUploadExternal (%s): asking files.info", job.id, code)
            if not await upload.shared(client, file_ids, channel, self.inline_waits):
                raise DeliveryInterrupted(f"Slack upload: files.completeUploadExternal failed ({code}) and files.info "
                                          "does not show the files shared") from exc
        record(file_ids=file_ids)
        return file_ids

    # ------------------------------------------------------------------ channels with approvals
    async def _api(self, job: Job) -> AsyncWebClient:
        """The Web API client of the job's workspace (``AppRemoved`` when it removed the app)."""
        return (await self._clients(job)).api

    async def _posts(self, job: Job) -> AsyncWebClient:
        """The workspace's client for a delivery's new messages (``posts.post_once``)."""
        return (await self._clients(job)).posts

    async def _clients(self, job: Job) -> Clients:
        clients = await self.clients(job)
        if clients is None:
            raise AppRemoved(f"slack workspace {job.requester.workspace} removed the app")
        return clients

    async def _review_status(self, job: Job) -> None:
        """A job whose image goes to review first: its requester hears about it once, privately; the channel
        sees nothing (a status skipped by the outbox for a newer one is said by the newer one)."""
        data = self._data(job)
        if data.get("told_privately"):
            return
        text = messages.review_coming(job)
        url = data.get("response_url")
        if not (url and await respond_ephemeral(self.session, url, text)):
            try:
                await (await self._api(job)).chat_postEphemeral(channel=job.reply.channel, user=job.requester.user,
                                                                text=escape_keep_user_mentions(text))
            except (*SlackError, AppRemoved) as exc:
                log.warning("job %s: could not tell the requester privately: %s", job.id, slack_error_code(exc))
        self.core.set_reply_data(job.id, told_privately=True)

    @staticmethod
    async def _dm(api: AsyncWebClient, user: str) -> str:
        opened = await api.conversations_open(users=user)
        return str(opened["channel"]["id"])

    @staticmethod
    def _failure(exc: BaseException, what: str) -> DeliveryError:
        """A Slack error as the core's: a refusal that will not pass, or a blip worth trying again."""
        code = slack_error_code(exc)
        if code in REFUSALS or code in CHANNEL_ERRORS or code in UNREACHABLE:
            return DeliveryError(f"Slack refused {what}: {code}")
        return DeliveryInterrupted(f"Slack failed {what}: {code}")

    async def _deliver_privately(self, event: Delivered) -> None:
        """The image to the requester only: uploaded into their DM with the bot, with the caption and "Sent for
        review". Raises like any delivery (a DM that cannot be made is refunded)."""
        job = event.job
        if event.receipt.get("file_ids"):
            return  # shown before the last attempt stopped
        caption = messages.delivered(job, event.balance) + "\n" + messages.sent_for_review(job, job.reply.channel)
        api = await self._api(job)
        try:
            dm = event.receipt.get("dm") or await self._dm(api, job.requester.user)
            file_ids = await self._upload(api, job, event.images, dm, None, escape_keep_user_mentions(caption),
                                          list(event.receipt.get("pending_file_ids") or []),
                                          partial(self.core.record_receipt, job.id), first={"dm": dm})
        except SlackError as exc:
            raise self._failure(exc, "the requester's copy") from exc
        self.core.set_reply_data(job.id, file_ids=file_ids, review_dm=dm)

    async def _request_reviews(self, event: ReviewRequested) -> None:
        """Each reviewer: the image into their DM (with who asked, where, the prompt), then the buttons. A
        reviewer Slack refuses is skipped; a blip is raised after the others, to be tried again."""
        job = event.job
        text = messages.review_request(job, job.reply.channel, self.core.settings.APPROVAL_EXPIRE_H)
        api, posting = await self._api(job), await self._posts(job)
        blip: DeliveryError | None = None
        for reviewer in event.reviewers:
            if reviewer.platform != "slack":
                continue
            key = f"review:{reviewer.user}"
            done: dict[str, Any] = dict(event.receipt.get(key) or {})
            if done.get("ts"):
                continue

            def record(key: str = key, done: dict[str, Any] = done, **ids: Any) -> None:
                done.update(ids)
                self.core.record_review_receipt(job.id, **{key: dict(done)})

            try:
                if not done.get("dm"):
                    record(dm=await self._dm(api, reviewer.user))
                if not done.get("file_ids"):
                    await self._upload(api, job, event.images, done["dm"], None, escape_keep_user_mentions(text),
                                       list(done.get("pending_file_ids") or []), record)
                buttons = blocks.review(messages.review_buttons_text(job.reply.channel), job.id)
                _, ts = await posts.post_once(posting, job.id, key, started=done.get("started"),
                                              begin=lambda at, record=record: record(started=at),  # type: ignore[misc]
                                              channel=done["dm"], **buttons)
                record(ts=ts)
            except SlackError as exc:
                failure = self._failure(exc, f"the review DM to {reviewer.user}")
                if failure.retryable:
                    blip = failure
                else:
                    log.warning("job %s: cannot send the review to %s: %s", job.id, reviewer.key,
                                failure.admin_message)
        if blip is not None:
            raise blip

    async def _post_approved(self, event: Approved) -> None:
        """The approved image in the channel, as any result: a message, the image uploaded into its thread,
        then the message edited into the result (the image inline, the caption, the buttons)."""
        job = event.job
        post: dict[str, Any] = dict(event.receipt.get("post") or {})
        if post.get("done"):
            return

        def record(**ids: Any) -> None:
            post.update(ids)
            self.core.record_review_receipt(job.id, post=dict(post))

        caption = messages.delivered(job, event.balance)
        approved = messages.approved_by(event.reviewer.key)
        api = await self._api(job)
        try:
            if not post.get("ts"):
                channel, ts = await posts.post_once(
                    await self._posts(job), job.id, "approved", started=post.get("started"),
                    begin=lambda at: record(started=at), channel=job.reply.channel, unfurl_links=False,
                    unfurl_media=False, **blocks.delivered(job.requester.user, caption, job.id, approved_by=approved))
                record(channel=channel, ts=ts)
            if not post.get("file_ids"):
                await self._upload(api, job, event.images, post["channel"], post["ts"], None,
                                   list(post.get("pending_file_ids") or []), record)
            in_thread = blocks.delivered(job.requester.user, caption, job.id, approved_by=approved)
            if not self.result_in_thread:
                shown = blocks.delivered(job.requester.user, caption, job.id, file_ids=post["file_ids"],
                                         prompt=job.prompt, approved_by=approved)
                await inline.show_result(api, post["channel"], post["ts"], post["file_ids"], shown,
                                         in_thread, self.inline_waits)
        except SlackError as exc:
            code = slack_error_code(exc)
            if code in CHANNEL_ERRORS:
                raise DeliveryError(f"Slack refused to post the approved image: {code}", user_message=(
                    messages.review_cannot_post(job.reply.channel))) from exc
            raise self._failure(exc, "the approved image") from exc
        record(done=True)
        earlier = list(self._data(job).get("file_ids") or [])
        self.core.set_reply_data(job.id, progress_channel=post["channel"], progress_ts=post["ts"],
                                      file_ids=[*post["file_ids"], *earlier], thread_ts=post["ts"])

    async def _tell_requester(self, job: Job, text: str) -> None:
        """A DM to the requester (a rejection, an expiry)."""
        api = await self._api(job)
        try:
            await api.chat_postMessage(channel=await self._dm(api, job.requester.user),
                                       text=escape_keep_user_mentions(text))
        except SlackError as exc:
            raise self._failure(exc, "the note to the requester") from exc

    async def _show_result(self, job: Job, message: _Message, file_ids: list[str], shown: dict[str, Any],
                           in_thread: dict[str, Any]) -> None:
        """The result edit with the image inline (sent by the outbox; a 429 is raised for it to retry)."""
        clients = await self.clients(job)
        if clients is None:
            log.warning("job %s: workspace %s removed the app before the result edit", job.id, job.requester.workspace)
            return
        try:
            await _status_call(inline.show_result(clients.edits, message.channel, message.ts, file_ids, shown,
                                                  in_thread, self.inline_waits))
        except SlackError as exc:  # the images are posted; only the buttons are missing
            log.warning("job %s: final edit failed: %s", job.id, slack_error_code(exc))
            return
        self._messages.pop(job.id, None)

    async def _final(self, job: Job, message: _Message, payload: dict[str, Any]) -> bool:
        """The last edit of the progress message (a 429 is raised for the outbox to retry)."""
        clients = await self.clients(job)
        if clients is None:
            log.warning("job %s: workspace %s removed the app before the last edit", job.id, job.requester.workspace)
            return False
        try:
            await _status_call(clients.edits.chat_update(channel=message.channel, ts=message.ts, **payload))
        except SlackError as exc:
            log.warning("job %s: final edit failed: %s", job.id, slack_error_code(exc))
            return False
        self._messages.pop(job.id, None)
        return True

    async def _final_edit(self, job: Job, message: _Message, payload: dict[str, Any]) -> None:
        await self._final(job, message, payload)

    async def _fail(self, job: Job, text: str) -> None:
        """Sent by the outbox: edit the progress message, else answer privately through the response_url;
        nothing at all in a workspace that removed the app."""
        self._unpostable.pop(job.id, None)
        if await self.clients(job) is None:
            log.warning("job %s ended; workspace %s removed the app, so nobody is told", job.id,
                        job.requester.workspace)
            return
        message = self._message(job)
        if message is not None and await self._final(job, message, blocks.status(job.requester.user, text)):
            return
        response_url = self._data(job).get("response_url")
        if response_url:
            await respond_ephemeral(self.session, response_url, text)
        else:
            log.warning("job %s failed and the requester could not be told", job.id)
