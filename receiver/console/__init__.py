"""The console: the five audit views (and system signs) in a browser, served by the receiver.

The pages are static files (one HTML page, one script, one style sheet, and the vendored
``asciinema-player`` and ``uPlot`` builds); the script reads the receiver's own read API. Access
takes the receiver's bearer token once, on the login page, which sets an ``HttpOnly``,
``SameSite=Strict`` session cookie; the cookie then opens the read API (GET only) for the
browser. Every console answer carries a content security policy that allows nothing but this
origin's own scripts, styles and requests.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from importlib import resources
from pathlib import Path

from aiohttp import web

COOKIE = "alpacon_console"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 1024
MAX_LOGIN_BYTES = 4096
STATIC = Path(str(resources.files("receiver.console") / "static"))

#: nothing but this origin; WebAssembly compilation for the terminal player's emulator
CSP = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes browsers send "Origin: null"
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class ConsoleSessions:
    """Login sessions of the console: random ids with an expiry, bounded in number."""

    def __init__(self, token: str | None, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS) -> None:
        self.token = token
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def check_token(self, offered: str) -> bool:
        """Whether ``offered`` is the receiver's token (constant time); any token when none is set."""
        if self.token is None:
            return True
        return hmac.compare_digest(offered.encode(), self.token.encode())

    def open(self) -> str:
        """A new session id; the oldest session goes when the table is full."""
        sid = secrets.token_urlsafe(32)
        self._expiry[sid] = time.monotonic() + self.ttl_s
        while len(self._expiry) > self.max_sessions:
            self._expiry.popitem(last=False)
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid:
            return False
        expiry = self._expiry.get(sid)
        if expiry is None:
            return False
        if expiry < time.monotonic():
            del self._expiry[sid]
            return False
        return True

    def close(self, sid: str | None) -> None:
        if sid:
            self._expiry.pop(sid, None)

    def request_valid(self, request: web.Request) -> bool:
        """Whether the request carries a live console session (its cookie)."""
        if self.token is None:
            return True
        return self.valid(request.cookies.get(COOKIE))


SESSIONS: web.AppKey[ConsoleSessions] = web.AppKey("console_sessions", ConsoleSessions)


def _secured(resp: web.StreamResponse) -> web.StreamResponse:
    for k, v in SECURITY_HEADERS.items():
        resp.headers[k] = v
    return resp


def _page(name: str) -> web.StreamResponse:
    return _secured(web.FileResponse(STATIC / name, headers={"Content-Type": "text/html; charset=utf-8"}))


async def index(request: web.Request) -> web.StreamResponse:
    """The console page, or the login page when the browser has no live session."""
    if not request.app[SESSIONS].request_valid(request):
        raise web.HTTPFound("/console/login")
    return _page("index.html")


async def login_page(request: web.Request) -> web.StreamResponse:
    return _page("login.html")


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None  # no Origin: not a browser's cross-site form post
    return origin.split("://", 1)[-1] == request.host


async def login(request: web.Request) -> web.StreamResponse:
    """Takes the token from the login form; sets the session cookie, or shows the form again."""
    sessions = request.app[SESSIONS]
    if not _same_origin(request):
        return _secured(web.Response(status=403, text="cross-origin login refused"))
    if (request.content_length or 0) > MAX_LOGIN_BYTES:
        return _secured(web.Response(status=413, text="login form too large"))
    form = await request.post()
    token = form.get("token")
    if not isinstance(token, str) or not sessions.check_token(token.strip()):
        raise web.HTTPSeeOther("/console/login?failed=1")
    resp = web.HTTPSeeOther("/console/")
    resp.set_cookie(
        COOKIE,
        sessions.open(),
        max_age=int(sessions.ttl_s),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise resp


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[SESSIONS].close(request.cookies.get(COOKIE))
    resp = web.HTTPSeeOther("/console/login")
    resp.del_cookie(COOKIE, path="/")
    raise resp


async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/console/")


async def static(request: web.Request) -> web.StreamResponse:
    """A file under static/ (no directory listing, nothing outside it)."""
    rel = request.match_info["path"]
    path = (STATIC / rel).resolve()
    if not path.is_relative_to(STATIC.resolve()) or not path.is_file() or path.suffix == ".html":
        raise web.HTTPNotFound()
    return _secured(web.FileResponse(path))


def add_console(app: web.Application, token: str | None) -> ConsoleSessions:
    """Mounts the console on ``app`` (``/`` and ``/console/…``); returns its session table."""
    sessions = ConsoleSessions(token)
    app[SESSIONS] = sessions
    app.router.add_get("/", root)
    app.router.add_get("/console/", index)
    app.router.add_get("/console/login", login_page)
    app.router.add_post("/console/login", login)
    app.router.add_post("/console/logout", logout)
    app.router.add_get("/console/static/{path:.+}", static)
    return sessions


def browser_may_read(request: web.Request) -> bool:
    """Whether a console session opens this API request: reads only, never ingest or faults."""
    if request.method not in ("GET", "HEAD") or "/_faults" in request.path:
        return False
    sessions = request.app.get(SESSIONS)
    return sessions is not None and sessions.token is not None and sessions.valid(request.cookies.get(COOKIE))
