"""Hostile input through the whole core: nothing crashes, nothing is charged by mistake, and text that
looks like SQL or markup is stored and echoed as plain text."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from imagine_bot.bots.terminal import TerminalFrontEnd
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.chat import messages
from imagine_bot.core.errors import ImagineError
from imagine_bot.core.jobs.model import JobState, ReplyTo

ALICE = UserRef("terminal", "local", "alice")
NASTY = ["'; DROP TABLE jobs; --", "Robert'); DELETE FROM ledger;--", "<!channel>", "@everyone", "@here",
         "<@U123>", "<script>", "`code`", "\u202e\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "\U0001f3a8" * 50,
         "%s %d {0}", "\\x00", "NULL", "ｆｕｌｌｗｉｄｔｈ", "e\u0301" * 20]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.one_of(st.sampled_from(NASTY), st.text(min_size=1, max_size=40)), min_size=1,
                      max_size=8))
async def test_hostile_prompts(core, tmp_path, words):
    fe = TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False)
    core.register(fe)
    text = " ".join(words)
    try:
        job = await core.imagine(ALICE, ReplyTo("terminal", "t"), text)
    except ImagineError as error:
        assert error.user_message
    else:
        await core.orchestrator.wait_idle()
        row = core.jobs.get(job.id)
        assert row.prompt == job.prompt  # stored verbatim, as data
        assert row.state in (JobState.DELIVERED, JobState.FAILED)
        shown = messages.delivered(row, 0)
        assert "\n" not in messages.quote_prompt(row.prompt) and "`" not in messages.quote_prompt(row.prompt)
        assert len(shown) < 600
    assert {"_migrations", "accounts", "ledger", "jobs", "budgets", "budget_ledger",
            "app_secrets"} <= set(core.jobs.db.table_names())
    delivered = core.jobs.recent(ALICE.key, limit=1000, states=[JobState.DELIVERED])
    assert core.ledger.balance(ALICE).balance == 180 - 18 * len(delivered)
    assert core.ledger.verify() == []


async def test_a_3000_character_unicode_prompt_goes_through(core, tmp_path):
    core.register(TerminalFrontEnd(tmp_path / "out", Console(file=io.StringIO()), bar=False))
    prompt = ("灯台 🌅 " * 600)[:3000].strip()
    job = await core.imagine(ALICE, ReplyTo("terminal", "t"), prompt)
    await core.orchestrator.wait_idle()
    assert core.jobs.get(job.id).state is JobState.DELIVERED
    assert len(messages.quote_prompt(job.prompt)) <= 300
