"""What `sync`, `demo` and `replicas` print for people: counts, the protocol files and next steps.

Next steps are commands that work as printed in the state the user is in (docs/review.md, "Next
steps"): the program's own path when `sync-pipeline` is not on PATH, `--master` when the master is
not the default one, a real account name for `--by` when an accounts file exists (or how to create
one first), the id of a real pending conflict, and every argument quoted for a POSIX shell.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.engine.detect import KINDS
from sync_pipeline.engine.records import CLOSED_STATUSES, SessionStatus, first_pending

# Change counts in the order people read them; conflict kinds are printed apart, on their own line.
CHANGE_ORDER = (
    "local_inserts",
    "local_updates",
    "local_deletes",
    "inserts",
    "updates",
    "deletes",
    "unchanged",
    "remapped",
    "dropped",
)
PLACEHOLDER_NAME = "Your Name"


# ------------------------------------------------------------------------------------------------
# Counts
# ------------------------------------------------------------------------------------------------


def count_lines(counts: Mapping[str, int]) -> list[str]:
    """A module's counts as two lines: what changed (rows), then the conflicts by kind."""
    changes = [(name, counts[name]) for name in CHANGE_ORDER if counts.get(name)]
    changes += sorted(
        (n, c) for n, c in counts.items() if n not in CHANGE_ORDER and n not in KINDS and n != "conflicts"
    )
    kinds = [(kind, counts[kind]) for kind in KINDS if counts.get(kind)]
    total = counts.get("conflicts", sum(n for _, n in kinds))
    lines = ["changes: " + (", ".join(f"{name.replace('_', ' ')} {n}" for name, n in changes) or "none")]
    lines.append(f"conflicts: {total}" + (" (" + ", ".join(f"{k} {n}" for k, n in kinds) + ")" if kinds else ""))
    return lines


def echo_counts(modules: Mapping[str, Mapping[str, int]]) -> None:
    width = max((len(m) for m in modules), default=0)
    for module, counts in sorted(modules.items()):
        first, second = count_lines(counts)
        click.echo(f"  {module:<{width}}  {first}")
        click.echo(f"  {'':<{width}}  {second}")


# ------------------------------------------------------------------------------------------------
# Commands that work as printed
# ------------------------------------------------------------------------------------------------


def program() -> str:
    """How to call this program: `sync-pipeline` when PATH finds this very installation, else its path."""
    here = Path(sys.executable).parent / "sync-pipeline"
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    candidates = [p for p in (argv0, here) if p is not None and p.name == "sync-pipeline" and p.is_file()]
    on_path = shutil.which("sync-pipeline")
    if on_path and (not candidates or any(_same_file(Path(on_path), c) for c in candidates)):
        return "sync-pipeline"
    if candidates:
        return shlex.quote(str(candidates[0].resolve() if not candidates[0].is_absolute() else candidates[0]))
    return f"{shlex.quote(sys.executable)} -m sync_pipeline.cli"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def master_args(master_url: str | None) -> str:
    """` --master URL` when the commands would not find the master by themselves.

    A URL with a password is never printed: the commands read it from `$SYNC_MASTER_URL` instead, and
    `master_setup` says to set it."""
    from sync_pipeline.engine.master import default_master_url

    if master_url is None or master_url in (os.environ.get("SYNC_MASTER_URL"), default_master_url()):
        return ""
    if _password_of(master_url):
        return ' --master "$SYNC_MASTER_URL"'
    return f" --master {shlex.quote(master_url)}"


def master_setup(master_url: str | None) -> list[str]:
    """The comment to print before commands that take the master from `$SYNC_MASTER_URL`."""
    if not master_args(master_url).endswith('"$SYNC_MASTER_URL"'):
        return []
    hidden = sa.engine.make_url(master_url or "").render_as_string(hide_password=True)
    return [f"# first: export SYNC_MASTER_URL='{hidden}'  (with the database password in place of ***)"]


def _password_of(url: str) -> str | None:
    try:
        return sa.engine.make_url(url).password  # type: ignore[return-value]
    except sa.exc.ArgumentError:
        return None


@dataclass
class Decider:
    """Who the printed commands name with --by, and what to run first when nobody can decide yet."""

    name: str
    setup: list[str]  # commands to run before (create an account)
    note: str | None = None


def decider_for(modules: Iterable[str]) -> Decider:
    """A name that `--by` accepts for these modules, in the user's state (with or without accounts)."""
    from sync_pipeline.accounts import Accounts, default_accounts_path
    from sync_pipeline.engine.errors import BadInputError

    wanted = sorted(set(modules))
    path = default_accounts_path()
    if not path.exists():
        return Decider(PLACEHOLDER_NAME, [])  # without an accounts file any name is accepted
    try:
        accounts = Accounts.load(path)
    except BadInputError as exc:
        return Decider(PLACEHOLDER_NAME, [], f"the accounts file {path} cannot be read: {exc}")
    fitting = [a for a in accounts.entries if all(a.may_decide(m) for m in wanted)]
    if fitting:
        return Decider(fitting[0].name, [])
    taken = {a.name.casefold() for a in accounts.entries}
    name = next(
        n for n in (PLACEHOLDER_NAME, *(f"{PLACEHOLDER_NAME} {i}" for i in range(2, 1000))) if n.casefold() not in taken
    )
    return Decider(
        name,
        [f"{program()} accounts add --name {shlex.quote(name)} --modules {shlex.quote(','.join(wanted))}"],
        f"no account in {path} may decide {', '.join(wanted)}: create one first (it asks for a password)",
    )


