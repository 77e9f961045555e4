"""Who is asking: a login session (signed cookie) for people, a bearer token for automation.

A login session ends after `idle_seconds` without a request, after `max_seconds` in any case, when
the account is removed, and when its password changes (the session remembers a fingerprint of the
password hash). The clock is injectable so that tests expire sessions without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request

from sync_pipeline.accounts import Account, Accounts
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


def identify(request: Request, accounts: Accounts, settings: AuthSettings) -> Person | None:
    """The person behind the request, or None (anonymous or expired). Raises BadToken."""
    token = bearer_token(request)
    if token is not None:
        account = accounts.authenticate_token(token)
        if account is None:
            raise BadToken()
        return Person(account, "token")
    session = request.session
    name = session.get("user")
    if not isinstance(name, str):
        return None
    account = accounts.get(name)
    now = settings.clock()
    login_at = float(session.get("login_at", 0))
    seen_at = float(session.get("seen_at", 0))
    if account is None or account.password_hash is None or session.get("pw") != account.password_fingerprint():
        log_out(request)
        return None
    if now - seen_at > settings.idle_seconds or now - login_at > settings.max_seconds:
        log_out(request)
        session["expired"] = True  # the login page says why the person has to log in again
        return None
    session["seen_at"] = now
    return Person(account, "session")


def log_in(request: Request, account: Account, settings: AuthSettings) -> None:
    """Start a login session. The old session data is dropped (no session fixation)."""
    request.session.clear()
    now = settings.clock()
    request.session.update(
        {"user": account.name, "pw": account.password_fingerprint(), "login_at": now, "seen_at": now}
    )
    csrf.rotate(request)


def log_out(request: Request) -> None:
    request.session.clear()
