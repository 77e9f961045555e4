"""The review page's state, shared by its routes: the master, the accounts, the templates, and who is
asking. One `ReviewApp` lives on `app.state.review`; route functions reach it (and the person asking)
with `asked_by(request)`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.templating import Jinja2Templates

from sync_pipeline.accounts import AccountsSource, StaticAccounts
from sync_pipeline.engine import queries, resolve
from sync_pipeline.engine.records import CLOSED_STATUSES, SessionStatus, SessionSummary
from sync_pipeline.engine.session import decide_module
from sync_pipeline.reports import formatting
from sync_pipeline.review import csrf, data, links
from sync_pipeline.review.auth import SESSION_ID_KEY, AuthSettings, BadToken, Person, identify
from sync_pipeline.review.login_guard import LoginThrottle, VerificationGate
from sync_pipeline.review.master_follow import FollowedMaster

HERE = Path(__file__).parent
# `detected` sessions are left out: their policies have not run yet, so every conflict still looks pending.
WAITING_STATUSES = (SessionStatus.WAITING,)
IN_PROGRESS_STATUSES = (SessionStatus.READY, SessionStatus.LOADING)


class LoginRequired(Exception):
    """Nobody is logged in (or the login expired)."""


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def review_of(request: Request) -> ReviewApp:
    review: ReviewApp = request.app.state.review
    return review


def asked_by(request: Request) -> tuple[ReviewApp, Person]:
    """The page's state and the person asking (LoginRequired when nobody is logged in)."""
    review = review_of(request)
    return review, review.person(request)


async def conflict_of(review: ReviewApp, person: Person, conflict_id: int, what: str = "decide") -> dict[str, Any]:
    """A conflict, once the person is known to be allowed to `what` conflicts of its module."""
    conflict = await run_in_threadpool(queries.get_conflict, review.engine, conflict_id)
    person.account.check_allowed(conflict["module"], what)
    return conflict


class ReviewApp:
    def __init__(
        self,
        master: FollowedMaster,
        accounts: AccountsSource | StaticAccounts,
        auth: AuthSettings,
        dagster_ui_url: str | None,
        throttle: LoginThrottle | None = None,
        gate: VerificationGate | None = None,
    ) -> None:
        self.master = master
        self.accounts = accounts
        self.auth = auth
        self.throttle = throttle or LoginThrottle(auth.clock)
        self.gate = gate or VerificationGate()
        self.dagster_ui_url = dagster_ui_url
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.globals.update(kind_help=resolve.KIND_HELP, key_text=formatting.key_text, short=short_time)
        self.templates.env.globals.update(notation=formatting)  # NULL / (no row) / — (reports.formatting)
        self.templates.env.filters["short"] = short_time
        self._hints: dict[str, dict[str, data.ColumnHint]] = {}
        master.on_reopen(self._hints.clear)

    @property
    def engine(self) -> Engine:
        """The master as it is now (reopened when its file was replaced)."""
        return self.master.engine()

    # -- who is asking ----------------------------------------------------------------------------

    def person(self, request: Request) -> Person:
        person = identify(request, self.accounts.current(), self.auth)
        if person is None:
            raise LoginRequired()
        return person

    async def form_of(self, request: Request, person: Person) -> FormData:
        """The POSTed form, after the CSRF check (browser sessions only, see csrf.py)."""
        form = await request.form()
        if person.needs_csrf and not csrf.csrf_valid(
            request, form.get(csrf.FORM_FIELD) or request.headers.get(csrf.HEADER)
        ):
            raise HTTPException(
                403, "This form expired or did not come from this page (CSRF token missing or wrong). Reload and retry."
            )
        return form

    async def json_of(self, request: Request, person: Person) -> dict[str, Any]:
        if person.needs_csrf and not csrf.csrf_valid(request, request.headers.get(csrf.HEADER)):
            raise HTTPException(403, "CSRF token missing or wrong (send it as X-CSRF-Token, or use a bearer token)")
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "the body must be a JSON object")
        return body

    # -- rendering --------------------------------------------------------------------------------

    def render(self, request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
        flashes = request.session.pop("flash", []) if SESSION_ID_KEY in request.session else []
        base = {
            "csrf_token": csrf.csrf_token(request),
            "flashes": flashes,
            "dagster_ui_url": links.dagster_ui_url(self.dagster_ui_url),
        }
        return self.templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)

    def flash(self, request: Request, message: str) -> None:
        request.session.setdefault("flash", []).append(message)

    def hints(self, table: str) -> dict[str, data.ColumnHint]:
        if table not in self._hints:
            self._hints[table] = data.column_hints(self.engine, table)
        return self._hints[table]

    def load_links(self, summary: SessionSummary, person: Person | None = None) -> dict[str, str | None]:
        run_url = None
        if summary.dagster_run_id and summary.status in (SessionStatus.LOADING, *CLOSED_STATUSES):
            run_url = links.dagster_run_url(summary.dagster_run_id, self.dagster_ui_url)
        return {
            "runs": links.dagster_session_runs_url(summary.session_id, self.dagster_ui_url),
            "run": run_url,
            "protocol": protocol_url(summary) if person is None or may_read_protocol(person, summary) else None,
        }

    # -- what pages and the API share -----------------------------------------------------------

    def decide_module(
        self, person: Person, session_id: str, module: str, take: str, version: int | None
    ) -> tuple[dict[str, Any] | None, int]:
        """Bulk decision; returns (a problem to show the person, how many were decided).

        The engine fills only the open fields of a partly decided conflict, so nobody's choice is
        replaced; `version` (the session's decision version the person saw) refuses a bulk decision
        from a page that no longer shows what is pending.
        """
        summary = queries.session_summary(self.engine, session_id)
        if not summary.decidable:
            return {"kind": "read_only", "status": summary.status}, 0
        if version is not None and version != summary.decision_version:
            return {"kind": "changed", "module": module, "take": take}, 0
        return None, decide_module(self.engine, session_id, module, take, person.name)

    def error_response(self, request: Request, status: int, message: str, fix: str | None = None) -> Response:
        if is_api(request):
            return JSONResponse({"error": message, **({"fix": fix} if fix else {})}, status)
        person = None
        with contextlib.suppress(BadToken):  # an error page for a bad token still renders
            person = identify(request, self.accounts.current(), self.auth)
        context = {"person": person, "status": status, "message": message, "fix": fix}
        return self.render(request, "error.html", context, status)


def int_or_none(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def short_time(value: str | None) -> str:
    """'2026-03-02T17:00:00.123456' -> '2026-03-02 17:00 UTC' (the sync tables keep UTC)."""
    if not value:
        return ""
    text = str(value).replace("T", " ")
    return f"{text[:16]} UTC"


def may_read_protocol(person: Person, summary: SessionSummary) -> bool:
    return all(person.account.may_decide(m) for m in summary.replica_modules)


def protocol_url(summary: SessionSummary) -> str | None:
    """The protocol is linked once the session has ended (it says plainly what a failed load did)."""
    return f"/sessions/{quote(summary.session_id)}/protocol" if summary.status in CLOSED_STATUSES else None
