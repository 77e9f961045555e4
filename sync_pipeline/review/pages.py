"""The review page's HTML routes: the sessions waiting, one session with its bulk decisions, one
conflict at a time (base/local/master per field, previous/next), the history and the protocol.

Every decision goes through `engine.session.decide` / `decide_module`; the rules around them (what is
in force, "already decided by X at T") are the engine's (`engine.resolve`), shared with the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from sync_pipeline.engine import queries, resolve
from sync_pipeline.engine.errors import AlreadyDecidedError, DecisionError
from sync_pipeline.engine.records import ConflictStatus
from sync_pipeline.engine.session import decide
from sync_pipeline.review.auth import Person
from sync_pipeline.review.state import (
    IN_PROGRESS_STATUSES,
    WAITING_STATUSES,
    ReviewApp,
    asked_by,
    conflict_of,
    int_or_none,
)

# The page refreshes itself while Dagster loads a decided session, so the person sees it finish.
REFRESH_SECONDS_WHILE_LOADING = 10
# The protocol is a self-contained print document with its own inline stylesheet and no scripts.
PROTOCOL_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"


async def sessions_page(request: Request) -> Response:
    review, person = asked_by(request)
    waiting = await run_in_threadpool(queries.sessions_with_status, review.engine, WAITING_STATUSES)
    in_progress = await run_in_threadpool(queries.sessions_with_status, review.engine, IN_PROGRESS_STATUSES)
    context = {
        "person": person,
        "waiting": waiting,
        "in_progress": [(s, review.load_links(s, person)) for s in in_progress],
    }
    return review.render(request, "sessions.html", context)


async def history_page(request: Request) -> Response:
    from sync_pipeline.engine.history import DEFAULT_DAYS, conflict_history

    review, person = asked_by(request)
    try:
        days = max(1, min(int(request.query_params.get("days", DEFAULT_DAYS)), 3650))
    except ValueError:
        days = DEFAULT_DAYS
    entries = await run_in_threadpool(conflict_history, review.engine, days)
    # Only the modules this person may decide: the others' values are not theirs to read.
    mine = [e for e in entries if person.account.may_decide(e.conflict.module)]
    return review.render(request, "history.html", {"person": person, "entries": mine, "days": days})


def _session_context(review: ReviewApp, person: Person, session_id: str) -> dict[str, Any]:
    summary = queries.session_summary(review.engine, session_id)
    conflicts = queries.session_conflicts(review.engine, session_id)
    mine = [c for c in conflicts if person.account.may_decide(c["module"])]
    hidden = sorted({c["module"] for c in conflicts if not person.account.may_decide(c["module"])})
    return {
        "person": person,
        "summary": summary,
        "conflicts": mine,
        "hidden_modules": hidden,
        "load": review.load_links(summary, person),
        "refresh": REFRESH_SECONDS_WHILE_LOADING if summary.status in IN_PROGRESS_STATUSES else None,
    }


async def _built_page(
    request: Request, build: Callable[[ReviewApp, Person, Any], dict[str, Any]], param: str, template: str
) -> Response:
    """A page whose context `build` makes (in a thread: it queries the master) from one path parameter."""
    review, person = asked_by(request)
    context = await run_in_threadpool(build, review, person, request.path_params[param])
    return review.render(request, template, context)


async def session_page(request: Request) -> Response:
    return await _built_page(request, _session_context, "session_id", "session.html")


async def decide_module_form(request: Request) -> Response:
    review, person = asked_by(request)
    form = await review.form_of(request, person)
    session_id, module = request.path_params["session_id"], request.path_params["module"]
    person.account.check_allowed(module)
    take = str(form.get("take") or "")
    version = int_or_none(form.get("version"))
    problem, count = await run_in_threadpool(review.decide_module, person, session_id, module, take, version)
    if problem is None:
        review.flash(request, f"Took {take} for {count} pending conflict(s) of {module}.")
        return RedirectResponse(f"/sessions/{quote(session_id)}", 303)
    context = await run_in_threadpool(_session_context, review, person, session_id)
    context["problem"] = problem
    return review.render(request, "session.html", context, 409)


def _conflict_context(review: ReviewApp, person: Person, conflict_id: int) -> dict[str, Any]:
    conflict = queries.get_conflict(review.engine, conflict_id)
    person.account.check_allowed(conflict["module"], "see")
    summary = queries.session_summary(review.engine, conflict["session"])
    mine = [
        c
        for c in queries.session_conflicts(review.engine, conflict["session"])
        if person.account.may_decide(c["module"])
    ]
    ids = [c["id"] for c in mine]
    index = ids.index(conflict_id) if conflict_id in ids else None
    # The next pending conflict after this one, wrapping around to the start of the list.
    order = mine if index is None else mine[index + 1 :] + mine[:index]
    pending_after = [c["id"] for c in order if c["status"] == ConflictStatus.PENDING]
    hints = review.hints(conflict["table"])
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
        **queries.decision_context(review.engine, conflict, person.account.may_decide),
    }


async def conflict_page(request: Request) -> Response:
    return await _built_page(request, _conflict_context, "conflict_id", "conflict.html")


async def decide_form(request: Request) -> Response:
    review, person = asked_by(request)
    form = await review.form_of(request, person)
    conflict_id: int = request.path_params["conflict_id"]
    await conflict_of(review, person, conflict_id)  # only a person allowed for its module decides
    take = str(form.get("take") or "")
    field_name = str(form.get("field") or "") or None
    typed = str(form.get("value") or "")
    value: Any = None if form.get("null") == "1" else typed
    try:
        await run_in_threadpool(
            decide,
            review.engine,
            conflict_id,
            take,
            person.name,
            field_name,
            value if take == "value" else None,
            int_or_none(form.get("seen")) or 0,
        )
    except AlreadyDecidedError as exc:
        context = await run_in_threadpool(_conflict_context, review, person, conflict_id)
        context["race"] = {
            "by": exc.by,
            "at": exc.at,
            "take": take,
            "field": field_name,
            "value": typed,
            "null": form.get("null") == "1",
        }
        return review.render(request, "conflict.html", context, 409)
    except DecisionError as exc:
        context = await run_in_threadpool(_conflict_context, review, person, conflict_id)
        status = 409 if not context["summary"].decidable else 422
        if field_name and status == 422:
            context["field_errors"] = {field_name: exc.problem}
            context["typed"] = {field_name: typed}
        else:
            context["error"] = f"{exc.problem}: {exc.fix}" if exc.fix else exc.problem
        return review.render(request, "conflict.html", context, status)
    return await run_in_threadpool(_after_decision, review, request, person, conflict_id, take, field_name)


def _after_decision(
    review: ReviewApp, request: Request, person: Person, conflict_id: int, take: str, field_name: str | None
) -> Response:
    """Back to the conflict while fields are open; else on to the next pending one, or the session."""
    conflict = queries.get_conflict(review.engine, conflict_id)
    what = f"field {field_name}" if field_name else "the row"
    review.flash(request, f"Conflict #{conflict_id}: {what} → {'typed value' if take == 'value' else take}.")
    if conflict["status"] == ConflictStatus.PENDING:
        return RedirectResponse(f"/conflicts/{conflict_id}", 303)
    nxt = _conflict_context(review, person, conflict_id)["next_pending_id"]
    if nxt is not None:
        return RedirectResponse(f"/conflicts/{nxt}", 303)
    return RedirectResponse(f"/sessions/{quote(conflict['session'])}", 303)


async def protocol_page(request: Request) -> Response:
    """The session's protocol (HTML, or PDF for `/protocol.pdf`). It shows every module of the
    replica, so only a person allowed for all of them may read it."""
    review, person = asked_by(request)
    session_id = request.path_params["session_id"]
    summary = await run_in_threadpool(queries.session_summary, review.engine, session_id)
    for module in summary.replica_modules:
        person.account.check_allowed(module, "read the protocol of a session with")
    from sync_pipeline.engine.protocol import build_protocol
    from sync_pipeline.reports import render_html, render_pdf

    protocol = await run_in_threadpool(build_protocol, review.engine, session_id)
    headers = {"content-security-policy": PROTOCOL_CSP}
    if request.url.path.endswith(".pdf"):
        pdf = await run_in_threadpool(render_pdf, protocol)
        headers["content-disposition"] = f'inline; filename="protocol-{session_id}.pdf"'
        return Response(pdf, media_type="application/pdf", headers=headers)
    return HTMLResponse(await run_in_threadpool(render_html, protocol), headers=headers)
