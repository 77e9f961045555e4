"""`sync-pipeline accounts …`: the people who may decide conflicts (the model is `accounts.py`)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable

import click

from sync_pipeline.accounts import Accounts, default_accounts_path
from sync_pipeline.cli_common import handles_errors, master_option
from sync_pipeline.engine.errors import BadInputError


def _modules_list(text: str) -> list[str]:
    modules = [m.strip() for m in text.split(",") if m.strip()]
    if not modules:
        raise BadInputError("no module given", "pass --modules crm,sales (or '*' for every module)")
    return modules


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise BadInputError("no password on standard input", "pipe it in: printf '%s' \"$PW\" | … --password-stdin")
        return password
    return str(click.prompt("password", hide_input=True, confirmation_prompt=True))


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds")


accounts_option = click.option(
    "--accounts",
    "accounts_path",
    envvar="SYNC_ACCOUNTS",
    default=None,
    type=click.Path(dir_okay=False),
    help="Accounts file (default: $SYNC_ACCOUNTS, else $SYNC_HOME/accounts.yaml).",
)


@click.group("accounts")
def accounts_group() -> None:
    """People who may decide conflicts, and their modules (accounts.yaml)."""


@accounts_group.command("add")
@accounts_option
@click.option("--name", required=True, help="The person's name, as decisions record it.")
@click.option("--modules", required=True, help="Comma-separated modules the person may decide ('*': all).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (else prompt).")
@click.option("--no-password", is_flag=True, help="No page login: the account uses tokens only (automation).")
@handles_errors
def accounts_add(accounts_path: str | None, name: str, modules: str, password_stdin: bool, no_password: bool) -> None:
    """Create an account."""
    if password_stdin and no_password:
        raise BadInputError("--password-stdin and --no-password exclude each other", "use one of them")
    accounts = Accounts.load_or_empty(accounts_path or default_accounts_path())
    chosen = _modules_list(modules)
    if accounts.get(name) is not None:  # said before asking for a password nobody will use
        raise BadInputError(
            f"an account named {name!r} exists already in {accounts.path}",
            "change it with `sync-pipeline accounts password` / `accounts modules`, or pick another name",
        )
    account = accounts.add(name, chosen, None if no_password else _read_password(password_stdin))
    path = accounts.save()
    click.echo(f"account {account.name} added ({account.modules_text()}) to {path}")


def _changed(accounts_path: str | None, change: Callable[[Accounts], object]) -> Accounts:
    """The accounts file loaded, changed and saved (the change raises on an unknown name: nothing saved)."""
    accounts = Accounts.load(accounts_path or default_accounts_path())
    change(accounts)
    accounts.save()
    return accounts


def _end_page_sessions(master_url: str | None, name: str) -> None:
    """End the account's review-page logins, which live in the master (engine/web_sessions.py)."""
    from sync_pipeline.engine import web_sessions
    from sync_pipeline.engine.master import connect_master

    try:
        engine = connect_master(master_url)
    except BadInputError as exc:
        # The page refuses the old logins anyway (it checks the account and its password on each request).
        click.echo(f"page logins not ended in the master ({exc.problem})", err=True)
        return
    try:
        click.echo(f"{web_sessions.end_all_of(engine, name)} page login(s) of {name} ended", err=True)
    finally:
        engine.dispose()


@accounts_group.command("password")
@accounts_option
@master_option
@click.option("--name", required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (else prompt).")
@handles_errors
def accounts_password(accounts_path: str | None, master_url: str | None, name: str, password_stdin: bool) -> None:
    """Set a new password (open page sessions of the account end)."""
    accounts = Accounts.load(accounts_path or default_accounts_path())
    accounts.require(name)
    accounts.set_password(name, _read_password(password_stdin))
    accounts.save()
    canonical = accounts.require(name).name
    click.echo(f"password of {canonical} changed")
    _end_page_sessions(master_url, canonical)


@accounts_group.command("modules")
@accounts_option
@click.option("--name", required=True)
@click.option("--modules", required=True, help="Comma-separated modules ('*': all); replaces the current list.")
@handles_errors
def accounts_modules(accounts_path: str | None, name: str, modules: str) -> None:
    """Change which modules a person may decide."""
    chosen = _modules_list(modules)
    account = _changed(accounts_path, lambda accounts: accounts.set_modules(name, chosen)).require(name)
    click.echo(f"{account.name} may decide {account.modules_text()}")


@accounts_group.command("token")
@accounts_option
@click.option("--name", required=True)
@handles_errors
def accounts_token(accounts_path: str | None, name: str) -> None:
    """Create an API token for automation; it is printed once and only its hash is stored."""
    accounts = Accounts.load(accounts_path or default_accounts_path())
    token_id, token = accounts.new_token(name, _now())
    accounts.save()
    click.echo(token)
    click.echo(
        f"token {token_id} for {accounts.require(name).name}: store it now, it is not shown again "
        "(use it as SYNC_TOKEN, --token, or an 'Authorization: Bearer' header)",
        err=True,
    )


@accounts_group.command("revoke")
@accounts_option
@click.option("--name", required=True)
@click.option("--token-id", required=True, help="The id shown by `accounts list`.")
@handles_errors
def accounts_revoke(accounts_path: str | None, name: str, token_id: str) -> None:
    """Revoke an API token."""
    _changed(accounts_path, lambda accounts: accounts.revoke_token(name, token_id))
    click.echo(f"token {token_id} revoked")


@accounts_group.command("remove")
@accounts_option
@master_option
@click.option("--name", required=True)
@handles_errors
def accounts_remove(accounts_path: str | None, master_url: str | None, name: str) -> None:
    """Remove an account (its past decisions keep its name; its page logins end)."""
    accounts = Accounts.load(accounts_path or default_accounts_path())
    canonical = accounts.require(name).name
    accounts.remove(name)
    accounts.save()
    click.echo(f"account {canonical} removed")
    _end_page_sessions(master_url, canonical)


@accounts_group.command("list")
@accounts_option
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def accounts_list(accounts_path: str | None, as_json: bool) -> None:
    """The accounts, their modules and token ids (never hashes)."""
    accounts = Accounts.load(accounts_path or default_accounts_path())
    items = [
        {
            "name": a.name,
            "modules": a.modules,
            "password": a.password_hash is not None,
            "tokens": [{"id": t.id, "created_at": t.created_at} for t in a.tokens],
        }
        for a in accounts.entries
    ]
    if as_json:
        click.echo(json.dumps(items, indent=2, ensure_ascii=False))
        return
    if not items:
        click.echo("no accounts")
    for item in items:
        tokens = ", ".join(t["id"] for t in item["tokens"]) or "-"
        login = "password" if item["password"] else "tokens only"
        click.echo(f"{item['name']:<24} {','.join(item['modules']):<20} {login:<12} tokens: {tokens}")
