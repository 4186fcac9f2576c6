"""The Discord front end and operations: its acknowledgements and credits by server in the metrics, and
the private dashboard link."""

from __future__ import annotations

from .conftest import ALICE


async def test_imagine_ack_and_credits_by_server(open_bot):
    async with open_bot(guild_id="424242424242424242") as bot:
        sent = await bot.imagine(ALICE, "a lighthouse at dusk")
        await bot.final_edit(sent)
        await bot.idle()
        registry = bot.core.metrics.registry
        assert registry.get_sample_value("imagine_ack_seconds_count", {"platform": "discord"}) == 1
        assert 0 <= registry.get_sample_value("imagine_ack_seconds_sum", {"platform": "discord"}) < 3
        assert registry.get_sample_value("imagine_credits_spent_total", {"scope": "discord:424242424242424242"}) == 18


async def test_imagine_admin_dashboard_is_a_private_link_to_this_server_only(open_bot):

    from .test_admin import MANAGE_GUILD, _private_answer

    async with open_bot(guild_id="424242424242424242") as bot:
        answer = await _private_answer(bot, await bot.admin("dashboard", ALICE, permissions=MANAGE_GUILD))
        assert "`discord:424242424242424242` only" in answer["content"]
        token = answer["content"].split("/admin/login?t=")[1].split()[0]
        assert bot.core.dashboard_auth.redeem(token).scope == "discord:424242424242424242"
        refused = await _private_answer(bot, await bot.admin("dashboard", ALICE))  # without Manage Server
        assert "/admin/login" not in refused["content"]
