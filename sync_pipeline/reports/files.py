"""Writing a session's protocol in every format into a folder (the Dagster asset links these files)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from sqlalchemy.engine import Engine

from sync_pipeline.engine.master import sync_home
from sync_pipeline.engine.protocol import Protocol, build_protocol
from sync_pipeline.reports.renderers import FORMATS, render


def default_protocol_folder() -> Path:
    """Where protocols are written unless told otherwise: `$SYNC_HOME/protocols/`."""
    return sync_home() / "protocols"


def protocol_file_name(session_id: str, fmt: str) -> str:
    return f"sync-protocol-{session_id}.{fmt}"


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write a temporary file next to `path`, then rename it over `path`.

    A reader (a browser, the Dagster UI link) never sees a half-written protocol, and a re-run replaces
    it. The rename replaces a symlink at `path` rather than writing through it, and `open(..., "xb")`
    never follows one either. "xb" rather than mkstemp: the file gets the umask's usual permissions.
    """
    data = content.encode("utf-8") if isinstance(content, str) else content
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_protocol(protocol: Protocol, folder: Path, formats: tuple[str, ...] = FORMATS) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for fmt in formats:
        path = folder / protocol_file_name(protocol.session.id, fmt)
        write_atomically(path, render(protocol, fmt))
        written[fmt] = path
    return written


def write_protocol_files(engine: Engine, session_id: str, folder: str | Path | None = None) -> dict[str, Path]:
    """Build the session's protocol once and write it as json, md, html and pdf; returns format -> path."""
    target = Path(folder).expanduser() if folder is not None else default_protocol_folder()
    return write_protocol(build_protocol(engine, session_id), target)
