"""The review page's JSON API, for automation with a bearer token (mounted at `/api`):

GET  /api/sessions · /api/sessions/{id}/conflicts · /api/conflicts/{id}
POST /api/conflicts/{id}/decide · /api/sessions/{id}/modules/{m}/decide
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sync_pipeline.engine import queries, resolve
from sync_pipeline.engine.records import SessionSummary
from sync_pipeline.engine.session import decide
from sync_pipeline.review import links
from sync_pipeline.review.state import IN_PROGRESS_STATUSES, WAITING_STATUSES, asked_by, conflict_of, int_or_none


async def api_sessions(request: Request) -> Response:
    review, _ = asked_by(request)
    found = await run_in_threadpool(
        queries.sessions_with_status, review.engine, WAITING_STATUSES + IN_PROGRESS_STATUSES
    )
    return JSONResponse([_summary_json(s) for s in found])


async def api_session_conflicts(request: Request) -> Response:
    review, person = asked_by(request)
    session_id = request.path_params["session_id"]
    await run_in_threadpool(queries.session_summary, review.engine, session_id)
    conflicts = await run_in_threadpool(queries.session_conflicts, review.engine, session_id)
    status = request.query_params.get("status")
    return JSONResponse(
        [c for c in conflicts if person.account.may_decide(c["module"]) and (status is None or c["status"] == status)]
    )


async def api_conflict(request: Request) -> Response:
    review, person = asked_by(request)
    conflict = await conflict_of(review, person, request.path_params["conflict_id"], "see")
    return JSONResponse(conflict)


async def api_decide(request: Request) -> Response:
    """`{"take": "local"|"master"|"value", "field": …, "value": …, "seen": ID | "change": true}`.

    Without `seen`, a decision someone else took is refused (409) unless `change` is true: the
    same rule as `sync-pipeline conflicts resolve`.
    """
    review, person = asked_by(request)
    body = await review.json_of(request, person)
    conflict_id: int = request.path_params["conflict_id"]
    conflict = await conflict_of(review, person, conflict_id)
    field_name = body.get("field")
    seen = int_or_none(body.get("seen"))
    if seen is None and not body.get("change"):
        summary = await run_in_threadpool(queries.session_summary, review.engine, conflict["session"])
        if summary.decidable:  # else the engine answers "read-only once the load has started"
            resolve.refuse_overwrite(conflict, field_name, person.name, 'send "change": true to replace it')
        seen = conflict["latest_decision_id"]
    await run_in_threadpool(
        decide,
        review.engine,
        conflict_id,
        str(body.get("take") or ""),
        person.name,
        field_name,
        body.get("value"),
        None if body.get("change") else seen,
    )
    return JSONResponse(await run_in_threadpool(queries.get_conflict, review.engine, conflict_id))


async def api_decide_module(request: Request) -> Response:
    review, person = asked_by(request)
    body = await review.json_of(request, person)
    session_id, module = request.path_params["session_id"], request.path_params["module"]
    person.account.check_allowed(module)
    version = int_or_none(body.get("version"))
    problem, count = await run_in_threadpool(
        review.decide_module, person, session_id, module, str(body.get("take") or ""), version
    )
    if problem is not None:
        return JSONResponse({"error": problem["kind"], "detail": problem}, 409)
    return JSONResponse({"session": session_id, "module": module, "decided": count})


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


routes = [
    Route("/sessions", api_sessions),
    Route("/sessions/{session_id}/conflicts", api_session_conflicts),
    Route("/sessions/{session_id}/modules/{module}/decide", api_decide_module, methods=["POST"]),
    Route("/conflicts/{conflict_id:int}", api_conflict),
    Route("/conflicts/{conflict_id:int}/decide", api_decide, methods=["POST"]),
]
