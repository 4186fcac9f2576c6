"""The composition root: one ``ImagineCore`` owns the settings, database, HTTP client, gateway client,
ledger and orchestrator, and is handed to every front end (discord.py's ``advanced_startup`` shape)::

    async with ImagineCore.open(settings) as core:
        core.register(frontend)
        await core.start()           # resumes jobs left in flight
        ...

Front ends call the user operations below; they never touch the ledger or the job store directly.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import sqlite_utils

from . import __version__
from .catalog import ModelSpec, get_model
from .db import open_db, utcnow
from .errors import ConfigError, NotFound, PermissionDenied, UserInputError
from .frontend import FrontEnd
from .gateway import GatewayClient
from .identity import UserRef
from .jobs import Job, JobRequest, JobState, JobStore, ReplyTo
from .ledger import Balance, Ledger
from .orchestrator import Orchestrator
from .parsing import ParsedPrompt, parse_imagine
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CreditsInfo:
    balance: Balance
    active: list[Job]


class ImagineCore:
    def __init__(self, settings: Settings, *, db: sqlite_utils.Database, gateway: GatewayClient,
                 model: ModelSpec) -> None:
        self.settings = settings
        self.db = db
        self.model = model
        self.gateway = gateway
        self.jobs = JobStore(db)
        self.ledger = Ledger(db, allowance=settings.CREDITS_ALLOWANCE, period=settings.CREDITS_PERIOD)
        self.admins = frozenset(settings.ADMINS)
        self.orchestrator = Orchestrator(
            db=db,
            jobs=self.jobs,
            ledger=self.ledger,
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
            callback_url=settings.callback_url,
            banned_words=tuple(settings.BANNED_WORDS),
        )

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, *, http: httpx.AsyncClient | None = None) -> AsyncIterator[ImagineCore]:
        """Build the core. With ``MODKIE_BASE_URL=sandbox`` the sandbox gateway runs in-process."""
        async with AsyncExitStack() as stack:
            base_url = settings.MODKIE_BASE_URL
            api_key = settings.MODKIE_API_KEY.get_secret_value() if settings.MODKIE_API_KEY else None
            if settings.sandbox:
                from .sandbox import SandboxGateway

                sandbox = SandboxGateway(delays={"waiting": 0.4, "queuing": 0.4, "generating": 2.0})
                base_url = await sandbox.start()
                # the gateway is in-process: poll it often enough to show every stage
                settings = settings.model_copy(update={"POLL_INTERVAL_S": min(settings.POLL_INTERVAL_S, 0.4)})
                stack.push_async_callback(sandbox.stop)
                api_key = api_key or "sandbox"
                log.info("sandbox gateway running at %s (no credits are spent)", base_url)
            elif not api_key:
                raise ConfigError("MODKIE_API_KEY", "is not set: put your ModKie key in .env, or use "
                                  "MODKIE_BASE_URL=sandbox (or --sandbox) to try the bot without one")
            if http is None:
                http = await stack.enter_async_context(
                    httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0),
                                      # keep every pooled connection alive: httpcore compares the *total*
                                      # with max_keepalive (encode/httpcore#1035) and would churn them
                                      limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
                                      headers={"User-Agent": f"imagine-bot/{__version__}"})
                )
            gateway = GatewayClient(http, base_url=base_url, api_key=api_key,
                                    max_download_bytes=settings.max_download_bytes,
                                    request_timeout=settings.MODKIE_TIMEOUT_S)
            model = get_model(settings.MODKIE_MODEL, settings.MODKIE_ASPECT_RATIOS)
            db = open_db(settings.IMAGINE_DB_PATH)
            stack.callback(db.conn.close)
            core = cls(settings, db=db, gateway=gateway, model=model)
            stack.push_async_callback(core.orchestrator.stop)
            yield core

    # ------------------------------------------------------------------ wiring
    def register(self, frontend: FrontEnd) -> None:
        self.orchestrator.register(frontend)

    async def start(self) -> int:
        """Resume in-flight jobs of the registered front ends; returns how many."""
        count = await self.orchestrator.resume()
        if count:
            log.info("resumed %d job(s) left in flight", count)
        return count

    def record_receipt(self, job_id: str, **ids: Any) -> Job:
        """Front ends: note what the platform returned for a delivery (message id, file ids), at once.

        Merged into the job's receipt in one short transaction and handed back as ``Delivered.receipt``
        if the job is delivered again (after a crash or a takeover): see ``FrontEnd``.
        """
        return self.jobs.record_receipt(job_id, **ids)

    # ------------------------------------------------------------------ users
    def parse(self, text: str, defaults: dict[str, str] | None = None) -> ParsedPrompt:
        return parse_imagine(text, self.model, banned_words=self.settings.BANNED_WORDS, defaults=defaults)

    async def imagine(self, requester: UserRef, reply: ReplyTo, text: str, *, dedupe_key: str | None = None,
                      defaults: dict[str, str] | None = None, extra_input: dict[str, Any] | None = None) -> Job:
        """Parse chat text and submit the job. Raises ``ImagineError`` with a message for the user."""
        parsed = self.parse(text, defaults)
        return await self.orchestrator.submit(JobRequest(
            requester=requester, reply=reply, prompt=parsed.prompt, params=parsed.params,
            dedupe_key=dedupe_key, extra_input=extra_input or {},
        ))

    async def reroll(self, requester: UserRef, job_id: str, reply: ReplyTo, *,
                     dedupe_key: str | None = None, extra_input: dict[str, Any] | None = None) -> Job:
        """The same prompt and parameters again, charged again, for whoever pressed the button.

        ``extra_input`` replaces the original's front-end inputs (the channel may differ: nsfw_checker).
        """
        original = self.jobs.get(job_id)
        params = {k: v for k, v in original.params.items() if k in {s.name for s in self.model.inputs}}
        extra = {k: v for k, v in original.params.items() if k not in params}
        extra.update(extra_input or {})
        return await self.orchestrator.submit(JobRequest(
            requester=requester, reply=reply, prompt=original.prompt, params=params,
            dedupe_key=dedupe_key, parent_id=original.id, extra_input=extra,
        ))

    def check_can_submit(self, requester: UserRef) -> None:
        """Raise the refusal an ``imagine`` by this user would meet (job limit, balance), changing nothing."""
        self.orchestrator.precheck(requester)

    def credits(self, requester: UserRef) -> CreditsInfo:
        return CreditsInfo(self.ledger.balance(requester), self.jobs.active(requester.key))

    def is_admin(self, who: UserRef, *, platform_admin: bool = False) -> bool:
        """Admins are listed in ``ADMINS``; a front end may also vouch (Discord's Manage Server)."""
        return platform_admin or who.key in self.admins

    def check_delete(self, who: UserRef, job_id: str, *, platform_admin: bool = False) -> Job:
        """The job, if ``who`` may delete its images (the requester or an admin)."""
        job = self.jobs.find(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", user_message="That image is no longer known to me.")
        if job.requester != who and not self.is_admin(who, platform_admin=platform_admin):
            raise PermissionDenied(f"{who.key} may not delete job {job_id}",
                                   user_message="Only the person who asked for this image, or an admin, can delete it.")
        return job

    def recent_images(self, who: UserRef, limit: int = 5) -> list[Job]:
        return self.jobs.recent(who.key, limit=limit, states=(JobState.DELIVERED,))

    # ------------------------------------------------------------------ admins
    def _require_admin(self, actor: UserRef, platform_admin: bool) -> None:
        if not self.is_admin(actor, platform_admin=platform_admin):
            raise PermissionDenied(f"{actor.key} is not an admin")

    def admin_grant(self, actor: UserRef, target: UserRef, amount: int, *, platform_admin: bool = False,
                    note: str | None = None) -> Balance:
        self._require_admin(actor, platform_admin)
        if amount == 0:
            raise UserInputError("Grant a number of credits other than 0 (negative to revoke).")
        return self.ledger.grant(target, amount, actor=actor.key, note=note)

    def admin_allowance(self, actor: UserRef, target: UserRef, allowance: int | None, *,
                        platform_admin: bool = False) -> Balance:
        self._require_admin(actor, platform_admin)
        if allowance is not None and allowance < 0:
            raise UserInputError("An allowance cannot be negative.")
        return self.ledger.set_allowance(target, allowance, actor=actor.key)

    def admin_report(self, actor: UserRef, *, platform_admin: bool = False) -> str:
        self._require_admin(actor, platform_admin)
        return self.ledger.report_csv()

    def now(self) -> datetime:
        """The current time (UTC), for messages that mention times."""
        return utcnow()
