"""CSRF protection for the page's forms: a random token per login session (synchroniser pattern).

Every form carries the token in a hidden field; a POST whose token does not match the one in the
signed session cookie is refused. Requests authenticated by an API token need none: a browser never
attaches an `Authorization` header on its own, which is what a forged cross-site request relies on.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request

FORM_FIELD = "csrf_token"
HEADER = "x-csrf-token"
_SESSION_KEY = "csrf"


def csrf_token(request: Request) -> str:
    """The session's token, created on first use (the login form needs one before anyone logs in)."""
    token = request.session.get(_SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session[_SESSION_KEY] = token
    return token


def rotate(request: Request) -> str:
    """A fresh token at login, so that a token seen before login is worthless after it."""
    request.session[_SESSION_KEY] = secrets.token_urlsafe(32)
    return request.session[_SESSION_KEY]


def csrf_valid(request: Request, submitted: object) -> bool:
    expected = request.session.get(_SESSION_KEY)
    if not isinstance(expected, str) or not expected or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())
