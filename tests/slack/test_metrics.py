"""The Slack front end feeds the core's metrics: its acknowledgements, and the job's scope (the team)."""

from __future__ import annotations

from .conftest import TEAM, SlackHarness


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
