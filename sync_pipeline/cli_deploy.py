"""`sync-pipeline deploy-home`: a DAGSTER_HOME for the production stack, from deploy/dagster.yaml."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click

DEPLOY_FOLDER = Path(__file__).resolve().parent.parent / "deploy"


def write_deploy_home(home: Path, max_runs: int | None = None, force: bool = False) -> Path:
    """Copy deploy/dagster.yaml into `home` (0700), with `max_concurrent_runs` and the per-master load limit
    set to `max_runs` when given. Refuses to replace an existing dagster.yaml unless `force`."""
    source = DEPLOY_FOLDER / "dagster.yaml"
    if not source.is_file():
        raise click.UsageError(f"{source} is missing: deploy-home needs the repository's deploy/ folder")
    text = source.read_text(encoding="utf-8")
    if max_runs is not None:
        text = re.sub(r"max_concurrent_runs: \d+", f"max_concurrent_runs: {max_runs}", text)
        text = re.sub(r"(applyLimitPerUniqueValue: true\n\s+limit:) \d+", rf"\1 {max_runs}", text)
        text = re.sub(r"(value: detect\n\s+limit:) \d+", rf"\1 {max_runs}", text)
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    target = home / "dagster.yaml"
    if target.exists() and not force:
        raise click.UsageError(f"{target} exists; pass --force to replace it")
    target.write_text(text, encoding="utf-8")
    return target


@click.command("deploy-home")
@click.option("--home", required=True, type=click.Path(file_okay=False), help="The DAGSTER_HOME folder to write.")
@click.option("--max-runs", type=click.IntRange(min=1), default=None, help="Concurrent runs (default: the file's 4).")
@click.option("--force", is_flag=True, help="Replace an existing dagster.yaml.")
def deploy_home_command(home: str, max_runs: int | None, force: bool) -> None:
    """Write a production DAGSTER_HOME: PostgreSQL storage, queued runs with tag limits, run retries."""
    target = write_deploy_home(Path(home).expanduser(), max_runs, force)
    click.echo(f"wrote {target}")
    click.echo("next (deploy/README.md):")
    click.echo(f"  export DAGSTER_HOME={target.parent}")
    click.echo("  export DAGSTER_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/dagster")
    click.echo("  export SYNC_MASTER_URL=postgresql+psycopg://… SYNC_EXECUTOR=celery")
    click.echo("  dagster-daemon run -w workspace.yaml & dagster-webserver -w workspace.yaml &")
    click.echo("  dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml")
