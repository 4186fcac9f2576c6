"""``imagine-bot doctor``, the Slack part.

One workspace (``SLACK_BOT_TOKEN``): the bot token works, its scopes cover the manifest's, and a way in
(Socket Mode token or signing secret) is configured.

Many workspaces (``SLACK_CLIENT_ID``): the settings distributed mode needs; the client id and secret,
tried on ``oauth.v2.access`` with a code that cannot exist (Slack answers ``invalid_code`` only once the
app's credentials passed, and ``bad_redirect_uri`` for a redirect URL the app does not list); the
redirect URL under ``PUBLIC_URL`` and the install page; ``SLACK_TOKEN_KEY``; and the installed workspaces,
each token tried with ``auth.test`` (read from the database without changing it; never refreshed here).
"""

from __future__ import annotations

import httpx

from imagine_bot.bots.slack import manifest
from imagine_bot.bots.slack.installs import PLATFORM
from imagine_bot.bots.slack.service import INSTALL_PATH, REDIRECT_PATH, check_distributed, distributed
from imagine_bot.core.errors import ConfigError
from imagine_bot.core.ops.doctor import Check, fail, ok, warn
from imagine_bot.core.settings import Settings
from imagine_bot.core.storage.base import InstallationStore
from imagine_bot.core.storage.installations import InstalledPlace
from imagine_bot.core.storage.secretbox import MAKE_KEY, SecretBox
from imagine_bot.core.storage.sqlite import SqliteStores

#: oauth.v2.access answers that mean the app's client id and secret were accepted (only the code is wrong)
CODE_REFUSED = frozenset({"invalid_code", "invalid_grant", "code_already_used", "code_expired"})
#: installed workspaces whose token the doctor tries (the rest are listed only)
TRIED = 20

REINSTALL = ("add them under OAuth & Permissions -> Bot Token Scopes (or recreate the app from "
             "bots/slack/manifest.yml), reinstall the app to the workspace and copy the new xoxb- token")


#: scopes the bot works without: reading its own earlier posts back (a post whose answer was lost)
HISTORY = frozenset({"channels:history", "groups:history", "im:history", "mpim:history"})


def manifest_scopes() -> list[str]:
    """The bot scopes ``bots/slack/manifest.yml`` asks for."""
    return manifest.bot_scopes()


async def slack_checks(settings: Settings, http: httpx.AsyncClient) -> list[Check]:
    if distributed(settings):
        return await distributed_checks(settings, http)
    if settings.SLACK_BOT_TOKEN is None:
        return []
    token = settings.SLACK_BOT_TOKEN.get_secret_value()
    url = settings.SLACK_API_URL.rstrip("/") + "/auth.test"
    try:
        response = await http.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return [fail("Slack", f"auth.test did not answer ({type(exc).__name__})",
                     f"check SLACK_API_URL ({settings.SLACK_API_URL}) and that this machine reaches Slack")]
    if not body.get("ok"):
        return [fail("Slack", f"auth.test refused the bot token ({body.get('error', 'unknown error')})",
                     "copy the Bot User OAuth Token (xoxb-...) from OAuth & Permissions into SLACK_BOT_TOKEN")]
    checks = [ok("Slack", f"auth.test: @{body.get('user')} in {body.get('team')} ({body.get('team_id')})")]
    header = response.headers.get("x-oauth-scopes")
    wanted = manifest_scopes()
    if header is None:
        checks.append(warn("Slack scopes", "Slack did not say which scopes the token has",
                           f"make sure the app has these bot scopes: {', '.join(wanted)}"))
    else:
        have = {s.strip() for s in header.split(",") if s.strip()}
        missing = [s for s in wanted if s not in have]
        needed = [s for s in missing if s not in HISTORY]
        if needed:
            checks.append(fail("Slack scopes", f"the token lacks {', '.join(missing)}", REINSTALL))
        elif missing:  # the bot works; only a post whose answer Slack lost may show twice (bots/slack/posts.py)
            checks.append(warn("Slack scopes", f"the token lacks {', '.join(missing)}: a post whose answer is lost "
                                               "on the way back may be posted again", REINSTALL))
        else:
            checks.append(ok("Slack scopes", f"{', '.join(wanted)} granted"))
    if settings.SLACK_APP_TOKEN is not None:
        if settings.SLACK_APP_TOKEN.get_secret_value().startswith("xapp-"):
            checks.append(ok("Slack mode", "Socket Mode (SLACK_APP_TOKEN is set)"))
        else:
            checks.append(fail("Slack mode", "SLACK_APP_TOKEN is not an app-level token (xapp-...)",
                               "Basic Information -> App-Level Tokens: make one with connections:write"))
    elif settings.SLACK_SIGNING_SECRET is not None:
        where = f"{settings.PUBLIC_URL}/slack/events" if settings.PUBLIC_URL else "PUBLIC_URL/slack/events"
        checks.append(ok("Slack mode", f"HTTP mode: Slack posts to {where}"))
    else:
        checks.append(fail("Slack mode", "neither SLACK_APP_TOKEN nor SLACK_SIGNING_SECRET is set",
                           "set SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET and PUBLIC_URL (HTTP mode)"))
    return checks


