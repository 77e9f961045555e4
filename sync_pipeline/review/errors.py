"""How the review page answers errors: a login page for a person, JSON for the API, and the status each
engine error means (403 not allowed, 404 unknown, 409 taken or read-only, 422 a wrong decision, 400 else).
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from sync_pipeline.accounts import NotAllowedError
from sync_pipeline.engine import resolve
from sync_pipeline.engine.errors import AlreadyDecidedError, BadInputError, ConflictNotFoundError, DecisionError
from sync_pipeline.review.auth import BadToken
from sync_pipeline.review.state import LoginRequired, is_api, review_of


async def on_login_required(request: Request, exc: Exception) -> Response:
    review = review_of(request)
    if request.method == "GET" and not is_api(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?{urlencode({'next': target})}", 303)
    return review.error_response(request, 401, "Log in first (or send an API token as 'Authorization: Bearer').")


async def on_bad_token(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "the API token is unknown or revoked"}, 401)


async def on_http(request: Request, exc: Exception) -> Response:
    review = review_of(request)
    assert isinstance(exc, HTTPException)
    return review.error_response(request, exc.status_code, str(exc.detail))


async def on_bad_input(request: Request, exc: Exception) -> Response:
    review = review_of(request)
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
    if is_api(request) and isinstance(exc, (AlreadyDecidedError, resolve.DecidedByOtherError)):
        return JSONResponse({"error": exc.problem, "by": exc.by, "at": exc.at, "fix": exc.fix}, status)
    return review.error_response(request, status, exc.problem, exc.fix)


HANDLERS = {
    LoginRequired: on_login_required,
    BadToken: on_bad_token,
    HTTPException: on_http,
    BadInputError: on_bad_input,
}
