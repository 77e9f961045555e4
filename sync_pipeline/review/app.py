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

Every decision goes through `engine.session.decide` / `decide_module`: validation, the history and
"already decided by X at T" live in the engine; the rules around them live in `review.data`, which
the CLI shares.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sync_pipeline.accounts import Accounts, AccountsSource, NotAllowedError, StaticAccounts
from sync_pipeline.engine import queries, resolve
from sync_pipeline.engine.errors import AlreadyDecidedError, BadInputError, ConflictNotFoundError, DecisionError
from sync_pipeline.engine.records import CLOSED_STATUSES, SessionStatus, SessionSummary
from sync_pipeline.engine.session import decide, decide_module
from sync_pipeline.reports import formatting
from sync_pipeline.review import csrf, data, links
from sync_pipeline.review.auth import SESSION_ID_KEY, AuthSettings, BadToken, Person, WebSessionLookup, identify
from sync_pipeline.review.cookie_secret import cookie_secret
from sync_pipeline.review.limits import DEFAULT_MAX_BODY_BYTES, BodyLimit
from sync_pipeline.review.login import LoginPages
from sync_pipeline.review.login_guard import LoginThrottle, ThrottlePolicy, VerificationGate
from sync_pipeline.review.master_follow import FollowedMaster

HERE = Path(__file__).parent
# `detected` sessions are left out: their policies have not run yet, so every conflict still looks pending.
WAITING_STATUSES = (SessionStatus.WAITING,)
IN_PROGRESS_STATUSES = (SessionStatus.READY, SessionStatus.LOADING)
COOKIE_NAME = "sync_review"
# The page refreshes itself while Dagster loads a decided session, so the person sees it finish.
REFRESH_SECONDS_WHILE_LOADING = 10


