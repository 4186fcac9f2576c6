"""The Discord front end feeds the core's metrics: its acknowledgements, and the job's scope (the server)."""

from __future__ import annotations

from .conftest import ALICE


async def test_imagine_ack_and_credits_by_server(open_bot):
    async with open_bot(guild_id="424242424242424242") as bot:
        sent = bot.imagine(ALICE, "a lighthouse at dusk")
        await bot.final_edit(sent)
        await bot.idle()
        registry = bot.core.metrics.registry
        assert registry.get_sample_value("imagine_ack_seconds_count", {"platform": "discord"}) == 1
        assert 0 <= registry.get_sample_value("imagine_ack_seconds_sum", {"platform": "discord"}) < 3
        assert registry.get_sample_value("imagine_credits_spent_total", {"scope": "discord:424242424242424242"}) == 18
