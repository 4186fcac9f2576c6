"""Distributed mode: one bot added to many workspaces with "Add to Slack", through the real Bolt stack.

Installs go through ``/slack/install`` and ``/slack/oauth_redirect`` as a browser does (the state cookie
kept), the fake Slack playing the approval page and ``oauth.v2.access``. The fake records the token of
every call and the workspace it belongs to (``Call.team``), and answers ``token_revoked`` to a revoked one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from imagine_bot.bots.run import configured_services
from imagine_bot.bots.slack import SlackService, manifest
from imagine_bot.bots.slack.blocks import ACTION_DELETE, ACTION_REROLL
from imagine_bot.bots.slack.doctor import slack_checks
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import ConfigError
from imagine_bot.core.jobs.model import JobState
from imagine_bot.core.ops.doctor import Status, render
from imagine_bot.core.ops.logs import setup_logging
from imagine_bot.core.web.server import build_web_app
from tests.conftest import until

from .conftest import ADMIN, TEAM, SlackHarness
from .test_edit import png, shortcut, submit

T2 = "T0002"
#: the Web API calls that post or change something for a job
POSTING = ("chat.postMessage", "chat.update", "files.getUploadURLExternal", "files.completeUploadExternal",
           "files.info")
PLEASE_INSTALL = "not installed in this workspace, or it was removed. A workspace admin can add it at http"


def job_calls(fake: Any, *, since: float = 0.0) -> list[Any]:
    return [c for c in fake.calls if c.method in POSTING and c.at >= since]


def channel_of(call: Any) -> str | None:
    return call.params.get("channel") or call.params.get("channel_id")




@pytest.fixture
def two_workspaces(fake_slack):
    fake_slack.add_workspace(T2, "Second Team")
    return fake_slack


async def test_two_workspaces_install_with_add_to_slack_and_each_job_uses_its_own_token(
        distributed_settings, two_workspaces):
    fake = two_workspaces
    settings, port = distributed_settings()
    fake.redirect_urls = [f"{settings.PUBLIC_URL}/slack/oauth_redirect"]  # as registered in the manifest
    async with SlackHarness.open(settings, fake, port=port) as slack:
        # not installed anywhere yet: Bolt's "please install" answer, and no job
        _, url = await slack.slash("a lighthouse at dusk", team=TEAM)
        assert PLEASE_INSTALL in (await fake.wait_response(url))["text"]
        assert slack.core.jobs.recent() == []

        for team in (TEAM, T2):
            page = await slack.install(team)
            assert page.status_code == 200 and "Thank you!" in page.text
        assert sorted(p.workspace for p in slack.core.stores.installed_places("slack")) == [TEAM, T2]
        assert all(p.sealed for p in slack.core.stores.installed_places())  # SLACK_TOKEN_KEY is set
        [approval] = {a["scope"] for a in fake.authorizations}
        assert set(approval.split(",")) == set(fake.scopes)
        [token1], [token2] = fake.tokens_of(TEAM), fake.tokens_of(T2)

        before = len(fake.calls)
        await slack.slash("a lighthouse at dusk --ar 16:9", team=TEAM, user="U1", channel="C1")
        await slack.slash("a red kite over the moor", team=T2, user="U9", channel="C2")
        await slack.settle()
        jobs = {job.requester.workspace: job for job in slack.core.jobs.recent()}
        assert {t: j.state for t, j in jobs.items()} == {TEAM: JobState.DELIVERED, T2: JobState.DELIVERED}
        calls = job_calls(fake)
        assert {(c.method, c.token) for c in calls if channel_of(c) == "C1"} >= {
            ("chat.postMessage", token1), ("chat.update", token1), ("files.completeUploadExternal", token1)}
        assert {c.token for c in calls if channel_of(c) == "C1"} == {token1}
        assert {c.token for c in calls if channel_of(c) == "C2"} == {token2}
        assert sorted(c.team for c in fake.calls_to("files.getUploadURLExternal")) == [TEAM, T2]
        assert all(c.token in (token1, token2) for c in fake.calls[before:]), "every call had a workspace's token"
        # budgets, balances and reports per workspace, as in single-workspace mode
        assert "slack:T0002" in slack.core.budgets.job_scopes(jobs[T2].id)
        assert slack.core.ledger.balance(UserRef("slack", T2, "U9")).balance == 180 - 18
        _, report = await slack.slash("admin report", team=TEAM, user=ADMIN)
        answer = (await fake.wait_response(report))["text"]
        assert answer.startswith("This workspace spent 18 credits") and "U1" in answer and "U9" not in answer


async def test_buttons_app_home_remix_and_operator_messages_use_their_workspace_token(
        distributed_settings, two_workspaces, sandbox):
    fake = two_workspaces
    settings, port = distributed_settings(ADMINS=f"slack:{T2}:UOPS")
    async with SlackHarness.open(settings, fake, port=port) as slack:
        await slack.install(TEAM)
        await slack.install(T2)
        [token1], [token2] = fake.tokens_of(TEAM), fake.tokens_of(T2)
        await slack.slash("a kite", team=T2, user="U9", channel="C2")
        await slack.settle()
        [job] = slack.core.jobs.recent()
        start = len(fake.calls)

        await slack.press(ACTION_REROLL, job.id, team=T2, user="U9", channel="C2")
        await slack.event({"type": "app_home_opened", "user": "U9", "tab": "home"}, team=T2)
        photo = fake.add_file("product.png", png((220, 120, 20)))
        message = {"type": "message", "ts": "1700000000.000100", "user": "U7", "text": "ours", "files": [photo]}
        await shortcut(slack, message, team=T2, user="U9", channel="C2")
        await fake.wait_for("views.open")
        await submit(slack, fake.views[-1], "on a beach", team=T2, user="U9")
        await slack.settle()
        _, deleted = await slack.press(ACTION_DELETE, job.id, team=T2, user="U9", channel="C2")
        assert (await fake.wait_response(deleted))["text"] == "Deleted."
        await slack.service.frontend.notify_operators([UserRef("slack", T2, "UOPS")], "the gateway is paused")

        made = [c for c in fake.calls[start:] if c.method != "auth.test"]
        assert {c.method for c in made} >= {"chat.postMessage", "views.publish", "views.open", "chat.delete",
                                            "files.delete", "conversations.open", "files.completeUploadExternal"}
        assert {c.token for c in made} == {token2}, "every call in T0002 with T0002's token"
        assert fake.file_downloads == [(photo["id"], f"Bearer {token2}")]
        assert [j.state for j in slack.core.jobs.recent()] == [JobState.DELIVERED] * 3
        assert token1 not in {c.token for c in fake.calls[start:]}


async def test_an_install_needs_the_browser_that_began_it_and_a_state_works_once(distributed_settings, fake_slack):
    settings, port = distributed_settings()
    async with SlackHarness.open(settings, fake_slack, port=port) as slack:
        other_browser = await slack.install(TEAM, keep_cookie=False)
        assert other_browser.status_code == 400
        assert slack.core.stores.installed_places() == [] and fake_slack.tokens_of(TEAM) == []

        page = await slack.http.get(f"{slack.base_url}/slack/install", params={"team": TEAM})
        cookie = page.headers["set-cookie"].split(";")[0]
        state = cookie.split("=", 1)[1]
        forged = await slack.http.get(f"{settings.PUBLIC_URL}/slack/oauth_redirect",
                                      params={"code": "code-made-up", "state": state}, headers={"Cookie": cookie})
        assert forged.status_code == 401  # the state is spent on the forged code: it works once
        assert slack.core.stores.installed_places() == []


async def test_app_uninstalled_forgets_the_workspace_and_nothing_more_is_sent_there(
        distributed_settings, two_workspaces):
    fake = two_workspaces
    settings, port = distributed_settings()
    async with SlackHarness.open(settings, fake, port=port) as slack:
        await slack.install(TEAM)
        await slack.install(T2)
        await slack.slash("a first cat", team=T2, user="U9", channel="C2")
        await slack.settle()
        [token2] = fake.tokens_of(T2)

        await slack.uninstall(T2)
        assert [p.workspace for p in slack.core.stores.installed_places()] == [TEAM]
        gone = fake.calls[-1].at
        _, url = await slack.slash("a second cat", team=T2, user="U9", channel="C2")
        assert PLEASE_INSTALL in (await fake.wait_response(url))["text"]
        await slack.event({"type": "app_home_opened", "user": "U9", "tab": "home"}, team=T2)
        await slack.settle()
        assert [j.prompt for j in slack.core.jobs.recent()] == ["a first cat"]
        assert [c for c in fake.calls if c.at > gone and c.token == token2] == []
        assert not fake.calls_to("views.publish")

        await slack.slash("a third cat", team=TEAM)  # the other workspace is served as before
        await slack.settle()
        assert slack.core.jobs.recent(limit=1)[0].state is JobState.DELIVERED


async def test_jobs_in_flight_at_an_uninstall_end_refunded_posting_nothing(
        distributed_settings, two_workspaces, sandbox):
    fake = two_workspaces
    settings, port = distributed_settings(MAX_ACTIVE_JOBS=1)
    # no status refresh meanwhile: the uninstall itself ends the queued job
    async with SlackHarness.open(settings, fake, port=port, tick_s=3600) as slack:
        await slack.install(T2)
        sandbox.inject("recordInfo", state="generating", times=1_000_000)  # at the gateway until released
        await slack.slash("a cat at the gateway", team=T2, user="U9", channel="C2")
        await until(lambda: any(j.state is JobState.RUNNING for j in slack.core.jobs.recent()))
        await slack.slash("a cat in the queue", team=T2, user="U8", channel="C2")
        await until(lambda: len(slack.core.jobs.recent()) == 2)
        running, queued = sorted(slack.core.jobs.recent(), key=lambda j: j.created_at)
        assert slack.core.jobs.get(queued.id).state is JobState.QUEUED
        await slack.core.orchestrator.outbox.wait_idle()  # their statuses are out: nothing more to send

        fake.uninstall(T2)
        for event in ({"type": "tokens_revoked", "tokens": {"bot": ["UBT0002"]}}, {"type": "app_uninstalled"}):
            await slack.event(event, team=T2)
        await until(lambda: slack.core.jobs.get(queued.id).state is JobState.FAILED)
        gone = max(c.at for c in fake.calls)
        sandbox.clear_faults()
        slack.core.orchestrator.notify(str(slack.core.jobs.get(running.id).task_id))  # as its callback would
        await slack.settle()

        running, queued = slack.core.jobs.get(running.id), slack.core.jobs.get(queued.id)
        assert (running.state, running.error_code) == (JobState.FAILED, "app_removed")
        assert (queued.state, queued.error_code) == (JobState.FAILED, "app_removed")
        assert sandbox.requests["createTask"] == 1  # the queued one never reached the gateway
        assert slack.core.jobs.billed_not_delivered() == (18, 1)  # the gateway billed the running one
        for who in ("U9", "U8"):
            assert slack.core.ledger.balance(UserRef("slack", T2, who)).balance == 180  # refunded
        assert [c for c in fake.calls if c.at > gone and c.team == T2] == []  # nothing posted with a dead token
        assert not fake.calls_to("files.getUploadURLExternal")


async def test_an_uninstall_ends_only_jobs_still_unsent_when_it_reaches_them(
        distributed_settings, two_workspaces, sandbox):
    """The uninstall ends its workspace's queued jobs one by one; a job that went to the gateway meanwhile
    (a slot freed while an earlier one was being ended) is billed: it is not cut and refunded unseen, it
    ends at its delivery and is counted as billed but not delivered."""
    fake = two_workspaces
    settings, port = distributed_settings(MAX_ACTIVE_JOBS=1)
    # a job's next status waits its turn (Slack's pace): the uninstall, not a status, meets the second job
    async with SlackHarness.open(settings, fake, port=port, tick_s=3600, min_edit_interval=3.0) as slack:
        await slack.install(TEAM)
        await slack.install(T2)
        sandbox.inject("recordInfo", state="generating", times=1_000_000)  # holds the only slot
        await slack.slash("a cat elsewhere", team=TEAM, user="U1", channel="C1")
        await until(lambda: any(j.state is JobState.RUNNING for j in slack.core.jobs.recent()))
        await slack.slash("a first queued cat", team=T2, user="U9", channel="C2")
        await until(lambda: len(slack.core.jobs.recent()) == 2)
        await slack.slash("a second queued cat", team=T2, user="U8", channel="C2")
        await until(lambda: len(slack.core.jobs.recent()) == 3)
        elsewhere, first, second = sorted(slack.core.jobs.recent(), key=lambda j: j.created_at)
        await slack.core.orchestrator.outbox.wait_idle()

        cancel = slack.core.cancel

        async def cancel_while_the_slot_frees(job_id, error):
            await cancel(job_id, error)
            if job_id == first.id:  # the job elsewhere finishes meanwhile: the next queued one is sent
                sandbox.clear_faults()
                slack.core.orchestrator.notify(str(slack.core.jobs.get(elsewhere.id).task_id))
                await until(lambda: slack.core.jobs.get(second.id).state is JobState.RUNNING)

        slack.core.cancel = cancel_while_the_slot_frees
        fake.uninstall(T2)
        await slack.event({"type": "app_uninstalled"}, team=T2)
        await slack.settle()

        first, second = slack.core.jobs.get(first.id), slack.core.jobs.get(second.id)
        assert slack.core.jobs.get(elsewhere.id).state is JobState.DELIVERED
        assert (first.state, first.error_code, first.task_id) == (JobState.FAILED, "app_removed", None)
        assert sandbox.requests["createTask"] == 2  # the one elsewhere and the second queued one
        # the second was billed at the gateway: followed to its end, and the operator sees it
        assert (second.state, second.error_code) == (JobState.FAILED, "app_removed")
        assert second.billed_at is not None
        assert slack.core.jobs.billed_not_delivered() == (18, 1)
        assert slack.core.ledger.balance(UserRef("slack", T2, "U8")).balance == 180  # refunded all the same


async def test_a_rotating_token_is_refreshed_once_before_it_expires_and_used(distributed_settings, fake_slack):
    fake = fake_slack
    fake.token_rotation = True
    fake.lifetimes.append(3600)  # the installed token expires within the two hours Bolt refreshes before
    settings, port = distributed_settings()
    async with SlackHarness.open(settings, fake, port=port) as slack:
        await slack.install(TEAM)
        [installed] = fake.tokens_of(TEAM)
        assert installed.startswith("xoxe.xoxb-")
        # two commands at once, the refresh slow: one refresh between them (a refresh token works once)
        fake.slow("oauth.v2.access", 0.3)
        await asyncio.gather(slack.slash("a cat", user="U1", channel="C1"),
                             slack.slash("a dog", user="U2", channel="C1"))
        await slack.settle()
        grants = [c.params.get("grant_type") for c in fake.calls_to("oauth.v2.access")]
        assert grants.count("refresh_token") == 1
        refreshed = fake.tokens_of(TEAM)[-1]
        assert refreshed != installed
        assert [j.state for j in slack.core.jobs.recent()] == [JobState.DELIVERED] * 2
        assert {c.token for c in job_calls(fake)} == {refreshed}

    async with SlackHarness.open(settings, fake, port=port) as slack:  # a restart: the new pair is stored
        await slack.slash("a bird", user="U1", channel="C1")
        await slack.settle()
        assert [c.params.get("grant_type") for c in fake.calls_to("oauth.v2.access")].count("refresh_token") == 1
        assert {c.token for c in job_calls(fake)} == {refreshed}


async def test_two_processes_refreshing_at_once_spend_the_refresh_token_once(distributed_settings, fake_slack):
    fake = fake_slack
    fake.token_rotation = True
    fake.lifetimes.append(3600)
    settings, port = distributed_settings()
    async with SlackHarness.open(settings, fake, port=port) as one, SlackHarness.open(settings, fake) as two:
        await one.install(TEAM)
        fake.slow("oauth.v2.access", 0.3)
        await asyncio.gather(one.slash("a cat", user="U1", channel="C1"), two.slash("a dog", user="U2", channel="C1"))
        await one.settle()
        await two.settle()
        refreshes = [c for c in fake.calls_to("oauth.v2.access") if c.params.get("grant_type") == "refresh_token"]
        assert len(refreshes) == 2  # each process tried; Slack took the first, refused the spent token after
        refreshed = fake.tokens_of(TEAM)[-1]
        assert [j.state for j in one.core.jobs.recent()] == [JobState.DELIVERED] * 2
        assert {c.token for c in job_calls(fake)} == {refreshed}


async def test_an_enterprise_grid_org_wide_install_serves_each_of_its_workspaces(distributed_settings, fake_slack):
    fake = fake_slack
    fake.add_org("E0001", "Big Org", ["T0101", "T0102"])
    fake.add_org("E0002", "Other Org", ["T0201"])
    settings, port = distributed_settings()
    async with SlackHarness.open(settings, fake, port=port) as slack:
        page = await slack.install("E0001")
        assert page.status_code == 200
        [org] = slack.core.stores.installed_places()
        assert (org.org, org.workspace, org.org_wide, org.name) == ("E0001", "", True, "Big Org")
        [org_token] = fake.tokens_of("E0001")

        for team, channel in (("T0101", "C101"), ("T0102", "C102")):
            await slack.slash(f"a lighthouse in {team}", team=team, enterprise="E0001", org_wide=True,
                              channel=channel, user=f"U{team}")
        _, url = await slack.slash("not here", team="T0201", enterprise="E0002", org_wide=True, channel="C201")
        assert PLEASE_INSTALL in (await fake.wait_response(url))["text"]
        await slack.settle()
        jobs = {j.requester.workspace: j for j in slack.core.jobs.recent()}
        assert set(jobs) == {"T0101", "T0102"}
        assert all(j.state is JobState.DELIVERED for j in jobs.values())
        assert {c.token for c in job_calls(fake)} == {org_token}
        assert {channel_of(c) for c in fake.calls_to("chat.postMessage")} == {"C101", "C102"}
        # budgets and reports stay per workspace
        assert "slack:T0101" in slack.core.budgets.job_scopes(jobs["T0101"].id)
        assert jobs["T0102"].reply.data["enterprise_id"] == "E0001"

        await slack.uninstall("E0001", enterprise="E0001", org_wide=True)
        assert slack.core.stores.installed_places() == []


async def test_installs_and_a_job_in_flight_survive_a_restart(distributed_settings, two_workspaces, sandbox):
    fake = two_workspaces
    settings, port = distributed_settings()
    async with SlackHarness.open(settings, fake, port=port) as slack:
        await slack.install(TEAM)
        await slack.install(T2)
        sandbox.inject("recordInfo", state="generating", times=1_000_000)
        await slack.slash("a cat across a restart", team=T2, user="U9", channel="C2")
        await until(lambda: any(j.state is JobState.RUNNING for j in slack.core.jobs.recent()))
    [token1], [token2] = fake.tokens_of(TEAM), fake.tokens_of(T2)
    before = len(fake.calls)

    async with SlackHarness.open(settings, fake, port=port) as slack:  # a new process, the same database
        [resumed] = slack.core.jobs.recent()
        sandbox.clear_faults()
        slack.core.orchestrator.notify(str(resumed.task_id))
        await slack.slash("a dog after the restart", team=TEAM, user="U1", channel="C1")
        await slack.settle()
        assert [j.state for j in slack.core.jobs.recent()] == [JobState.DELIVERED] * 2
        after = fake.calls[before:]
        assert {c.token for c in after if c.method in POSTING and channel_of(c) == "C2"} == {token2}
        assert {c.token for c in after if c.method in POSTING and channel_of(c) == "C1"} == {token1}
        assert any(c.method == "files.completeUploadExternal" and c.token == token2 for c in after)


async def test_no_token_or_secret_reaches_the_operators_log(distributed_settings, two_workspaces, capsys):
    fake = two_workspaces
    fake.token_rotation = True
    fake.lifetimes.extend([60, 60])
    settings, port = distributed_settings()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("DEBUG", settings.secrets())  # as `imagine-bot run --verbose` does
    try:
        async with SlackHarness.open(settings, fake, port=port) as slack:
            await slack.install(TEAM)
            await slack.install(T2)
            await slack.slash("a cat", team=T2, user="U9", channel="C2")
            await slack.settle()
            await slack.uninstall(T2)
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    logged = capsys.readouterr().err
    assert "slack: installed through Add to Slack" in logged and "refreshed the bot token" in logged
    secrets = [*fake.grants, *(g.refresh_token for g in fake.grants.values() if g.refresh_token),
               fake.client_secret, str(settings.SLACK_TOKEN_KEY.get_secret_value())]
    assert len(secrets) >= 6
    for secret in secrets:
        assert secret not in logged, f"{secret[:10]}… is in the log"


@pytest.mark.parametrize(("overrides", "setting"), [
    ({"SLACK_APP_TOKEN": "xapp-1-socket"}, "SLACK_APP_TOKEN"),  # Socket Mode serves one workspace
    ({"PUBLIC_URL": None}, "PUBLIC_URL"),
    ({"SLACK_SIGNING_SECRET": None}, "SLACK_SIGNING_SECRET"),
    ({"SLACK_CLIENT_SECRET": None}, "SLACK_CLIENT_SECRET"),
    ({"SLACK_CLIENT_ID": None}, "SLACK_CLIENT_ID"),
    ({"SLACK_BOT_TOKEN": "xoxb-one-workspace"}, "SLACK_CLIENT_ID"),  # one mode or the other
    ({"SLACK_TOKEN_KEY": "not-a-key"}, "SLACK_TOKEN_KEY"),
])
async def test_distributed_mode_misconfigured_fails_naming_the_setting(distributed_settings, overrides, setting):
    settings, _ = distributed_settings(**overrides)
    async with ImagineCore.open(settings) as core:
        with pytest.raises(ConfigError) as caught:
            SlackService(core, settings, build_web_app(core))
    assert caught.value.setting == setting


def test_run_starts_slack_with_a_client_id_alone(distributed_settings):
    settings, _ = distributed_settings()
    assert list(configured_services(settings, None)) == ["slack"]


async def test_doctor_checks_the_app_and_lists_the_installed_workspaces(distributed_settings, two_workspaces):
    fake = two_workspaces
    settings, port = distributed_settings()
    fake.redirect_urls = [f"{settings.PUBLIC_URL}/slack/oauth_redirect"]
    async with SlackHarness.open(settings, fake, port=port) as slack, httpx.AsyncClient() as http:
        before = await slack_checks(settings, http)
        assert [(c.name, c.status) for c in before if c.status is not Status.PASS] == [
            ("Slack workspaces", Status.WARN)]  # none yet: the fix names the install page
        await slack.install(TEAM)
        await slack.install(T2)

        checks = await slack_checks(settings, http)
        assert all(c.status is Status.PASS for c in checks), render(checks)
        shown = {c.name: c.detail for c in checks}
        assert "accepted by oauth.v2.access" in shown["Slack app"]
        assert shown["Slack redirect URL"].startswith(f"{settings.PUBLIC_URL}/slack/oauth_redirect")
        assert shown["Slack workspaces"] == "installed in 2: Second Team (T0002), Fake Team (T0001)"
        assert "its bot token works" in shown["Slack Second Team"]

        fake.uninstall(T2)  # revoked, and the app_uninstalled event never came
        [refused] = [c for c in await slack_checks(settings, http) if c.status is Status.FAIL]
        assert refused.name == "Slack Second Team" and "token_revoked" in refused.detail

        fake.redirect_urls = ["https://elsewhere.example.com/slack/oauth_redirect"]
        bad = {c.name: c for c in await slack_checks(settings, http) if c.status is Status.FAIL}
        assert "Slack redirect URL" in bad and "Redirect URLs" in str(bad["Slack redirect URL"].fix)

        wrong = settings.model_copy(update={"SLACK_CLIENT_SECRET": SecretStr("not-the-secret")})
        failed = [c for c in await slack_checks(wrong, http) if c.status is Status.FAIL]
        assert failed[0].name == "Slack app" and "SLACK_CLIENT_SECRET" in str(failed[0].fix)

        keyless = settings.model_copy(update={"SLACK_TOKEN_KEY": None})
        keyless_checks = {c.name: c for c in await slack_checks(keyless, http)}
        assert keyless_checks["Slack tokens"].status is Status.WARN
        assert "SLACK_TOKEN_KEY" in keyless_checks["Slack Fake Team"].detail  # sealed tokens: the key is needed


async def test_the_dashboard_shows_operators_where_the_app_is_installed(distributed_settings, two_workspaces):
    fake = two_workspaces
    settings, port = distributed_settings()
    async with SlackHarness.open(settings, fake, port=port) as slack:
        await slack.install(TEAM)
        await slack.install(T2)
        auth = slack.core.dashboard_auth
        for scope, shown in ((None, True), (f"slack:{T2}", False)):  # an operator; a workspace's admin
            async with httpx.AsyncClient(base_url=slack.base_url) as http:
                link = auth.mint(slack.base_url, actor="cli:op", scope=scope)
                assert (await http.post("/admin/login", data={"t": link.split("t=")[1]})).status_code == 303
                page = (await http.get("/admin/usage")).text
            assert ('id="installed"' in page) is shown
            assert ("Second Team" in page and "slack:T0001" in page and "encrypted" in page) is shown


async def test_a_key_that_does_not_open_the_stored_tokens_stops_the_start(distributed_settings, fake_slack):
    settings, port = distributed_settings()
    async with SlackHarness.open(settings, fake_slack, port=port) as slack:
        await slack.install(TEAM)
    other = settings.model_copy(update={"SLACK_TOKEN_KEY": SecretStr(Fernet.generate_key().decode())})
    with pytest.raises(ConfigError) as caught:
        async with SlackHarness.open(other, fake_slack, port=port):
            pass
    assert caught.value.setting == "SLACK_TOKEN_KEY"


def test_the_distributed_manifest_redirects_rotates_deploys_org_wide_and_hears_uninstalls():
    single, many = manifest.read(), manifest.read(manifest.DISTRIBUTED)
    assert many["oauth_config"]["scopes"] == single["oauth_config"]["scopes"]
    assert many["oauth_config"]["redirect_urls"] == ["https://imagine.example.com/slack/oauth_redirect"]
    settings = many["settings"]
    assert (settings["token_rotation_enabled"], settings["org_deploy_enabled"], settings["socket_mode_enabled"]) == (
        True, True, False)
    events = set(settings["event_subscriptions"]["bot_events"])
    assert {"app_uninstalled", "tokens_revoked", "app_home_opened"} <= events
    assert settings["event_subscriptions"]["request_url"] == "https://imagine.example.com/slack/events"
    assert settings["interactivity"]["request_url"] == "https://imagine.example.com/slack/events"
    assert many["features"]["slash_commands"][0]["url"] == "https://imagine.example.com/slack/events"