class LoginRequired(Exception):
    """Nobody is logged in (or the login expired)."""


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


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


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
        self.templates.env.globals.update(kind_help=resolve.KIND_HELP, key_text=formatting.key_text, short=_short_time)
        self.templates.env.globals.update(notation=formatting)  # NULL / (no row) / — (reports.formatting)
        self.templates.env.filters["short"] = _short_time
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

    # -- pages ------------------------------------------------------------------------------------

    async def sessions_page(self, request: Request) -> Response:
        person = self.person(request)
        waiting = await run_in_threadpool(queries.sessions_with_status, self.engine, WAITING_STATUSES)
        in_progress = await run_in_threadpool(queries.sessions_with_status, self.engine, IN_PROGRESS_STATUSES)
        context = {
            "person": person,
            "waiting": waiting,
            "in_progress": [(s, self.load_links(s, person)) for s in in_progress],
        }
        return self.render(request, "sessions.html", context)

    async def history_page(self, request: Request) -> Response:
        from sync_pipeline.engine.history import DEFAULT_DAYS, conflict_history

        person = self.person(request)
        try:
            days = max(1, min(int(request.query_params.get("days", DEFAULT_DAYS)), 3650))
        except ValueError:
            days = DEFAULT_DAYS
        entries = await run_in_threadpool(conflict_history, self.engine, days)
        # Only the modules this person may decide: the others' values are not theirs to read.
        mine = [e for e in entries if person.account.may_decide(e.conflict.module)]
        return self.render(request, "history.html", {"person": person, "entries": mine, "days": days})

    def _session_context(self, person: Person, session_id: str) -> dict[str, Any]:
        summary = queries.session_summary(self.engine, session_id)
        conflicts = queries.session_conflicts(self.engine, session_id)
        mine = [c for c in conflicts if person.account.may_decide(c["module"])]
        hidden = sorted({c["module"] for c in conflicts if not person.account.may_decide(c["module"])})
        return {
            "person": person,
            "summary": summary,
            "conflicts": mine,
            "hidden_modules": hidden,
            "load": self.load_links(summary, person),
            "refresh": REFRESH_SECONDS_WHILE_LOADING if summary.status in IN_PROGRESS_STATUSES else None,
        }

    async def session_page(self, request: Request) -> Response:
        person = self.person(request)
        context = await run_in_threadpool(self._session_context, person, request.path_params["session_id"])
        return self.render(request, "session.html", context)

    async def decide_module_form(self, request: Request) -> Response:
        person = self.person(request)
        form = await self.form_of(request, person)
        session_id, module = request.path_params["session_id"], request.path_params["module"]
        person.account.check_allowed(module)
        take = str(form.get("take") or "")
        version = _int(form.get("version"))
        problem, count = await run_in_threadpool(self._decide_module, person, session_id, module, take, version)
        if problem is None:
            self.flash(request, f"Took {take} for {count} pending conflict(s) of {module}.")
            return RedirectResponse(f"/sessions/{quote(session_id)}", 303)
        context = await run_in_threadpool(self._session_context, person, session_id)
        context["problem"] = problem
        return self.render(request, "session.html", context, 409)

    def _decide_module(
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

    def _conflict_context(self, person: Person, conflict_id: int) -> dict[str, Any]:
        conflict = queries.get_conflict(self.engine, conflict_id)
        person.account.check_allowed(conflict["module"], "see")
        summary = queries.session_summary(self.engine, conflict["session"])
        mine = [
            c
            for c in queries.session_conflicts(self.engine, conflict["session"])
            if person.account.may_decide(c["module"])
        ]
        ids = [c["id"] for c in mine]
        index = ids.index(conflict_id) if conflict_id in ids else None
        # The next pending conflict after this one, wrapping around to the start of the list.
        order = mine if index is None else mine[index + 1 :] + mine[:index]
        pending_after = [c["id"] for c in order if c["status"] == "pending"]
        hints = self.hints(conflict["table"])
        decision = conflict["decision"] or {}
        fields = []
        for f in conflict["fields"]:
            force = resolve.in_force(conflict, f["name"] if resolve.per_field(conflict) else None)
            fields.append(
                {
                    **f,
                    "local_changed": f["local"] != f["base"] or conflict["kind"] in ("insert_insert", "duplicate"),
                    "master_changed": f["master"] != f["base"] or conflict["kind"] in ("insert_insert", "duplicate"),
                    "differ": f["local"] != f["master"],
                    "hint": hints[f["name"]].text() if f["name"] in hints else "",
                    "current": (decision.get("fields") or {}).get(f["name"]),
                    "by": resolve.decider(force[0]) if force else None,
                    "at": force[0]["at"] if force else None,
                }
            )
        row_force = resolve.in_force(conflict)
        return {
            "person": person,
            "conflict": conflict,
            "summary": summary,
            "fields": fields,
            "per_field": resolve.per_field(conflict),
            "may_type": resolve.may_type_value(conflict),
            "no_base": conflict["kind"] in ("insert_insert", "duplicate", "orphan"),
            "local_deleted": conflict["kind"] == "delete_update",
            "master_deleted": conflict["kind"] == "update_delete",
            "master_absent": conflict["kind"] == "orphan",  # a local insert: the master has no such row
            "row_decided_by": [resolve.decider(e) for e in row_force],
            "history": list(reversed(decision.get("history") or [])),
            "position": None if index is None else index + 1,
            "count": len(ids),
            "previous_id": ids[index - 1] if index else None,
            "next_id": ids[index + 1] if index is not None and index + 1 < len(ids) else None,
            "next_pending_id": pending_after[0] if pending_after else None,
            "seen": conflict["latest_decision_id"],
            "field_errors": {},
            "typed": {},
            **queries.decision_context(self.engine, conflict, person.account.may_decide),
        }

    async def conflict_page(self, request: Request) -> Response:
        person = self.person(request)
        context = await run_in_threadpool(self._conflict_context, person, request.path_params["conflict_id"])
        return self.render(request, "conflict.html", context)

    async def decide_form(self, request: Request) -> Response:
        person = self.person(request)
        form = await self.form_of(request, person)
        conflict_id: int = request.path_params["conflict_id"]
        conflict = await run_in_threadpool(queries.get_conflict, self.engine, conflict_id)
        person.account.check_allowed(conflict["module"])
        take = str(form.get("take") or "")
        field_name = str(form.get("field") or "") or None
        typed = str(form.get("value") or "")
        value: Any = None if form.get("null") == "1" else typed
        try:
            await run_in_threadpool(
                decide,
                self.engine,
                conflict_id,
                take,
                person.name,
                field_name,
                value if take == "value" else None,
                _int(form.get("seen")) or 0,
            )
        except AlreadyDecidedError as exc:
            context = await run_in_threadpool(self._conflict_context, person, conflict_id)
            context["race"] = {
                "by": exc.by,
                "at": exc.at,
                "take": take,
                "field": field_name,
                "value": typed,
                "null": form.get("null") == "1",
            }
            return self.render(request, "conflict.html", context, 409)
        except DecisionError as exc:
            context = await run_in_threadpool(self._conflict_context, person, conflict_id)
            status = 409 if not context["summary"].decidable else 422
            if field_name and status == 422:
                context["field_errors"] = {field_name: exc.problem}
                context["typed"] = {field_name: typed}
            else:
                context["error"] = f"{exc.problem}: {exc.fix}" if exc.fix else exc.problem
            return self.render(request, "conflict.html", context, status)
        return await run_in_threadpool(self._after_decision, request, person, conflict_id, take, field_name)

    def _after_decision(
        self, request: Request, person: Person, conflict_id: int, take: str, field_name: str | None
    ) -> Response:
        """Back to the conflict while fields are open; else on to the next pending one, or the session."""
        conflict = queries.get_conflict(self.engine, conflict_id)
        what = f"field {field_name}" if field_name else "the row"
        self.flash(request, f"Conflict #{conflict_id}: {what} → {'typed value' if take == 'value' else take}.")
        if conflict["status"] == "pending":
            return RedirectResponse(f"/conflicts/{conflict_id}", 303)
        nxt = self._conflict_context(person, conflict_id)["next_pending_id"]
        if nxt is not None:
            return RedirectResponse(f"/conflicts/{nxt}", 303)
        return RedirectResponse(f"/sessions/{quote(conflict['session'])}", 303)

    async def protocol_page(self, request: Request) -> Response:
        """The session's protocol (HTML, or PDF for `/protocol.pdf`). It shows every module of the
        replica, so only a person allowed for all of them may read it."""
        person = self.person(request)
        session_id = request.path_params["session_id"]
        summary = await run_in_threadpool(queries.session_summary, self.engine, session_id)
        for module in summary.replica_modules:
            person.account.check_allowed(module, "read the protocol of a session with")
        from sync_pipeline.engine.protocol import build_protocol
        from sync_pipeline.reports import render_html, render_pdf

        protocol = await run_in_threadpool(build_protocol, self.engine, session_id)
        headers = {"content-security-policy": PROTOCOL_CSP}
        if request.url.path.endswith(".pdf"):
            pdf = await run_in_threadpool(render_pdf, protocol)
            headers["content-disposition"] = f'inline; filename="protocol-{session_id}.pdf"'
            return Response(pdf, media_type="application/pdf", headers=headers)
        return HTMLResponse(await run_in_threadpool(render_html, protocol), headers=headers)

    # -- JSON API ---------------------------------------------------------------------------------

    async def api_sessions(self, request: Request) -> Response:
        self.person(request)
        found = await run_in_threadpool(
            queries.sessions_with_status, self.engine, WAITING_STATUSES + IN_PROGRESS_STATUSES
        )
        return JSONResponse([_summary_json(s) for s in found])

    async def api_session_conflicts(self, request: Request) -> Response:
        person = self.person(request)
        session_id = request.path_params["session_id"]
        await run_in_threadpool(queries.session_summary, self.engine, session_id)
        conflicts = await run_in_threadpool(queries.session_conflicts, self.engine, session_id)
        status = request.query_params.get("status")
        return JSONResponse(
            [
                c
                for c in conflicts
                if person.account.may_decide(c["module"]) and (status is None or c["status"] == status)
            ]
        )

    async def api_conflict(self, request: Request) -> Response:
        person = self.person(request)
        conflict = await run_in_threadpool(queries.get_conflict, self.engine, request.path_params["conflict_id"])
        person.account.check_allowed(conflict["module"], "see")
        return JSONResponse(conflict)

    async def api_decide(self, request: Request) -> Response:
        """`{"take": "local"|"master"|"value", "field": …, "value": …, "seen": ID | "change": true}`.

        Without `seen`, a decision someone else took is refused (409) unless `change` is true: the
        same rule as `sync-pipeline conflicts resolve`.
        """
        person = self.person(request)
        body = await self.json_of(request, person)
        conflict_id: int = request.path_params["conflict_id"]
        conflict = await run_in_threadpool(queries.get_conflict, self.engine, conflict_id)
        person.account.check_allowed(conflict["module"])
        field_name = body.get("field")
        seen = _int(body.get("seen"))
        if seen is None and not body.get("change"):
            summary = await run_in_threadpool(queries.session_summary, self.engine, conflict["session"])
            if summary.decidable:  # else the engine answers "read-only once the load has started"
                resolve.refuse_overwrite(conflict, field_name, person.name, 'send "change": true to replace it')
            seen = conflict["latest_decision_id"]
        await run_in_threadpool(
            decide,
            self.engine,
            conflict_id,
            str(body.get("take") or ""),
            person.name,
            field_name,
            body.get("value"),
            None if body.get("change") else seen,
        )
        return JSONResponse(await run_in_threadpool(queries.get_conflict, self.engine, conflict_id))

    async def api_decide_module(self, request: Request) -> Response:
        person = self.person(request)
        body = await self.json_of(request, person)
        session_id, module = request.path_params["session_id"], request.path_params["module"]
        person.account.check_allowed(module)
        version = _int(body.get("version"))
        problem, count = await run_in_threadpool(
            self._decide_module, person, session_id, module, str(body.get("take") or ""), version
        )
        if problem is not None:
            return JSONResponse({"error": problem["kind"], "detail": problem}, 409)
        return JSONResponse({"session": session_id, "module": module, "decided": count})

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    # -- errors -----------------------------------------------------------------------------------

    def error_response(self, request: Request, status: int, message: str, fix: str | None = None) -> Response:
        if _is_api(request):
            return JSONResponse({"error": message, **({"fix": fix} if fix else {})}, status)
        person = None
        with contextlib.suppress(BadToken):  # an error page for a bad token still renders
            person = identify(request, self.accounts.current(), self.auth)
        context = {"person": person, "status": status, "message": message, "fix": fix}
        return self.render(request, "error.html", context, status)

    async def on_login_required(self, request: Request, exc: Exception) -> Response:
        if request.method == "GET" and not _is_api(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?{urlencode({'next': target})}", 303)
        return self.error_response(request, 401, "Log in first (or send an API token as 'Authorization: Bearer').")

    async def on_bad_token(self, request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "the API token is unknown or revoked"}, 401)

    async def on_http(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return self.error_response(request, exc.status_code, str(exc.detail))

    async def on_bad_input(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadInputError)
        if isinstance(exc, NotAllowedError):
            status = 403
        elif isinstance(exc, ConflictNotFoundError):
            status = 404
        elif isinstance(exc, (AlreadyDecidedError, resolve.DecidedByOtherError)):
            status = 409
        elif isinstance(exc, DecisionError):
            # The engine says "read-only once the load has started" in the fix of a DecisionError.
            status = 409 if "read-only" in (exc.fix or "") else 422
        else:
            status = 400
        if _is_api(request) and isinstance(exc, (AlreadyDecidedError, resolve.DecidedByOtherError)):
            return JSONResponse({"error": exc.problem, "by": exc.by, "at": exc.at, "fix": exc.fix}, status)
        return self.error_response(request, status, exc.problem, exc.fix)


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _short_time(value: str | None) -> str:
    """'2026-03-02T17:00:00.123456' -> '2026-03-02 17:00 UTC' (the sync tables keep UTC)."""
    if not value:
        return ""
    text = str(value).replace("T", " ")
    return f"{text[:16]} UTC"


def _summary_json(summary: SessionSummary) -> dict[str, Any]:
    return {
        "session": summary.session_id,
        "replica": summary.replica_id,
        "owner": summary.owner,
        "status": summary.status,
        "started_at": summary.started_at,
        "decision_version": summary.decision_version,
        "pending": {m: c.pending for m, c in summary.modules.items() if c.pending},
        "modules": {
            m: {"pending": c.pending, "decided": c.decided, "automatic": c.automatic}
            for m, c in summary.modules.items()
        },
        "review_url": links.review_session_url(summary.session_id),
    }


def may_read_protocol(person: Person, summary: SessionSummary) -> bool:
    return all(person.account.may_decide(m) for m in summary.replica_modules)


def protocol_url(summary: SessionSummary) -> str | None:
    """The protocol is linked once the session has ended (it says plainly what a failed load did)."""
    return f"/sessions/{quote(summary.session_id)}/protocol" if summary.status in CLOSED_STATUSES else None


# The protocol is a self-contained print document with its own inline stylesheet and no scripts.
PROTOCOL_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"


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
        Route("/", review.sessions_page),
        Route("/login", logins.login_page, methods=["GET"]),
        Route("/login", logins.login, methods=["POST"]),
        Route("/logout", logins.logout, methods=["POST"]),
        Route("/history", review.history_page),
        Route("/sessions/{session_id}", review.session_page),
        Route("/sessions/{session_id}/modules/{module}/decide", review.decide_module_form, methods=["POST"]),
        Route("/sessions/{session_id}/protocol", review.protocol_page),
        Route("/sessions/{session_id}/protocol.pdf", review.protocol_page),
        Route("/conflicts/{conflict_id:int}", review.conflict_page),
        Route("/conflicts/{conflict_id:int}/decide", review.decide_form, methods=["POST"]),
        Route("/api/sessions", review.api_sessions),
        Route("/api/sessions/{session_id}/conflicts", review.api_session_conflicts),
        Route("/api/sessions/{session_id}/modules/{module}/decide", review.api_decide_module, methods=["POST"]),
        Route("/api/conflicts/{conflict_id:int}", review.api_conflict),
        Route("/api/conflicts/{conflict_id:int}/decide", review.api_decide, methods=["POST"]),
        Route("/healthz", review.healthz),
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
        exception_handlers={
            LoginRequired: review.on_login_required,
            BadToken: review.on_bad_token,
            HTTPException: review.on_http,
            BadInputError: review.on_bad_input,
        },
    )
    app.state.review = review
    app.state.master = master
    app.state.engine = master.engine()
    return app
