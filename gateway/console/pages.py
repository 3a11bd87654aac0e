"""The console's routes: pages, htmx fragments, images and the actions, behind a session.

Every page is rendered on the server with Jinja2 (autoescape on: a prompt is always text,
never markup). The few interactive bits are htmx attributes (a fragment polled every few
seconds) and one static script (copy buttons); no inline script or style exists, so the
Content-Security-Policy below can forbid them.

Routes (under ``/ui``)::

    GET  /                      -> the overview (operators, admin keys) or the gallery
    GET  /login, POST /login    sign in with a falq API key (failures limited: 429 + Retry-After);
                                POST /logout signs out
    GET  /overview              figures, chart; /overview/live is its polled fragment
    GET  /gallery               thumbnails with filters; /gallery/grid is its polled fragment
    GET  /batches               batches with progress (extension point until batches exist)
    GET  /jobs/{id}             one job; POST /jobs/{id}/retry, POST /jobs/{id}/cancel
    GET  /jobs/{id}/thumb/{n}   a thumbnail; /jobs/{id}/image/{n} the full image (?download=1)
    GET  /static/...            falq's own CSS, JS and the vendored htmx
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
import redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from falq.gateway.auth import ApiKeys
from falq.gateway.console import data
from falq.gateway.console.access import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    KeyContext,
    Principal,
    Session,
    Sessions,
    SignInLimiter,
    check_csrf,
    client_address,
    is_https,
    principal_for_key,
    still_valid,
)
from falq.gateway.console.ahead import ThumbsAhead
from falq.gateway.console.thumbs import NoPreview, Thumbnails
from falq.gateway.core import Gateway, blocking, visible_job
from falq.producers.admin import Admin
from falq.shared.errors import InvalidInput, JobNotFound, ObjectMissing, StorageError, StorageTransientError
from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.jobs.records import FAL_OUTCOME_NOTES, STATES, JobRecord
from falq.shared.tenants.store import ApiKeyStore

HERE = Path(__file__).parent
#: What the console says for an image whose object is no longer in the bucket.
MISSING_TEXT = "no longer in the bucket"
#: The policy: only falq's own scripts, styles and images (thumbnails and images come through
#: the console's own routes, so no S3 host is needed); no inline script or style, no framing.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
MAX_FORM_BYTES = 16 * 1024
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
_NOTICES = {
    "retried": "Queued again: a new attempt of the same job.",
    "not-retried": "Not retried: only a failed job can be retried.",
    "cancelled": "Cancelled.",
    "cancel-requested": "Cancel requested: its worker cancels it at fal.",
    "final": "Nothing to cancel: the job had already ended.",
}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class Console:
    """The console's state: one per gateway app (see :func:`create_console`).

    ``ahead`` (when ``FALQ_CONSOLE_THUMBS_AHEAD_WORKERS`` > 0) makes completed jobs' thumbnails
    in background threads. It starts with the console's first request in this process
    (:meth:`start_ahead`; a mounted app gets no lifespan events, and a gateway that never
    serves the console spends nothing on it) and ends with the event loop that served it, on
    :meth:`close`, or when the console is collected.
    """

    def __init__(self, gw: Gateway, api: ApiKeys) -> None:
        s = gw.settings
        self.gw = gw
        self.keys = KeyContext(api, gw.gsettings.key_list() if api.enabled else None,
                               ApiKeyStore(gw.store.r, prefix=gw.prefix))
        self.sessions = Sessions(gw.store.r, gw.prefix, s.console_session_ttl_s)
        self.signin = SignInLimiter(gw.store.r, gw.prefix, per_address=s.console_signin_max_per_address,
                                    per_key=s.console_signin_max_per_key, window_s=s.console_signin_window_s)
        self.admin = Admin(gw.falq, s)
        self.thumbs = Thumbnails(gw.storage, s.console_thumb_px)
        self.ahead: ThumbsAhead | None = None
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                      undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters["ts"] = _fmt_ts
        self.env.filters["secs"] = _fmt_secs
        self.env.filters["usd"] = lambda v: "-" if v is None else f"${v:,.2f}"

    def start_ahead(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start making thumbnails ahead (once), for as long as ``loop`` runs (on the loop's thread)."""
        s = self.gw.settings
        if self.ahead is not None or s.console_thumbs_ahead_workers <= 0:
            return
        # alive() holds the loop only, never the console: a collected console ends the threads too.
        self.ahead = ThumbsAhead(self.gw.store.r, self.gw.store, self.thumbs, prefix=self.gw.prefix,
                                 workers=s.console_thumbs_ahead_workers, queue=s.console_thumbs_ahead_queue,
                                 alive=lambda: loop.is_running() and not loop.is_closed()).start()
        done = weakref.finalize(self, self.ahead.close, 0)  # signal only: never block a gc pass
        done.atexit = False  # daemon threads end with the process anyway

    def close(self) -> None:
        """Stop making thumbnails ahead (idempotent)."""
        if self.ahead is not None:
            self.ahead.close()

    def render(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        base = request.scope.get("root_path", "").rstrip("/")
        sess: Session | None = request.scope.get("falq.session")
        html = self.env.get_template(name).render(base=base, session=sess, csrf_field=CSRF_FIELD,
                                                  nav=ctx.pop("nav", ""), **ctx)
        return HTMLResponse(html, status, headers={"cache-control": "no-store"})


def _fmt_ts(value: float | None) -> str:
    if value is None:
        return "-"
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_secs(value: float | None) -> str:
    if value is None:
        return "still here"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _console(request: Request) -> Console:
    c: Console = request.app.state.console
    return c


class StartsAhead:
    """On the console's first request, starts its thumbnails made ahead
    (:meth:`Console.start_ahead`) for as long as the event loop serving it runs."""

    def __init__(self, app: ASGIApp, console: Console) -> None:
        self.app = app
        self.console: Console | None = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.console is not None and scope["type"] == "http":
            self.console.start_ahead(asyncio.get_running_loop())
            self.console = None  # once: then this is a plain pass-through
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Adds the CSP and the other protective headers to every answer of the console."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


# --- sessions ---------------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def _session_of(c: Console, request: Request) -> Session | None:
    """The request's session if it exists and its key is still valid (then refreshed)."""
    sess = c.sessions.get(request.cookies.get(COOKIE))
    if sess is None:
        return None
    now_p = still_valid(c.keys, sess.principal)
    if now_p is None:
        c.sessions.drop(request.cookies.get(COOKIE))
        return None
    return Session(now_p, sess.csrf, sess.created, sess.expires)


def guarded(scope: str = "read", *, action: bool = False) -> Callable[[Handler], Handler]:
    """Wrap a route: a valid session with ``scope`` is required; ``action`` also checks CSRF.

    Without a session a page redirects to the sign-in form (an htmx fragment gets
    ``HX-Redirect``); without the scope the answer is 403; an action with a missing or wrong
    CSRF token (or a foreign ``Origin``) is refused with 403 before anything is done.
    """

    def deco(fn: Handler) -> Handler:
        async def wrapper(request: Request) -> Response:
            c = _console(request)
            sess = await blocking(_session_of, c, request)
            base = request.scope.get("root_path", "").rstrip("/")
            if sess is None:
                if request.headers.get("hx-request"):
                    return Response(status_code=401, headers={"hx-redirect": f"{base}/login"})
                if action:
                    return c.render(request, "error.html", 401, title="Signed out",
                                    message="Your session has ended. Sign in again.")
                nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"{base}/login?{urlencode({'next': nxt})}", 303)
            request.scope["falq.session"] = sess
            if not sess.principal.can(scope):
                return c.render(request, "error.html", 403, title="Not allowed",
                                message=f"This key lacks the '{scope}' scope.")
            if action:
                form = await _form(request)
                if not _same_origin(request) or not check_csrf(sess.csrf, form.get(CSRF_FIELD)
                                                               or request.headers.get(CSRF_HEADER)):
                    return c.render(request, "error.html", 403, title="Refused",
                                    message="The form's security token is missing or wrong; reload the page.")
                request.scope["falq.form"] = form
            return await fn(request)

        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        return wrapper

    return deco


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form (the console sends nothing else); anything else reads as empty."""
    if "falq.form" in request.scope:
        form: dict[str, str] = request.scope["falq.form"]
        return form
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    if ctype != "application/x-www-form-urlencoded":
        return {}
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return {}
    out = {k: v[0] for k, v in parsed.items() if v}
    request.scope["falq.form"] = out
    return out


def _same_origin(request: Request) -> bool:
    """A browser's ``Origin`` (when sent) must be this host: a second line behind the token."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
    return origin.split("://", 1)[-1].rstrip("/") == host


