"""DiscordService as ``imagine-bot run`` starts it (the fake gateway websocket), and the CLI."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket

import discord
import httpx
import pytest

from imagine_bot.bots.discord import DiscordService
from imagine_bot.bots.discord.cli import (
    INVITE_PERMISSIONS,
    SCOPES,
    add_discord_parsers,
    discord_cmd,
    invite,
    invite_url,
    sync,
)
from imagine_bot.bots.run import run
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import ConfigError
from imagine_bot.core.jobs.model import JobState
from tests.fakes.discord_api import InteractionFactory

from .conftest import ALICE, discord_user

GUILDS_INTENT = 1 << 0


async def test_start_connects_through_the_gateway_syncs_commands_and_answers(fake, discord_settings, sandbox):
    settings = discord_settings()
    async with ImagineCore.open(settings) as core:
        service = DiscordService(core, settings, guild_ready_timeout=0.0, edit_interval=0.1)
        assert core.orchestrator.frontends["discord"] is service.frontend
        try:
            await service.start()
            # IDENTIFY asked for no privileged intent: guilds only
            assert fake.identify is not None and fake.identify["intents"] == GUILDS_INTENT
            # the commands were missing: synced globally, with the catalog's choices
            (put,) = fake.find("PUT", rf"/applications/{fake.app_id}/commands$")
            names = sorted(c["name"] for c in put.json)
            assert names == ["Remix with imagine", "credits", "help", "imagine", "imagine-admin"]
            menu = next(c for c in put.json if c["name"] == "Remix with imagine")
            assert menu["type"] == 3  # a message context menu
            imagine = next(c for c in put.json if c["name"] == "imagine")
            ratio = next(o for o in imagine["options"] if o["name"] == "aspect_ratio")
            assert [c["value"] for c in ratio["choices"]] == list(core.model.input("aspect_ratio").choices)
            assert imagine["contexts"] == [0]  # servers only (DISCORD_ALLOW_DMS is off)

            # an interaction arriving over the gateway runs a command
            factory = InteractionFactory(fake.app_id)
            payload = factory.command("imagine", ALICE, [{"name": "prompt", "type": 3, "value": "a gull"}])
            await fake.dispatch("INTERACTION_CREATE", payload)
            await fake.wait_for("PATCH", rf"/webhooks/\d+/{payload['token']}/messages/@original",
                                where=lambda c: bool(c.files))
            await core.orchestrator.wait_idle()
        finally:
            await core.orchestrator.stop()
            await service.stop()
        await fake.wait_gateway_closed()

    # a second start finds the commands up to date and does not sync again
    async with ImagineCore.open(settings) as core:
        service = DiscordService(core, settings, guild_ready_timeout=0.0)
        try:
            await service.start()
        finally:
            await service.stop()
    assert len(fake.find("PUT", r"/commands$")) == 1
    assert len(fake.find("GET", r"/commands$")) == 2


async def test_a_refused_token_is_a_configuration_error(fake, discord_settings):
    settings = discord_settings(DISCORD_TOKEN="not-the-token")
    async with ImagineCore.open(settings) as core:
        service = DiscordService(core, settings, guild_ready_timeout=0.0)
        with pytest.raises(ConfigError) as caught:
            await service.start()
    assert caught.value.setting == "DISCORD_TOKEN"


@pytest.mark.parametrize(("setting", "value"), [("DISCORD_TOKEN", ""), ("DISCORD_GUILD_IDS", "my-server")])
async def test_bad_settings_fail_at_start_naming_the_setting(discord_settings, setting, value):
    settings = discord_settings(**{setting: value})
    async with ImagineCore.open(settings) as core:
        with pytest.raises(ConfigError) as caught:
            DiscordService(core, settings)
    assert caught.value.setting == setting


async def test_cli_sync_to_guilds_and_invite_url_from_the_token(fake, discord_settings, capsys):
    settings = discord_settings(DISCORD_GUILD_IDS="123456789012345678, 223456789012345678")
    assert await sync(settings) == 0
    for guild in ("123456789012345678", "223456789012345678"):
        (put,) = fake.find("PUT", rf"/applications/{fake.app_id}/guilds/{guild}/commands")
        assert {c["name"] for c in put.json} == {"imagine", "credits", "help", "imagine-admin", "Remix with imagine"}
    assert fake.find("PUT", rf"/applications/{fake.app_id}/commands$") == []
    assert "synced 5 commands in server 123456789012345678" in capsys.readouterr().out

    assert await invite_url(settings) == 0
    out = capsys.readouterr().out
    assert f"client_id={fake.app_id}" in out
    assert "scope=bot+applications.commands" in out and "permissions=117760" in out


def test_cli_invite_url_with_client_id_needs_no_network(capsys, make_settings):
    parser = argparse.ArgumentParser()
    add_discord_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["discord", "invite-url", "--client-id", "424242"])
    assert args.func is discord_cmd
    assert discord_cmd(args, make_settings()) == 0
    out = capsys.readouterr().out
    assert "permissions: 117760 (View Channel, Send Messages, Embed Links, Attach Files, Read Message History)" in out
    assert ("https://discord.com/oauth2/authorize?client_id=424242&scope=bot+applications.commands"
            "&permissions=117760") in out
    expected = discord.Permissions(view_channel=True, send_messages=True, embed_links=True, attach_files=True,
                                   read_message_history=True)
    assert INVITE_PERMISSIONS == expected.value == 117760
    assert invite("424242") == discord.utils.oauth_url(424242, permissions=expected, scopes=SCOPES)


@contextlib.asynccontextmanager
async def running(settings, *, within: float = 20):
    """``imagine-bot run --only discord`` in the background, until the block ends (then it must exit 0);
    gives the web server's port."""
    stop, started = asyncio.Event(), asyncio.Event()
    ports: list[int] = []

    def ready(port: int) -> None:
        ports.append(port)
        started.set()

    runner = asyncio.create_task(run(settings, only=["discord"], stop=stop, ready=ready))
    try:
        await asyncio.wait_for(started.wait(), within)
        yield ports[0]
    finally:
        stop.set()
        assert await asyncio.wait_for(runner, 20) == 0


