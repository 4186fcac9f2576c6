"""``imagine-bot doctor``: check an install against the real services, one line per check.

Each check is a pass, a warning or a failure; a failure carries the line that says how to fix it. Only
failures make the exit status non-zero. The checks here are the platform-neutral ones (settings,
database, spool, gateway, ``PUBLIC_URL``); the Slack and Discord front ends add their own
(``bots/slack/doctor.py``, ``bots/discord/doctor.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from imagine_bot.core.errors import GatewayAuthError, GatewayError, GatewayOutOfCredits
from imagine_bot.core.gateway import GatewayClient
from imagine_bot.core.gateway.webhooks import WebhookState, register_account_webhook
from imagine_bot.core.media.netaddr import is_loopback_host
from imagine_bot.core.settings import Settings
from imagine_bot.core.storage.db import MIGRATIONS, DatabaseUnopenable, DatabaseUnwritable, inspect_database
from imagine_bot.core.storage.url import DatabaseUrl

#: below this gateway balance the doctor warns (about 20 images of 18 credits)
LOW_BALANCE = 360


class Status(StrEnum):
    PASS = "pass"
    WARN = "warning"
    FAIL = "failure"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the checklist. ``fix`` says what to do when it is not a pass."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.PASS, detail)


def warn(name: str, detail: str, fix: str | None = None) -> Check:
    return Check(name, Status.WARN, detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.FAIL, detail, fix)


_MARKS = {Status.PASS: "[ ok ]", Status.WARN: "[warn]", Status.FAIL: "[FAIL]"}


def render(checks: Iterable[Check]) -> str:
    """The checklist as text, a fix line under each warning or failure that has one."""
    lines: list[str] = []
    counts = {status: 0 for status in Status}
    for check in checks:
        counts[check.status] += 1
        lines.append(f"{_MARKS[check.status]} {check.name}: {check.detail}")
        if check.fix and check.status is not Status.PASS:
            lines.append(f"       fix: {check.fix}")
    lines.append(f"{counts[Status.PASS]} passed, {counts[Status.WARN]} warning(s), "
                 f"{counts[Status.FAIL]} failure(s)")
    return "\n".join(lines)


def exit_code(checks: Iterable[Check]) -> int:
    return 1 if any(c.status is Status.FAIL for c in checks) else 0


# ---------------------------------------------------------------------- storage
def check_database(path: Path) -> list[Check]:
    """Opens, is writable, and its migrations are the ones this version knows (without migrating it)."""
    name = "database"
    if str(path) != ":memory:" and not path.exists():
        parent = path.parent if str(path.parent) else Path(".")
        if _write_probe(parent) is not None:
            return [fail(name, f"{path} does not exist and {parent} is not writable",
                         f"create {parent} and let the bot's user write to it, or set IMAGINE_DB_PATH")]
        return [warn(name, f"{path} does not exist yet; it is created at the first start")]
    try:
        applied = inspect_database(path)
    except DatabaseUnopenable as exc:
        return [fail(name, f"{path} cannot be opened for writing ({exc})",
                     f"let the bot's user read and write {path} and its folder, or set IMAGINE_DB_PATH")]
    except DatabaseUnwritable as exc:
        return [fail(name, f"{path} is not a writable SQLite database ({exc})",
                     f"check the file's permissions and that {path} is the bot's database")]
    return [ok(name, f"{path} opens and is writable"),
            check_migrations([n for n, _ in MIGRATIONS], applied,
                             "they are applied at the next start (any imagine-bot command that opens the database)")]


def check_migrations(known: list[str], applied: set[str], when_pending: str) -> Check:
    """The migrations this version knows against those the database has applied (read, never applied)."""
    pending = [n for n in known if n not in applied]
    unknown = sorted(applied - set(known))
    if unknown:
        return fail("migrations", f"the database has migrations this version does not know: {', '.join(unknown)}",
                    "run the imagine-bot version that wrote this database, or upgrade this one")
    if pending:
        return warn("migrations", f"{len(pending)} pending ({', '.join(pending)})", when_pending)
    return ok("migrations", f"all {len(known)} applied")


def check_storage(settings: Settings) -> list[Check]:
    """The database the settings name: PostgreSQL at ``DATABASE_URL``, else the SQLite file."""
    url = settings.database_url
    return check_database(settings.IMAGINE_DB_PATH) if url is None else check_postgres(url)


def check_postgres(url: DatabaseUrl) -> list[Check]:
    """Reachable with these credentials, a server version the migrations are written for, writable (not a
    standby), and the migrations this version knows (read, never applied). The password is never shown."""
    name = "database"
    try:
        from imagine_bot.core.storage import postgres
    except ImportError as exc:
        return [fail(name, f"DATABASE_URL is set but {exc.name} is not installed",
                     "pip install 'imagine-bot[postgres]' (the container image has it)")]
    try:
        facts = postgres.inspect_postgres(url)
    except postgres.ServerUnreachable as exc:
        return [fail(name, f"cannot connect to PostgreSQL at {url.host}: {exc}",
                     "check DATABASE_URL (host, port, user, password, database) and that the server accepts "
                     "connections from this host")]
    where = f"PostgreSQL {facts.version} at {url.host}, database {url.dbname} ({url.redacted})"
    if facts.version_num < postgres.MIN_SERVER_VERSION:
        return [fail(name, f"{where}: too old", f"use PostgreSQL {postgres.MIN_SERVER_VERSION // 10000} or later")]
    if facts.read_only:
        return [fail(name, f"{where} is read-only (a standby?)", "point DATABASE_URL at the primary server")]
    return [ok(name, f"{where} is reachable and takes writes"),
            check_migrations([n for n, _ in postgres.MIGRATIONS], facts.applied,
                             "they are applied at the next start, under a lock (any host; the others wait)")]


def check_spool(spool: Path) -> Check:
    error = _write_probe(spool)
    if error is not None:
        return fail("spool", f"{spool} is not writable ({error.strerror or error})",
                    f"let the bot's user write to {spool} (it sits beside IMAGINE_DB_PATH)")
    return ok("spool", f"{spool} is writable")


def _write_probe(folder: Path) -> OSError | None:
    """Create ``folder`` if needed and write a file in it; the error when that fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".doctor-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return exc
    return None


