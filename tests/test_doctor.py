"""``imagine-bot doctor`` against the fakes: all green, then one failure of each kind, each with its fix."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from imagine_bot.bots.cli.doctor import run_checks
from imagine_bot.bots.cli.main import main
from imagine_bot.bots.discord.doctor import expected_commands
from imagine_bot.bots.slack.doctor import manifest_scopes
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.ops.doctor import Check, Status, exit_code, render
from imagine_bot.core.settings import Settings, load_settings
from imagine_bot.core.web.server import build_web_app, start_web
from tests.conftest import TEST_API_KEY
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.slack_api import FakeSlackAPI

ROOT = Path(__file__).resolve().parents[1]
ALL = 0x400 | 0x800 | 0x4000 | 0x8000 | 0x10000



@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeSlackAPI, FakeDiscord]]:
    async with FakeSlackAPI() as slack, FakeDiscord() as discord:
        slack.scopes = manifest_scopes()  # installed from the manifest, as the README says
        discord.guilds = ("900000000000000001",)
        discord.guild_details["900000000000000001"] = {"name": "Art Club", "permissions": ALL}
        yield slack, discord


@pytest.fixture
async def install(make_sandbox, make_settings, fakes, tmp_path) -> AsyncIterator[Callable[..., Settings]]:
    """A healthy install: a running bot (web server on PUBLIC_URL), Slack and Discord fakes, commands synced."""
    slack, discord = fakes
    gateway = await make_sandbox(api_key=TEST_API_KEY)
    base = make_settings(MODKIE_BASE_URL=gateway.base_url)
    async with ImagineCore.open(base) as core:
        runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)

        def make(**overrides: Any) -> Settings:
            return make_settings(**{
                "MODKIE_BASE_URL": gateway.base_url, "PUBLIC_URL": f"http://127.0.0.1:{port}",
                "MODKIE_WEBHOOK_SECRET": "whsec-doctor",
                "SLACK_BOT_TOKEN": slack.bot_token, "SLACK_APP_TOKEN": slack.app_token,
                "SLACK_API_URL": slack.api_url,
                "DISCORD_TOKEN": discord.token, "DISCORD_API_BASE": discord.api_base, **overrides})

        make.gateway = gateway  # type: ignore[attr-defined]
        discord.commands[None] = [{"name": n} for n in expected_commands(make())]
        try:
            yield make
        finally:
            await runner.cleanup()


def by_name(checks: list[Check]) -> dict[str, list[Check]]:
    found: dict[str, list[Check]] = {}
    for check in checks:
        found.setdefault(check.name, []).append(check)
    return found


def failures(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status is Status.FAIL]


def only_failure(checks: list[Check], name: str) -> Check:
    failed = failures(checks)
    assert [c.name for c in failed] == [name], render(checks)
    assert failed[0].fix, "every failure says how to fix it"
    return failed[0]


async def test_a_healthy_install_passes(install):
    checks = await run_checks(install())
    text = render(checks)
    assert failures(checks) == [], text
    assert exit_code(checks) == 0
    names = by_name(checks)
    for expected in ("settings", "database", "migrations", "spool", "gateway", "model", "Slack", "Slack scopes",
                     "Slack mode", "Discord", "Discord application", "Discord commands", "Discord permissions",
                     "/healthz", "callbacks", "account webhook"):
        assert expected in names, f"{expected} missing:\n{text}"
    assert "balance 100000 credits" in names["gateway"][0].detail
    assert "Art Club" in names["Discord permissions"][0].detail
    # an http:// PUBLIC_URL on loopback is only a warning: fine for local testing
    # the account webhook was registered with the gateway, as `imagine-bot run` does
    assert names["account webhook"][0].status is Status.PASS
    assert install.gateway.account_webhook == (install().callback_url, "whsec-doctor")
    [public] = names["PUBLIC_URL"]
    assert public.status is Status.WARN and "https" in (public.fix or "")


async def test_cli_prints_the_checklist_and_exits_0(install, monkeypatch, capsys):
    settings = install()
    for name in ("MODKIE_BASE_URL", "PUBLIC_URL", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_API_URL",
                 "DISCORD_TOKEN", "DISCORD_API_BASE", "IMAGINE_DB_PATH"):
        value = getattr(settings, name)
        monkeypatch.setenv(name, value.get_secret_value() if hasattr(value, "get_secret_value") else str(value))
    monkeypatch.setenv("MODKIE_API_KEY", TEST_API_KEY)
    assert await asyncio.to_thread(main, ["doctor"]) == 0
    out = capsys.readouterr().out
    assert "[ ok ] Slack scopes" in out and "0 failure(s)" in out

    monkeypatch.setenv("MODKIE_API_KEY", "mk-wrong")
    assert await asyncio.to_thread(main, ["doctor"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] gateway" in out and "fix: copy the API key again" in out


def test_a_bad_setting_is_a_failure_with_its_fix(monkeypatch, capsys):
    monkeypatch.setenv("CREDITS_PERIOD", "fortnight")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] settings: CREDITS_PERIOD" in out and "fix: fix that line in .env" in out


async def test_database_failures(install, tmp_path):
    garbage = tmp_path / "not-a-db.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    check = only_failure(await run_checks(install(IMAGINE_DB_PATH=garbage)), "database")
    assert "not a writable SQLite database" in check.detail and "permissions" in (check.fix or "")

    settings = install()
    conn = sqlite3.connect(settings.IMAGINE_DB_PATH)
    conn.execute("INSERT INTO _migrations VALUES ('m999_from_the_future', '2030-01-01')")
    conn.commit()
    conn.close()
    check = only_failure(await run_checks(settings), "migrations")
    assert "m999_from_the_future" in check.detail and "upgrade" in (check.fix or "")


async def test_pending_migrations_are_a_warning(install, tmp_path):
    settings = install()
    conn = sqlite3.connect(settings.IMAGINE_DB_PATH)
    conn.execute("DELETE FROM _migrations WHERE name = 'm002_jobs'")
    conn.commit()
    conn.close()
    checks = await run_checks(settings)
    assert failures(checks) == [], render(checks)
    [migrations] = by_name(checks)["migrations"]
    assert migrations.status is Status.WARN and "m002_jobs" in migrations.detail


async def test_spool_not_writable(install):
    settings = install()
    settings.spool_dir.parent.mkdir(parents=True, exist_ok=True)
    settings.spool_dir.write_text("a file where the spool folder should be")
    check = only_failure(await run_checks(settings), "spool")
    assert str(settings.spool_dir) in check.fix


async def test_gateway_key_refused(install):
    check = only_failure(await run_checks(install(MODKIE_API_KEY="mk-not-the-key")), "gateway")
    assert "refused the key" in check.detail and "MODKIE_API_KEY" in check.fix


async def test_model_not_offered(install):
    body = {"code": 200, "msg": "success", "data": [{"model": "flux/dev", "creditCost": 9}]}
    install.gateway.inject("models", body=json.dumps(body).encode())
    check = only_failure(await run_checks(install()), "model")
    assert "seedream/4.5-text-to-image is not in" in check.detail and "flux/dev" in check.fix


async def test_slack_token_refused(install):
    check = only_failure(await run_checks(install(SLACK_BOT_TOKEN="xoxb-wrong")), "Slack")
    assert "invalid_auth" in check.detail and "SLACK_BOT_TOKEN" in check.fix


async def test_slack_missing_scope_is_named(install, fakes):
    slack, _ = fakes
    assert "files:write" in slack.scopes
    slack.scopes = [s for s in slack.scopes if s != "files:write"]
    check = only_failure(await run_checks(install()), "Slack scopes")
    assert check.detail == "the token lacks files:write" and "reinstall" in check.fix


async def test_an_install_from_the_old_manifest_is_told_the_channel_check_scopes(install, fakes):
    """Without them the bot cannot tell, before a job is taken, whether it may post where it was asked."""
    slack, _ = fakes
    read = ("channels:read", "groups:read", "im:read", "mpim:read")
    slack.scopes = [s for s in slack.scopes if s not in read]
    check = only_failure(await run_checks(install()), "Slack scopes")
    assert check.detail == "the token lacks channels:read, groups:read, im:read, mpim:read"


async def test_an_install_without_the_history_scopes_is_warned_not_failed(install, fakes):
    """They only let the bot find its own post whose answer was lost: the bot works without them."""
    slack, _ = fakes
    history = ("channels:history", "groups:history", "im:history", "mpim:history")
    assert set(history) <= set(manifest_scopes())
    slack.scopes = [s for s in slack.scopes if s not in history]
    checks = [c for c in await run_checks(install()) if c.name == "Slack scopes"]
    assert [c.status for c in checks] == [Status.WARN]
    assert checks[0].detail.startswith("the token lacks channels:history, groups:history, im:history, mpim:history")
    assert exit_code(checks) == 0


async def test_slack_without_a_way_in(install):
    check = only_failure(await run_checks(install(SLACK_APP_TOKEN="")), "Slack mode")
    assert "SLACK_SIGNING_SECRET" in check.fix


async def test_discord_token_refused(install):
    check = only_failure(await run_checks(install(DISCORD_TOKEN="not-the-token")), "Discord")
    assert "401" in check.detail and "Reset Token" in check.fix


async def test_discord_commands_not_registered(install, fakes):
    _, discord = fakes
    discord.commands[None] = [{"name": "imagine"}]
    check = only_failure(await run_checks(install()), "Discord commands")
    assert "/credits" in check.detail and "imagine-bot discord sync" in check.fix


async def test_discord_server_missing_permissions(install, fakes):
    _, discord = fakes
    discord.guilds += ("900000000000000002",)
    discord.guild_details["900000000000000002"] = {"name": "Photo Lab", "permissions": 0x400 | 0x800}
    check = only_failure(await run_checks(install()), "Discord permissions")
    assert check.detail == "server Photo Lab (900000000000000002) lacks Embed Links, Attach Files"
    assert "invite-url" in check.fix


async def test_public_url_not_answering(install):
    check = only_failure(await run_checks(install(PUBLIC_URL="http://127.0.0.1:9")), "/healthz")
    assert "imagine-bot run" in check.fix


async def test_unsigned_callbacks_are_a_warning(install):
    checks = await run_checks(install(MODKIE_WEBHOOK_SECRET=""))
    assert failures(checks) == []
    [callbacks] = by_name(checks)["callbacks"]
    assert callbacks.status is Status.WARN and "MODKIE_WEBHOOK_SECRET" in (callbacks.fix or "")


async def test_a_refused_account_webhook_is_a_warning(install):
    install.gateway.inject("webhooks", code=401, msg="You do not have access permissions")
    checks = await run_checks(install())
    assert failures(checks) == []
    [webhook] = by_name(checks)["account webhook"]
    assert webhook.status is Status.WARN and "refused" in webhook.detail and "recordInfo" in (webhook.fix or "")
    [webhook] = by_name(await run_checks(install(MODKIE_WEBHOOK_SECRET="")))["account webhook"]
    assert webhook.status is Status.WARN and "MODKIE_WEBHOOK_SECRET" in (webhook.fix or "")


def test_render_marks_and_fix_lines():
    from imagine_bot.core.ops.doctor import fail, ok, warn

    text = render([ok("a", "fine"), warn("b", "hmm", "do b"), fail("c", "broken", "do c")])
    assert text.splitlines() == ["[ ok ] a: fine", "[warn] b: hmm", "       fix: do b", "[FAIL] c: broken",
                                 "       fix: do c", "1 passed, 1 warning(s), 1 failure(s)"]


def test_a_copied_env_example_with_a_key_uses_the_real_gateway(tmp_path):
    """Follow the Slack or Discord steps: `cp .env.example .env`, add MODKIE_API_KEY. That is the real
    gateway; the sandbox is only what --sandbox or an explicit MODKIE_BASE_URL=sandbox asks for."""
    example = (ROOT / ".env.example").read_text()
    (tmp_path / ".env").write_text(example.replace("\nMODKIE_API_KEY=\n", "\nMODKIE_API_KEY=mk-live-0123456789\n"))
    settings = load_settings()  # reads ./.env, as every command does
    assert settings.MODKIE_API_KEY is not None and not settings.sandbox
    assert settings.MODKIE_BASE_URL == "https://modkie.com" and settings.gateway_name == "https://modkie.com"
    assert load_settings(MODKIE_BASE_URL="sandbox").sandbox  # --sandbox, for one command
    (tmp_path / ".env").write_text(example)
    assert not load_settings().sandbox and not load_settings().gateway_usable  # no key: commands say so


async def test_doctor_names_the_gateway_and_warns_when_the_sandbox_hides_a_key(install):
    [real] = by_name(await run_checks(install()))["gateway"]
    assert real.status is Status.PASS and real.detail.startswith(f"{install.gateway.base_url}: key accepted")
    [hidden] = by_name(await run_checks(install(MODKIE_BASE_URL="sandbox")))["gateway"]
    assert hidden.status is Status.WARN and "embedded sandbox" in hidden.detail
    assert "MODKIE_API_KEY is set" in hidden.detail and "MODKIE_BASE_URL=sandbox" in (hidden.fix or "")
    [plain] = by_name(await run_checks(install(MODKIE_BASE_URL="sandbox", MODKIE_API_KEY="")))["gateway"]
    assert plain.status is Status.PASS and "embedded sandbox" in plain.detail
    [missing] = by_name(await run_checks(install(MODKIE_BASE_URL="https://modkie.com", MODKIE_API_KEY="")))["gateway"]
    assert missing.status is Status.FAIL and missing.detail.startswith("https://modkie.com: MODKIE_API_KEY")


def test_doctor_says_where_the_settings_came_from(tmp_path, capsys):
    main(["doctor"])  # no .env here (the tests run in a temporary folder)
    out = capsys.readouterr().out
    assert f"[ ok ] settings: parsed (the environment only: there is no .env in {tmp_path})" in out
    (tmp_path / ".env").write_text("CREDITS_ALLOWANCE=90\n")
    main(["doctor"])
    assert f"[ ok ] settings: parsed (the environment, then {tmp_path / '.env'})" in capsys.readouterr().out
