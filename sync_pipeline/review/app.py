"""The review page: Starlette + Jinja2, server-rendered, a thin shell over the engine.

Routes (HTML for people, `/api/…` JSON for automation with a bearer token):

    GET  /                                   sessions waiting for decisions, pending per module
    GET  /login · POST /login · POST /logout
    GET  /sessions/{id}                      a session: modules, bulk decisions, its conflicts, load state
    POST /sessions/{id}/modules/{m}/decide   take local|master for every pending conflict of a module
    GET  /sessions/{id}/protocol[.pdf]       the protocol of a finished session (engine.protocol)
    GET  /conflicts/{id}                     one conflict, base/local/master per field, previous/next
    POST /conflicts/{id}/decide              per row, per field, or a typed value
    GET  /api/sessions · /api/sessions/{id}/conflicts · /api/conflicts/{id}
    POST /api/conflicts/{id}/decide · /api/sessions/{id}/modules/{m}/decide
    GET  /healthz

This module builds the app: middleware, routes and error handlers. The HTML routes are in `pages.py`,
the JSON API in `api.py` (mounted at `/api`), login and logout in `login.py`, the answers to errors in
`errors.py`; the state they share (`ReviewApp`, on `app.state.review`) in `state.py`. Every decision
goes through `engine.session.decide` / `decide_module`: validation, the history and "already decided
by X at T" live in the engine (`engine.resolve` holds the rules the CLI shares).
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sync_pipeline.accounts import Accounts, AccountsSource, StaticAccounts
from sync_pipeline.review import api, errors, pages
from sync_pipeline.review.auth import AuthSettings, WebSessionLookup
from sync_pipeline.review.cookie_secret import cookie_secret
from sync_pipeline.review.limits import DEFAULT_MAX_BODY_BYTES, BodyLimit
from sync_pipeline.review.login import LoginPages
from sync_pipeline.review.login_guard import LoginThrottle, ThrottlePolicy, VerificationGate
from sync_pipeline.review.master_follow import FollowedMaster
from sync_pipeline.review.state import HERE, ReviewApp

COOKIE_NAME = "sync_review"


class SecurityHeaders:
    """Headers that keep the page out of frames, other origins' scripts and shared caches."""

    HEADERS = [
        (
            b"content-security-policy",
            b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),
        (b"cache-control", b"no-store"),
    ]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in self.HEADERS if n not in present]
                if scope["path"].startswith("/static/"):
                    extra = [(n, v) for n, v in extra if n != b"cache-control"]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def create_app(
    master_url: str | None,
    accounts: Accounts | AccountsSource | StaticAccounts | str | Path,
    *,
    dagster_ui_url: str | None = None,
    secret_key: str | None = None,
    auth: AuthSettings | None = None,
    https_only: bool = False,
    throttle: ThrottlePolicy | None = None,
    gate: VerificationGate | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """The review page for one master.

    `accounts`: a file path (re-read when it changes) or accounts in memory. `secret_key` signs the
    cookie (default: see cookie_secret.py; kept across restarts). Login sessions live in the master.
    `https_only` marks the cookie Secure, for a page served behind HTTPS. `throttle` and `gate` bound
    login tries and concurrent password checks (login_guard.py); `max_body_bytes` bounds request bodies.
    """
    master = FollowedMaster(master_url)
    if isinstance(accounts, (str, Path)):
        source: AccountsSource | StaticAccounts = AccountsSource(accounts)
    elif isinstance(accounts, Accounts):
        source = StaticAccounts(accounts)
    else:
        source = accounts
    settings = auth or AuthSettings()
    review = ReviewApp(
        master, source, settings, dagster_ui_url, LoginThrottle(settings.clock, throttle or ThrottlePolicy()), gate
    )
    logins = LoginPages(review)
    accounts_path = source.path if isinstance(source, AccountsSource) else None
    secret = secret_key or cookie_secret(accounts_path)
    routes = [
        Route("/", pages.sessions_page),
        Route("/login", logins.login_page, methods=["GET"]),
        Route("/login", logins.login, methods=["POST"]),
        Route("/logout", logins.logout, methods=["POST"]),
        Route("/history", pages.history_page),
        Route("/sessions/{session_id}", pages.session_page),
        Route("/sessions/{session_id}/modules/{module}/decide", pages.decide_module_form, methods=["POST"]),
        Route("/sessions/{session_id}/protocol", pages.protocol_page),
        Route("/sessions/{session_id}/protocol.pdf", pages.protocol_page),
        Route("/conflicts/{conflict_id:int}", pages.conflict_page),
        Route("/conflicts/{conflict_id:int}/decide", pages.decide_form, methods=["POST"]),
        Mount("/api", routes=api.routes),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(BodyLimit, max_bytes=max_body_bytes),
            Middleware(
                SessionMiddleware,
                secret_key=secret,
                session_cookie=COOKIE_NAME,
                max_age=settings.max_seconds,
                same_site="lax",
                https_only=https_only,
            ),
            Middleware(WebSessionLookup, master=master.engine, accounts=source, settings=settings),
        ],
        exception_handlers=dict(errors.HANDLERS),
    )
    app.state.review = review
    app.state.master = master
    app.state.engine = master.engine()
    return app
