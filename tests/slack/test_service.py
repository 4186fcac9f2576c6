"""SlackService wiring: configuration errors, HTTP mode versus Socket Mode, delivery failures."""

from __future__ import annotations

import pytest
from slack_bolt.listener.async_listener import AsyncListener

from imagine_bot.bots.slack import SlackService
from imagine_bot.bots.slack.blocks import ACTION_DELETE
from imagine_bot.bots.slack.handlers import SlashCommands
from imagine_bot.bots.slack.service import EVENTS_PATH, close_socket_handler
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import ConfigError
from imagine_bot.core.jobs.model import JobState
from imagine_bot.core.web.server import build_web_app

from .conftest import APP_TOKEN, TEAM, SlackHarness

U1 = UserRef("slack", TEAM, "U1")


def listener_names(service: SlackService) -> list[str]:
    return sorted(listener.ack_function.__name__ for listener in service.app._async_listeners)


def routes(web_app) -> set[str]:
    return {resource.canonical for resource in web_app.router.resources()}


async def test_without_signing_secret_or_app_token_it_fails_naming_the_setting(slack_settings):
    settings = slack_settings(SLACK_SIGNING_SECRET=None)
    async with ImagineCore.open(settings) as core:
        with pytest.raises(ConfigError) as caught:
            SlackService(core, settings, build_web_app(core))
    assert caught.value.setting == "SLACK_SIGNING_SECRET"
    assert "SLACK_APP_TOKEN" in str(caught.value)


@pytest.mark.parametrize(("setting", "value"), [("SLACK_BOT_TOKEN", "xoxp-user-token"),
                                                ("SLACK_APP_TOKEN", "xoxb-not-an-app-token")])
async def test_wrong_kinds_of_token_fail_naming_the_setting(slack_settings, setting, value):
    settings = slack_settings(**{setting: value})
    async with ImagineCore.open(settings) as core:
        with pytest.raises(ConfigError) as caught:
            SlackService(core, settings, build_web_app(core))
    assert caught.value.setting == setting


async def test_a_revoked_bot_token_fails_at_start(slack_settings, fake_slack):
    settings = slack_settings()
    fake_slack.fail("auth.test", "token_revoked")
    async with ImagineCore.open(settings) as core:
        service = SlackService(core, settings, build_web_app(core))
        try:
            with pytest.raises(ConfigError) as caught:
                await service.start()
        finally:
            await service.stop()
    assert caught.value.setting == "SLACK_BOT_TOKEN"


async def test_socket_mode_is_picked_with_an_app_token_and_registers_the_same_handlers(slack_settings):
    http_settings = slack_settings()
    socket_settings = slack_settings(SLACK_APP_TOKEN=APP_TOKEN, SLACK_SIGNING_SECRET=None)
    async with ImagineCore.open(http_settings) as core:
        http_app, socket_app = build_web_app(core), build_web_app(core)
        http_service = SlackService(core, http_settings, http_app)
        socket_service = SlackService(core, socket_settings, socket_app)
        try:
            assert (http_service.mode, socket_service.mode) == ("http", "socket")
            assert EVENTS_PATH in routes(http_app) and EVENTS_PATH not in routes(socket_app)
            assert "SlashCommands" in _middleware_names(socket_service) & _middleware_names(http_service)
            assert listener_names(socket_service) == listener_names(http_service) == sorted(
                ["on_reroll", "on_delete", "on_home_opened", "on_shortcut", "on_vary", "on_remix",
                 "on_submit", "on_approve", "on_reject", "on_reject_submit"])
            handler = socket_service.socket_handler()  # built, not connected
            try:
                assert handler.app is socket_service.app and handler.app_token == APP_TOKEN
                assert handler.client.web_client is socket_service.client
            finally:
                await close_socket_handler(handler)
            assert core.orchestrator.frontends["slack"] is socket_service.frontend
        finally:
            await http_service.stop()
            await socket_service.stop()


async def test_socket_mode_end_to_end_against_the_fake(slack_settings, fake_slack):
    settings = slack_settings(SLACK_APP_TOKEN=APP_TOKEN, SLACK_SIGNING_SECRET=None)
    async with ImagineCore.open(settings) as core:
        service = SlackService(core, settings, build_web_app(core), tick_s=0)
        try:
            await service.start()
            await fake_slack.wait_socket()
            [opened] = fake_slack.calls_to("apps.connections.open")
            assert opened.token == APP_TOKEN
            ack = await fake_slack.send_envelope("slash_commands", {
                "team_id": TEAM, "channel_id": "C1", "user_id": "U1", "command": "/imagine",
                "text": "a lighthouse at dusk", "trigger_id": "t.socket", "api_app_id": "A0001",
                "response_url": fake_slack.response_url()})
            assert "envelope_id" in ack
            await fake_slack.wait_for("files.completeUploadExternal")
            await service.handlers.wait_idle()
            await core.orchestrator.wait_idle()
            [job] = core.jobs.recent()
            assert job.state is JobState.DELIVERED
            assert core.ledger.balance(U1).balance == 180 - 18
        finally:
            await core.orchestrator.stop()
            await service.stop()


