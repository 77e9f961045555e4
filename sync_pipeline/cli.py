"""The `sync-pipeline` command (README, docs/sync_rules.md §7): a thin shell over the engine.

Exit codes: 0 done; 3 waiting for manual decisions; 2 bad input or usage, nothing written; 1 other failure.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path

import click

from sync_pipeline.cli_accounts import accounts_group
from sync_pipeline.cli_common import (
    EXIT_DONE,
    EXIT_FAILED,
    EXIT_WAITING,
    handles_errors,
    master_option,
    open_master,
)
from sync_pipeline.cli_conflicts import conflicts_group, serve_command
from sync_pipeline.cli_deploy import deploy_home_command
from sync_pipeline.cli_reports import history_command, protocol_command, purge_command
from sync_pipeline.engine.records import SessionStatus


@click.group()
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
    from sync_pipeline.engine.settings import load_settings

    settings = load_settings(settings_path)
    engine = open_master(master_url, must_exist=False)
    infos = init_master(engine, settings)
    click.echo(
        f"master ready: {len(infos)} table(s) in {len(settings.modules)} module(s) "
        f"({', '.join(settings.modules)}); change capture "
        f"{'installed' if settings.master_change_capture else 'off'}"
    )
    # The master's own triggers: the load leaves the columns they maintain to them (engine/triggers.py).
    for trigger in sorted({t for info in infos.values() for t in info.triggers}, key=lambda t: (t.table, t.name)):
        click.echo(f"master trigger: {trigger.describe()}")


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

    engine = open_master(master_url)
    chosen = [m.strip() for m in modules.split(",") if m.strip()] if modules else None
    with checkout_progress() as progress:
        result = checkout(engine, replica_path, owner, chosen, progress)
    click.echo(result.replica_id)
    click.echo(
        f"checked out {sum(result.rows.values())} rows of {', '.join(result.modules)} to {result.path} "
        f"for {result.owner}",
        err=True,
    )


@main.command("sync")
@master_option
@click.option("--replica", "replica_path", required=True, type=click.Path(dir_okay=False), help="The replica file.")
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--without-dagster",
    is_flag=True,
    help="Call the engine directly instead of the asset graph (no Dagster run history, no GX checks).",
)
@handles_errors
def sync_command(
    master_url: str | None, replica_path: str, dry_run: bool, as_json: bool, without_dagster: bool
) -> None:
    """Synchronise a replica into the master (or continue its waiting session)."""
    from sync_pipeline.engine.session_detect import dry_run as run_dry
    from sync_pipeline.progress import sync_progress

    def say_plainly(message: str) -> None:
        click.echo(f"… {message}", err=True)

    engine = open_master(master_url)
    # With --json a script reads the output: neither bars nor messages.
    with nullcontext() if as_json else sync_progress() as above_bars:
        # In a terminal, messages go above the bars (a plain write to stderr would tear the live display).
        say = None if as_json else above_bars or say_plainly
        if dry_run:
            result = run_dry(engine, replica_path)
        elif without_dagster:
            from sync_pipeline.engine.run_driver import run_sync

            result = run_sync(engine, replica_path, say)
        else:
            from sync_pipeline.dagster_run import dagster_home_in_use, materialize_sync

            if say:
                say(f"running the sync_detect / sync_apply jobs (run history: {dagster_home_in_use()})")
            result = materialize_sync(master_url, replica_path)
    from sync_pipeline.cli_output import print_sync_result

    print_sync_result(engine, result, as_json, replica_path, master_url, without_dagster)
    if result.status == SessionStatus.WAITING:
        sys.exit(EXIT_WAITING)
    if result.status == SessionStatus.FAILED:
        sys.exit(EXIT_FAILED)


@main.command("replicas")
@master_option
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def replicas_command(master_url: str | None, as_json: bool) -> None:
    """Replicas checked out from the master: owner, modules, since when, status."""
    from sync_pipeline.engine.queries import list_replicas

    items = list_replicas(open_master(master_url))
    if as_json:
        click.echo(json.dumps(items, indent=2, ensure_ascii=False))
        return
    from sync_pipeline.cli_output import print_replicas

    print_replicas(items)


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
    from sync_pipeline.dagster_run import dagster_home_in_use, materialize_sync
    from sync_pipeline.demo import make_demo_edits, prepare_demo
    from sync_pipeline.engine.master import connect_master, sync_home
    from sync_pipeline.progress import sync_progress

    folder = Path(home).expanduser() if home else sync_home()
    click.echo(f"building the demo master in {folder} …")
    paths = prepare_demo(folder, owner, force)
    engine = connect_master(paths.master_url)
    make_demo_edits(engine, paths.replica)
    click.echo(f"replica of {owner}: {paths.replica}")
    click.echo("edits made on both sides; synchronising …")
    with sync_progress():
        result = materialize_sync(paths.master_url, str(paths.replica))
    from sync_pipeline.cli_output import dagster_ui_command, print_demo_result

    print_demo_result(engine, result, paths.replica, paths.master_url)
    click.echo("")
    click.echo("watch it in the Dagster UI (the demo replica is a partition with its runs):")
    click.echo(f"  {dagster_ui_command(dagster_home_in_use())}")
    sys.exit(EXIT_DONE)


main.add_command(conflicts_group)
main.add_command(serve_command)
main.add_command(accounts_group)
main.add_command(protocol_command)
main.add_command(history_command)
main.add_command(purge_command)
main.add_command(deploy_home_command)


if __name__ == "__main__":
    main()
