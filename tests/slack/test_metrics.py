"""The Slack front end and operations: its acknowledgements and credits by workspace in the metrics, and
the private dashboard link."""

from __future__ import annotations

from .conftest import ADMIN, TEAM, SlackHarness


async def test_slash_command_ack_and_credits_by_workspace(slack: SlackHarness):
    metrics = slack.core.metrics
    response, _ = await slack.slash("a lighthouse at dusk")
    assert response.status_code == 200
    await slack.settle()
    await slack.core.orchestrator.wait_idle()
    assert metrics.registry.get_sample_value("imagine_ack_seconds_count", {"platform": "slack"}) == 1
    assert metrics.registry.get_sample_value("imagine_credits_spent_total", {"scope": f"slack:{TEAM}"}) == 18
    assert metrics.registry.get_sample_value("imagine_jobs_total",
                                             {"platform": "slack", "outcome": "delivered"}) == 1


async def test_admin_dashboard_sends_a_private_one_time_link(slack: SlackHarness):
    _, response_url = await slack.slash("admin dashboard", user=ADMIN)
    answer = await slack.fake.wait_response(response_url)
    assert answer["response_type"] == "ephemeral" and "/admin/login?t=" in answer["text"]
    _, response_url = await slack.slash("admin dashboard", user="U1")
    answer = await slack.fake.wait_response(response_url)
    assert "/admin/login" not in answer["text"]
    await slack.settle()