async def test_an_upload_error_that_outlasts_delivery_retry_s_refunds_with_the_core_wording(slack: SlackHarness):
    """A blip that does not pass (Slack keeps answering internal_error) is retried until DELIVERY_RETRY_S,
    then the job is failed and refunded in plain words."""
    slack.core.orchestrator.delivery_retry_s = 0.3
    slack.core.orchestrator.delivery_backoff_s = (0.05,)
    slack.fake.fail("files.completeUploadExternal", "internal_error", times=1000)
    await slack.slash("a lighthouse at dusk")
    await slack.settle()
    [job] = slack.core.jobs.recent()
    assert job.state is JobState.FAILED and job.error_code == "delivery_failed"
    assert len(slack.fake.calls_to("files.completeUploadExternal")) > 1  # tried again before giving up
    assert "could not post it here" in slack.fake.calls_to("chat.update")[-1].params["text"]
    account = slack.core.ledger.balance(U1)
    assert (account.balance, account.held) == (180, 0)
    assert slack.core.ledger.verify() == []


async def test_healthz_lists_the_slack_front_end(slack: SlackHarness):
    url = slack.events_url.replace(EVENTS_PATH, "/healthz")
    body = (await slack.http.get(url)).json()
    assert body["ok"] and "slack" in body["frontends"]


