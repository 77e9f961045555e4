"""Who is asking: a login session (kept in the master) for people, a bearer token for automation.

The cookie carries a random session id; the session itself is a row of `sync_web_session`
(engine/web_sessions.py), looked up by `WebSessionLookup` before the route runs. A login session
ends at logout, after `idle_seconds` without a request, after `max_seconds` in any case, when the
account is removed, and when its password changes (the row remembers a fingerprint of the password
hash, and `sync-pipeline accounts password/remove` delete the account's rows). The clock is
injectable so that tests expire sessions without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from sync_pipeline.accounts import Account, Accounts, AccountsSource, StaticAccounts
from sync_pipeline.engine import web_sessions
from sync_pipeline.review import csrf

SESSION_IDLE_SECONDS = 30 * 60
SESSION_MAX_SECONDS = 12 * 60 * 60


@dataclass
class AuthSettings:
    idle_seconds: int = SESSION_IDLE_SECONDS
    max_seconds: int = SESSION_MAX_SECONDS
    clock: Callable[[], float] = field(default=time.time)


@dataclass
class Person:
    account: Account
    via: str  # "session" (browser login) or "token" (Authorization: Bearer)

    @property
    def name(self) -> str:
        return self.account.name

    @property
    def needs_csrf(self) -> bool:
        return self.via == "session"


class BadToken(Exception):
    """An Authorization header whose token matches no account: refused, never treated as anonymous."""


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


# Where WebSessionLookup leaves the account of a live login session for `identify`.
_SCOPE_KEY = "sync_review.account"
SESSION_ID_KEY = "sid"


def identify(request: Request, accounts: Accounts, settings: AuthSettings) -> Person | None:
    """The person behind the request, or None (anonymous or expired). Raises BadToken."""
    token = bearer_token(request)
    if token is not None:
        account = accounts.authenticate_token(token)
        if account is None:
            raise BadToken()
        return Person(account, "token")
    account = request.scope.get(_SCOPE_KEY)
    return Person(account, "session") if isinstance(account, Account) else None


class WebSessionLookup:
    """Pure ASGI middleware (inside the cookie's SessionMiddleware): finds the login session of the
    cookie's id in the master, ends it when its account is gone or its password changed, and marks
    the request with the account. The master is read in a worker thread, never in the event loop."""

    def __init__(
        self,
        app: ASGIApp,
        master: Callable[[], Engine],
        accounts: AccountsSource | StaticAccounts,
        settings: AuthSettings,
    ) -> None:
        self.app = app
        self.master = master
        self.accounts = accounts
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/static/"):
            cookie: dict[str, Any] = scope.get("session", {})
            session_id = cookie.get(SESSION_ID_KEY)
            if isinstance(session_id, str):
                scope[_SCOPE_KEY] = await run_in_threadpool(self._account_of, cookie, session_id)
        await self.app(scope, receive, send)

    def _account_of(self, cookie: dict[str, Any], session_id: str) -> Account | None:
        engine = self.master()
        found = web_sessions.find(engine, session_id, self.settings.clock(), self.settings.idle_seconds)
        if found is None:
            cookie.clear()
            cookie["expired"] = True  # the login page says why the person has to log in again
            return None
        account = self.accounts.current().get(found.account)
        if (
            account is None
            or account.password_hash is None
            or found.password_fingerprint != account.password_fingerprint()
        ):
            web_sessions.end(engine, session_id)
            cookie.clear()
            return None
        return account


def log_in(request: Request, account: Account, settings: AuthSettings, engine: Engine) -> None:
    """Start a login session. The old cookie data is dropped (no session fixation) and a login it
    held ends. Blocking."""
    previous = request.session.get(SESSION_ID_KEY)
    if isinstance(previous, str):
        web_sessions.end(engine, previous)
    session_id = web_sessions.start(
        engine, account.name, account.password_fingerprint(), settings.clock(), settings.max_seconds
    )
    request.session.clear()
    request.session[SESSION_ID_KEY] = session_id
    csrf.rotate(request)


def log_out(request: Request, engine: Engine) -> None:
    """End the login session in the master (a copy of the cookie is worthless after). Blocking."""
    session_id = request.session.get(SESSION_ID_KEY)
    if isinstance(session_id, str):
        web_sessions.end(engine, session_id)
    request.session.clear()
