"""Bolt listeners: translate a Slack request in, call the core, translate the answer out. Slash commands
come to ``on_command`` through a class middleware (``SlashCommands``: no listener dispatch for them).

A slash command is answered in the ack itself when the answer is at hand (help, balances, refusals,
admin commands: database work only), as Bolt's own examples do (``await ack(text)``); a job's answer is
its progress message. Only what takes time goes on after an empty ack, in a task of its own (``guarded``:
every listener returns as it acks, and Bolt, with ``process_before_response=True``, sends the ack as the
listener returns): a CSV upload, an admin check that must ask
Slack's users.info first, or a prompt in a channel the bot has not checked lately (``conversations.info``:
may it post there? see ``SlackFrontEnd.check_reply``); those answer through the response_url. Listeners
keep no state of their own: the buttons are handled by action id and carry the job id in their value, so
they keep working across restarts. Every call is made with the token of the workspace the request came
from (``Workspaces``), and a job remembers its workspace and Enterprise Grid organisation
(``ReplyTo.data["team_id"]``, ``["enterprise_id"]``) so that its calls find the same installation later.

In distributed mode ``app_uninstalled`` and ``tokens_revoked`` delete the workspace's installation (Bolt's
own listeners, over our store) and end the jobs of that workspace this process has not sent to the
gateway yet (``on_uninstalled``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.listener.async_builtins import AsyncTokenRevocationListeners
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.request.payload_utils import is_slash_command
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.oauth.installation_store.async_installation_store import AsyncInstallationStore
from slack_sdk.web.async_client import AsyncWebClient

from imagine_bot.bots.slack import blocks
from imagine_bot.bots.slack.errors import SlackError, slack_error_code
from imagine_bot.bots.slack.frontend import SlackFrontEnd, respond_ephemeral
from imagine_bot.bots.slack.mentions import command_text, escape, escape_keep_user_mentions, user_resolver
from imagine_bot.core.access.authority import Actor, place_key
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat import messages
from imagine_bot.core.chat.admin import CommandReply
from imagine_bot.core.chat.commands import dispatch
from imagine_bot.core.errors import AppRemoved, ImagineError
from imagine_bot.core.jobs.model import Job, JobState, ReplyTo

log = logging.getLogger(__name__)

#: Slack errors that mean "already gone" when deleting
GONE = frozenset({"file_not_found", "file_deleted", "message_not_found"})
#: the CSV report is shown inline when it cannot be sent as a file, up to this many characters
INLINE_REPORT_CHARS = 2500
#: how many of the user's images the App Home tab shows
HOME_IMAGES = 10
#: how long a users.info answer (workspace admin or owner?) is trusted
ADMIN_CACHE_S = 300.0
NOT_ALLOWED = "This image bot is not enabled for this workspace."


def first_file(job: Job) -> str | None:
    """The job's first uploaded Slack file, if any."""
    return next(iter(job.reply.data.get("file_ids") or []), None)


def _team_of(body: dict[str, Any]) -> str:
    team = body.get("team") or {}
    return str(body.get("team_id") or team.get("id") or (body.get("user") or {}).get("team_id") or "")


def _enterprise_of(body: dict[str, Any]) -> str | None:
    """The request's Enterprise Grid organisation, if any (slash commands, interactions and events)."""
    enterprise = body.get("enterprise")
    if isinstance(enterprise, dict):
        enterprise = enterprise.get("id")
    found = (enterprise or body.get("enterprise_id") or (body.get("team") or {}).get("enterprise_id")
             or next((a.get("enterprise_id") for a in body.get("authorizations") or []), None))
    return str(found) if found else None


def reply_to(body: dict[str, Any], channel: str, response_url: str | None, **data: Any) -> ReplyTo:
    """Where a job asked in this request answers: the channel, the response_url, and the workspace and its
    organisation (whose installation's token serves the job)."""
    if response_url:
        data["response_url"] = response_url
    data["team_id"] = _team_of(body)
    if enterprise := _enterprise_of(body):
        data["enterprise_id"] = enterprise
    return ReplyTo("slack", channel, data=data)


