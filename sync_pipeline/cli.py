"""The `sync-pipeline` command (DESIGN §8): a thin shell over the engine.

Exit codes: 0 done; 3 waiting for manual decisions; 2 bad input or usage, nothing written; 1 other failure.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from sync_pipeline.engine.errors import BadInputError, SyncError

EXIT_DONE, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_WAITING = 0, 1, 2, 3

master_option = click.option(
    "--master",
    "master_url",
    envvar="SYNC_MASTER_URL",
    default=None,
    metavar="URL",
    help="Master database URL (default: $SYNC_MASTER_URL, else sqlite:///$SYNC_HOME/master.db).",
)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handles_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn engine errors into a message on stderr and the contract's exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BadInputError as exc:
            _fail(str(exc), EXIT_BAD_INPUT)
        except SyncError as exc:
            _fail(str(exc), EXIT_FAILED)
        except (KeyboardInterrupt, click.exceptions.Exit, click.ClickException):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence prints, never a traceback
            _fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED)

    return wrapper


def _engine(master_url: str | None, must_exist: bool = True):  # type: ignore[no-untyped-def]
    from sync_pipeline.engine.master import connect_master

    return connect_master(master_url, must_exist=must_exist)


class ExitCodeGroup(click.Group):
    """Usage errors exit with 2 (click's default) and say where to find help."""


@click.group(cls=ExitCodeGroup)
@click.version_option(package_name="sync_pipeline")
def main() -> None:
    """Offline database synchronisation: check out a replica, work offline, sync it back."""


@main.command("init-master")
@master_option
@click.option("--settings", "settings_path", required=True, type=click.Path(dir_okay=False), help="Settings YAML.")
@handles_errors
def init_master_command(master_url: str | None, settings_path: str) -> None:
    """Create the sync tables, store the settings and install master change capture."""
    from sync_pipeline.engine.master import init_master
    from sync_pipeline.settings import load_settings

    settings = load_settings(settings_path)
    engine = _engine(master_url, must_exist=False)
    infos = init_master(engine, settings)
    click.echo(
        f"master ready: {len(infos)} table(s) in {len(settings.modules)} module(s) "
        f"({', '.join(settings.modules)}); change capture "
        f"{'installed' if settings.master_change_capture else 'off'}"
    )


@main.command("checkout")
@master_option
@click.option("--replica", "replica_path", required=True, type=click.Path(dir_okay=False), help="New replica file.")
@click.option("--owner", required=True, help="Who takes the replica.")
@click.option("--modules", default=None, help="Comma-separated modules (default: all).")
@handles_errors
def checkout_command(master_url: str | None, replica_path: str, owner: str, modules: str | None) -> None:
    """Create a replica of some modules for an owner; prints the replica id."""
    from sync_pipeline.engine.checkout import checkout
    from sync_pipeline.progress import checkout_progress

    engine = _engine(master_url)
    chosen = [m.strip() for m in modules.split(",") if m.strip()] if modules else None
    with checkout_progress() as progress:
        result = checkout(engine, replica_path, owner, chosen, progress)
    click.echo(result.replica_id)
    click.echo(
        f"checked out {sum(result.rows.values())} rows of {', '.join(result.modules)} to {result.path} "
        f"for {result.owner}",
        err=True,
    )


def _print_result(result: Any, as_json: bool, replica_path: str) -> None:
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
        return
    click.echo(f"session {result.session_id or '-'}: {result.status} ({result.message})")
    for module, counts in sorted(result.modules.items()):
        shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        click.echo(f"  {module}: {shown}")
    if result.status == "waiting":
        click.echo("pending decisions:")
        for module, count in sorted(result.pending.items()):
            click.echo(f"  {module}: {count} conflict(s)")
        click.echo("next:")
        click.echo(f"  sync-pipeline conflicts list --session {result.session_id} --status pending")
        click.echo("  sync-pipeline conflicts resolve --id ID --take local|master --by YOUR_NAME")
        for module in sorted(result.pending):
            click.echo(
                f"  sync-pipeline conflicts resolve --session {result.session_id} --module {module} "
                "--take local|master --by YOUR_NAME"
            )
        click.echo(f"  sync-pipeline sync --replica {replica_path}")


@main.command("sync")
@master_option
@click.option("--replica", "replica_path", required=True, type=click.Path(dir_okay=False), help="The replica file.")
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handles_errors
def sync_command(master_url: str | None, replica_path: str, dry_run: bool, as_json: bool) -> None:
    """Synchronise a replica into the master (or continue its waiting session)."""
    from sync_pipeline.engine.session import dry_run as run_dry
    from sync_pipeline.engine.session import run_sync

    engine = _engine(master_url)
    if dry_run:
        result = run_dry(engine, replica_path)
    else:
        result = run_sync(engine, replica_path, None if as_json else lambda m: click.echo(f"… {m}", err=True))
    _print_result(result, as_json, replica_path)
    if result.status == "waiting":
        sys.exit(EXIT_WAITING)
    if result.status == "failed":
        sys.exit(EXIT_FAILED)


@main.group("conflicts")
def conflicts_group() -> None:
    """List and decide conflicts."""


@conflicts_group.command("list")
@master_option
@click.option("--session", "session_id", default=None, help="Only this session.")
@click.option("--status", type=click.Choice(["pending", "decided"]), default=None)
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def conflicts_list(master_url: str | None, session_id: str | None, status: str | None, as_json: bool) -> None:
    """The conflicts of the master's sessions."""
    from sync_pipeline.engine.queries import list_conflicts

    items = list_conflicts(_engine(master_url), session_id, status)
    if as_json:
        click.echo(json.dumps(items, indent=2, ensure_ascii=False))
        return
    if not items:
        click.echo("no conflicts")
        return
    for item in items:
        key = ", ".join(f"{k}={v}" for k, v in item["key"].items())
        click.echo(
            f"#{item['id']} [{item['status']}] {item['module']}/{item['table']} ({key}) {item['kind']}"
            f"  session {item['session']}"
        )
        for f in item["fields"]:
            click.echo(f"    {f['name']}: base={f['base']!r} local={f['local']!r} master={f['master']!r}")
        if item["decision"]:
            click.echo(f"    decision: {item['decision']}")


@conflicts_group.command("resolve")
@master_option
@click.option("--id", "conflict_id", type=int, default=None, help="One conflict.")
@click.option("--session", "session_id", default=None, help="With --module: every pending conflict of a module.")
@click.option("--module", default=None)
@click.option("--take", type=click.Choice(["local", "master"]), default=None)
@click.option("--field", "field_name", default=None, help="Decide one field only.")
@click.option("--value", "value_json", default=None, help="An edited value for --field, as JSON.")
@click.option("--by", required=True, help="Who decides.")
@handles_errors
def conflicts_resolve(
    master_url: str | None,
    conflict_id: int | None,
    session_id: str | None,
    module: str | None,
    take: str | None,
    field_name: str | None,
    value_json: str | None,
    by: str,
) -> None:
    """Decide a conflict (per row, per field, or an edited value), or a module in bulk."""
    from sync_pipeline.engine.session import decide, decide_module

    engine = _engine(master_url)
    if conflict_id is None:
        if not (session_id and module and take):
            raise BadInputError(
                "say which conflicts to decide", "use --id ID, or --session ID --module M --take local|master"
            )
        count = decide_module(engine, session_id, module, take, by)
        click.echo(f"decided {count} pending conflict(s) of module {module}: take {take}")
        return
    if value_json is not None:
        if take is not None:
            raise BadInputError("--take and --value exclude each other", "use one of them")
        try:
            value = json.loads(value_json)
        except ValueError:
            raise BadInputError(f"--value {value_json!r} is not JSON", "quote strings: --value '\"text\"'") from None
        decide(engine, conflict_id, "value", by, field_name, value)
        click.echo(f"conflict {conflict_id}: field {field_name} set to {value!r}")
        return
    if take is None:
        raise BadInputError("say which side to take", "add --take local|master (or --field NAME --value JSON)")
    decide(engine, conflict_id, take, by, field_name)
    click.echo(f"conflict {conflict_id}: take {take}" + (f" for field {field_name}" if field_name else ""))


@main.command("replicas")
@master_option
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def replicas_command(master_url: str | None, as_json: bool) -> None:
    """Replicas checked out from the master: owner, modules, since when, status."""
    from sync_pipeline.engine.queries import list_replicas

    items = list_replicas(_engine(master_url))
    if as_json:
        click.echo(json.dumps(items, indent=2, ensure_ascii=False))
        return
    if not items:
        click.echo("no replicas")
    for item in items:
        click.echo(
            f"{item['replica_id']}  {item['status']:<8} {item['owner']:<20} {','.join(item['modules']):<20} "
            f"since {item['checked_out_at']}  {item['path'] or ''}"
        )


@main.command("demo")
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the demo master and replica (default: $SYNC_HOME, else ~/.sync_pipeline).",
)
@click.option("--owner", default="Alex Field", show_default=True, help="The field worker who takes the replica.")
@click.option("--force", is_flag=True, help="Replace a master in that folder that is not a demo master.")
@handles_errors
def demo_command(home: str | None, owner: str, force: bool) -> None:
    """Build a sample master, check out a replica, edit both sides and sync."""
    from sync_pipeline.demo import make_demo_edits, prepare_demo
    from sync_pipeline.engine.master import connect_master, sync_home
    from sync_pipeline.engine.session import run_sync

    folder = Path(home).expanduser() if home else sync_home()
    click.echo(f"building the demo master in {folder} …")
    paths = prepare_demo(folder, owner, force)
    engine = connect_master(paths.master_url)
    make_demo_edits(engine, paths.replica)
    click.echo(f"replica of {owner}: {paths.replica}")
    click.echo("edits made on both sides; synchronising …")
    result = run_sync(engine, paths.replica)
    master_flag = "" if home is None and _is_default(paths.master_url) else f" --master {paths.master_url}"
    click.echo("")
    click.echo(f"session {result.session_id}: {result.status}")
    for module, counts in sorted(result.modules.items()):
        click.echo(f"  {module}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if result.pending:
        click.echo("")
        click.echo("waiting for decisions: " + ", ".join(f"{m} {n}" for m, n in sorted(result.pending.items())))
        click.echo("next, decide them and finish the sync:")
        click.echo(f"  sync-pipeline conflicts list{master_flag} --session {result.session_id} --status pending")
        click.echo(f'  sync-pipeline conflicts resolve{master_flag} --id ID --take local --by "Your Name"   # one')
        for module in sorted(result.pending):
            click.echo(
                f"  sync-pipeline conflicts resolve{master_flag} --session {result.session_id} "
                f'--module {module} --take local --by "Your Name"   # all of {module}'
            )
        click.echo(f"  sync-pipeline sync{master_flag} --replica {paths.replica}")
    sys.exit(EXIT_DONE)


def _is_default(url: str) -> bool:
    from sync_pipeline.engine.master import default_master_url

    return url == default_master_url()


if __name__ == "__main__":
    main()
