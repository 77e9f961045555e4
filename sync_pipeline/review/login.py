"""The login form, logout, and what guards the password check (login_guard.py).

A locked-out login is refused with 429 and `Retry-After`, a login that finds every password-check
slot taken with 503; both say so on the page and in the log (`sync_pipeline.review`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from sync_pipeline.review import csrf
from sync_pipeline.review.auth import log_in, log_out
from sync_pipeline.review.login_guard import GateBusy, Lockout

if TYPE_CHECKING:
    from sync_pipeline.review.state import ReviewApp

log = logging.getLogger("sync_pipeline.review")


def safe_next(target: str | None) -> str:
    """Only a path of this site: `next=//evil.example` must not turn the login into a redirector."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class LoginPages:
    def __init__(self, review: ReviewApp) -> None:
        self.review = review

    async def login_page(self, request: Request) -> Response:
        expired = bool(request.session.pop("expired", False))
        return self.review.render(
            request, "login.html", {"next": safe_next(request.query_params.get("next")), "expired": expired}
        )

    async def login(self, request: Request) -> Response:
        form = await request.form()
        target = safe_next(str(form.get("next") or "/"))
        if not csrf.csrf_valid(request, form.get(csrf.FORM_FIELD)):
            context = {"next": target, "error": "The login form expired. Please log in again."}
            return self.review.render(request, "login.html", context, 403)
        name, password = str(form.get("name") or ""), str(form.get("password") or "")
        client = request.client.host if request.client else "unknown"
        lockout = self.review.throttle.attempt(name, client)
        if lockout is not None:
            return self._login_locked(request, target, name, client, lockout)
        try:
            async with self.review.gate.slot():
                account = await run_in_threadpool(self.review.accounts.current().authenticate_password, name, password)
        except GateBusy:
            log.warning(
                "login of %r from %s refused: %d password checks already running", name, client, self.review.gate.slots
            )
            context = {
                "next": target,
                "error": "Too many logins at once. Please try again in a few seconds.",
                "name": name,
            }
            response = self.review.render(request, "login.html", context, 503)
            response.headers["retry-after"] = "5"
            return response
        if account is None:
            lockout = self.review.throttle.locked(name, client)
            if lockout is not None:
                return self._login_locked(request, target, name, client, lockout)
            context = {"next": target, "error": "Unknown name or wrong password.", "name": name}
            return self.review.render(request, "login.html", context, 401)
        self.review.throttle.succeeded(name, client)
        await run_in_threadpool(log_in, request, account, self.review.auth, self.review.engine)
        return RedirectResponse(target, 303)

    def _login_locked(self, request: Request, target: str, name: str, client: str, lockout: Lockout) -> Response:
        log.warning(
            "login of %r from %s refused: too many failed logins for the %s, locked for %d s more",
            name,
            client,
            lockout.what,
            lockout.retry_after,
        )
        context = {"next": target, "error": lockout.message(), "name": name}
        response = self.review.render(request, "login.html", context, 429)
        response.headers["retry-after"] = str(lockout.retry_after)
        return response

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        if csrf.csrf_valid(request, form.get(csrf.FORM_FIELD)):
            await run_in_threadpool(log_out, request, self.review.engine)
        return RedirectResponse("/login", 303)
