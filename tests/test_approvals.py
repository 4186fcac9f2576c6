"""Approvals in the core, with the recording terminal front end: who may decide, the first decision wins,
rejections carry a reason, expiry, and a restart in the middle."""

from __future__ import annotations

import io
from datetime import timedelta

import httpx
import pytest
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.authority import Actor
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat import messages
from imagine_bot.core.chat.commands import dispatch
from imagine_bot.core.errors import PermissionDenied, ReviewClosed
from imagine_bot.core.events import Approved, Delivered, Rejected, ReviewExpired, ReviewRequested
from imagine_bot.core.jobs.model import JobState, ReplyTo
from imagine_bot.core.storage.db import utcnow
from imagine_bot.core.web.server import build_web_app, start_web

# every test here runs on SQLite and on PostgreSQL (conftest's ``backend``)
pytestmark = pytest.mark.usefixtures("backend")

TEAM = "T1"
PLACE = f"slack:{TEAM}"


def actor(user: str, *, admin: bool = False, channel: str = "CMKT") -> Actor:
    return Actor(UserRef("slack", TEAM, user), place=PLACE, channel=channel, community_admin=admin)


ANN, REV, REV2, BOSS = actor("UANN"), actor("UREV"), actor("UREV2"), actor("UBOSS", admin=True)


def resolve(raw: str) -> UserRef | None:
    return UserRef("slack", TEAM, raw.strip("<@>")) if raw.startswith("<@") else None


async def say(core: ImagineCore, who: Actor, text: str):
    return await dispatch(core, who, text, ReplyTo("terminal", who.channel or "chat"), resolve_user=resolve)


class Recorder(TerminalFrontEnd):
    def of(self, kind: type, job_id: str) -> list:
        return [e for e in self.events if isinstance(e, kind) and e.job.id == job_id]


def open_core(make_settings, tmp_path):
    return ImagineCore.open(make_settings(APPROVAL_EXPIRE_H=72))


async def started(core: ImagineCore, tmp_path) -> Recorder:
    recorder = Recorder(tmp_path / "out", Console(file=io.StringIO()), bar=False, core=core)
    core.register(recorder)
    await core.start()
    return recorder


async def made_for_review(core: ImagineCore, who: Actor = ANN) -> str:
    reply = await say(core, who, "a poster for the spring sale")
    assert reply.job is not None and reply.job.review
    await core.orchestrator.wait_idle()
    return reply.job.id


async def test_an_approval_round(make_settings, tmp_path):
    async with open_core(make_settings, tmp_path) as core:
        recorder = await started(core, tmp_path)
        answer = await say(core, BOSS, "admin approvals on <@UREV> <@UREV2>")
        assert answer.text == messages.approvals_set(("slack:T1:UREV", "slack:T1:UREV2"), 72)
        job_id = await made_for_review(core)

        # made, charged and shown to the requester; the reviewers were sent it
        job = core.jobs.get(job_id)
        assert job.state is JobState.DELIVERED and job.review == ("slack:T1:UREV", "slack:T1:UREV2")
        assert len(recorder.of(Delivered, job_id)) == 1
        assert core.ledger.balance(ANN.user).balance == 180 - 18
        (request,) = recorder.of(ReviewRequested, job_id)
        assert [r.key for r in request.reviewers] == ["slack:T1:UREV", "slack:T1:UREV2"]
        assert core.approvals.store.get(job_id).notified_at is not None
        assert not recorder.of(Approved, job_id)

        # the requester may not decide on their own image; nor may someone who is not a reviewer
        with pytest.raises(PermissionDenied) as own:
            await core.decide(ANN, job_id, approve=True)
        assert own.value.user_message == messages.review_own_image()
        with pytest.raises(PermissionDenied) as stranger:
            await core.decide(actor("UZED"), job_id, approve=True)
        assert stranger.value.user_message == messages.review_not_reviewer("CMKT")
        with pytest.raises(PermissionDenied):  # a reason is needed to reject
            await core.decide(REV, job_id, approve=False, reason="  ")

        assert await core.decide(REV, job_id, approve=True) == messages.review_approved("CMKT")
        (approved,) = recorder.of(Approved, job_id)
        assert approved.reviewer == REV.user and approved.balance == 180 - 18

        # a second press is told what was decided and by whom; nothing is posted again
        with pytest.raises(ReviewClosed) as late:
            await core.decide(REV2, job_id, approve=False, reason="too dark")
        assert late.value.user_message.startswith("This image was already approved by <@UREV> on ")
        await core.orchestrator.wait_idle()
        assert len(recorder.of(Approved, job_id)) == 1 and not recorder.of(Rejected, job_id)
        assert core.ledger.balance(ANN.user).balance == 180 - 18  # charged once, when made


