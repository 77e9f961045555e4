"""The key that signs the page's cookie, kept across restarts.

The cookie holds the login session's id, the CSRF token and one-shot messages; a key made anew at
each start would make every cookie unreadable after a restart and so log everyone out. The key is
`$SYNC_REVIEW_SECRET`, else a file `review-secret` next to the accounts file (created 0600, like the
accounts file, and never in the master, which reporting roles may read).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

SECRET_FILE = "review-secret"


def cookie_secret(accounts_path: Path | None) -> str:
    from_env = os.environ.get("SYNC_REVIEW_SECRET")
    if from_env:
        return from_env
    if accounts_path is None:
        return secrets.token_urlsafe(48)
    file = accounts_path.expanduser().parent / SECRET_FILE
    with contextlib.suppress(FileNotFoundError):
        if not file.is_symlink():
            text = file.read_text(encoding="ascii").strip()
            if len(text) >= 32:
                return text
    file.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    temporary = file.with_name(f".{SECRET_FILE}-{secrets.token_hex(4)}")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(handle, "w", encoding="ascii") as out:
            out.write(secret + "\n")
        os.replace(temporary, file)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return secret