class SlashCommands(AsyncMiddleware):
    """Every slash command of the app (``/imagine``, whatever the workspace named it) answered by
    ``SlackHandlers.on_command`` from Bolt's chain of middleware, after Bolt's own (the signature check, the
    authorize step): the same listener and the same ack, without Bolt's listener dispatch.

    Registered with ``app.command``, each command would go through that dispatch before our code: every
    listener's matcher tried in turn, then every argument a listener may ask for built twice (a dict of 30
    objects for the matcher, again for the listener), then the runner's start and completion handlers: 70 of
    the 100 µs Bolt takes a request in a tight loop (sharing its client, ``BoltApp``), and more in a burst
    (issue 22, docs/benchmarks.md). A class middleware is called with the request alone. Bolt answers its
    own requests the same way (``ssl_check``, ``url_verification``); the buttons, views and events stay
    Bolt listeners."""

    def __init__(self, handlers: SlackHandlers) -> None:
        self.handlers = handlers

    async def async_process(self, *, req: AsyncBoltRequest, resp: BoltResponse,
                            next: Callable[[], Awaitable[BoltResponse]]) -> BoltResponse | None:
        if not is_slash_command(req.body):
            return await next()
        ack = req.context.ack
        await self.handlers.on_command(ack, req.body)
        return ack.response  # (it always acks; None would make Bolt answer 404, as for a listener that never did)


