"""`sync-pipeline protocol`, `history` and `purge`: thin click commands over the engine's protocol,
conflict history and retention.

`sync_pipeline/cli.py` registers them on the `sync-pipeline` group.

Exit codes as everywhere: 0 done; 2 bad input or usage (unknown session, pdf to a terminal, --out a symlink);
1 failure.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from sync_pipeline.cli_common import handles_errors, master_option, open_master
from sync_pipeline.engine.errors import BadInputError


@click.command("protocol")
@master_option
@click.option("--session", "session_id", required=True, help="The session (see `replicas --json` or `history`).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["md", "html", "pdf", "json"]),
    default="md",
    show_default=True,
    help="Markdown, printable HTML, PDF (A4) or the documented JSON.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write to FILE (replaced atomically; a symlink is refused). Default: standard output.",
)
@handles_errors
def protocol_command(master_url: str | None, session_id: str, fmt: str, out_path: str | None) -> None:
    """The protocol of a session: per module what was written, every conflict and who decided it."""
    from sync_pipeline.engine.protocol import build_protocol
    from sync_pipeline.reports import render

    if fmt == "pdf" and out_path is None and sys.stdout.isatty():
        # Refused before touching the master: binary PDF on a terminal helps no one.
        raise BadInputError("a PDF cannot be printed to the terminal", "add --out FILE.pdf, or redirect: > FILE.pdf")
    target = None if out_path is None else _checked_target(Path(out_path).expanduser())
    protocol = build_protocol(open_master(master_url), session_id)
    content = render(protocol, fmt)
    if target is None:
        if isinstance(content, bytes):
            sys.stdout.flush()
            sys.stdout.buffer.write(content)
            sys.stdout.buffer.flush()
        else:
            click.echo(content, nl=False)
        return
    _write_out(target, content)
    click.echo(f"protocol of session {session_id} ({protocol.state}) written to {target}", err=True)


def _checked_target(target: Path) -> Path:
    """Where --out may write: an existing folder, and not a symlink (someone may have planted it to make
    us overwrite the file it points at)."""
    if target.is_symlink():
        raise BadInputError(
            f"{target} is a symbolic link (to {os.readlink(target)}); the protocol is not written through links",
            "choose another --out, or remove the link if it is yours",
        )
    if not target.parent.is_dir():
        raise BadInputError(f"folder {target.parent} does not exist", "create it, or choose another --out")
    if target.exists() and not target.is_file():
        raise BadInputError(f"{target} exists and is not a regular file", "choose another --out")
    return target


def _write_out(target: Path, content: str | bytes) -> None:
    from sync_pipeline.reports.files import write_atomically

    try:
        write_atomically(target, content)
    except PermissionError as exc:
        # E.g. a file of another user in a sticky folder such as /tmp: rename may not replace it.
        raise BadInputError(f"cannot write {target}: {exc.strerror}", "choose another --out") from None
    except FileExistsError:  # the random temporary name was taken in between: someone is racing us
        raise BadInputError(
            f"cannot write {target}: a temporary file appeared", "retry, or choose another --out"
        ) from None


@click.command("history")
@master_option
@click.option("--days", type=click.IntRange(1, 36500), default=7, show_default=True, help="How many days back.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (the protocol's conflict fields and more).")
@handles_errors
def history_command(master_url: str | None, days: int, as_json: bool) -> None:
    """Every conflict of the last days: local, master and kept value, the rule or person, session, replica."""
    from sync_pipeline.engine.history import conflict_history
    from sync_pipeline.reports import formatting as f

    entries = conflict_history(open_master(master_url), days)
    if as_json:
        click.echo(json.dumps([e.as_json() for e in entries], indent=2, ensure_ascii=False))
        return
    if not entries:
        click.echo(f"no conflicts in the last {days} day(s)")
        return
    for entry in entries:
        c = entry.conflict
        click.echo(
            f"{f.time(entry.time, False)}  #{c.id} {c.module}/{c.table} ({f.key(c.key)}) {c.kind}  "
            f"[{c.status}] {entry.owner}, replica {entry.replica}, session {c.session}"
        )
        for fd in c.fields:
            click.echo(
                f"    {fd.name}: local {f.side(c.no_row, 'local', fd.local)} | "
                f"master {f.side(c.no_row, 'master', fd.master)} | "
                f"kept {f.side(c.no_row, 'kept', fd.kept) if fd.take else 'pending'}  "
                f"— {f.decider(fd.rule, fd.decided_by)}"
            )
        click.echo(f"    {c.outcome}")


@click.command("purge")
@master_option
@click.option(
    "--days",
    type=click.IntRange(1, 36500),
    default=None,
    help="Keep this many days (default: retention_days of the settings, 90 unless set).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be purged; delete nothing.")
@handles_errors
def purge_command(master_url: str | None, days: int | None, dry_run: bool) -> None:
    """Delete sync history older than the retention; sessions still open are never touched."""
    from sync_pipeline.engine.retention import purge_sync_history, retention_days

    engine = open_master(master_url)
    kept_days = retention_days(engine) if days is None else days
    counts = purge_sync_history(engine, kept_days, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {sum(counts.values())} row(s) older than {kept_days} day(s):")
    for table, count in counts.items():
        click.echo(f"  {table}: {count}")