def _cookie_kw(request: Request, max_age: int) -> dict[str, Any]:
    return {"max_age": max_age, "expires": max_age, "path": "/ui", "httponly": True, "samesite": "strict",
            "secure": is_https(request.url.scheme, request.headers)}


# --- sign in / out --------------------------------------------------------------------------------


def _next(request: Request, value: str | None) -> str:
    base = request.scope.get("root_path", "").rstrip("/")
    if value and value.startswith(f"{base}/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{base}/"


async def login_form(request: Request, error: str | None = None, status: int = 200) -> Response:
    import secrets

    c = _console(request)
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    resp = c.render(request, "login.html", status, title="Sign in", error=error, login_token=token,
                    next=_next(request, request.query_params.get("next")),
                    unauthenticated=c.keys.env_keys is None)
    resp.set_cookie(LOGIN_COOKIE, token, **_cookie_kw(request, 600))
    return resp


async def login(request: Request) -> Response:
    """Sign in. Failed attempts are limited per client address and per key prefix
    (:class:`~falq.gateway.console.access.SignInLimiter`): over the limit the answer is 429
    with ``Retry-After``, before the key is even looked at."""
    c = _console(request)
    form = await _form(request)
    if not _same_origin(request) or not check_csrf(request.cookies.get(LOGIN_COOKIE) or "", form.get(CSRF_FIELD)):
        return await login_form(request, "The sign-in form expired; try again.", 403)
    key = form.get("key", "")
    address = client_address(request.client.host if request.client else None)
    refused = await blocking(c.signin.attempt, address, key)
    if refused is not None:
        resp = await login_form(request, refused.message, 429)
        resp.headers["retry-after"] = str(refused.retry_after_s)
        return resp
    principal = await blocking(principal_for_key, c.keys, key)
    if principal is None:
        return await login_form(request, "That key is not accepted.", 401)
    await blocking(c.signin.succeeded, address, key)
    sid, _ = await blocking(c.sessions.create, principal)
    resp = RedirectResponse(_next(request, form.get("next")), 303)
    resp.set_cookie(COOKIE, sid, **_cookie_kw(request, c.sessions.ttl_s))
    resp.delete_cookie(LOGIN_COOKIE, path="/ui", httponly=True, samesite="strict")
    return resp


@guarded("read", action=True)
async def logout(request: Request) -> Response:
    c = _console(request)
    await blocking(c.sessions.drop, request.cookies.get(COOKIE))
    base = request.scope.get("root_path", "").rstrip("/")
    resp = RedirectResponse(f"{base}/login", 303)
    resp.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict",
                       secure=is_https(request.url.scheme, request.headers))
    return resp