def spy_on_submits(core: ImagineCore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many commands counted as being answered (``core.answering``) at each submit."""
    seen: list[int] = []
    submit = core.orchestrator.submit

    async def spy(request, **kwargs):
        seen.append(core.orchestrator.lull.answering)
        return await submit(request, **kwargs)

    monkeypatch.setattr(core.orchestrator, "submit", spy)
    return seen


async def test_an_http_slash_command_is_decided_while_it_counts_as_being_answered(slack: SlackHarness, monkeypatch):
    """The work of jobs already accepted waits for commands being answered (issue 22): a request is one from
    its arrival to its response (the second command: the first one checks the channel after its ack)."""
    seen = spy_on_submits(slack.core, monkeypatch)
    await slack.slash("a lighthouse at dusk")
    await slack.settle()
    await slack.slash("a gull at dawn")
    await slack.settle()
    assert len(seen) == 2 and seen[-1] == 1
    assert slack.core.orchestrator.lull.answering == 0


async def test_a_socket_mode_slash_command_is_decided_while_it_counts_as_being_answered(
        slack_settings, fake_slack, monkeypatch):
    settings = slack_settings(SLACK_APP_TOKEN=APP_TOKEN, SLACK_SIGNING_SECRET=None)
    async with ImagineCore.open(settings) as core:
        service = SlackService(core, settings, build_web_app(core), tick_s=0)
        seen = spy_on_submits(core, monkeypatch)
        try:
            await service.start()
            await fake_slack.wait_socket()
            for n, text in enumerate(("a lighthouse at dusk", "a gull at dawn")):
                await fake_slack.send_envelope("slash_commands", {
                    "team_id": TEAM, "channel_id": "C1", "user_id": "U1", "command": "/imagine", "text": text,
                    "trigger_id": f"t.socket.{n}", "api_app_id": "A0001", "response_url": fake_slack.response_url()})
                await service.handlers.wait_idle()
                await core.orchestrator.wait_idle()
            assert len(seen) == 2 and seen[-1] == 1
            assert core.orchestrator.lull.answering == 0
        finally:
            await core.orchestrator.stop()
            await service.stop()


async def test_the_ack_does_not_wait_for_the_work_after_it(slack: SlackHarness):
    """The work after an ack never holds the ack up: a prompt in a channel the bot has not checked yet is
    answered while the conversations.info asked after the ack is still unanswered."""
    slack.fake.slow("conversations.info", 30)
    response, _ = await slack.slash("a lighthouse at dusk", channel="CNEW")
    assert response.status_code == 200
    await slack.fake.wait_for("conversations.info")
    assert slack.service.handlers.busy == 1  # the command's work, still waiting for Slack


def _middleware_names(service: SlackService) -> set[str]:
    return {type(m).__name__ for m in service.app._async_middleware_list}


def _bolts_own_context_keys(service: SlackService) -> set[str]:
    """The keys Bolt's own ``AsyncApp._init_context`` sets on a new request's context."""
    from slack_bolt.app.async_app import AsyncApp
    from slack_bolt.request.async_request import AsyncBoltRequest

    request = AsyncBoltRequest(body={"team_id": TEAM, "user_id": "U1", "command": "/imagine"}, mode="socket_mode")
    before = set(request.context)
    AsyncApp._init_context(service.app, request)
    return set(request.context) - before


async def test_a_slash_command_takes_bolts_middleware_path_with_the_apps_own_client(
        slack_settings, fake_slack, monkeypatch):
    """Bolt's own time a request, cut where it is spent for nothing here:
    - a slash command is answered from the chain of middleware (``SlashCommands``): no listener is matched or
      run for it (a button still is);
    - with one workspace every request shares the app's Web API client (Bolt builds one a request), set on
      the context as Bolt would set the rest of it;
    - Socket Mode runs without the middleware of requests that come over HTTP only."""
    settings = slack_settings(SLACK_APP_TOKEN=APP_TOKEN, SLACK_SIGNING_SECRET=None)
    async with ImagineCore.open(settings) as core:
        service = SlackService(core, settings, build_web_app(core), tick_s=0)
        http_service = SlackService(core, slack_settings(), build_web_app(core))
        seen: list[dict[str, object]] = []
        matched: list[str] = []
        answer = SlashCommands.async_process
        matches = AsyncListener.async_matches

        async def spy(self, *, req, resp, next):
            seen.append(dict(req.context))
            return await answer(self, req=req, resp=resp, next=next)

        async def matching(self, *, req, resp):
            matched.append(self.ack_function.__name__)
            return await matches(self, req=req, resp=resp)

        monkeypatch.setattr(SlashCommands, "async_process", spy)
        monkeypatch.setattr(AsyncListener, "async_matches", matching)
        try:
            await service.start()
            await fake_slack.wait_socket()
            ack = await fake_slack.send_envelope("slash_commands", {
                "team_id": TEAM, "channel_id": "C1", "user_id": "U1", "command": "/imagine",
                "text": "a lighthouse at dusk", "trigger_id": "t.shared", "api_app_id": "A0001",
                "response_url": fake_slack.response_url()})
            assert "envelope_id" in ack
            await service.handlers.wait_idle()
            await core.orchestrator.wait_idle()
            [context] = seen
            assert context["client"] is service.client and context["token"] == service.client.token
            assert _bolts_own_context_keys(service) <= set(context)  # nothing of Bolt's own left out
            [job] = core.jobs.recent()
            assert job.state is JobState.DELIVERED
            assert matched == []  # no listener was tried for the command
            pressed = await fake_slack.send_envelope("interactive", {
                "type": "block_actions", "team": {"id": TEAM}, "user": {"id": "U1"}, "channel": {"id": "C1"},
                "api_app_id": "A0001", "trigger_id": "t.press", "response_url": fake_slack.response_url(),
                "actions": [{"action_id": ACTION_DELETE, "value": job.id, "type": "button"}]})
            assert "envelope_id" in pressed
            await service.handlers.wait_idle()
            assert "on_delete" in matched  # a button still goes through Bolt's listeners
            assert not {"AsyncSslCheck", "AsyncUrlVerification",
                        "AsyncAttachingFunctionToken"} & _middleware_names(service)
            assert {"AsyncSslCheck", "AsyncUrlVerification"} <= _middleware_names(http_service)
            assert http_service.app.share_client
        finally:
            await core.orchestrator.stop()
            await service.stop()
            await http_service.stop()


async def test_distributed_mode_keeps_a_client_a_request(distributed_settings):
    """Each request of distributed mode carries its workspace's token on its own client (Bolt's authorize
    step sets it there), so it never shares the app's."""
    from slack_bolt.request.async_request import AsyncBoltRequest

    settings, _port = distributed_settings()
    async with ImagineCore.open(settings) as core:
        service = SlackService(core, settings, build_web_app(core))
        try:
            assert not service.app.share_client
            clients = []
            for _ in range(2):
                request = AsyncBoltRequest(body=f"team_id={TEAM}&user_id=U1&command=%2Fimagine", mode="http")
                service.app._init_context(request)
                clients.append(request.context.client)
            assert service.client not in clients and clients[0] is not clients[1]
        finally:
            await service.stop()
