"""The sandbox gateway: the ModKie / kie.ai jobs contract served locally, so an install can be staged
without spending credits, and tests and benchmarks have a real server to talk to.

Endpoints (same envelope ``{"code", "msg", "data"}`` as the real thing; errors are ``{"code": 422, ...}``
in an HTTP 200 body, like the gateway):

- ``POST /api/v1/jobs/createTask``: validates ``model`` (``seedream/4.5-text-to-image`` or
  ``seedream/4.5-edit``), ``input.prompt`` (non-empty, <= 3000 characters), ``input.aspect_ratio`` (the kie
  set), ``input.quality`` (``basic``/``high``) and, for the edit model, ``input.image_urls`` (1 to 14
  http(s) URLs); answers ``{"taskId": "task_seedream_<13-digit ms><4 digits>"}``.
- The edit model is real: the sandbox downloads every reference at once (like the gateway, with no key;
  ``fetched`` records each URL and its HTTP status), and the task fails with a failMsg naming the first
  reference it could not use (not fetched, not jpeg/png/webp, over 10 MB). The result is the first
  reference, recoloured and cropped to the aspect ratio, with the others as thumbnails and the prompt as a
  caption (``render.render_edit_png``). A task does not finish before its references are in.
- ``GET /api/v1/jobs/recordInfo?taskId=``: an unknown id answers ``{"code": 422, "msg": "recordInfo is
  null"}``. The state is computed from the task's age on each poll (no timers): ``waiting`` -> ``queuing``
  -> ``generating`` (with ``progress`` 0-100) -> ``success``, spending ``delays[state]`` seconds in each.
  The ``modkie`` dialect says ``pending``/``processing`` and sends ``resultJson`` as an object; ``kie``
  sends it as a JSON string. Credits are charged only on success (``consumeCredits``/``remainedCredits``).
- ``GET /api/v1/chat/credit``, ``GET /api/v1/models`` (with ``creditCost``), ``GET /healthz``.
- ``POST /api/gateway/webhooks {"url", "secret"}``: registers the account webhook (one per account;
  registering again replaces it; ``GET`` shows the URL, never the secret). From then on every task that
  ends is also POSTed there in the ModKie shape (``{"event": "task.completed", "taskId", "state",
  "result": {"resultUrls": [...]}, ...}``), signed over the raw body with ``X-ModKie-Signature:
  sha256=<hex>`` when a secret was given.
- ``GET /files/{taskId}/{n}.png``: the result images, rendered once on first download (in a thread).

With ``state_path`` the tasks are kept in that small JSON file (``state.py``) and found again by the next
``start()``: a job in flight resumes across a restart of the bot that embeds the sandbox.

When ``api_key`` is set, ``/api/`` requests without ``Authorization: Bearer <api_key>`` get HTTP 401.
With a ``callBackUrl``, the recordInfo envelope (code 200, or 501 on failure) is POSTed there when the
task ends, signed with the kie ``X-Webhook-*`` headers when ``webhook_secret`` is set; a receiver that is
down is tolerated.

Magic words, for staging by hand (anywhere in the prompt):

- ``sandbox:fail``: the task ends in state ``fail`` with failMsg "sandbox: generation failed on request";
- ``sandbox:slow``: every delay is ten times longer.

Faults for tests: ``inject(endpoint, ...)`` queues one fault for the next ``times`` calls of an endpoint:
a raw HTTP status, an envelope ``code`` in a 200 body, a raw ``body``, extra ``headers``, a ``hang`` (sleep
that long before answering) or, for recordInfo, a reported ``state``; ``clear_faults`` drops the ones
left. For the ``callback`` endpoint the fault changes the outgoing callback (``body``, ``code``, ``state``,
``hang`` before sending); for the ``webhook`` endpoint, the outgoing account webhook (``body``, ``state``,
``hang``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from imagine_bot.core.gateway.callbacks import KIE_SIGNATURE, KIE_TIMESTAMP, MODKIE_SIGNATURE, sign_kie, sign_modkie
from imagine_bot.core.gateway.catalog import (
    CATALOG,
    KIE_ASPECT_RATIOS,
    REFERENCE_MAX_BYTES,
    SEEDREAM_45,
    SEEDREAM_45_EDIT,
)
from imagine_bot.core.media.imaging import sniff
from imagine_bot.core.sandbox import state as saved_state
from imagine_bot.core.sandbox.render import render_edit_png, render_png

log = logging.getLogger(__name__)

DEFAULT_DELAYS = {"waiting": 0.3, "queuing": 0.3, "generating": 1.0}
WALK = ("waiting", "queuing", "generating")
MODKIE_STATES = {"waiting": "pending", "queuing": "pending", "generating": "processing"}
ENDPOINTS = frozenset({"createTask", "recordInfo", "download", "callback", "webhook", "webhooks", "credit",
                       "models"})
QUALITIES = ("basic", "high")
FAIL_MESSAGE = "sandbox: generation failed on request"
INJECTED_FAIL_MESSAGE = "sandbox: injected failure"
FAIL_STATES = frozenset({"fail", "failed"})
SUCCESS_STATES = frozenset({"success", "completed"})


@dataclass
class SandboxTask:
    task_id: str
    model: str
    input: dict[str, Any]
    callback_url: str | None
    #: loop time and epoch milliseconds at creation
    created: float
    created_ms: int
    delays: dict[str, float]
    fails: bool
    charged: int | None = None
    images: dict[int, bytes] = field(default_factory=dict)
    render_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    fail_msg: str = FAIL_MESSAGE
    #: an edit's references, once downloaded (None while they are being fetched)
    references: list[bytes] | None = None
    edit: bool = False
    #: set when an edit's references are in (or failed)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def duration(self) -> float:
        return sum(self.delays.get(state, 0.0) for state in WALK)


@dataclass
class Fault:
    status: int
    code: int | None
    msg: str
    body: bytes | None
    headers: dict[str, str]
    hang: float | None
    state: str | None
    times: int


def stage_at(elapsed: float, delays: dict[str, float], fails: bool = False) -> tuple[str, int | None]:
    """The kie state and progress of a task ``elapsed`` seconds old (pure, for the walk)."""
    start = 0.0
    for state in WALK:
        length = delays.get(state, 0.0)
        if elapsed < start + length:
            progress = int(100 * (elapsed - start) / length) if state == "generating" else None
            return state, progress
        start += length
    return ("fail", None) if fails else ("success", 100)


class SandboxGateway:
    """A local stand-in for the gateway. ``start()`` it, point a ``GatewayClient`` at ``base_url``."""

    def __init__(
        self,
        *,
        delays: dict[str, float] | None = None,
        image_scale: float = 1.0,
        dialect: str = "kie",
        api_key: str | None = None,
        webhook_secret: str | None = None,
        credits: int = 100000,
        cost: int = 18,
        latency: float = 0.0,
        costs: dict[str, int] | None = None,
        state_path: Path | None = None,
    ) -> None:
        if dialect not in ("kie", "modkie"):
            raise ValueError(f"dialect must be 'kie' or 'modkie', not {dialect!r}")
        self.delays = {**DEFAULT_DELAYS, **(delays or {})}
        self.image_scale = image_scale
        self.dialect = dialect
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.credits = credits
        self.cost = cost
        #: credits per model (``/api/v1/models``, and what a success charges); ``cost`` for the others
        self.costs = {spec_id: cost for spec_id in CATALOG} | (costs or {})
        self.latency = latency
        #: every reference the edit model downloaded: (url, HTTP status or 0 when unreachable)
        self.fetched: list[tuple[str, int]] = []
        self.requests: collections.Counter[str] = collections.Counter()
        self.tasks: dict[str, SandboxTask] = {}
        self._faults: dict[str, collections.deque[Fault]] = collections.defaultdict(collections.deque)
        self._background: set[asyncio.Task[None]] = set()
        #: recordInfo requests in flight that a fault told to report a given state
        self._forced_states: dict[int, str] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        self._base_url: str | None = None
        self._random = random.Random()
        #: the registered account webhook: (url, secret or None)
        self.account_webhook: tuple[str, str | None] | None = None
        self.state_path = state_path

    def __repr__(self) -> str:
        return f"SandboxGateway(base_url={self._base_url!r}, dialect={self.dialect!r})"

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the sandbox gateway is not started")
        return self._base_url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (port 0 picks a free one); returns the base URL."""
        app = web.Application(middlewares=[self._middleware], client_max_size=1024 * 1024)
        app.router.add_post("/api/v1/jobs/createTask", self._create_task, name="createTask")
        app.router.add_get("/api/v1/jobs/recordInfo", self._record_info, name="recordInfo")
        app.router.add_get("/api/v1/chat/credit", self._credit, name="credit")
        app.router.add_get("/api/v1/models", self._models, name="models")
        app.router.add_post("/api/gateway/webhooks", self._register_webhook, name="webhooks")
        app.router.add_get("/api/gateway/webhooks", self._show_webhook, name="webhookInfo")
        app.router.add_get("/files/{task_id}/{n:\\d+}.png", self._file, name="download")
        app.router.add_get("/healthz", self._healthz, name="healthz")
        self._stopping.clear()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        self._base_url = f"http://{shown}:{bound}"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        if self.state_path is not None:
            self._restore(self.state_path)
        return self._base_url

    async def stop(self) -> None:
        """Stop serving: end hangs, cancel pending callbacks, close the server and the callback session."""
        self._stopping.set()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def drain(self) -> None:
        """Wait until every scheduled callback has been sent (or has failed)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # ------------------------------------------------------------------ persistence
    def _restore(self, path: Path) -> None:
        """Take back the tasks a previous run saved, their age counted in wall-clock time."""
        saved, credits = saved_state.load(path)
        loop_now, now_ms = asyncio.get_running_loop().time(), int(time.time() * 1000)
        for s in saved:
            task = SandboxTask(task_id=s.task_id, model=s.model, input=s.input, callback_url=s.callback_url,
                               created=loop_now - (now_ms - s.created_ms) / 1000, created_ms=s.created_ms,
                               delays=s.delays, fails=s.fails, charged=s.charged, fail_msg=s.fail_msg,
                               edit=s.model == SEEDREAM_45_EDIT.id)
            self.tasks.setdefault(task.task_id, task)
            if task.edit:  # the references are needed again to render the result
                self._schedule(self._fetch_references(task))
            if task.charged is None:  # not ended yet: its callback or webhook is still to come
                self._schedule(self._at_end(task))
        if credits is not None:
            self.credits = credits
        if saved:
            log.info("sandbox: %d task(s) taken back from %s", len(saved), path)

    def _save(self) -> None:
        if self.state_path is None:
            return
        saved = [saved_state.SavedTask(t.task_id, t.model, t.input, t.callback_url, t.created_ms, t.delays,
                                       t.fails, t.charged, t.fail_msg) for t in self.tasks.values()]
        saved_state.save(self.state_path, saved, self.credits)

    # ------------------------------------------------------------------ faults
    def inject(self, endpoint: str, *, status: int = 200, code: int | None = None, msg: str = "",
               body: bytes | None = None, headers: dict[str, str] | None = None, times: int = 1,
               hang: float | None = None, state: str | None = None) -> None:
        """Queue a fault for the next ``times`` calls of ``endpoint`` (see the module docstring)."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; known: {', '.join(sorted(ENDPOINTS))}")
        if times < 1:
            raise ValueError("times must be at least 1")
        self._faults[endpoint].append(Fault(status, code, msg, body, dict(headers or {}), hang, state, times))

    def clear_faults(self, endpoint: str | None = None) -> None:
        """Drop the faults still queued for ``endpoint`` (all endpoints: None), e.g. to release a task held
        in ``generating`` by ``inject("recordInfo", state="generating", times=...)``."""
        for name, queue in self._faults.items():
            if endpoint is None or name == endpoint:
                queue.clear()

    def _take_fault(self, endpoint: str) -> Fault | None:
        queue = self._faults.get(endpoint)
        if not queue:
            return None
        fault = queue[0]
        fault.times -= 1
        if fault.times <= 0:
            queue.popleft()
        return fault

    async def _hang(self, seconds: float) -> None:
        """Sleep, but end at once when the sandbox stops (so stop() never waits on a hung request)."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass

    # ------------------------------------------------------------------ HTTP plumbing
    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        endpoint = request.match_info.route.name or "other"
        self.requests[endpoint] += 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        fault = self._take_fault(endpoint) if endpoint in ENDPOINTS else None
        if fault is not None:
            if fault.hang:
                await request.read()  # take the body first, as a real server would before stalling
                await self._hang(fault.hang)
            response = self._fault_response(fault)
            if response is not None:
                return response
        if self.api_key and request.path.startswith("/api/") and not self._authorised(request):
            return _envelope(401, "You do not have access permissions", status=401)
        if fault is None or fault.state is None:
            return await handler(request)
        self._forced_states[id(request)] = fault.state
        try:
            return await handler(request)
        finally:
            self._forced_states.pop(id(request), None)

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    @staticmethod
    def _fault_response(fault: Fault) -> web.Response | None:
        if fault.body is not None:
            headers = {"Content-Type": "application/json", **fault.headers}
            return web.Response(body=fault.body, status=fault.status, headers=headers)
        if fault.code is not None:
            return _envelope(fault.code, fault.msg or f"sandbox: injected code {fault.code}",
                             status=fault.status, headers=fault.headers)
        if fault.status != 200:
            return _envelope(fault.status, fault.msg or f"sandbox: injected HTTP {fault.status}",
                             status=fault.status, headers=fault.headers)
        return None  # a hang, or a state for recordInfo: the handler answers

    # ------------------------------------------------------------------ endpoints
    async def _create_task(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
        except ValueError:
            return _envelope(400, "request body is not JSON")
        problem = _validate(payload)
        if problem:
            return _envelope(422, problem)
        if self.credits < self.costs.get(payload["model"], self.cost):
            return _envelope(402, "Credits insufficient")
        prompt: str = payload["input"]["prompt"]
        slow = 10.0 if "sandbox:slow" in prompt else 1.0
        task = SandboxTask(
            task_id=self._new_task_id(),
            model=payload["model"],
            input=dict(payload["input"]),
            callback_url=payload.get("callBackUrl") or None,
            created=asyncio.get_running_loop().time(),
            created_ms=int(time.time() * 1000),
            delays={state: self.delays.get(state, 0.0) * slow for state in WALK},
            fails="sandbox:fail" in prompt,
            edit=payload["model"] == SEEDREAM_45_EDIT.id,
        )
        self.tasks[task.task_id] = task
        self._save()
        if task.edit:
            self._schedule(self._fetch_references(task))
        if task.callback_url or self.account_webhook:
            self._schedule(self._at_end(task))
        return _envelope(200, "success", {"taskId": task.task_id})

    async def _record_info(self, request: web.Request) -> web.Response:
        task = self.tasks.get(request.query.get("taskId", ""))
        if task is None:
            return _envelope(422, "recordInfo is null")
        return _envelope(200, "success", self._record(task, self._forced_states.get(id(request))))

    async def _register_webhook(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
        except ValueError:
            return _envelope(400, "request body is not JSON")
        url = payload.get("url") if isinstance(payload, dict) else None
        secret = payload.get("secret") if isinstance(payload, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return _envelope(422, "url must be an http(s) URL")
        if secret is not None and not isinstance(secret, str):
            return _envelope(422, "secret must be a string")
        self.account_webhook = (url, secret or None)
        return _envelope(200, "success", {"url": url, "signed": bool(secret)})

    async def _show_webhook(self, request: web.Request) -> web.Response:
        if self.account_webhook is None:
            return _envelope(200, "success", {"url": None, "signed": False})
        return _envelope(200, "success", {"url": self.account_webhook[0], "signed": bool(self.account_webhook[1])})

    async def _credit(self, request: web.Request) -> web.Response:
        for task in self.tasks.values():
            self._state(task)  # settle finished tasks so the balance is current
        return _envelope(200, "success", self.credits)

    async def _models(self, request: web.Request) -> web.Response:
        return _envelope(200, "success", [
            {"model": spec.id, "name": spec.label, "capability": "image", "creditCost": self.costs[spec.id]}
            for spec in CATALOG.values()
        ])

    async def _file(self, request: web.Request) -> web.Response:
        task = self.tasks.get(request.match_info["task_id"])
        n = int(request.match_info["n"])
        if task is None or n != 0 or self._state(task)[0] != "success":
            return _envelope(404, "file not found", status=404)
        async with task.render_lock:
            if n not in task.images and task.edit:
                task.images[n] = await asyncio.to_thread(
                    render_edit_png, task.references or [], task.input["prompt"], task.input["aspect_ratio"],
                    task.input["quality"], self.image_scale)
            elif n not in task.images:
                task.images[n] = await asyncio.to_thread(
                    render_png, task.input["prompt"], task.input["aspect_ratio"], task.input["quality"],
                    self.image_scale)
        return web.Response(body=task.images[n], content_type="image/png")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "sandbox": True, "tasks": len(self.tasks)})

    # ------------------------------------------------------------------ tasks
    def _new_task_id(self) -> str:
        while True:
            task_id = f"task_seedream_{int(time.time() * 1000):013d}{self._random.randrange(10000):04d}"
            if task_id not in self.tasks:
                return task_id

    def _state(self, task: SandboxTask) -> tuple[str, int | None]:
        """The task's kie state now; charges the credits the first time success is seen."""
        elapsed = asyncio.get_running_loop().time() - task.created
        state, progress = stage_at(elapsed, task.delays, task.fails)
        if task.edit and task.references is None and not task.fails and state in ("success", "fail"):
            return "generating", 99  # still fetching the references
        if task.charged is None and state in ("success", "fail"):
            task.charged = self.costs.get(task.model, self.cost) if state == "success" else 0
            self.credits -= task.charged
            self._save()
        return state, progress

    def _record(self, task: SandboxTask, forced_state: str | None = None) -> dict[str, Any]:
        """The recordInfo ``data`` for a task, in the configured dialect."""
        state, progress = self._state(task)
        if forced_state is not None:
            state, progress = forced_state, None
        kie = self.dialect == "kie"
        done = state in SUCCESS_STATES or state in FAIL_STATES
        now_ms = int(time.time() * 1000)
        result: Any = {"resultUrls": [f"{self.base_url}/files/{task.task_id}/0.png"]}
        data: dict[str, Any] = {
            "taskId": task.task_id,
            "model": task.model,
            "state": MODKIE_STATES.get(state, state) if not kie else state,
            "param": json.dumps({"model": task.model, "callBackUrl": task.callback_url, "input": task.input}),
            "resultJson": (json.dumps(result) if kie else result) if state in SUCCESS_STATES else
                          ("" if kie else None),
            "failCode": "500" if state in FAIL_STATES else ("" if kie else None),
            "failMsg": (task.fail_msg if forced_state is None else INJECTED_FAIL_MESSAGE) if state in FAIL_STATES
                       else ("" if kie else None),
            "createTime": task.created_ms,
            "updateTime": now_ms,
            "completeTime": task.created_ms + int(task.duration * 1000) if done else None,
        }
        if progress is not None:
            data["progress"] = progress
        if done:
            data["costTime"] = int(task.duration * 1000)
            data["consumeCredits"] = self.costs.get(task.model, self.cost) if state in SUCCESS_STATES else 0
            data["remainedCredits"] = self.credits
        return data

    # ------------------------------------------------------------------ the edit model's references
    async def _fetch_references(self, task: SandboxTask) -> None:
        """Download every reference as the gateway would (no key); a bad one fails the task."""
        try:
            await self._fetch_all(task)
        finally:
            task.ready.set()

    async def _fetch_all(self, task: SandboxTask) -> None:
        assert self._session is not None
        images: list[bytes] = []
        for n, url in enumerate(task.input["image_urls"]):
            problem, data = None, b""
            try:
                async with self._session.get(url) as response:
                    self.fetched.append((url, response.status))
                    if response.status != 200:
                        problem = f"HTTP {response.status}"
                    else:
                        data = await response.content.read(REFERENCE_MAX_BYTES + 1)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.fetched.append((url, 0))
                problem = type(exc).__name__
            if problem is None and len(data) > REFERENCE_MAX_BYTES:
                problem = "larger than 10 MB"
            elif problem is None and sniff(data[:16]) is None:
                problem = "not a jpeg, png or webp image"
            if problem is not None:
                task.fails, task.fail_msg = True, f"image_urls[{n}] could not be used: {problem}"
                break
            images.append(data)
        task.references = images

    # ------------------------------------------------------------------ callbacks
    def _schedule(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _at_end(self, task: SandboxTask) -> None:
        """Once the task has ended: its per-task callback, then the account webhook (whichever apply)."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, task.created + task.duration - loop.time()))
        if task.edit:
            await task.ready.wait()
        if task.callback_url:
            await self._callback(task)
        if self.account_webhook:
            await self._webhook(task, *self.account_webhook)

    async def _webhook(self, task: SandboxTask, url: str, secret: str | None) -> None:
        """POST the ModKie account webhook for an ended task, signed over the raw body when there is a secret."""
        fault = self._take_fault("webhook")
        if fault is not None and fault.hang:
            await self._hang(fault.hang)
        self.requests["webhook"] += 1
        data = self._record(task, fault.state if fault else None)
        ok = data["state"] in SUCCESS_STATES
        result = data["resultJson"]
        payload = {
            "event": "task.completed", "taskId": task.task_id, "state": data["state"], "provider": "seedream",
            "capability": "image", "model": task.model,
            "result": (json.loads(result) if isinstance(result, str) else result) if ok else None,
            "failMsg": data["failMsg"] or None, "creditsCharged": data.get("consumeCredits", 0),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        body = fault.body if fault is not None and fault.body is not None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", **(fault.headers if fault else {})}
        if secret:
            headers[MODKIE_SIGNATURE] = sign_modkie(secret, body)
        await self._post(url, body, headers, task.task_id, "account webhook")

    async def _post(self, url: str, body: bytes, headers: dict[str, str], task_id: str, what: str) -> None:
        assert self._session is not None
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                log.debug("sandbox %s for %s -> HTTP %d", what, task_id, response.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("sandbox %s for %s to %s failed: %s", what, task_id, url, type(exc).__name__)

    async def _callback(self, task: SandboxTask) -> None:
        """POST the recordInfo envelope to the task's callBackUrl (it has ended)."""
        assert task.callback_url is not None
        fault = self._take_fault("callback")
        if fault is not None and fault.hang:
            await self._hang(fault.hang)
        self.requests["callback"] += 1
        data = self._record(task, fault.state if fault else None)
        ok = data["state"] in SUCCESS_STATES
        code = fault.code if fault is not None and fault.code is not None else (200 if ok else 501)
        body = json.dumps({"code": code, "msg": "success" if ok else data["failMsg"], "data": data}).encode()
        if fault is not None and fault.body is not None:
            body = fault.body
        headers = {"Content-Type": "application/json", **(fault.headers if fault else {})}
        if self.webhook_secret:
            timestamp = str(int(time.time()))
            headers[KIE_TIMESTAMP] = timestamp
            headers[KIE_SIGNATURE] = sign_kie(self.webhook_secret, task.task_id, timestamp)
        await self._post(task.callback_url, body, headers, task.task_id, "callback")


def _validate(payload: Any) -> str | None:
    """What is wrong with a createTask body, in the gateway's words, or None."""
    if not isinstance(payload, dict):
        return "request body must be a JSON object"
    if payload.get("model") not in CATALOG:
        return f"model is not supported: {payload.get('model')!r}"
    data = payload.get("input")
    if not isinstance(data, dict):
        return "input is required"
    if payload["model"] == SEEDREAM_45_EDIT.id:
        urls = data.get("image_urls")
        low, high = SEEDREAM_45_EDIT.references
        if not isinstance(urls, list) or not low <= len(urls) <= high:
            return f"input.image_urls must be a list of {low} to {high} URLs"
        if not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls):
            return "input.image_urls must be http(s) URLs"
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "input.prompt is required"
    if len(prompt) > SEEDREAM_45.max_prompt_chars:
        return f"input.prompt must be at most {SEEDREAM_45.max_prompt_chars} characters"
    if data.get("aspect_ratio") not in KIE_ASPECT_RATIOS:
        return f"input.aspect_ratio must be one of {', '.join(KIE_ASPECT_RATIOS)}"
    if data.get("quality") not in QUALITIES:
        return f"input.quality must be one of {', '.join(QUALITIES)}"
    if "nsfw_checker" in data and not isinstance(data["nsfw_checker"], bool):
        return "input.nsfw_checker must be a boolean"
    callback = payload.get("callBackUrl")
    if callback is not None and not (isinstance(callback, str) and callback.startswith(("http://", "https://"))):
        return "callBackUrl must be an http(s) URL"
    return None


def _envelope(code: int, msg: str, data: Any = None, *, status: int = 200,
              headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": code, "msg": msg, "data": data}, status=status, headers=headers)


async def serve_forever(host: str = "127.0.0.1", port: int = 8787, **kwargs: Any) -> int:
    """Run a sandbox gateway until cancelled (``imagine-bot sandbox``, ``python -m imagine_bot.core.sandbox``)."""
    gateway = SandboxGateway(**kwargs)
    base_url = await gateway.start(host, port)
    log.info("sandbox gateway listening on %s (no credits are spent)", base_url)
    print(f"sandbox gateway listening on {base_url}  (MODKIE_BASE_URL={base_url}; Ctrl-C to stop)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await gateway.stop()
    return 0  # not reached: cancelled to stop