# --- pages --------------------------------------------------------------------------------------


def _principal(request: Request) -> Principal:
    sess: Session = request.scope["falq.session"]
    return sess.principal


@guarded("read")
async def home(request: Request) -> Response:
    base = request.scope.get("root_path", "").rstrip("/")
    where = "overview" if _principal(request).can("operator") else "gallery"
    return RedirectResponse(f"{base}/{where}", 303)


@guarded("operator")
async def overview_page(request: Request) -> Response:
    c = _console(request)
    ov = await blocking(data.overview, c.gw.store, c.gw.settings, c.admin)
    return c.render(request, "overview.html", title="Overview", nav="overview", ov=ov)


@guarded("operator")
async def overview_live(request: Request) -> Response:
    c = _console(request)
    ov = await blocking(data.overview, c.gw.store, c.gw.settings, c.admin)
    return c.render(request, "_overview.html", ov=ov)


def _gallery_ctx(c: Console, request: Request) -> dict[str, Any]:
    q = data.parse_gallery(request.query_params)
    p = _principal(request)
    page = data.gallery(c.gw.store, q, p, catalogue=c.gw.falq.catalogue)
    tenants = [p.tenant]  # a key sees its own tenant's jobs only (as on the REST routes)
    return {"page": page, "q": q, "states": STATES, "endpoints": list(ENDPOINTS), "tenants": tenants,
            "next_url": urlencode(q.params(before=page.next_before)) if page.next_before is not None else None,
            "grid_url": urlencode(q.params()), "first_url": urlencode(q.params(before=None)), "live": q.before is None}