async def test_a_rejection_tells_the_requester_why(make_settings, tmp_path):
    async with open_core(make_settings, tmp_path) as core:
        recorder = await started(core, tmp_path)
        await say(core, BOSS, "admin approvals on <@UREV>")
        job_id = await made_for_review(core)
        text = await core.decide(REV, job_id, approve=False, reason="the logo is cropped")
        assert text == messages.review_rejected("slack:T1:UANN")
        (rejected,) = recorder.of(Rejected, job_id)
        assert (rejected.reviewer, rejected.reason) == (REV.user, "the logo is cropped")
        assert not recorder.of(Approved, job_id)
        with pytest.raises(ReviewClosed) as again:
            await core.decide(REV, job_id, approve=True)
        assert "already rejected by <@UREV>" in again.value.user_message and "the logo is cropped" in (
            again.value.user_message)


async def test_the_only_reviewer_may_decide_on_their_own_image(make_settings, tmp_path):
    async with open_core(make_settings, tmp_path) as core:
        await started(core, tmp_path)
        await say(core, BOSS, "admin approvals on <@UANN>")
        job_id = await made_for_review(core)
        assert await core.decide(ANN, job_id, approve=True) == messages.review_approved("CMKT", own=True)


async def test_unanswered_approvals_expire_and_the_requester_is_told(make_settings, tmp_path):
    async with open_core(make_settings, tmp_path) as core:
        recorder = await started(core, tmp_path)
        await say(core, BOSS, "admin approvals on <@UREV>")
        job_id = await made_for_review(core)
        assert await core.approvals.expire_due(utcnow() + timedelta(hours=71)) == 0
        assert await core.approvals.expire_due(utcnow() + timedelta(hours=72, seconds=1)) == 1
        (expired,) = recorder.of(ReviewExpired, job_id)
        assert expired.hours == 72
        with pytest.raises(ReviewClosed) as late:
            await core.decide(REV, job_id, approve=True)
        assert late.value.user_message.startswith("This review expired")
        assert not recorder.of(Approved, job_id)


async def test_approvals_off_and_other_channels_post_at_once(make_settings, tmp_path):
    async with open_core(make_settings, tmp_path) as core:
        await started(core, tmp_path)
        await say(core, BOSS, "admin approvals on <@UREV>")
        elsewhere = await say(core, actor("UANN", channel="CGEN"), "a poster")
        assert elsewhere.job is not None and elsewhere.job.review == ()
        assert (await say(core, BOSS, "admin approvals off")).text == messages.approvals_set((), 72)
        after = await say(core, ANN, "a poster")
        assert after.job is not None and after.job.review == ()
        # a member may not turn approvals on
        refused = await say(core, ANN, "admin approvals on <@UANN>")
        assert "only image-bot admins" in refused.text.lower()
        await core.orchestrator.wait_idle()


async def test_a_decision_after_a_restart(make_settings, tmp_path):
    settings = make_settings()
    async with ImagineCore.open(settings) as core:
        await started(core, tmp_path)
        await say(core, BOSS, "admin approvals on <@UREV>")
        job_id = await made_for_review(core)
    async with ImagineCore.open(settings) as core:
        recorder = await started(core, tmp_path)
        assert not recorder.of(ReviewRequested, job_id)  # told once, before the restart
        assert await core.decide(REV, job_id, approve=True) == messages.review_approved("CMKT")
        assert len(recorder.of(Approved, job_id)) == 1


async def test_the_first_decision_wins_between_processes(make_settings, tmp_path):
    """Two processes whose checks both passed (both saw it pending): the compare-and-set lets one decide."""
    settings = make_settings()
    async with ImagineCore.open(settings) as core, ImagineCore.open(settings) as other:
        recorder = await started(core, tmp_path)
        await say(core, BOSS, "admin approvals on <@UREV> <@UREV2>")
        job_id = await made_for_review(core)
        core.check_can_decide(REV, job_id)
        other.check_can_decide(REV2, job_id)
        now = utcnow()
        assert core.approvals.store.decide(job_id, "approved", by=REV.key, reason=None, now=now)
        assert not other.approvals.store.decide(job_id, "rejected", by=REV2.key, reason="no", now=now)
        decided = other.approvals.store.get(job_id)
        assert (decided.state, decided.decided_by, decided.reason) == ("approved", REV.key, None)
        assert not recorder.of(Rejected, job_id)


async def test_the_dashboard_jobs_page_shows_each_approval(make_settings, tmp_path):
    async with open_core(make_settings, tmp_path) as core:
        await started(core, tmp_path)
        await say(core, BOSS, "admin approvals on <@UREV>")
        approved, rejected, pending = [await made_for_review(core) for _ in range(3)]
        await core.decide(REV, approved, approve=True)
        await core.decide(REV, rejected, approve=False, reason="the logo is <cropped>")
        runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient() as http:
                link = core.dashboard_auth.mint(base, actor="cli:op", scope=None)
                await http.post(f"{base}/admin/login", data={"t": link.split("t=")[1]})
                page = (await http.get(f"{base}/admin/jobs")).text
        finally:
            await runner.cleanup()
    rows = {job_id: row for row in page.split("<tr") for job_id in (approved, rejected, pending) if job_id in row}
    assert ">approved</span> by slack:T1:UREV" in rows[approved]
    assert ">rejected</span> by slack:T1:UREV: <span class=\"reason\">the logo is &lt;cropped&gt;</span>" in (
        rows[rejected])
    assert ">pending</span>" in rows[pending] and "reviewers: slack:T1:UREV" in rows[pending]
