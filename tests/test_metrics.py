"""/metrics: the Prometheus exposition, fed at the core's seams, behind METRICS_TOKEN when set."""

from __future__ import annotations

import math

import httpx
from prometheus_client.parser import text_string_to_metric_families

from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.jobs.model import ReplyTo
from imagine_bot.core.web.server import build_web_app, start_web

from .test_orchestrator import ALICE, BOB, recorder, run_one


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(core: ImagineCore, token: str | None = None) -> httpx.Response:
    runner, port = await start_web(build_web_app(core), "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient() as http:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return await http.get(f"http://127.0.0.1:{port}/metrics", headers=headers)
    finally:
        await runner.cleanup()


async def test_jobs_gateway_requests_credits_and_balance(core, tmp_path, sandbox):
    core.register(recorder(tmp_path))
    before = await scrape(core)
    assert before.status_code == 200 and before.headers["Content-Type"].startswith("text/plain")
    assert math.isnan(value(samples(before.text), "imagine_gateway_balance_credits"))

    await run_one(core, "a lighthouse")
    await run_one(core, "a broken dream sandbox:fail", who=BOB)
    sandbox.inject("recordInfo", status=500, msg="upstream hiccup")
    await run_one(core, "a second lighthouse")
    balance = await core.gateway.credit()

    found = samples((await scrape(core)).text)
    assert value(found, "imagine_jobs_total", platform="terminal", outcome="delivered") == 2
    assert value(found, "imagine_jobs_total", platform="terminal", outcome="failed") == 1
    assert value(found, "imagine_job_seconds_count") == 2
    assert value(found, "imagine_delivery_overhead_seconds_count") == 2
    assert value(found, "imagine_credits_spent_total", scope="terminal") == 36
    assert value(found, "imagine_gateway_requests_total", endpoint="createTask", code="200") == 3
    assert value(found, "imagine_gateway_requests_total", endpoint="recordInfo", code="500") == 1
    assert value(found, "imagine_gateway_requests_total", endpoint="download", code="200") == 2
    assert value(found, "imagine_gateway_requests_total", endpoint="credit", code="200") == 1
    assert value(found, "imagine_gateway_balance_credits") == balance == sandbox.credits
    assert value(found, "imagine_jobs_in_flight") == 0 and value(found, "imagine_queue_depth") == 0
    assert core.ledger.balance(ALICE).balance == 180 - 36


async def test_in_flight_and_queue_depth_are_read_when_scraped(make_settings, tmp_path, make_sandbox):
    gateway = await make_sandbox(delays={"waiting": 0.5, "queuing": 0.1, "generating": 0.2})
    async with ImagineCore.open(make_settings(MODKIE_BASE_URL=gateway.base_url, MAX_ACTIVE_JOBS=1)) as core:
        core.register(recorder(tmp_path))
        await core.imagine(ALICE, ReplyTo("terminal", "t"), "one")
        await core.imagine(BOB, ReplyTo("terminal", "t"), "two")
        await core.imagine(UserRef("terminal", "local", "carol"), ReplyTo("terminal", "t"), "three")
        # the scrape's own round trip lets the job tasks run: the first goes to the gateway, two wait
        found = samples((await scrape(core)).text)
        assert value(found, "imagine_jobs_in_flight") == 3
        assert value(found, "imagine_queue_depth") == 2
        await core.orchestrator.wait_idle()


async def test_metrics_token_is_required_when_set(make_settings):
    async with ImagineCore.open(make_settings(METRICS_TOKEN="scrape-me")) as core:
        assert (await scrape(core)).status_code == 401
        assert (await scrape(core, "wrong")).status_code == 401
        ok = await scrape(core, "scrape-me")
        assert ok.status_code == 200 and "imagine_jobs_in_flight" in ok.text


async def test_each_core_has_its_own_registry(make_settings, tmp_path):
    async with ImagineCore.open(make_settings()) as one, ImagineCore.open(
            make_settings(IMAGINE_DB_PATH=tmp_path / "two.db")) as two:
        one.register(recorder(tmp_path))
        await run_one(one, "only in the first")
        assert value(samples((await scrape(one)).text), "imagine_jobs_total", platform="terminal",
                     outcome="delivered") == 1
        assert value(samples((await scrape(two)).text), "imagine_jobs_total", platform="terminal",
                     outcome="delivered") == 0


async def test_the_gateway_balance_is_read_at_start(core, sandbox):
    assert math.isnan(core.metrics.last_balance())
    await core.start()
    assert core.metrics.last_balance() == sandbox.credits
    sandbox.inject("credit", status=401, times=10)
    assert await core.read_balance() is None  # a refused read keeps the last value
    assert core.metrics.last_balance() == sandbox.credits