# ---------------------------------------------------------------------- many workspaces
async def distributed_checks(settings: Settings, http: httpx.AsyncClient) -> list[Check]:
    try:
        check_distributed(settings)
    except ConfigError as error:
        return [fail("Slack", f"distributed mode: {error.admin_message}",
                     "see docs/slack.md, Many workspaces: it lists the settings distributed mode needs")]
    checks = [ok("Slack mode", "distributed: every workspace that installs the app (HTTP mode)")]
    checks += await _credentials(settings, http)
    checks += await _install_page(settings, http)
    key = settings.SLACK_TOKEN_KEY.get_secret_value() if settings.SLACK_TOKEN_KEY else None
    try:
        box = SecretBox(key, setting="SLACK_TOKEN_KEY")
    except ConfigError as error:
        return [*checks, fail("Slack tokens", error.admin_message, f"make a key with {MAKE_KEY}")]
    if box.sealing:
        checks.append(ok("Slack tokens", "the workspaces' tokens are encrypted in the database (SLACK_TOKEN_KEY)"))
    else:
        checks.append(warn("Slack tokens", "SLACK_TOKEN_KEY is not set: the workspaces' bot tokens are stored "
                           "unencrypted in the database", f"make a key with {MAKE_KEY}, set it as SLACK_TOKEN_KEY "
                           "(tokens stored before are encrypted at the next start)"))
    return checks + await _workspaces(settings, http, box)


async def _oauth_access(settings: Settings, http: httpx.AsyncClient, redirect: str) -> str:
    """The error ``oauth.v2.access`` gives a code that cannot exist (or why it did not answer)."""
    secret = settings.SLACK_CLIENT_SECRET.get_secret_value() if settings.SLACK_CLIENT_SECRET else ""
    try:
        response = await http.post(settings.SLACK_API_URL.rstrip("/") + "/oauth.v2.access",
                                   auth=(str(settings.SLACK_CLIENT_ID).strip(), secret),
                                   data={"code": "imagine-bot-doctor", "redirect_uri": redirect}, timeout=10)
        return str(response.json().get("error") or "ok")
    except (httpx.HTTPError, ValueError) as exc:
        return f"no answer ({type(exc).__name__})"