def next_steps(
    engine: Engine,
    session_id: str,
    pending: Mapping[str, int],
    replica_path: str | Path,
    master_url: str | None,
    sync_options: str = "",
) -> list[str]:
    """Commands that decide the pending conflicts and finish the sync, each working as printed."""
    run, master = program(), master_args(master_url)
    decider = decider_for(pending)
    by = f"--by {shlex.quote(decider.name)}"
    session = shlex.quote(session_id)
    lines = master_setup(master_url)
    lines += [f"# {decider.note}"] if decider.note else []
    lines += decider.setup
    lines.append(f"{run} conflicts list{master} --session {session} --status pending {by}")
    firsts = first_pending(engine, session_id)
    for module in sorted(pending):
        if module in firsts:
            one = f"--id {firsts[module]}"
            lines.append(f"{run} conflicts show{master} {one} {by}")
            lines.append(f"{run} conflicts resolve{master} {one} --take local {by}   # one (or --take master)")
    for module in sorted(pending):
        lines.append(
            f"{run} conflicts resolve{master} --session {session} --module {shlex.quote(module)} --take local {by}"
            f"   # all of {module} (or --take master)"
        )
    lines.append(f"{run} sync{master}{sync_options} --replica {shlex.quote(str(replica_path))}")
    return lines


# ------------------------------------------------------------------------------------------------
# sync, demo, replicas
# ------------------------------------------------------------------------------------------------


def protocol_note(session_id: str | None, status: str, master_url: str | None) -> list[str]:
    """Where the protocol of a finished session is: its files, else the command that prints it."""
    if not session_id or status not in CLOSED_STATUSES:
        return []
    from sync_pipeline.reports.files import default_protocol_folder, protocol_file_name

    folder = default_protocol_folder()
    written = [fmt for fmt in ("json", "md", "html", "pdf") if (folder / protocol_file_name(session_id, fmt)).is_file()]
    if written:
        return [f"protocol written to {folder}/: " + ", ".join(protocol_file_name(session_id, f) for f in written)]
    run = f"{program()} protocol{master_args(master_url)} --session {shlex.quote(session_id)}"
    return [*master_setup(master_url), f"protocol: {run} --format html --out protocol.html"]


def print_sync_result(
    engine: Engine, result: Any, as_json: bool, replica_path: str, master_url: str | None, without_dagster: bool = False
) -> None:
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
        return
    click.echo(f"session {result.session_id or '-'}: {result.status} ({result.message})")
    echo_counts(result.modules)
    for line in protocol_note(result.session_id, result.status, master_url):
        click.echo(line)
    if result.status == SessionStatus.WAITING and result.session_id:
        click.echo("pending decisions: " + ", ".join(f"{m} {n}" for m, n in sorted(result.pending.items())))
        click.echo("next:")
        options = " --without-dagster" if without_dagster else ""
        for line in next_steps(engine, result.session_id, result.pending, replica_path, master_url, options):
            click.echo(f"  {line}")


def print_demo_result(engine: Engine, result: Any, replica_path: Path, master_url: str | None) -> None:
    click.echo("")
    click.echo(f"session {result.session_id}: {result.status}")
    echo_counts(result.modules)
    for line in protocol_note(result.session_id, result.status, master_url):
        click.echo(line)
    if not result.pending or not result.session_id:
        return
    click.echo("")
    click.echo("waiting for decisions: " + ", ".join(f"{m} {n}" for m, n in sorted(result.pending.items())))
    click.echo("next, decide them and finish the sync:")
    for line in next_steps(engine, result.session_id, result.pending, replica_path, master_url):
        click.echo(f"  {line}")
    click.echo("or decide them in the browser (see docs/review.md):")
    run = program()
    decider = decider_for(result.pending)
    from sync_pipeline.accounts import default_accounts_path

    if not default_accounts_path().exists():
        modules = shlex.quote(",".join(sorted(result.pending)))
        click.echo(f"  {run} accounts add --name {shlex.quote(decider.name)} --modules {modules}")
    for line in decider.setup:
        click.echo(f"  {line}")
    click.echo(f"  {run} serve{master_args(master_url)}")


def dagster_ui_command(dagster_home: Path) -> str:
    """`dagster dev` on the instance the CLI records runs in, runnable from any folder."""
    import sync_pipeline

    dagster = shutil.which("dagster") or str(Path(sys.executable).parent / "dagster")
    workspace = Path(sync_pipeline.__file__).resolve().parents[1] / "workspace.yaml"
    where = f"-w {shlex.quote(str(workspace))}" if workspace.is_file() else "-m sync_pipeline.definitions"
    runner = "dagster" if shutil.which("dagster") else shlex.quote(dagster)
    return f"DAGSTER_HOME={shlex.quote(str(dagster_home))} {runner} dev {where}"


def print_replicas(items: list[dict[str, Any]]) -> None:
    if not items:
        click.echo("no replicas")
        return
    rows = [
        (
            item["replica_id"],
            item["status"],
            item["owner"],
            ",".join(item["modules"]),
            item["checked_out_at"] or "",
            item.get("session") or "-",
            item["path"] or "-",
        )
        for item in items
    ]
    header = ("REPLICA", "STATUS", "OWNER", "MODULES", "CHECKED OUT (UTC)", "LAST SESSION", "FILE")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        click.echo("  ".join(f"{str(v):<{w}}" for v, w in zip(row, widths, strict=False)) + "  " + str(row[-1]))