class SlackHandlers:
    def __init__(self, core: ImagineCore, frontend: SlackFrontEnd) -> None:
        self.core = core
        self.frontend = frontend
        self.workspaces = frontend.workspaces
        self._running: set[asyncio.Task[Any]] = set()
        self._admins: dict[tuple[str, str], tuple[float, bool]] = {}
        self._revocations: AsyncTokenRevocationListeners | None = None

    def register(self, app: AsyncApp) -> None:
        app.use(SlashCommands(self))  # /imagine, whatever the workspace named it
        app.action(blocks.ACTION_REROLL)(self.on_reroll)
        app.action(blocks.ACTION_DELETE)(self.on_delete)
        app.action(blocks.ACTION_APPROVE)(self.on_approve)
        app.action(blocks.ACTION_REJECT)(self.on_reject)
        app.view(blocks.VIEW_REJECT)(self.on_reject_submit)
        app.event("app_home_opened")(self.on_home_opened)

    def register_uninstalls(self, app: AsyncApp, store: AsyncInstallationStore) -> None:
        """Distributed mode: forget a workspace that removes the app or whose bot token is revoked."""
        self._revocations = AsyncTokenRevocationListeners(store)
        app.event("app_uninstalled")(self.on_uninstalled)
        app.event("tokens_revoked")(self.on_tokens_revoked)

    async def api(self, body: dict[str, Any]) -> AsyncWebClient | None:
        """The Web API client with the token of the workspace the request came from."""
        clients = await self.workspaces.clients(_team_of(body), _enterprise_of(body))
        return clients.api if clients is not None else None

    async def stop(self) -> None:
        """Cancel listeners still running (a job already submitted stays in the database)."""
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def busy(self) -> int:
        """Listeners running now."""
        return len(self._running)

    async def wait_idle(self) -> None:
        """Wait until no listener is running (tests)."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    def guarded(self, what: str, work: Coroutine[Any, Any, None]) -> None:
        """The work after a listener's ack (the remix listeners' too), in a task of its own: the listener
        returns at once, and Bolt sends its ack as it returns (``process_before_response=True``: Bolt then
        awaits the listener instead of polling every 10 ms for its ack). An error is logged, ``stop`` cancels
        it, ``wait_idle`` waits for it."""
        task = asyncio.create_task(self._guard(what, work), name=f"slack {what}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    @staticmethod
    async def _guard(what: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:
            log.exception("slack %s failed", what)

    # ------------------------------------------------------------------ Bolt listeners
    async def on_command(self, ack: Any, body: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            result = await self.answer_now(body)
        except Exception:
            log.exception("slack slash command failed")
            result = CommandReply(ImagineError().user_message)
        if result is None:  # it takes a users.info call first: answer through the response_url
            await ack()
            self.core.metrics.ack("slack", time.perf_counter() - started)
            self.guarded("slash command", self.slash_command(body))
            return
        if result.job is not None or result.attachment is not None:
            await ack()  # a job: its progress message is the answer; a file: uploaded next
        else:
            await ack(text=escape_keep_user_mentions(result.text), response_type="ephemeral")
        self.core.metrics.ack("slack", time.perf_counter() - started)
        if result.attachment is not None:
            self.guarded("slash command", self._send_result(body, result))

    async def on_reroll(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        self.guarded("reroll", self.reroll(body, str(action.get("value", ""))))

    async def on_delete(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        self.guarded("delete", self.delete(body, str(action.get("value", ""))))

    async def on_approve(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        self.guarded("approve", self.decide(body, str(action.get("value", "")), approve=True))

    async def on_reject(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        self.guarded("reject", self.open_reject(body, str(action.get("value", ""))))

    async def on_reject_submit(self, ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        values = view.get("state", {}).get("values", {})
        reason = str((values.get("reason", {}).get("reason") or {}).get("value") or "").strip()
        if not reason:
            await ack(response_action="errors", errors={"reason": messages.reject_reason_needed()})
            return
        await ack()
        meta = json.loads(view.get("private_metadata") or "{}")
        body = {**body, "channel": {"id": meta.get("channel")}, "response_url": meta.get("response_url")}
        self.guarded("reject submit", self.decide(body, str(meta.get("job_id", "")), approve=False,
                                                    reason=reason))

    async def on_home_opened(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        if event.get("tab", "home") != "home":
            return
        self.guarded("app home", self.publish_home(UserRef("slack", _team_of(body), event["user"]),
                                                   _enterprise_of(body)))

    async def on_uninstalled(self, context: AsyncBoltContext) -> None:
        self.guarded("app_uninstalled", self._uninstalled(context, "removed the app"))

    async def on_tokens_revoked(self, event: dict[str, Any], context: AsyncBoltContext) -> None:
        bots = (event.get("tokens") or {}).get("bot") or []
        self.guarded("tokens_revoked", self._uninstalled(context, "revoked the bot token", event=event,
                                                         whole=False, bot=bool(bots)))

    async def _uninstalled(self, context: AsyncBoltContext, what: str, *, event: dict[str, Any] | None = None,
                           whole: bool = True, bot: bool = True) -> None:
        """Delete the installation (Bolt's listeners, over our store), then end this workspace's jobs that
        are still waiting for the gateway: refunded, never sent (jobs already at the gateway end at their
        delivery, posting nothing)."""
        assert self._revocations is not None
        if whole:
            await self._revocations.handle_app_uninstalled_events(context)
        else:
            await self._revocations.handle_tokens_revoked_events(event or {}, context)
        where = context.team_id or context.enterprise_id or "?"
        if not bot:
            log.info("slack: %s revoked user tokens; the bot token stays", where)
            return
        log.warning("slack: %s %s: its installation is deleted, nothing more is posted there", where, what)
        ended = 0
        for job in self.core.unsent_jobs("slack"):
            if await self.frontend.clients(job) is None:  # its workspace has no installation left
                # read again, with no await before the cancel: ending an earlier job may have freed a slot,
                # and a job sent meanwhile is billed (it ends at its delivery, counted), never cut here
                fresh = self.core.find_job(job.id)
                if fresh is None or fresh.state is not JobState.QUEUED:
                    continue
                await self.core.cancel(job.id, AppRemoved(f"slack workspace {where} {what}"))
                ended += 1
        if ended:
            log.warning("slack: ended %d job(s) of %s before they reached the gateway", ended, where)

    # ------------------------------------------------------------------ who acts where
    def allowed(self, team: str) -> bool:
        """``SLACK_ALLOWED_TEAMS``: an empty list allows every workspace."""
        allowed = self.core.settings.SLACK_ALLOWED_TEAMS
        if allowed and team not in allowed:
            log.warning("slack: refused a request from workspace %s (not in SLACK_ALLOWED_TEAMS)", team)
            return False
        return True

    async def workspace_admin(self, api: AsyncWebClient | None, team: str, user: str) -> bool:
        """Slack's word (``users.info``: is_admin or is_owner, in this team) that ``user`` administers the
        workspace; cached for ``ADMIN_CACHE_S``. Any doubt (an error, another team) means no."""
        cached = self._admins.get((team, user))
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        if api is None:
            return False
        try:
            answer = await api.users_info(user=user)
        except SlackError as exc:
            log.warning("slack: users.info for %s failed (%s); not treating them as a workspace admin",
                        user, slack_error_code(exc))
            return False
        info = answer.get("user") or {}
        admin = bool(info.get("is_admin") or info.get("is_owner") or info.get("is_primary_owner")) and (
            info.get("team_id") in (None, team)) and not info.get("deleted")
        self._admins[(team, user)] = (time.monotonic() + ADMIN_CACHE_S, admin)
        return admin

    async def actor(self, body: dict[str, Any], user: str, channel: str | None, *, check_admin: bool) -> Actor:
        """Who acts, where: the request's workspace (``body``), a community admin there if Slack says so."""
        team = _team_of(body)
        admin = await self.workspace_admin(await self.api(body), team, user) if check_admin else False
        return Actor(UserRef("slack", team, user), place=place_key("slack", team), channel=channel,
                     community_admin=admin)

    def admin_known(self, team: str, user: str) -> bool:
        """Whether ``workspace_admin`` can answer without asking Slack (a fresh cached answer)."""
        cached = self._admins.get((team, user))
        return cached is not None and cached[0] > time.monotonic()

    # ------------------------------------------------------------------ the work
    async def answer_now(self, body: dict[str, Any]) -> CommandReply | None:
        """The answer to a slash command, for the ack: None when it needs Slack's users.info first, or a
        prompt needs conversations.info first (the bot has not checked that channel lately)."""
        team, user, channel = _team_of(body), body["user_id"], body["channel_id"]
        if not self.allowed(team):
            return CommandReply(NOT_ALLOWED)
        text = command_text(body.get("text") or "")
        words = text.split()
        first = words[0].lower() if words else ""
        known = self.admin_known(team, user)
        if first == "admin" and not known:
            return None
        if first and first not in messages.COMMAND_WORDS and not self.frontend.channel_known(team, channel):
            # a prompt where the bot has not checked lately that it may post: its plain refusals (credits,
            # flags, ...) in the ack, and Slack is asked (conversations.info) after it
            try:
                self.core.check_imagine(await self.actor(body, user, channel, check_admin=False), text)
            except ImagineError as error:
                return CommandReply(error.user_message)
            return None
        # help shows the admin part to admins Slack has already named (ADMINS always); not worth a wait
        check_admin = first == "admin" or (first in ("help", "") and known)
        reply = reply_to(body, channel, body.get("response_url"))
        trigger = body.get("trigger_id")
        return await dispatch(
            self.core, await self.actor(body, user, channel, check_admin=check_admin), text, reply,
            resolve_user=user_resolver(team), dedupe_key=f"slack:{team}:{trigger}" if trigger else None,
            command=body.get("command") or "/imagine",
        )

    async def slash_command(self, body: dict[str, Any]) -> None:
        """A slash command answered after the ack (through the response_url)."""
        team, user, channel = _team_of(body), body["user_id"], body["channel_id"]
        response_url = body.get("response_url")
        api = await self.api(body)
        if not self.allowed(team):
            await self._reply(api, user, channel, response_url, NOT_ALLOWED)
            return
        reply = reply_to(body, channel, response_url)
        trigger = body.get("trigger_id")
        text = command_text(body.get("text") or "")
        first = text.split()[0].lower() if text.split() else ""
        actor = await self.actor(body, user, channel, check_admin=first in ("admin", "help", ""))
        result = await dispatch(
            self.core, actor, text, reply,
            resolve_user=user_resolver(team), dedupe_key=f"slack:{team}:{trigger}" if trigger else None,
            command=body.get("command") or "/imagine",
        )
        if result.job is not None:
            return  # the progress message is the answer
        if result.attachment is not None:
            await self._send_privately(api, user, channel, response_url, result)
        else:
            await self._reply(api, user, channel, response_url, result.text)

    async def reroll(self, body: dict[str, Any], job_id: str) -> None:
        team, user = _team_of(body), body["user"]["id"]
        channel = str((body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id"))
        response_url = body.get("response_url")
        if not self.allowed(team):
            await self._reply(await self.api(body), user, channel, response_url, NOT_ALLOWED)
            return
        reply = reply_to(body, channel, response_url)
        trigger = body.get("trigger_id")
        try:
            job = await self.core.reroll(await self.actor(body, user, channel, check_admin=False), job_id, reply,
                                         dedupe_key=f"slack:{team}:{trigger}" if trigger else None)
        except ImagineError as error:
            await self._reply(await self.api(body), user, channel, response_url, error.user_message)
            return
        log.info("job %s: reroll of %s by %s", job.id, job_id, user)

    async def delete(self, body: dict[str, Any], job_id: str) -> None:
        user = body["user"]["id"]
        channel = str((body.get("channel") or {}).get("id") or "")
        response_url = body.get("response_url")
        api = await self.api(body)
        try:
            job = self.core.check_delete(await self.actor(body, user, channel, check_admin=True), job_id)
        except ImagineError as error:
            await self._reply(api, user, channel, response_url, error.user_message)
            return
        # the job's own workspace's token (an operator may delete it from another workspace)
        owner = await self.frontend.clients(job)
        data = job.reply.data
        problems: list[str] = []
        if owner is None:
            problems.append("not_installed")
        else:
            if data.get("progress_ts"):  # the message first, so that nobody sees it with a deleted image
                problems += await self._quietly(owner.api.chat_delete(channel=data["progress_channel"],
                                                                      ts=data["progress_ts"]))
            for file_id in data.get("file_ids") or []:  # the file: its reply in the thread and the image itself
                problems += await self._quietly(owner.api.files_delete(file=file_id))
        self.core.set_reply_data(job.id, deleted=True)  # the App Home tab no longer shows it
        log.info("job %s deleted by %s%s", job.id, user, f" with problems {problems}" if problems else "")
        text = messages.deleted() if not problems else (
            f"I could not delete everything: Slack said `{', '.join(problems)}`.")
        await self._reply(api, user, channel, response_url, text)

    async def decide(self, body: dict[str, Any], job_id: str, *, approve: bool, reason: str | None = None) -> None:
        """Approve or Reject pressed in a review DM (or the rejection form sent): the core decides, the reviewer
        hears the outcome privately."""
        user = body["user"]["id"]
        channel = str((body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id") or "")
        try:
            actor = await self.actor(body, user, channel, check_admin=False)
            text = await self.core.decide(actor, job_id, approve=approve, reason=reason)
        except ImagineError as error:
            text = error.user_message
        await self._reply(await self.api(body), user, channel, body.get("response_url"), text)

    async def open_reject(self, body: dict[str, Any], job_id: str) -> None:
        """Reject: the form for the reason, unless the press would be refused anyway (then say why)."""
        user = body["user"]["id"]
        channel = str((body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id") or "")
        response_url = body.get("response_url")
        api = await self.api(body)
        try:
            self.core.check_can_decide(await self.actor(body, user, channel, check_admin=False), job_id)
        except ImagineError as error:
            await self._reply(api, user, channel, response_url, error.user_message)
            return
        if api is None:
            return
        meta = json.dumps({"job_id": job_id, "channel": channel, "response_url": response_url})
        try:
            await api.views_open(trigger_id=body["trigger_id"],
                                 view=blocks.reject_modal(meta, messages.reject_reason_needed()))
        except SlackError as exc:
            log.warning("slack: could not open the rejection form: %s", slack_error_code(exc))

    async def publish_home(self, who: UserRef, enterprise: str | None = None) -> None:
        """The App Home tab, with thumbnails of the user's last images; without them if Slack refuses one."""
        clients = await self.workspaces.clients(who.workspace, enterprise)
        if clients is None:
            return
        info = self.core.credits(who)
        jobs = [job for job in self.core.recent_images(who, limit=HOME_IMAGES * 2)
                if not job.reply.data.get("deleted")][:HOME_IMAGES]
        recent = [blocks.HomeImage(job.prompt, job.created_at, job.cost, first_file(job)) for job in jobs]
        texts = (messages.credits(info.balance, len(info.active), self.core.now()),
                 messages.help_text(self.core.model, admin=self.core.is_admin(who)))
        try:
            await clients.api.views_publish(user_id=who.user, view=blocks.home(*texts, recent))
        except SlackApiError as exc:
            if slack_error_code(exc) != "invalid_blocks":
                raise
            log.info("App Home thumbnails refused for %s: %s", who.key, exc.response.get("errors"))
            await clients.api.views_publish(user_id=who.user, view=blocks.home(*texts, recent, thumbnails=False))

    # ------------------------------------------------------------------ helpers
    async def _reply(self, api: AsyncWebClient | None, user: str, channel: str, response_url: str | None,
                     text: str) -> None:
        """A private answer: through the response_url when there is one, else chat.postEphemeral."""
        if response_url and await respond_ephemeral(self.frontend.session, response_url, text):
            return
        if api is None:
            log.warning("could not answer %s privately: the app is not installed in their workspace", user)
            return
        try:
            await api.chat_postEphemeral(channel=channel, user=user, text=escape_keep_user_mentions(text))
        except SlackError as exc:
            log.warning("could not answer %s privately: %s", user, slack_error_code(exc))

    async def _send_result(self, body: dict[str, Any], reply: CommandReply) -> None:
        """``_send_privately`` for a slash command answered in its ack (the upload follows it)."""
        await self._send_privately(await self.api(body), body["user_id"], body["channel_id"], body.get("response_url"),
                                   reply)

    async def _send_privately(self, api: AsyncWebClient | None, user: str, channel: str, response_url: str | None,
                              reply: CommandReply) -> None:
        """A file for the requester only (the admin report): uploaded to their direct message with the bot,
        or shown inline in the private answer when that fails."""
        assert reply.attachment is not None
        filename, content = reply.attachment
        text: str | None = None
        try:
            if api is not None:
                opened = await api.conversations_open(users=user)
                await api.files_upload_v2(channel=opened["channel"]["id"], content=content, filename=filename,
                                          title=filename, initial_comment=escape(reply.text))
                text = f"{reply.text} The CSV is in your direct messages with me."
        except SlackError as exc:
            log.warning("could not send %s to %s: %s; showing it inline", filename, user, slack_error_code(exc))
        if text is None:
            shown = content.decode("utf-8", "replace")
            if len(shown) > INLINE_REPORT_CHARS:
                shown = shown[:INLINE_REPORT_CHARS] + "\n…"
            text = f"{reply.text}\n```\n{shown}\n```"
        await self._reply(api, user, channel, response_url, text)

    @staticmethod
    async def _quietly(call: Awaitable[Any]) -> list[str]:
        try:
            await call
        except SlackError as exc:
            code = slack_error_code(exc)
            return [] if code in GONE else [code]
        return []