async def imagine_and_wait(fake, prompt: str) -> None:
    payload = InteractionFactory(fake.app_id).command("imagine", ALICE,
                                                      [{"name": "prompt", "type": 3, "value": prompt}])
    await fake.dispatch("INTERACTION_CREATE", payload)
    await fake.wait_for("PATCH", rf"/webhooks/\d+/{payload['token']}/messages/@original", where=lambda c: bool(c.files))


async def test_imagine_bot_run_only_discord(fake, discord_settings, caplog):
    caplog.set_level(logging.INFO, logger="imagine_bot.bots.run")
    # Slack is configured too (at a closed port: were it started, it would fail), but --only discord
    settings = discord_settings(SLACK_BOT_TOKEN="xoxb-" + "1" * 40, SLACK_SIGNING_SECRET="s" * 32,
                                SLACK_API_URL=f"http://127.0.0.1:{free_port()}/api/")
    async with running(settings) as port:
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"http://127.0.0.1:{port}/healthz")).json()
        assert health["discord"]["ready"] is True and "slack" not in health
        await imagine_and_wait(fake, "a harbour at night")
    await fake.wait_gateway_closed()
    assert "imagine-bot running: discord; 0 job(s) resumed" in caplog.text
    # the image was delivered and charged once
    async with ImagineCore.open(settings) as core:
        (job,) = core.jobs.recent(discord_user(ALICE).key)
        assert job.state is JobState.DELIVERED
        assert core.ledger.balance(discord_user(ALICE)).balance == 180 - 18 and core.ledger.verify() == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_imagine_bot_run_registers_the_account_webhook(fake, discord_settings, sandbox, caplog):
    port = free_port()
    settings = discord_settings(PUBLIC_URL=f"http://127.0.0.1:{port}", HTTP_PORT=port,
                                MODKIE_WEBHOOK_SECRET="whsec-run-test")
    caplog.set_level(logging.INFO, logger="imagine_bot.core.gateway.webhooks")
    async with running(settings):
        assert sandbox.account_webhook == (f"http://127.0.0.1:{port}/callbacks/modkie", "whsec-run-test")
        assert "registered" in caplog.text and "whsec-run-test" not in caplog.text
        await imagine_and_wait(fake, "a signed harbour")
    # delivered on the signed account webhook alone: no recordInfo at all
    assert sandbox.requests["webhook"] == 1 and sandbox.requests["recordInfo"] == 0
    # a refused registration is a warning: the bot starts all the same
    sandbox.inject("webhooks", status=500, times=10)
    async with running(settings, within=30):
        assert "refused the account webhook" in caplog.text
