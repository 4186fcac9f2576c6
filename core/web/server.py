"""The one web server: ``/healthz``, ``/metrics`` (Prometheus; a bearer token when ``METRICS_TOKEN`` is
set), ``/callbacks/modkie`` (gateway callbacks), ``/refs/<token>`` (reference images for the gateway, see
``core.media.refstore``), the ``/admin`` dashboard (``core/web/dashboard``) and, when a front end adds
them, its own routes (Slack's ``/slack/events`` in HTTP mode).

A callback wakes the job's tracker. Most callbacks are hints, confirmed with recordInfo before anything
is delivered or charged; a ModKie account webhook signed over its whole body with a final state carries
the answer itself and is acted on directly (``read_callback``). A callback for an active job tracked by
another process (several processes on one database) is passed on through the database (``core/jobs/relay.py``).
It is answered at once, so the gateway never waits on us.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from imagine_bot.core import __version__
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.errors import GatewayProtocolError, PermissionDenied
from imagine_bot.core.gateway import read_callback
from imagine_bot.core.gateway.callbacks import MAX_CALLBACK_BYTES
from imagine_bot.core.media.refstore import RefRefused, same_secret
from imagine_bot.core.web.dashboard import add_dashboard

log = logging.getLogger(__name__)

CORE_KEY: web.AppKey[ImagineCore] = web.AppKey("core", ImagineCore)
#: what front ends add to ``/healthz`` (Discord: its shards), by name
StatusFn = Callable[[], Mapping[str, Any]]
STATUS_KEY: web.AppKey[dict[str, StatusFn]] = web.AppKey("status", dict)


def add_status(app: web.Application, name: str, status: StatusFn) -> None:
    """Show ``status()`` under ``name`` in ``/healthz`` (a front end's own state, such as Discord shards)."""
    app[STATUS_KEY][name] = status


def build_web_app(core: ImagineCore) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[CORE_KEY] = core
    app[STATUS_KEY] = {}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    add_dashboard(app, core)
    app.router.add_post("/callbacks/modkie", modkie_callback)
    app.router.add_get("/refs/{token}", serve_ref)
    return app


async def serve_ref(request: web.Request) -> web.StreamResponse:
    """A reference image for the gateway: only with a valid, unexpired signed token; nothing else."""
    core = request.app[CORE_KEY]
    try:
        ref = core.refs.open(request.match_info["token"])
    except RefRefused as refused:
        log.info("refs: refused a request (%s)", refused.admin_message)
        return web.Response(status=refused.status, text=f"{refused.status}: {refused.admin_message}\n")
    log.info("refs: serving %s to %s", ref.path.name, request.remote)
    return web.FileResponse(ref.path, headers={
        "Content-Type": ref.content_type, "Cache-Control": "private, max-age=300",
        "X-Content-Type-Options": "nosniff", "Content-Disposition": "inline",
    })


def may_read_metrics(request: web.Request) -> bool:
    """``METRICS_TOKEN`` unset, or the request carries it as a bearer token: who may read ``/metrics``, and
    the gateway balance wherever else it shows."""
    token = request.app[CORE_KEY].settings.METRICS_TOKEN
    if token is None:
        return True
    return same_secret(request.headers.get("Authorization", ""), f"Bearer {token.get_secret_value()}")


async def healthz(request: web.Request) -> web.Response:
    """Up or down, for load balancers and orchestrators. The gateway account's balance is the operator's
    business: shown only to a request that could read ``/metrics`` (``may_read_metrics``)."""
    core = request.app[CORE_KEY]
    try:
        core.store.ping()
    except Exception as exc:  # the database is the one thing we cannot work without
        return web.json_response({"ok": False, "error": type(exc).__name__}, status=503)
    gateway = core.account.snapshot()
    if not may_read_metrics(request):
        gateway.pop("balance", None)
    return web.json_response({
        "ok": True,
        # degraded (not down): new jobs are paused while the gateway account cannot pay for them
        "status": gateway["status"],
        "gateway": gateway,
        "version": __version__,
        "jobs_in_flight": core.orchestrator.in_flight,
        "frontends": sorted(core.orchestrator.frontends),
        **{name: dict(status()) for name, status in request.app[STATUS_KEY].items()},
    })


async def metrics(request: web.Request) -> web.Response:
    core = request.app[CORE_KEY]
    if not may_read_metrics(request):
        return web.Response(status=401, text="a bearer token is required (METRICS_TOKEN)\n",
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    body, content_type = core.metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def modkie_callback(request: web.Request) -> web.Response:
    core = request.app[CORE_KEY]
    secret = core.settings.MODKIE_WEBHOOK_SECRET
    if (request.content_length or 0) > MAX_CALLBACK_BYTES:
        log.warning("gateway callback of %s bytes refused unread", request.content_length)
        return web.json_response({"ok": False, "error": "too large"}, status=413)
    body = b""
    while len(body) <= MAX_CALLBACK_BYTES:  # read no more than the limit, whatever Content-Length said
        chunk = await request.content.read(MAX_CALLBACK_BYTES + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > MAX_CALLBACK_BYTES:
        log.warning("gateway callback over %d bytes refused", MAX_CALLBACK_BYTES)
        return web.json_response({"ok": False, "error": "too large"}, status=413)
    try:
        callback = read_callback(body, request.headers, secret.get_secret_value() if secret else None)
    except PermissionDenied:
        log.warning("gateway callback with a bad or missing signature refused")
        return web.json_response({"ok": False, "error": "bad signature"}, status=401)
    except GatewayProtocolError as exc:
        log.warning("unreadable gateway callback: %s", exc.admin_message)
        return web.json_response({"ok": False, "error": "unreadable"}, status=400)
    woke = core.orchestrator.notify(callback.task_id, callback.final)
    if not woke:
        job = core.jobs.by_task_id(callback.task_id)
        if job is not None and not job.state.final and job.owner != core.orchestrator.owner:
            core.relay.publish(callback.task_id, callback.final)  # its tracker runs in another process
    log.info("gateway callback for task %s (%s, %s)", callback.task_id,
             f"signed final {callback.final.stage.value}" if callback.final else "a hint",
             "tracked" if woke else "not tracked here")
    return web.json_response({"ok": True})


async def start_web(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner (to clean up) and the bound port (port 0 picks one)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)