@guarded("read")
async def gallery_page(request: Request) -> Response:
    c = _console(request)
    try:
        ctx = await blocking(_gallery_ctx, c, request)
    except InvalidInput as exc:
        return c.render(request, "error.html", 422, title="Bad filter", nav="gallery",
                        message="; ".join(f"{e.field}: {e.message}" for e in exc.errors))
    return c.render(request, "gallery.html", title="Gallery", nav="gallery", **ctx)


@guarded("read")
async def gallery_grid(request: Request) -> Response:
    c = _console(request)
    try:
        ctx = await blocking(_gallery_ctx, c, request)
    except InvalidInput:
        return Response(status_code=422)
    return c.render(request, "_grid.html", **ctx)


async def _visible(c: Console, request: Request) -> JobRecord:
    """The job of the URL if this session may see it, by the REST routes' own rule
    (:func:`falq.gateway.core.visible_job`); JobNotFound otherwise, as for an unknown id."""
    return await blocking(visible_job, c.gw, _principal(request).auth(), request.path_params["job_id"])


def _base_url(c: Console, request: Request) -> str:
    return (c.gw.gsettings.gateway_public_url or f"{request.url.scheme}://{request.url.netloc}").rstrip("/")


@guarded("read")
async def job_page(request: Request) -> Response:
    c = _console(request)
    rec = await _visible(c, request)
    children = await blocking(data.children_of, c.gw.store, rec.id)
    notice = _NOTICES.get(request.query_params.get("notice", ""))
    return c.render(request, "job.html", title=f"Job {rec.id}", nav="gallery", rec=rec,
                    steps=data.timeline(rec), shown_input=data.shown_input(rec.input),
                    commands=data.commands(rec, _base_url(c, request)), children=children, notice=notice,
                    logs=list(zip(rec.log_at if len(rec.log_at) == len(rec.logs) else [0.0] * len(rec.logs),
                                  rec.logs, strict=True)),
                    images=sorted(rec.outputs, key=lambda i: i.index),
                    fal_note=FAL_OUTCOME_NOTES.get(rec.fal_outcome or ""),
                    can_act=_principal(request).can("submit"))


def _image(rec: JobRecord, request: Request) -> Any:
    raw = request.path_params["index"]
    for img in rec.outputs:
        if str(img.index) == raw:
            return img
    raise JobNotFound(f"{rec.id} has no image {raw}")


@guarded("read")
async def thumb(request: Request) -> Response:
    c = _console(request)
    rec = await _visible(c, request)
    img = _image(rec, request)
    try:
        jpeg = await blocking(c.thumbs.get, img, c.thumbs.folder_of(rec.endpoint, img))
    except NoPreview:
        return Response("no preview for this image", 404, media_type="text/plain")
    except ObjectMissing:
        return _gone()
    return Response(jpeg, media_type="image/jpeg",
                    headers={"cache-control": "private, max-age=86400", "etag": f'"{img.sha256[:32]}"'})