# ---------------------------------------------------------------------- gateway
async def check_gateway(settings: Settings, gateway: GatewayClient | None) -> list[Check]:
    """Always names the gateway in use: its address, or the embedded sandbox (with a warning when a key is set
    too: the images would be placeholders although the operator meant the real service)."""
    name = "gateway"
    if settings.sandbox:
        if settings.MODKIE_API_KEY is not None and settings.MODKIE_API_KEY.get_secret_value():
            return [warn(name, "the embedded sandbox gateway, although MODKIE_API_KEY is set: images are "
                         "placeholders and no real credits are spent",
                         "to use the real gateway, remove MODKIE_BASE_URL=sandbox (from .env or the environment) "
                         "and --sandbox")]
        return [ok(name, "the embedded sandbox gateway (no key, no network, no credits spent)")]
    if gateway is None:
        return [fail(name, f"{settings.MODKIE_BASE_URL}: MODKIE_API_KEY is not set",
                     "put your ModKie API key in .env as MODKIE_API_KEY (or use --sandbox to try the bot without)")]
    checks: list[Check] = []
    try:
        balance = await gateway.credit()
    except GatewayAuthError:
        return [fail(name, f"{gateway.base_url} refused the key (401)",
                     "copy the API key again from your ModKie account into MODKIE_API_KEY")]
    except GatewayOutOfCredits:
        balance = 0
    except GatewayError as exc:
        return [fail(name, f"{gateway.base_url} did not answer the balance request ({exc.code}: "
                     f"{exc.admin_message})", "check MODKIE_BASE_URL and that this machine reaches it")]
    if balance < LOW_BALANCE:
        checks.append(warn(name, f"{gateway.base_url}: key accepted; balance {balance} credits (below {LOW_BALANCE})",
                           "top up the gateway account: jobs fail when it reaches 0"))
    else:
        checks.append(ok(name, f"{gateway.base_url}: key accepted; balance {balance} credits"))
    try:
        models = await gateway.models()
    except GatewayError as exc:
        checks.append(warn("model", f"{settings.MODKIE_MODEL}: the model list did not answer ({exc.code})"))
        return checks
    if settings.MODKIE_MODEL in models:
        cost = models[settings.MODKIE_MODEL]
        checks.append(ok("model", f"{settings.MODKIE_MODEL} is offered" + (f" ({cost} credits)" if cost else "")))
    else:
        offered = ", ".join(sorted(models)[:8]) or "none"
        checks.append(fail("model", f"{settings.MODKIE_MODEL} is not in the gateway's model list",
                           f"set MODKIE_MODEL to a model the gateway offers ({offered})"))
    return checks


