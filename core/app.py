"""The composition root: one ``ImagineCore`` owns the settings, database, HTTP client, gateway client,
ledger and orchestrator, and is handed to every front end (discord.py's ``advanced_startup`` shape)::

    async with ImagineCore.open(settings) as core:
        core.register(frontend)
        await core.start()           # resumes jobs left in flight
        ...

Front ends call the user operations below; they never touch the ledger or the job store directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from imagine_bot.core import __version__
from imagine_bot.core.access.authority import GLOBAL, Actor, scope_noun
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.access.places import PlaceRules
from imagine_bot.core.chat import messages, presets
from imagine_bot.core.chat.parsing import ParsedPrompt, check_banned, parse_imagine, take_images, take_preset
from imagine_bot.core.chat.presets import Preset
from imagine_bot.core.credits.budgets import BudgetStatus, spend_csv
from imagine_bot.core.credits.ledger import Balance
from imagine_bot.core.credits.prices import Prices
from imagine_bot.core.errors import (
    ConfigError,
    ImagineError,
    NotAllowedHere,
    NotFound,
    PermissionDenied,
    UserInputError,
)
from imagine_bot.core.frontend import FrontEnd, OperatorNotifier
from imagine_bot.core.gateway import GatewayClient
from imagine_bot.core.gateway.balance import GatewayAccount
from imagine_bot.core.gateway.catalog import ModelSpec, edit_model, get_model
from imagine_bot.core.gateway.transport import gateway_http
from imagine_bot.core.jobs.approvals import Approvals
from imagine_bot.core.jobs.leases import new_owner_id
from imagine_bot.core.jobs.model import Job, JobRequest, JobState, ReplyTo
from imagine_bot.core.jobs.orchestrator import Orchestrator
from imagine_bot.core.jobs.outbox import UNPACED, PaceOf, Send
from imagine_bot.core.jobs.relay import CallbackRelay
from imagine_bot.core.media.references import Reference, ReferenceChecker
from imagine_bot.core.media.refstore import RefStore
from imagine_bot.core.media.thumbnails import ThumbnailStore
from imagine_bot.core.ops.alerts import Alerts
from imagine_bot.core.settings import Settings
from imagine_bot.core.storage.approvals import Approval
from imagine_bot.core.storage.base import Stores
from imagine_bot.core.storage.db import utcnow
from imagine_bot.core.storage.sqlite import SqliteStores
from imagine_bot.core.web.dashboard.auth import dashboard_auth
from imagine_bot.core.web.metrics import Metrics

log = logging.getLogger(__name__)

#: how often kept references and results past REFS_KEEP_DAYS are removed
CLEANUP_EVERY_S = 3600.0
#: connections to the gateway at once (the HTTP pool); the gateway client queues further requests itself
HTTP_POOL = 100
#: the embedded sandbox's seconds in each stage, times SANDBOX_DELAY_SCALE (the terminal shows each stage)
SANDBOX_DELAYS = {"waiting": 0.4, "queuing": 0.4, "generating": 2.0}


@dataclass(frozen=True, slots=True)
class CreditsInfo:
    balance: Balance
    active: list[Job]
    #: the budget of the server or workspace asked from (None in DMs and the terminal)
    budget: BudgetStatus | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """An ``/imagine`` read and checked, before anything is reserved: the prompt the gateway gets (a preset's
    template filled in), the model inputs, the preset used and its reference images."""

    prompt: str
    params: dict[str, str]
    preset: Preset | None = None
    references: tuple[Reference, ...] = ()
    #: the inputs someone chose (a typed flag, the caller's ``defaults``, the preset), not a default
    chosen: frozenset[str] = frozenset()
    #: the reviewers of the channel, as read with the place's rules (``prepare_checked``; empty otherwise)
    reviewers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ScopeReport:
    """Spend in one scope this period: a chat summary and the CSV behind it."""

    summary: str
    csv: str
    filename: str


NOT_OPERATOR = "Only the bot's operators can do that (credits, allowances, budgets, other places' reports)."
NOT_HERE = "You can only manage the server or workspace you are an admin of."


def _shown(path: Path) -> str:
    return str(path) if str(path) == ":memory:" else os.path.abspath(path)


class ImagineCore:
    def __init__(self, settings: Settings, *, stores: Stores, gateway: GatewayClient,
                 model: ModelSpec, http: httpx.AsyncClient, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        #: every store of the database (core/storage/): the only door to SQL, and the transaction that
        #: spans them (``store`` is the same object, seen as the credits and jobs the orchestrator needs)
        self.stores = stores
        self.store = stores
        self.thumbnails = ThumbnailStore(self.stores.thumbnails, settings.THUMBNAIL_KEEP_DAYS)
        self.model = model
        #: the model for jobs with reference images (Vary, Remix, attachments)
        self.edit_model = edit_model(model)
        self.gateway = gateway
        self.prices = Prices(gateway)
        self.refs = RefStore(settings.refs_dir, settings.spool_dir, self.stores.secret("refs"),
                             base_url=settings.PUBLIC_URL, keep_days=settings.REFS_KEEP_DAYS)
        self.references = ReferenceChecker(self.refs, http, trusted_origins=[
            u for u in (settings.DISCORD_API_BASE, settings.SLACK_API_URL, gateway.base_url, settings.PUBLIC_URL or "")
            if u.startswith(("http://", "https://"))])
        self._cleanup: asyncio.Task[None] | None = None
        self.jobs = stores.jobs
        self.ledger = stores.ledger
        self.budgets = stores.ledger.budgets
        self.admins = frozenset(settings.ADMINS)
        self.places = self.stores.places
        self.presets = self.stores.presets
        self.dashboard_auth = dashboard_auth(self.stores)
        self.alerts = Alerts(settings.ADMINS)
        self.account = GatewayAccount(stores.gateway_account, stores.jobs, gateway, self.alerts, cost=model.cost,
                                      check_every_s=settings.GATEWAY_BALANCE_CHECK_S,
                                      undelivered_alert_credits=settings.UNDELIVERED_ALERT_CREDITS)
        owner = new_owner_id()
        #: approval before an image goes public, in channels with reviewers (core/jobs/approvals.py)
        self.approvals = Approvals(self.stores.approvals, self.jobs, self.ledger,
                                   expire_h=settings.APPROVAL_EXPIRE_H, owner=owner)
        self.orchestrator = Orchestrator(
            store=stores,
            gateway=gateway,
            model=model,
            spool=settings.spool_dir,
            max_active_per_user=settings.MAX_ACTIVE_JOBS_PER_USER,
            max_active=settings.MAX_ACTIVE_JOBS,
            create_rate_per_10s=settings.CREATE_RATE_PER_10S,
            poll_interval_s=settings.POLL_INTERVAL_S,
            poll_max_interval_s=settings.POLL_MAX_INTERVAL_S,
            poll_rate_per_s=settings.POLL_RATE_PER_S,
            job_timeout_s=settings.JOB_TIMEOUT_S,
            delivery_retry_s=settings.DELIVERY_RETRY_S,
            callback_url=settings.callback_url,
            banned_words=tuple(settings.BANNED_WORDS),
            metrics=self.metrics,
            resolve_refs=self.refs.resolve,
            lease_s=settings.JOB_LEASE_S,
            thumbnails=self.thumbnails,
            on_failure=self.account.on_job_failed,
            owner=owner,
            approvals=self.approvals,
        )
        #: callbacks received here for tasks tracked by another process on the same database, and back
        self.relay = CallbackRelay(self.stores.relay, self.orchestrator)
        # read from the job rows when scraped: every process on the database reports the same total
        self.metrics.watch_billed(lambda: self.jobs.billed_not_delivered()[0])

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, *, http: httpx.AsyncClient | None = None,
                   need_gateway: bool = True) -> AsyncIterator[ImagineCore]:
        """Build the core. With ``MODKIE_BASE_URL=sandbox`` the sandbox gateway runs in-process.

        ``need_gateway`` False (``imagine-bot dashboard``: it reads the database, makes no image) opens it
        without a ModKie key too; ``settings.gateway_usable`` then says the gateway is not to be asked."""
        async with AsyncExitStack() as stack:
            base_url = settings.MODKIE_BASE_URL
            api_key = settings.MODKIE_API_KEY.get_secret_value() if settings.MODKIE_API_KEY else None
            if not settings.gateway_usable and need_gateway:
                raise ConfigError("MODKIE_API_KEY", "is not set: put your ModKie key in .env, or use "
                                  "MODKIE_BASE_URL=sandbox (or --sandbox) to try the bot without one")
            stores = SqliteStores.open(settings, busy_timeout_s=settings.DB_BUSY_TIMEOUT_S)
            stack.callback(stores.close)
            where = settings.database_label if settings.database_url else _shown(settings.IMAGINE_DB_PATH)
            log.info("database %s (images wait for delivery in %s)", where, _shown(settings.spool_dir))
            if settings.sandbox:
                from imagine_bot.core.sandbox import SandboxGateway

                delays = {state: seconds * settings.SANDBOX_DELAY_SCALE for state, seconds in SANDBOX_DELAYS.items()}
                sandbox = SandboxGateway(delays=delays, state_path=settings.sandbox_state_path)
                base_url = await sandbox.start()
                # the gateway is in-process: poll it often enough to show every stage
                shortest = min(delays.values())
                settings = settings.model_copy(update={"POLL_INTERVAL_S": min(settings.POLL_INTERVAL_S, shortest)})
                stack.push_async_callback(sandbox.stop)
                api_key = api_key or "sandbox"
                log.info("sandbox gateway running at %s (no credits are spent)", base_url)
            if http is None:
                http = await stack.enter_async_context(
                    # httpx's API on aiohttp's pool (``core.gateway.transport``: a fraction of httpcore's CPU)
                    gateway_http(HTTP_POOL, user_agent=f"imagine-bot/{__version__}"))
            metrics = Metrics()
            gateway = GatewayClient(http, base_url=base_url, api_key=api_key,
                                    max_download_bytes=settings.max_download_bytes,
                                    request_timeout=settings.MODKIE_TIMEOUT_S,
                                    create_timeout=settings.create_task_timeout_s,
                                    on_request=metrics.gateway_request, on_balance=metrics.balance,
                                    max_in_flight=HTTP_POOL)
            model = get_model(settings.MODKIE_MODEL, settings.MODKIE_ASPECT_RATIOS)
            core = cls(settings, stores=stores, gateway=gateway, model=model, http=http, metrics=metrics)
            stack.push_async_callback(core.close)
            stack.push_async_callback(core.account.stop)
            stack.push_async_callback(core.orchestrator.stop)
            yield core

    # ------------------------------------------------------------------ wiring
    def register(self, frontend: FrontEnd) -> None:
        self.orchestrator.register(frontend)
        if isinstance(frontend, OperatorNotifier):
            self.alerts.register(frontend)

    async def start(self) -> int:
        """Resume in-flight jobs of the registered front ends; returns how many. Also reads the gateway's
        prices and starts the hourly cleanup of kept references."""
        await self.prices.refresh()
        # SQLite's log copied back in a thread, not in a commit on this loop, and not while a burst is answered
        lull = self.orchestrator.lull
        self.stores.start_checkpoints(hold=lambda: lull.holding)
        if self._cleanup is None:
            self._cleanup = asyncio.create_task(self._cleanup_loop(), name="refs-cleanup")
        await self.account.refresh()  # the gateway balance: pauses new jobs if it cannot pay for one
        self.account.check_undelivered()  # undelivered credits of today that nobody was told about yet
        self.relay.start()
        count = await self.orchestrator.resume()
        if count:
            log.info("resumed %d job(s) left in flight", count)
        await self.approvals.start()  # reviews, approved posts and notices left undone by an earlier process
        self.account.start()  # ... and reads it again every GATEWAY_BALANCE_CHECK_S
        return count

    def record_receipt(self, job_id: str, **ids: Any) -> Job:
        """Front ends: note what the platform returned for a delivery (message id, file ids), at once.

        Merged into the job's receipt in one short transaction and handed back as ``Delivered.receipt``
        if the job is delivered again (after a crash or a takeover): see ``FrontEnd``.
        """
        return self.jobs.record_receipt(job_id, **ids)

    def record_review_receipt(self, job_id: str, **ids: Any) -> Approval:
        """Front ends: as ``record_receipt``, for the steps of an approval (``ReviewRequested``, ``Approved``):
        merged into the approval's receipt, handed back in the event if the step is tried again."""
        return self.approvals.store.record_receipt(job_id, **ids)

    async def after_answers(self) -> None:
        """Front ends: wait here before work that follows an ack but decides none (a submit after a public
        placeholder): until the commands being answered now are answered (``core.jobs.lull``, 2 s at most)."""
        await self.orchestrator.after_answers()

    def answering(self) -> AbstractContextManager[None]:
        """Front ends: answer a command inside this, from its arrival to its ack; the work of jobs already
        accepted (their workers, their status messages) waits until no command is being answered
        (``core.jobs.lull``)."""
        return self.orchestrator.lull.command()

    def find_job(self, job_id: str) -> Job | None:
        """A job as stored now (None if unknown): front ends read a job's latest state and reply data here."""
        return self.jobs.find(job_id)

    def job(self, job_id: str) -> Job:
        """A job as stored now; ``NotFound`` (with a message for the user) if unknown."""
        return self.jobs.get(job_id)

    def unsent_jobs(self, platform: str) -> list[Job]:
        """Front ends: ``platform``'s jobs this process holds that have not gone to the gateway yet (queued):
        those ``cancel`` ends with nothing billed (a workspace that removed the app, ...)."""
        return [job for job in self.jobs.active() if job.platform == platform and job.state is JobState.QUEUED
                and job.owner == self.orchestrator.owner]

    def set_reply_data(self, job_id: str, **data: Any) -> Job:
        """Front ends: merge their own state into the job's reply address (message ids, ...), kept across
        restarts."""
        return self.jobs.set_reply_data(job_id, **data)

    async def cancel(self, job_id: str, error: ImagineError) -> None:
        """Front ends: stop a job that cannot go on (the bot cannot post in its channel, ...): it fails,
        refunded, and its user is told ``error``'s message."""
        await self.orchestrator.cancel(job_id, error)

    def post_final(self, job_id: str, send: Send, *, pace: PaceOf = UNPACED) -> None:
        """Front ends: queue a job's last status edit (the result) behind any edit still in flight; never
        waits (``core.jobs.outbox``)."""
        self.orchestrator.outbox.put(job_id, send, pace=pace, final=True)

    async def close(self) -> None:
        await self.relay.stop()
        if self._cleanup is not None:
            self._cleanup.cancel()
            await asyncio.gather(self._cleanup, return_exceptions=True)
            self._cleanup = None
        await self.prices.close()

    async def read_balance(self) -> int | None:
        """The gateway balance now, or None when it cannot be read (``GatewayAccount.refresh``: it also
        pauses or resumes new jobs, and the gateway client reports each read to the metrics)."""
        return await self.account.refresh()

    async def _cleanup_loop(self) -> None:
        while True:
            # the images of jobs in flight, and of approvals still to post, stay in the spool
            active = frozenset(job.id for job in self.jobs.active()) | self.approvals.store.waiting_jobs()
            try:
                await asyncio.to_thread(self.refs.cleanup, active)
            except OSError:
                log.exception("refs cleanup failed")
            await asyncio.sleep(CLEANUP_EVERY_S)

    def serve_refs_at(self, base_url: str) -> None:
        """Where ``/refs/`` is reachable for the gateway, when not ``PUBLIC_URL`` (the embedded sandbox)."""
        self.refs.base_url = base_url.rstrip("/")

    # ------------------------------------------------------------------ prices
    def cost_of(self, model: ModelSpec) -> int:
        return self.prices.cost(model)

    def _priced(self, model: ModelSpec) -> dict[str, Any]:
        """The model, price and (when it differs) the text-to-image price of a new job."""
        cost, text_cost = self.cost_of(model), self.cost_of(self.model)
        return {"model": model.id, "cost": cost, "text_cost": text_cost if model.edits and cost != text_cost else None}

    # ------------------------------------------------------------------ users
    def parse(self, text: str, defaults: dict[str, str] | None = None) -> ParsedPrompt:
        return parse_imagine(text, self.model, banned_words=self.settings.BANNED_WORDS, defaults=defaults)

    def place_defaults(self, who: UserRef | Actor) -> dict[str, str]:
        """The aspect ratio and quality a community admin chose for the place (flags still win)."""
        actor = Actor.of(who)
        return self.places.prefs(actor.place).defaults if actor.place else {}

    def prepare(self, who: UserRef | Actor, text: str, *, defaults: dict[str, str] | None = None,
                preset: str | None = None, channel_preset: bool = False,
                place: PlaceRules | None = None) -> Prepared:
        """Read an ``/imagine``: flags, the preset (``--preset NAME`` typed, else ``preset``, else with
        ``channel_preset`` the channel's default; ``none`` turns presets off) and its template, changing
        nothing. Raises ``UserInputError`` with the reason (an unknown preset lists the ones there are).

        Options, weakest first: the model's defaults, the place's, the preset's, ``defaults`` (a front end's
        own options), the flags typed in the text. ``place``: the place's rules as ``check_place`` just read
        them (its defaults and the channel's preset; None: read here)."""
        actor = Actor.of(who)
        text, typed = take_preset(text)
        name = typed or preset
        chosen: Preset | None = None
        if name is None and channel_preset and actor.channel_scope:
            default = place.channel_preset if place is not None else self.presets.channel_default(actor.channel_scope)
            chosen = self.preset_named(actor, default) if default else None
            if default and chosen is None:
                log.warning("channel %s: its default preset %s no longer exists", actor.channel_scope, default)
        elif name is not None and name.strip().lower() != presets.NONE:
            chosen = self.preset_named(actor, name.strip().lower())
            if chosen is None:
                raise UserInputError(messages.unknown_preset(name, [p.name for p in self.presets_here(actor)]))
        place_defaults = place.prefs.defaults if place is not None else self.place_defaults(actor)
        base = {**place_defaults, **(chosen.defaults if chosen else {}), **(defaults or {})}
        parsed = self.parse(text, base)
        given = parsed.flagged | frozenset(defaults or {}) | frozenset(chosen.defaults if chosen else {})
        if chosen is None:
            return Prepared(parsed.prompt, parsed.params, chosen=given)
        prompt = presets.fill(chosen, parsed.prompt, self.model.max_prompt_chars)
        images = tuple(Reference(name=f"image {n} of the preset {chosen.name}", url=url)
                       for n, url in enumerate(chosen.images, 1))
        return Prepared(prompt, parsed.params, chosen, images, given)

    async def imagine(self, requester: UserRef | Actor, reply: ReplyTo, text: str, *, dedupe_key: str | None = None,
                      defaults: dict[str, str] | None = None, extra_input: dict[str, Any] | None = None,
                      references: Sequence[Reference] = (), parent_id: str | None = None,
                      preset: str | None = None, channel_preset: bool = False) -> Job:
        """Parse chat text and submit the job. Raises ``ImagineError`` with a message for the user.

        ``requester`` is best an ``Actor`` (its place and channel decide the budgets and the place's rules);
        a bare Slack ``UserRef`` acts in its workspace and the reply's channel.

        ``preset`` and ``channel_preset``: see ``prepare`` (an ``/imagine`` passes ``channel_preset``; Vary
        and Remix do not, their prompt is already made).

        With ``references`` (or a preset's images) the job is an edit on ``edit_model``: every reference is
        checked (count, type, size) before anything is reserved. Its aspect ratio, unless typed (``--ar``),
        given in ``defaults`` or set by the preset, is the supported one nearest to the first reference's
        shape (rather than a place's or the model's default: an edit keeps the shape of the image it edits)."""
        actor = Actor.of(requester, reply.channel)
        if dedupe_key and (existing := self.jobs.by_dedupe_key(dedupe_key)) is not None:
            return existing  # a redelivered request: no second check, no second job
        place = self.check_place(actor)
        asked = self.prepare(actor, text, defaults=defaults, preset=preset, channel_preset=channel_preset,
                             place=place)
        params = asked.params
        references = [*asked.references, *references]
        model = self.edit_model if references else self.model
        priced = self._priced(model)
        image_urls: list[str] = []
        if references:
            self.orchestrator.precheck(actor.user, priced["cost"])  # cheap refusals before any fetching
            self.budgets.check(self.scopes(actor), actor.key, priced["cost"])
            await self.check_reply(reply)
            prepared = await self.references.prepare(model, references)
            image_urls = prepared.image_urls
            # no --ar typed and none chosen by the caller (Vary keeps the original's) nor the preset: the
            # reference's shape
            ratio_given = "aspect_ratio" in asked.chosen
            if not ratio_given and prepared.first_size is not None:
                params = {**params, "aspect_ratio": model.nearest_aspect_ratio(*prepared.first_size)}
        request = JobRequest(
            requester=actor.user, reply=reply, prompt=asked.prompt, params=params,
            dedupe_key=dedupe_key, extra_input=self._inputs(actor, extra_input), scopes=self.scopes(actor),
            parent_id=parent_id, image_urls=tuple(image_urls),
            preset=asked.preset.name if asked.preset else None,
            review=place.reviewers if place is not None else self.approvals.reviewers_for(actor), **priced,
        )
        # without references nothing was awaited since the dedupe key was looked up: not again in submit
        return await self.orchestrator.submit(request, looked_up=not references)

    async def check_reply(self, reply: ReplyTo) -> None:
        """Raise ``CannotAnswerHere`` if the front end cannot post at ``reply`` (a Slack channel the bot is
        not in). ``submit`` asks too; a front end asks early to refuse before a form or a download."""
        await self.orchestrator.check_reply(reply)

    def result_reference(self, who: UserRef | Actor, job_id: str) -> tuple[Job, Reference]:
        """A delivered job's first image as a reference, if ``who`` may use it (the requester, an operator
        or a community admin of the place it was made in) and it is still kept (``REFS_KEEP_DAYS``)."""
        actor = Actor.of(who)
        job = self.jobs.find(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", user_message="That image is no longer known to me.")
        community = actor.community_admin and actor.place is not None and actor.place in self.budgets.job_scopes(job_id)
        if job.requester != actor.user and not self.is_operator(actor) and not community:
            raise PermissionDenied(f"{actor.key} may not vary job {job_id}", user_message=(
                "Only the person who asked for this image, or an admin, can vary or remix it. Nothing was charged."))
        key = self.refs.result_key(job.id)
        if job.state is not JobState.DELIVERED or self.refs.path(key) is None:
            raise NotFound(f"job {job_id} has no kept result", user_message=(
                f"This image is no longer kept (results are kept for {self.settings.REFS_KEEP_DAYS:g} days), "
                "so it cannot be varied or remixed. Nothing was charged."))
        return job, Reference(name="the image", key=key)

    def check_can_vary(self, who: UserRef | Actor, job_id: str) -> Job:
        """The refusals Vary or Remix would meet (permission, kept result, place, job limit, balance, budgets),
        changing nothing; returns the original job."""
        job, _ = self.result_reference(who, job_id)
        self.check_can_submit(who, edit=True)
        return job

    async def vary(self, requester: UserRef | Actor, job_id: str, reply: ReplyTo, *, prompt: str | None = None,
                   defaults: dict[str, str] | None = None, dedupe_key: str | None = None,
                   extra_input: dict[str, Any] | None = None) -> Job:
        """Vary (same prompt) or Remix (``prompt`` given) a delivered job: an edit with its image as the
        reference, a new paid job for whoever pressed (the requester or an admin)."""
        original, reference = self.result_reference(requester, job_id)
        params = {k: v for k, v in original.params.items() if k in {s.name for s in self.model.inputs}}
        extra = {k: v for k, v in original.params.items() if k not in params}
        extra.update(extra_input or {})
        text = original.prompt if prompt is None else prompt
        return await self.imagine(requester, reply, text, dedupe_key=dedupe_key,
                                  defaults={**params, **(defaults or {})}, extra_input=extra,
                                  references=[reference], parent_id=original.id)

    async def reroll(self, requester: UserRef | Actor, job_id: str, reply: ReplyTo, *,
                     dedupe_key: str | None = None, extra_input: dict[str, Any] | None = None) -> Job:
        """The same prompt and parameters again, charged again, for whoever pressed the button (and against
        the budgets of the place where it was pressed).

        ``extra_input`` replaces the original's front-end inputs (the channel may differ: nsfw_checker).
        """
        actor = Actor.of(requester, reply.channel)
        rules = self.check_place(actor)
        original = self.jobs.get(job_id)
        params = {k: v for k, v in original.params.items() if k in {s.name for s in self.model.inputs}}
        extra = {k: v for k, v in original.params.items() if k not in params}
        extra.update(extra_input or {})
        model = self.edit_model if original.image_urls else self.model
        return await self.orchestrator.submit(JobRequest(
            requester=actor.user, reply=reply, prompt=original.prompt, params=params,
            dedupe_key=dedupe_key, parent_id=original.id, extra_input=self._inputs(actor, extra),
            scopes=self.scopes(actor), image_urls=original.image_urls, preset=original.preset,
            review=rules.reviewers if rules is not None else self.approvals.reviewers_for(actor),
            **self._priced(model),
        ))

    def _inputs(self, actor: Actor, extra: dict[str, Any] | None) -> dict[str, Any]:
        """Front-end inputs, with ``nsfw_checker`` decided here: ``MODKIE_NSFW_CHECKER`` (on by default),
        which a front end may only tighten, except in a Discord channel marked NSFW when the operator set
        ``DISCORD_NSFW_CHANNELS_UNFILTERED``."""
        inputs = dict(extra or {})
        asked = inputs.get("nsfw_checker")
        unfiltered = (asked is False and actor.nsfw_channel and actor.user.platform == "discord"
                      and self.settings.DISCORD_NSFW_CHANNELS_UNFILTERED)
        inputs["nsfw_checker"] = False if unfiltered else bool(self.settings.MODKIE_NSFW_CHECKER or asked)
        return inputs

    def scopes(self, actor: Actor) -> tuple[str, ...]:
        """The budgets over a job asked by ``actor``: its place and that channel (if it has a budget)."""
        if actor.place is None:
            return ()
        return (actor.place, actor.channel_scope) if actor.channel_scope else (actor.place,)

    def check_place(self, actor: Actor) -> PlaceRules | None:
        """The place's own refusals, before any charge: not an allowed server or workspace, banned there,
        a channel the bot does not answer in, or paused submissions. Returns the place's rules, read in one
        statement with the channel's default preset and reviewers (None: no place), for ``prepare`` and the job.

        The ban, the preferences and the channel's choices are read every time (an admin's change in any
        process counts at once); the pause is the gateway account's as this process knows it
        (``GatewayAccount.check``: a pause made by another process counts within ``ACCOUNT_FRESH_S``)."""
        rules: PlaceRules | None = None
        if actor.place is not None:
            platform, _, place_id = actor.place.partition(":")
            allowed = {"discord": self.settings.DISCORD_ALLOWED_GUILDS,
                       "slack": self.settings.SLACK_ALLOWED_TEAMS}.get(platform) or []
            if allowed and place_id not in allowed:
                raise NotAllowedHere(f"{actor.key} in {actor.place}, which is not allowed",
                                     user_message=f"This image bot is not enabled for this {scope_noun(actor.place)}.")
            rules = self.places.rules(actor.place, actor.key, actor.channel_scope)
            if rules.banned:
                raise NotAllowedHere(f"{actor.key} is banned in {actor.place}", user_message=(
                    f"A {scope_noun(actor.place)} admin has turned the image bot off for you here."))
            channels = rules.prefs.channels
            if channels and actor.channel not in channels:
                where = ", ".join(f"<#{c}>" for c in channels)
                raise NotAllowedHere(f"{actor.key} asked in channel {actor.channel}", user_message=(
                    f"In this {scope_noun(actor.place)} I make images only in {where}."))
        self.account.check()
        return rules

    def check_imagine(self, requester: UserRef | Actor, text: str) -> None:
        """Raise the refusal ``/imagine <text>`` would meet at once (place, prompt and flags, job limit, balance,
        budgets), changing nothing: for a front end that answers these in its ack and takes the job itself
        after asking its platform something (``check_reply``)."""
        prompt, images = take_images(text)
        self.prepare_checked(requester, prompt, edit=bool(images))

    def prepare_checked(self, requester: UserRef | Actor, text: str, *, defaults: dict[str, str] | None = None,
                        preset: str | None = None, edit: bool = False) -> Prepared:
        """``prepare`` an ``/imagine`` (with the channel's preset) and raise the refusal it would meet at once
        (place, prompt and flags, preset, job limit, balance, budgets), changing nothing; the place is read
        once for its rules and its defaults. ``edit``: with references of the front end's own."""
        actor = Actor.of(requester)
        place = self.check_place(actor)
        prepared = self.prepare(actor, text, defaults=defaults, preset=preset, channel_preset=True, place=place)
        self._check_can_pay(actor, edit=edit or bool(prepared.references))
        return replace(prepared, reviewers=place.reviewers) if place is not None and place.reviewers else prepared

    def check_can_submit(self, requester: UserRef | Actor, *, edit: bool = False) -> None:
        """Raise the refusal an ``imagine`` (an edit, with ``edit``) by this user would meet (place, job limit,
        balance, budgets), changing nothing."""
        actor = Actor.of(requester)
        self.check_place(actor)
        self._check_can_pay(actor, edit=edit)

    def _check_can_pay(self, actor: Actor, *, edit: bool) -> None:
        """The job limit, the balance and the budgets (the place checked already)."""
        cost = self.cost_of(self.edit_model if edit else self.model)
        self.orchestrator.precheck(actor.user, cost)
        self.budgets.check(self.scopes(actor), actor.key, cost)

    def credits(self, requester: UserRef | Actor) -> CreditsInfo:
        actor = Actor.of(requester)
        budget = self.budgets.status(actor.place) if actor.place else None
        return CreditsInfo(self.ledger.balance(actor.user), self.jobs.active(actor.key), budget)

    # ------------------------------------------------------------------ who may do what
    def is_operator(self, who: UserRef | Actor) -> bool:
        """Operators are listed in ``ADMINS`` (and run the command line): only they mint credits."""
        return Actor.of(who).key in self.admins

    def is_admin(self, who: UserRef | Actor) -> bool:
        """An operator, or a community admin of the place they act in."""
        actor = Actor.of(who)
        return self.is_operator(actor) or (actor.community_admin and actor.place is not None)

    def _require_operator(self, actor: Actor, what: str) -> None:
        if not self.is_operator(actor):
            raise PermissionDenied(f"{actor.key} (not an operator) tried {what}",
                                   user_message=f"{NOT_OPERATOR} Nothing was changed.")

    def _require_manager(self, actor: Actor, what: str, scope: str | None = None) -> str:
        """The place ``actor`` may manage for ``what``: ``scope`` (operators: any) or their own place."""
        scope = scope or actor.place
        if self.is_operator(actor) and scope is not None:
            return scope
        if not (actor.community_admin and actor.place):
            raise PermissionDenied(f"{actor.key} tried {what} without rights in {actor.place}")
        if scope is None or (scope != actor.place and not scope.startswith(actor.place + "#")):
            raise PermissionDenied(f"{actor.key} (admin of {actor.place}) tried {what} in {scope}",
                                   user_message=f"{NOT_HERE} Nothing was changed.")
        return scope

    def check_delete(self, who: UserRef | Actor, job_id: str) -> Job:
        """The job, if ``who`` may delete its images: the requester, an operator, or a community admin of
        the place the job was made in."""
        actor = Actor.of(who)
        job = self.jobs.find(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", user_message="That image is no longer known to me.")
        made_in = self.budgets.job_scopes(job_id)
        community = actor.community_admin and actor.place is not None and actor.place in made_in
        if job.requester != actor.user and not self.is_operator(actor) and not community:
            raise PermissionDenied(f"{actor.key} may not delete job {job_id}",
                                   user_message="Only the person who asked for this image, or an admin, can delete it.")
        return job

    def recent_images(self, who: UserRef, limit: int = 5) -> list[Job]:
        return self.jobs.recent(who.key, limit=limit, states=(JobState.DELIVERED,))

    # ------------------------------------------------------------------ operators
    def admin_grant(self, actor: UserRef | Actor, target: UserRef, amount: int, *, note: str | None = None) -> Balance:
        self._require_operator(Actor.of(actor), "grant")
        if amount == 0:
            raise UserInputError("Grant a number of credits other than 0 (negative to revoke).")
        return self.ledger.grant(target, amount, actor=Actor.of(actor).key, note=note)

    def admin_allowance(self, actor: UserRef | Actor, target: UserRef, allowance: int | None) -> Balance:
        self._require_operator(Actor.of(actor), "allowance")
        if allowance is not None and allowance < 0:
            raise UserInputError("An allowance cannot be negative.")
        return self.ledger.set_allowance(target, allowance, actor=Actor.of(actor).key)

    def admin_history_allowed(self, actor: UserRef | Actor) -> None:
        self._require_operator(Actor.of(actor), "history")

    def admin_report(self, actor: UserRef | Actor) -> str:
        """Every account on every platform, as CSV: operators only."""
        self._require_operator(Actor.of(actor), "the full report")
        return self.ledger.report_csv()

    def admin_budget_set(self, actor: UserRef | Actor, scope: str, amount: int | None, *, period: str | None = None,
                         unlimited: bool = False) -> BudgetStatus:
        self._require_operator(Actor.of(actor), f"budget set {scope}")
        return self.budgets.set_amount(scope, amount, actor=Actor.of(actor).key, period=period, unlimited=unlimited)

    # ------------------------------------------------------------------ community admins (and operators)
    def admin_budget_show(self, actor: UserRef | Actor, scope: str | None = None) -> list[BudgetStatus]:
        """The budget of ``scope`` (default: the actor's place) and its channels' budgets; an operator
        asking from nowhere in particular sees every budget."""
        who = Actor.of(actor)
        if scope is None and who.place is None:
            self._require_operator(who, "budget show")
            return self.budgets.all()
        place = self._require_manager(who, "budget show", scope)
        shown = [self.budgets.status(place)]
        if "#" not in place:
            shown += [b for b in self.budgets.all() if b.scope.startswith(place + "#")]
        return shown

    def admin_scope_report(self, actor: UserRef | Actor, scope: str | None = None) -> ScopeReport:
        """Spend this period in a place (per member and per channel): its community admins and operators."""
        who = Actor.of(actor)
        place = GLOBAL if scope == GLOBAL else self._require_manager(who, "report", scope)
        if place == GLOBAL:
            self._require_operator(who, "report global")
        return self.scope_report(place)

    def scope_report(self, scope: str) -> ScopeReport:
        """Plain core function (CLI, dashboards): spend in ``scope`` this period, per account and channel."""
        status = self.budgets.status(scope)
        rows = self.budgets.spend_rows(scope, status.period_start)
        return ScopeReport(messages.scope_summary(status, rows), spend_csv(rows),
                           f"imagine-usage-{scope.replace(':', '-').replace('#', '-')}-{utcnow():%Y%m%d}.csv")

    def admin_ban(self, actor: UserRef | Actor, target: UserRef, *, ban: bool = True) -> bool:
        who = Actor.of(actor)
        place = self._require_manager(who, "ban" if ban else "unban")
        if ban and target == who.user:
            raise UserInputError("You cannot ban yourself.")
        done = self.places.ban(place, target.key, actor=who.key) if ban else self.places.unban(place, target.key)
        log.info("%s %s %s in %s", who.key, "banned" if ban else "unbanned", target.key, place)
        return done

    def admin_channels(self, actor: UserRef | Actor, channels: tuple[str, ...]) -> tuple[str, ...]:
        """The channels the bot answers in at the actor's place (empty: all)."""
        who = Actor.of(actor)
        place = self._require_manager(who, "channels")
        return self.places.set_channels(place, channels, actor=who.key).channels

    def admin_defaults(self, actor: UserRef | Actor, defaults: dict[str, str | None]) -> dict[str, str]:
        who = Actor.of(actor)
        place = self._require_manager(who, "defaults")
        for name, value in defaults.items():
            spec = next((s for s in self.model.inputs if s.name == name), None)
            if spec is None or (value is not None and value not in spec.choices):
                valid = ", ".join(spec.choices) if spec else "aspect_ratio, quality"
                raise UserInputError(f"`{value}` is not a valid {name.replace('_', ' ')}: use one of {valid}.")
        return self.places.set_defaults(place, defaults, actor=who.key).defaults

    # ------------------------------------------------------------------ brand presets
    def presets_here(self, who: UserRef | Actor) -> list[Preset]:
        """The presets a user may name where they act: their place's, and the global ones it does not shadow."""
        actor = Actor.of(who)
        found: dict[str, Preset] = {}
        for preset in self.presets.in_scopes([GLOBAL, *([actor.place] if actor.place else [])]):
            if preset.name not in found or preset.scope != GLOBAL:
                found[preset.name] = preset
        return sorted(found.values(), key=lambda p: p.name)

    def preset_named(self, who: UserRef | Actor, name: str) -> Preset | None:
        actor = Actor.of(who)
        return (self.presets.get(actor.place, name) if actor.place else None) or self.presets.get(GLOBAL, name)

    def channel_preset(self, who: UserRef | Actor) -> str | None:
        """The name of the preset the actor's channel uses by default (None: none)."""
        actor = Actor.of(who)
        return self.presets.channel_default(actor.channel_scope) if actor.channel_scope else None

    def _preset_scope(self, actor: Actor, everywhere: bool, what: str) -> str:
        """Where a preset change applies: ``global`` (operators only; also an operator acting from no place)
        or the place the actor manages."""
        if everywhere or actor.place is None:
            self._require_operator(actor, what)
            return GLOBAL
        return self._require_manager(actor, what)

    def admin_preset_set(self, actor: UserRef | Actor, name: str, template: str, *,
                         defaults: dict[str, str] | None = None, images: Sequence[str] = (),
                         everywhere: bool = False) -> Preset:
        """Create or replace a preset of the actor's place (``everywhere``: a global one, operators only)."""
        who = Actor.of(actor)
        scope = self._preset_scope(who, everywhere, f"preset set {name}")
        name = presets.check_name(name)
        text = presets.check_template(template, self.model.max_prompt_chars)
        check_banned(text, self.settings.BANNED_WORDS)  # the template's words meet the banned words too
        chosen = {k: v for k, v in (defaults or {}).items() if v}
        for key, value in chosen.items():
            spec = next((s for s in self.model.inputs if s.name == key), None)
            if spec is None or value not in spec.choices:
                raise UserInputError(f"`{value}` is not a valid {key.replace('_', ' ')}"
                                     + (f": use one of {', '.join(spec.choices)}." if spec else "."))
        for url in images:
            if not url.lower().startswith(("http://", "https://")):
                raise UserInputError(f"`--image` takes the URL of an image (https://...), not `{url[:60]}`.")
        if len(images) > presets.MAX_IMAGES:
            raise UserInputError(f"A preset takes at most {presets.MAX_IMAGES} images.")
        saved = self.presets.put(Preset(scope, name, text, chosen, tuple(images)), actor=who.key)
        log.info("%s saved preset %s in %s", who.key, name, scope)
        return saved

    def admin_preset_remove(self, actor: UserRef | Actor, name: str, *, everywhere: bool = False) -> list[str]:
        """Remove a preset; returns the channels whose default it was (they have none now)."""
        who = Actor.of(actor)
        scope = self._preset_scope(who, everywhere, f"preset remove {name}")
        key = name.strip().lower()
        gone, channels = self.presets.remove(scope, key)
        if not gone:
            raise UserInputError(messages.unknown_preset(name, [p.name for p in self.presets_here(who)
                                                                if p.scope == scope]).replace(
                " Nothing was charged.", " Nothing was changed."))
        log.info("%s removed preset %s in %s", who.key, key, scope)
        return channels

    def admin_preset_default(self, actor: UserRef | Actor, name: str | None) -> Preset | None:
        """The preset every ``/imagine`` in the actor's channel uses (None or ``none``: no default)."""
        who = Actor.of(actor)
        self._require_manager(who, "preset default")
        if who.channel_scope is None:
            raise UserInputError("Use `admin preset default` in the channel you mean.")
        key = None if name is None or name.strip().lower() == presets.NONE else name.strip().lower()
        chosen = self.preset_named(who, key) if key else None
        if key and chosen is None:
            raise UserInputError(messages.unknown_preset(name or "", [p.name for p in self.presets_here(who)]).replace(
                " Nothing was charged.", " Nothing was changed."))
        self.presets.set_channel_default(who.channel_scope, key, actor=who.key)
        return chosen

    def admin_presets(self, actor: UserRef | Actor) -> tuple[list[Preset], dict[str, str]]:
        """For ``admin preset list``: the presets here and which channel uses which by default."""
        who = Actor.of(actor)
        if who.place is None:
            self._require_operator(who, "preset list")
            return self.presets_here(who), {}
        place = self._require_manager(who, "preset list")
        return self.presets_here(who), self.presets.channel_defaults(place)

    # ------------------------------------------------------------------ approvals
    def review_needed(self, who: UserRef | Actor) -> bool:
        """Whether an image asked by ``who`` where they are goes to reviewers before the channel."""
        return bool(self.approvals.reviewers_for(Actor.of(who)))

    def admin_approvals(self, actor: UserRef | Actor, reviewers: Sequence[UserRef] | None) -> tuple[str, ...]:
        """Approvals on (with these reviewers) or off (None) in the actor's channel; returns the reviewers now.
        For the community admins of the place and operators."""
        who = Actor.of(actor)
        self._require_manager(who, "approvals")
        if who.channel_scope is None:
            raise UserInputError("Use `admin approvals` in the channel you mean.")
        if reviewers is not None:
            if not reviewers:
                raise UserInputError("Name the reviewers: `admin approvals on @reviewer [@reviewer2 ...]`.")
            self.approvals.store.set_reviewers(who.channel_scope, [r.key for r in reviewers], actor=who.key)
            log.info("%s turned approvals on in %s: %s", who.key, who.channel_scope, [r.key for r in reviewers])
        elif self.approvals.reviewers_for(who):
            self.approvals.store.set_reviewers(who.channel_scope, [], actor=who.key)
            log.info("%s turned approvals off in %s", who.key, who.channel_scope)
        return self.approvals.reviewers_for(who)

    def approvals_here(self, actor: UserRef | Actor) -> tuple[str, ...]:
        who = Actor.of(actor)
        self._require_manager(who, "approvals")
        return self.approvals.reviewers_for(who)

    def check_can_decide(self, actor: UserRef | Actor, job_id: str) -> None:
        """Raise the refusal an Approve or Reject by ``actor`` would meet (not a reviewer, their own image,
        already decided), changing nothing: front ends ask before they open the rejection form."""
        who = Actor.of(actor)
        self.approvals.check(who, job_id, operator=self.is_operator(who))

    async def decide(self, actor: UserRef | Actor, job_id: str, *, approve: bool, reason: str | None = None) -> str:
        """Approve (the image is posted in its channel before this returns) or reject (``reason``) an image
        waiting for review; the text for whoever pressed. Raises ``ImagineError`` with the refusal."""
        who = Actor.of(actor)
        return await self.approvals.decide(who, job_id, approve=approve, reason=reason,
                                           operator=self.is_operator(who))

    def admin_member_cap(self, actor: UserRef | Actor, cap: int | None) -> BudgetStatus:
        """At most ``cap`` credits of the place's budget per member per period (None: no cap). Lowers only."""
        who = Actor.of(actor)
        place = self._require_manager(who, "member cap")
        return self.budgets.set_member_cap(place, cap, actor=who.key)

    def dashboard_link(self, actor: UserRef | Actor) -> tuple[str, str | None]:
        """A one-time sign-in link to ``/admin`` and the scope it shows: everything for an operator, the
        community admin's own server or workspace otherwise."""
        who = Actor.of(actor)
        scope = None if self.is_operator(who) else self._require_manager(who, "dashboard")
        return self.dashboard_auth.mint(self.settings.web_url, actor=who.key, scope=scope), scope

    def now(self) -> datetime:
        """The current time (UTC), for messages that mention times."""
        return utcnow()