@guarded("read")
async def image(request: Request) -> Response:
    c = _console(request)
    rec = await _visible(c, request)
    img = _image(rec, request)
    try:
        body = await blocking(c.gw.storage.get_bytes, img.key)
    except ObjectMissing:
        return _gone()
    ext = img.key.rsplit(".", 1)[-1] if "." in img.key.rsplit("/", 1)[-1] else "bin"
    name = _SAFE_NAME.sub("_", f"{rec.id}_{img.index}.{ext}")
    ctype = img.content_type if img.content_type in IMAGE_TYPES else "application/octet-stream"
    disposition = "attachment" if request.query_params.get("download") or ctype not in IMAGE_TYPES else "inline"
    return Response(body, media_type=ctype, headers={"content-disposition": f'{disposition}; filename="{name}"',
                                                     "cache-control": "private, max-age=3600"})


def _gone() -> Response:
    """An image whose object is no longer in the bucket: 410 (console.js shows the placeholder)."""
    return Response(MISSING_TEXT, 410, media_type="text/plain", headers={"cache-control": "no-store"})


@guarded("submit", action=True)
async def retry(request: Request) -> Response:
    c = _console(request)
    rec = await _visible(c, request)
    [out] = await blocking(c.admin.retry, [rec.id])
    return _back(request, rec.id, "retried" if out.retried else "not-retried")


@guarded("submit", action=True)
async def cancel(request: Request) -> Response:
    c = _console(request)
    rec = await _visible(c, request)
    out = await blocking(c.admin.cancel, rec.id)
    return _back(request, rec.id, {"cancelled": "cancelled", "requested": "cancel-requested"}.get(out.outcome, "final"))


def _back(request: Request, job_id: str, notice: str) -> Response:
    base = request.scope.get("root_path", "").rstrip("/")
    return RedirectResponse(f"{base}/jobs/{job_id}?notice={notice}", 303)


@guarded("read")
async def batches_page(request: Request) -> Response:
    """Batches of this key's tenant: progress, counts, ETA and spend, each opening its gallery."""
    c = _console(request)
    rows = await blocking(data.batches, c.gw.store, _principal(request))
    return c.render(request, "batches.html", title="Batches", nav="batches", rows=rows, now=time.time(),
                    states=STATES)


# --- errors -------------------------------------------------------------------------------------------


def _handlers(get_console: Callable[[], Console]) -> dict[Any, Any]:
    async def not_found(request: Request, exc: Exception) -> Response:
        return get_console().render(request, "error.html", 404, title="Not found",
                                    message="No such job, or not one this key may see.")

    async def unavailable(request: Request, exc: Exception) -> Response:
        return get_console().render(request, "error.html", 503, title="Unavailable",
                                    message=f"falq is temporarily unavailable ({type(exc).__name__}); retry soon.")

    return {JobNotFound: not_found, redis.RedisError: unavailable, StorageError: unavailable,
            StorageTransientError: unavailable, 404: not_found}


def create_console(gw: Gateway, api: ApiKeys) -> Starlette:
    """The console as an ASGI app to mount at ``/ui``; ``api`` is the gateway's key resolver."""
    console = Console(gw, api)
    routes = [
        Route("/", home, methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/overview", overview_page, methods=["GET"]),
        Route("/overview/live", overview_live, methods=["GET"]),
        Route("/gallery", gallery_page, methods=["GET"]),
        Route("/gallery/grid", gallery_grid, methods=["GET"]),
        Route("/batches", batches_page, methods=["GET"]),
        Route("/jobs/{job_id}", job_page, methods=["GET"]),
        Route("/jobs/{job_id}/thumb/{index}", thumb, methods=["GET"]),
        Route("/jobs/{job_id}/image/{index}", image, methods=["GET"]),
        Route("/jobs/{job_id}/retry", retry, methods=["POST"]),
        Route("/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(StartsAhead, console=console), Middleware(SecurityHeaders)],
                    exception_handlers=_handlers(lambda: console))
    app.state.console = console
    app.state.gateway = gw
    return app