# ---------------------------------------------------------------------- the account webhook
async def check_account_webhook(settings: Settings, gateway: GatewayClient | None) -> list[Check]:
    """Register the account webhook, as ``imagine-bot run`` does at start (registering again changes nothing)."""
    name = "account webhook"
    if gateway is None or not settings.PUBLIC_URL:
        return []
    registration = await register_account_webhook(gateway, settings)
    if registration.state is WebhookState.REGISTERED:
        return [ok(name, f"{registration.url} registered with the gateway: signed final webhooks deliver "
                         "with no recordInfo")]
    if registration.state is WebhookState.NOT_CONFIGURED:
        return [warn(name, "not registered: MODKIE_WEBHOOK_SECRET is not set",
                     "set MODKIE_WEBHOOK_SECRET so the gateway signs each finished task and no recordInfo "
                     "is needed to confirm it")]
    return [warn(name, registration.detail, "check that the key may manage webhooks; until then callbacks are "
                 "hints, each confirmed with recordInfo")]


# ---------------------------------------------------------------------- PUBLIC_URL
def _loopback(host: str) -> bool:
    return is_loopback_host(host)


async def check_public_url(settings: Settings, http: httpx.AsyncClient) -> list[Check]:
    name = "PUBLIC_URL"
    url = settings.PUBLIC_URL
    if not url:
        return [ok(name, "not set: jobs are tracked by polling (set it for callbacks and Slack HTTP mode)")]
    checks: list[Check] = []
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "http":
        if _loopback(host):
            checks.append(warn(name, f"{url} is plain http on this machine: fine for testing",
                               "in production use an https address: Slack and Discord call only https"))
        else:
            checks.append(fail(name, f"{url} is plain http", "serve the bot behind https and set PUBLIC_URL "
                               "to the https address (Slack, Discord and the gateway need https)"))
    try:
        response = await http.get(f"{url}/healthz", timeout=10)
        healthy = response.status_code == 200 and response.json().get("ok") is True
        detail = f"HTTP {response.status_code}"
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        healthy, detail = False, type(exc).__name__
    if healthy:
        checks.append(ok("/healthz", f"{url}/healthz answers"))
    else:
        checks.append(fail("/healthz", f"{url}/healthz does not answer from this machine ({detail})",
                           f"start `imagine-bot run` and route {url} to HTTP_HOST:HTTP_PORT "
                           f"({settings.HTTP_HOST}:{settings.HTTP_PORT})"))
    if settings.MODKIE_WEBHOOK_SECRET:
        checks.append(ok("callbacks", f"sent to {settings.callback_url}, signatures verified"))
    else:
        checks.append(warn("callbacks", f"sent to {settings.callback_url} unsigned (each is confirmed "
                           "with recordInfo)", "set MODKIE_WEBHOOK_SECRET to the key in your ModKie webhook "
                           "settings so callbacks are signed"))
    return checks