async def _credentials(settings: Settings, http: httpx.AsyncClient) -> list[Check]:
    redirect = f"{settings.PUBLIC_URL}{REDIRECT_PATH}"
    error = await _oauth_access(settings, http, redirect)
    if error == "invalid_client_id":
        return [fail("Slack app", "Slack does not know SLACK_CLIENT_ID",
                     "copy the Client ID from your Slack app's Basic Information into SLACK_CLIENT_ID")]
    if error == "bad_client_secret":
        return [fail("Slack app", "Slack refused SLACK_CLIENT_SECRET",
                     "copy the Client Secret from your Slack app's Basic Information into SLACK_CLIENT_SECRET")]
    if error.startswith("no answer"):
        return [fail("Slack app", f"oauth.v2.access: {error}",
                     f"check SLACK_API_URL ({settings.SLACK_API_URL}) and that this machine reaches Slack")]
    checks = [ok("Slack app", f"client id {settings.SLACK_CLIENT_ID} and its secret accepted by oauth.v2.access")
              if error in CODE_REFUSED else warn("Slack app", f"oauth.v2.access answered {error}",
                                                "check SLACK_CLIENT_ID and SLACK_CLIENT_SECRET")]
    if error == "bad_redirect_uri":
        checks.append(fail("Slack redirect URL", f"{redirect} is not one of the app's Redirect URLs",
                           f"add {redirect} under OAuth & Permissions -> Redirect URLs (manifest-distributed.yml "
                           "has it), or fix PUBLIC_URL"))
    else:
        checks.append(ok("Slack redirect URL", f"{redirect} (listed under OAuth & Permissions -> Redirect URLs)"))
    return checks


async def _install_page(settings: Settings, http: httpx.AsyncClient) -> list[Check]:
    url = f"{settings.PUBLIC_URL}{INSTALL_PATH}"
    try:
        response = await http.get(url, timeout=10)
        answered = response.status_code == 200 and "oauth/v2/authorize" in response.text
        detail = f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        answered, detail = False, type(exc).__name__
    if answered:
        return [ok("Slack install page", f"{url}: workspace admins add the app there (\"Add to Slack\")")]
    return [warn("Slack install page", f"{url} does not answer from this machine ({detail})",
                 f"start `imagine-bot run` in distributed mode and route {settings.PUBLIC_URL} to it")]


async def _workspaces(settings: Settings, http: httpx.AsyncClient, box: SecretBox) -> list[Check]:
    with SqliteStores.read_only(settings) as stores:  # no migration, no lock
        places = stores.installed_places(PLATFORM) if stores is not None else []
        if stores is None or not places:
            return [warn("Slack workspaces", "not installed in any workspace yet",
                         f"a workspace admin opens {settings.PUBLIC_URL}{INSTALL_PATH} and allows the app")]
        shown = ", ".join(f"{p.name or '?'} ({p.org + ', whole organisation' if p.org_wide else p.workspace})"
                          for p in places)
        checks = [ok("Slack workspaces", f"installed in {len(places)}: {shown}")]
        plain = [p for p in places if not p.sealed]
        if plain and box.sealing:
            checks.append(warn("Slack tokens", f"{len(plain)} installation(s) stored before SLACK_TOKEN_KEY was set "
                               "are unencrypted", "they are encrypted at the next start of the bot"))
        installations = stores.installations(PLATFORM, box)
        for place in places[:TRIED]:
            checks.append(await _try_token(settings, http, installations, place))
        return checks


async def _try_token(settings: Settings, http: httpx.AsyncClient, installations: InstallationStore,
                     place: InstalledPlace) -> Check:
    where = place.org if place.org_wide else place.workspace
    name = f"Slack {place.name or where}"
    try:
        row = installations.latest(org=place.org, workspace=place.workspace, with_token="bot_token")
    except ConfigError as error:
        return fail(name, error.admin_message, "set SLACK_TOKEN_KEY to the key the bot stored the tokens with")
    if row is None:
        return warn(name, "no bot token stored", f"reinstall the app there ({settings.PUBLIC_URL}{INSTALL_PATH})")
    try:
        response = await http.post(settings.SLACK_API_URL.rstrip("/") + "/auth.test", timeout=10,
                                   headers={"Authorization": f"Bearer {row.tokens['bot_token']}"})
        refused = response.json().get("error")
    except (httpx.HTTPError, ValueError) as exc:
        return warn(name, f"auth.test did not answer ({type(exc).__name__})")
    if refused is None:
        return ok(name, f"{where}: its bot token works")
    if refused == "token_expired" and row.tokens.get("bot_refresh_token"):
        return ok(name, f"{where}: its bot token expired; the bot refreshes it at the next use")
    return fail(name, f"{where}: Slack refused its bot token ({refused})",
                f"a workspace admin reinstalls the app at {settings.PUBLIC_URL}{INSTALL_PATH}")
