"""The dashboard's pages under ``/admin``: read-only, server-rendered (Jinja2), charts as inline SVG.

    GET  /admin/login?t=TOKEN   a page with a "Sign in" button (POSTs the token: link previews cannot use it)
    POST /admin/login           redeems the one-time link, sets the session cookie, goes to /admin/usage
    GET  /admin/usage           spend per day (chart), per scope, per channel, top users, budgets, balance;
                                operators: billed but not delivered, the day by day reconciliation, and the
                                workspaces that installed the app
    GET  /admin/jobs            recent jobs (filters: days, state, platform, text) with their approvals (state,
                                reviewer, reason), failures by cause (chart)
    GET  /admin/gallery         thumbnails of delivered images with prompt, who, where and a link to the message
    GET  /admin/thumbs/{id}.webp
    POST /admin/logout

A community admin's session is bound to their server or workspace: every query is limited to it, and
asking for another scope is refused.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web

from imagine_bot.core.jobs.model import JobState
from imagine_bot.core.storage.dashboard import Filter, Queries, message_link
from imagine_bot.core.web.dashboard.auth import COOKIE, DashboardAuth, Session
from imagine_bot.core.web.dashboard.charts import bar_chart

if TYPE_CHECKING:
    from imagine_bot.core.app import ImagineCore

log = logging.getLogger(__name__)

PERIODS = (7, 30, 90)
BALANCE_MAX_AGE_S = 60.0


@dataclass
class Dashboard:
    core: ImagineCore
    auth: DashboardAuth
    queries: Queries
    templates: jinja2.Environment
    balance_read_at: float = field(default=-math.inf)

    async def gateway_balance(self) -> float | None:
        """The last balance the gateway reported; read again when older than a minute. None without a
        gateway to ask (``imagine-bot dashboard`` with no key): nothing is sent anywhere then."""
        if not self.core.settings.gateway_usable:
            return None
        gauge = self.core.metrics.last_balance()
        if math.isnan(gauge) or time.monotonic() - self.balance_read_at > BALANCE_MAX_AGE_S:
            self.balance_read_at = time.monotonic()
            fresh = await self.core.read_balance()
            if fresh is not None:
                return float(fresh)
        return None if math.isnan(gauge) else gauge


DASHBOARD_KEY: web.AppKey[Dashboard] = web.AppKey("dashboard", Dashboard)


def add_dashboard(app: web.Application, core: ImagineCore) -> None:
    env = jinja2.Environment(loader=jinja2.PackageLoader("imagine_bot.core.web.dashboard", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    app[DASHBOARD_KEY] = Dashboard(core, core.dashboard_auth, core.stores.dashboard, env)
    app.router.add_get("/admin", home)
    app.router.add_get("/admin/", home)
    app.router.add_get("/admin/login", login_page)
    app.router.add_post("/admin/login", login)
    app.router.add_post("/admin/logout", logout)
    app.router.add_get("/admin/usage", usage)
    app.router.add_get("/admin/jobs", jobs)
    app.router.add_get("/admin/gallery", gallery)
    app.router.add_get("/admin/thumbs/{job_id}.webp", thumbnail)


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/admin/usage")


def _page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    dash = request.app[DASHBOARD_KEY]
    html = dash.templates.get_template(template).render(**context)
    response = web.Response(text=html, status=status, content_type="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; " \
                                                  "form-action 'self'; frame-ancestors 'none'"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


_ERRORS: dict[int, type[web.HTTPException]] = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized,
                                               403: web.HTTPForbidden}


def _refused(request: web.Request, status: int, title: str, text: str) -> web.HTTPException:
    """A refusal page, as an exception to raise."""
    page = _page(request, "message.html", status, title=title, text=text, session=None, token=None)
    error = _ERRORS[status](text=page.text, content_type="text/html")
    error.headers.update({k: v for k, v in page.headers.items() if k != "Content-Type"})
    return error


NEED_LINK = ("Sign in with a one-time link: type `/imagine admin dashboard` in Slack or Discord (operators and "
             "server or workspace admins), or run `imagine-bot dashboard-link` on the bot's machine.")


# ---------------------------------------------------------------------- sign-in
async def login_page(request: web.Request) -> web.Response:
    token = request.query.get("t", "")
    if not token:
        raise _refused(request, 400, "No sign-in link", NEED_LINK)
    return _page(request, "message.html", title="Sign in to the imagine-bot dashboard",
                 text="This link works once and for ten minutes.", session=None, token=token)


async def login(request: web.Request) -> web.Response:
    dash = request.app[DASHBOARD_KEY]
    form = await request.post()
    session = dash.auth.redeem(str(form.get("t", "")))
    if session is None:
        raise _refused(request, 403, "This sign-in link cannot be used",
                        "It has expired (links last ten minutes) or was used already (each works once). " + NEED_LINK)
    log.info("dashboard: %s signed in (%s)", session.actor, session.scope or "every place")
    response = web.HTTPSeeOther("/admin/usage")
    response.set_cookie(COOKIE, dash.auth.cookie(session), max_age=session.expires - int(time.time()),
                        path="/admin", httponly=True, samesite="Strict",
                        secure=dash.core.settings.web_url.startswith("https://"))
    raise response


async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/admin/login")
    response.del_cookie(COOKIE, path="/admin")
    raise response


def _session(request: web.Request) -> Session:
    session = request.app[DASHBOARD_KEY].auth.session(request.cookies.get(COOKIE))
    if session is None:
        raise _refused(request, 401, "Please sign in", NEED_LINK)
    return session


def _filter(request: web.Request, session: Session) -> Filter:
    """The page's filters, inside the viewer's scope: a community admin cannot widen or change it."""
    q = request.query
    asked = q.get("scope") or None
    if session.scope is not None and asked not in (None, session.scope):
        raise _refused(request, 403, "Not your server or workspace", f"You can see {session.scope} only.")
    try:
        days = int(q.get("days", "30"))
    except ValueError:
        days = 30
    state = q.get("state") or None
    return Filter(scope=session.scope or asked, days=days if days in PERIODS else 30,
                  state=state if state in {s.value for s in JobState} else None,
                  platform=q.get("platform") or None, text=(q.get("q") or "").strip()[:100] or None)


def _common(request: web.Request, session: Session, f: Filter, page: str) -> dict[str, Any]:
    """What every page shows: the header, the filters (with the scopes to pick from) and, for a scope the
    bot has never seen, a notice that says so instead of a page of zeros."""
    dash = request.app[DASHBOARD_KEY]
    known = dash.queries.known_scopes() if session.scope is None else []
    notice = None
    if session.scope is None and f.scope is not None and not dash.queries.scope_known(f.scope):
        notice = (f"{f.scope} is not a server or workspace this bot knows: no job was made there and it has no "
                  "budget. Check the id (discord:SERVER_ID, slack:TEAM_ID)" +
                  (f", or pick one of: {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}." if known else "."))
    return {"session": session, "f": f, "page": page, "periods": PERIODS, "token": None, "known_scopes": known,
            "scope_notice": notice}


# ---------------------------------------------------------------------- pages
async def usage(request: web.Request) -> web.Response:
    session = _session(request)
    dash = request.app[DASHBOARD_KEY]
    f = _filter(request, session)
    per_day = dash.queries.spend_per_day(f)
    chart = bar_chart([(d.strftime("%d %b"), v) for d, v in per_day], unit=" credits",
                      title=f"Credits spent per day, last {f.days} days", label_every=max(1, len(per_day) // 8),
                      dates=True)
    budgets = [b for b in dash.core.budgets.all()
               if f.scope is None or b.scope == f.scope or b.scope.startswith(f.scope + "#")]
    operator = session.scope is None
    settings = dash.core.settings
    gateway = None
    if operator:  # the operator's own account: not a community admin's to see
        gateway = {"balance": await dash.gateway_balance(), "pretend": settings.sandbox,
                   "usable": settings.gateway_usable, "name": settings.gateway_name}
    # the gateway account is the operator's: what it billed for nothing, and the balance against the spend
    undelivered = dash.queries.billed_not_delivered(f) if operator else None
    reconciliation = dash.queries.reconciliation(f.days) if operator and f.scope is None else None
    # where the app is installed (distributed mode): operators only, no token is read
    installed = dash.core.stores.installed_places() if operator else []
    return _page(request, "usage.html", **_common(request, session, f, "usage"), chart=chart,
                 total=sum(v for _, v in per_day), by_scope=dash.queries.spend_by(f, "scope"),
                 by_channel=dash.queries.spend_by(f, "channel"), top_users=dash.queries.spend_by(f, "account", 10),
                 budgets=budgets, gateway=gateway, undelivered=undelivered, reconciliation=reconciliation,
                 installed=installed)


async def jobs(request: web.Request) -> web.Response:
    session = _session(request)
    dash = request.app[DASHBOARD_KEY]
    f = _filter(request, session)
    causes = dash.queries.failures_by_cause(f)
    chart = bar_chart(causes, title="Failures by cause", unit=" jobs") if causes else None
    found = dash.queries.recent_jobs(f)
    approvals = dash.core.approvals.store.for_jobs(j.id for j in found)
    return _page(request, "jobs.html", **_common(request, session, f, "jobs"), jobs=found, approvals=approvals,
                 chart=chart, causes=causes, states=[s.value for s in JobState])


async def gallery(request: web.Request) -> web.Response:
    session = _session(request)
    dash = request.app[DASHBOARD_KEY]
    f = _filter(request, session)
    items = [(job, message_link(job)) for job in dash.queries.gallery(f)]
    return _page(request, "gallery.html", **_common(request, session, f, "gallery"), items=items,
                 keep_days=dash.core.settings.THUMBNAIL_KEEP_DAYS)


async def thumbnail(request: web.Request) -> web.Response:
    session = _session(request)
    dash = request.app[DASHBOARD_KEY]
    job_id = request.match_info["job_id"]
    scope = dash.queries.scope_of(job_id)
    thumb = dash.core.thumbnails.get(job_id) if scope is not None and session.sees(scope) else None
    if thumb is None:
        raise web.HTTPNotFound()
    return web.Response(body=thumb.webp, content_type="image/webp",
                        headers={"Cache-Control": "private, max-age=3600"})
