"""`sync-pipeline conflicts list|show|resolve` and `sync-pipeline serve`: the review page's rules on the
command line.

When an accounts file exists (`--accounts`, `$SYNC_ACCOUNTS`, else `$SYNC_HOME/accounts.yaml`), a
person names themself with `--by NAME` or proves it with `--token` / `$SYNC_TOKEN`, and sees and
decides only the modules of their account. `--by` is a statement, not a proof: whoever runs the CLI
holds the master's URL and could write to it directly, so on the CLI the module rule prevents
mistakes; the page, which people reach without database credentials, checks passwords and tokens.

Without an accounts file the CLI works as before (`--by` names who decides; every module).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sync_pipeline.accounts import Account, Accounts, UnknownPersonError, default_accounts_path
from sync_pipeline.cli_accounts import accounts_option
from sync_pipeline.cli_common import handles_errors, master_option, open_master
from sync_pipeline.engine.errors import AlreadyDecidedError, BadInputError, DecisionError
from sync_pipeline.engine.records import ConflictStatus
from sync_pipeline.links import DEFAULT_REVIEW_HOST, DEFAULT_REVIEW_PORT

if TYPE_CHECKING:
    pass

by_option = click.option("--by", default=None, help="Who you are (an account name when an accounts file exists).")
token_option = click.option(
    "--token", envvar="SYNC_TOKEN", default=None, help="An API token instead of --by (default: $SYNC_TOKEN)."
)
CHANGE_FIX = "look at it with `sync-pipeline conflicts show --id {id}`; to replace it deliberately, add --change"


def identify(accounts_path: str | None, by: str | None, token: str | None, *, required: bool) -> Account | None:
    """The account of the person running the command, or None when no accounts file is in use.

    A file named explicitly (option or $SYNC_ACCOUNTS) must exist; the default one is optional.
    """
    from sync_pipeline.engine import resolve

    path = Path(accounts_path).expanduser() if accounts_path else default_accounts_path()
    if not path.exists() and not accounts_path:
        if token:
            raise BadInputError(f"--token needs an accounts file, and {path} does not exist", "pass --accounts FILE")
        if required and not by:
            raise BadInputError("say who decides", "pass --by NAME")
        return None
    accounts = Accounts.load(path)
    if token:
        account = accounts.authenticate_token(token)
        if account is None:
            raise UnknownPersonError(
                f"the token matches no account in {path}", "create one with `sync-pipeline accounts token --name NAME`"
            )
        if by and not resolve.same_person(by, account.name):
            raise BadInputError(f"--by {by!r} is not the token's account ({account.name})", "leave out --by")
        return account
    if by:
        return accounts.require(by)
    raise BadInputError(
        f"say who you are: {path} lists who may decide which modules",
        "pass --by NAME or --token TOKEN (or set SYNC_TOKEN)",
    )


def _who(account: Account | None, by: str | None) -> str:
    name = account.name if account is not None else by
    if not name or not name.strip():
        raise BadInputError("a decision needs the name of the person who takes it", "pass --by NAME")
    return name


@click.group("conflicts")
def conflicts_group() -> None:
    """List, show and decide conflicts (the review page's rules)."""


@conflicts_group.command("list")
@master_option
@accounts_option
@by_option
@token_option
@click.option("--session", "session_id", default=None, help="Only this session.")
@click.option("--module", default=None, help="Only this module.")
@click.option("--status", type=click.Choice([str(s) for s in ConflictStatus]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the conflicts as JSON (the public shape).")
@handles_errors
def conflicts_list(
    master_url: str | None,
    accounts_path: str | None,
    by: str | None,
    token: str | None,
    session_id: str | None,
    module: str | None,
    status: str | None,
    as_json: bool,
) -> None:
    """The conflicts of the master's sessions, with their decisions and history."""
    from sync_pipeline.engine.queries import list_conflicts
    from sync_pipeline.reports import formatting as fmt

    account = identify(accounts_path, by, token, required=False)
    items = [c for c in list_conflicts(open_master(master_url), session_id, status) if module in (None, c["module"])]
    if account is not None:
        hidden = sorted({c["module"] for c in items if not account.may_decide(c["module"])})
        items = [c for c in items if account.may_decide(c["module"])]
        if hidden:
            click.echo(
                f"note: conflicts of {', '.join(hidden)} left out: {account.name} is not allowed for them", err=True
            )
    if as_json:
        click.echo(json.dumps(items, indent=2, ensure_ascii=False))
        return
    if not items:
        click.echo("no conflicts")
        return
    for item in items:
        identity = fmt.identity_text(item)
        click.echo(
            f"#{item['id']} [{item['status']}] {item['module']}/{item['table']} ({fmt.key_text(item['key'])}) "
            f"{item['kind']}  session {item['session']}" + (f"\n    row: {identity}" if identity else "")
        )
        for f in item["fields"]:
            sides = " ".join(
                f"{name}={fmt.side(item['no_row'], name, f[name])}" for name in ("base", "local", "master")
            )
            click.echo(f"    {f['name']}: {sides}")
        decision = item["decision"]
        if decision:
            click.echo(f"    decided by {decision['by'] or 'policy ' + decision['rule']} at {decision['at']}")


@conflicts_group.command("show")
@master_option
@accounts_option
@by_option
@token_option
@click.option("--id", "conflict_id", type=int, required=True, help="The conflict.")
@click.option("--json", "as_json", is_flag=True, help="Print the conflict as JSON (with latest_decision_id).")
@handles_errors
def conflicts_show(
    master_url: str | None,
    accounts_path: str | None,
    by: str | None,
    token: str | None,
    conflict_id: int,
    as_json: bool,
) -> None:
    """One conflict: base/local/master per field, what each choice does, the decision and its history."""
    from sync_pipeline.engine import queries

    account = identify(accounts_path, by, token, required=False)
    engine = open_master(master_url)
    conflict = queries.get_conflict(engine, conflict_id)
    if account is not None:
        account.check_allowed(conflict["module"], "see")
    settled = queries.settled_by_policy(
        engine, conflict["session"], account.may_decide if account else None, exclude=conflict_id
    )
    if as_json:
        conflict["settled"] = {"conflicts": settled.items, "total": settled.total}
        click.echo(json.dumps(conflict, indent=2, ensure_ascii=False))
        return
    _print_conflict(conflict, settled)


def _print_conflict(conflict: dict[str, Any], settled: Any) -> None:
    from sync_pipeline.engine import resolve
    from sync_pipeline.reports import formatting as fmt

    help_text = resolve.KIND_HELP.get(conflict["kind"], {})
    click.echo(
        f"conflict #{conflict['id']} [{conflict['status']}] {conflict['kind']}: {help_text.get('title', '')}\n"
        f"  {conflict['module']}/{conflict['table']} ({fmt.key_text(conflict['key'])})  session {conflict['session']}"
    )
    if conflict.get("identity"):
        click.echo(f"  row: {fmt.identity_text(conflict)}")
    matched = conflict.get("matched")
    if matched:
        click.echo(
            f"  matches the master row ({fmt.key_text(matched['key'] or {})})"
            + (f" by its natural key ({fmt.key(matched['natural_key'])})" if matched["natural_key"] else "")
            + ": "
            + ", ".join(f"{name}={fmt.value(value)}" for name, value in matched["row"].items())
        )
    if help_text:
        click.echo(f"  {help_text['what']}")
        click.echo(f"  --take local:  {help_text['local']}")
        click.echo(f"  --take master: {help_text['master']}")
    current = (conflict["decision"] or {}).get("fields") or {}
    width = max([len(f["name"]) for f in conflict["fields"]] + [5])
    click.echo(f"  {'field':<{width}}  {'base':<20} {'local':<20} {'master':<20} decision")
    for f in conflict["fields"]:
        choice = current.get(f["name"])
        shown = (
            fmt.NO_VALUE
            if choice is None
            else choice["take"] + (f" {fmt.value(choice['value'])}" if "value" in choice else "")
        )
        cells = [fmt.short(fmt.side(conflict["no_row"], side, f[side]), 20) for side in ("base", "local", "master")]
        click.echo(f"  {f['name']:<{width}}  {cells[0]:<20} {cells[1]:<20} {cells[2]:<20} {shown}")
    history = (conflict["decision"] or {}).get("history") or []
    click.echo("  history:" if history else f"  history: {fmt.NO_VALUE} (no decision yet)")
    for h in history:
        target = f"field {h['field']}" if h["field"] else "row"
        value = f" {fmt.value(h['value'])}" if h["take"] == "value" else ""
        click.echo(f"    {h['at']}  {resolve.decider(h)}: {target} -> {h['take']}{value}")
    if settled.total:
        click.echo(f"  settled by policies in this session ({settled.total}):")
        for item in settled.items:
            click.echo(
                f"    #{item['id']} {item['module']}/{item['table']} ({fmt.key_text(item['key'])}) {item['kind']}"
                f"  policy {item['policy']}"
            )
        if settled.more:
            click.echo(f"    … and {settled.more} more (conflicts list --session {conflict['session']})")
        click.echo("    (see one with: conflicts show --id N)")
    else:
        click.echo("  settled by policies in this session: none")


@conflicts_group.command("resolve")
@master_option
@accounts_option
@by_option
@token_option
@click.option("--id", "conflict_id", type=int, default=None, help="One conflict.")
@click.option("--session", "session_id", default=None, help="With --module: every pending conflict of a module.")
@click.option("--module", default=None)
@click.option("--take", type=click.Choice(["local", "master"]), default=None)
@click.option("--field", "field_name", default=None, help="Decide one field only.")
@click.option("--value", "value_json", default=None, help="A typed value for --field, as JSON.")
@click.option("--change", is_flag=True, help="Replace a decision someone else took (else refused, exit 2).")
@handles_errors
def conflicts_resolve(
    master_url: str | None,
    accounts_path: str | None,
    by: str | None,
    token: str | None,
    conflict_id: int | None,
    session_id: str | None,
    module: str | None,
    take: str | None,
    field_name: str | None,
    value_json: str | None,
    change: bool,
) -> None:
    """Decide a conflict (per row, per field, or a typed value), or a module in bulk."""
    from sync_pipeline.engine import queries, resolve
    from sync_pipeline.engine.session import decide, decide_module

    engine = open_master(master_url)
    account = identify(accounts_path, by, token, required=True)
    person = _who(account, by)
    if conflict_id is None:
        if not (session_id and module and take):
            raise BadInputError(
                "say which conflicts to decide", "use --id ID, or --session ID --module M --take local|master"
            )
        if account is not None:
            account.check_allowed(module)
        count = decide_module(engine, session_id, module, take, person)
        click.echo(f"decided {count} pending conflict(s) of module {module}: take {take}")
        return

    if value_json is not None and take is not None:
        raise BadInputError("--take and --value exclude each other", "use one of them")
    if value_json is None and take is None:
        raise BadInputError("say which side to take", "add --take local|master (or --field NAME --value JSON)")
    value: Any = None
    if value_json is not None:
        try:
            value = json.loads(value_json)
        except ValueError:
            raise BadInputError(f"--value {value_json!r} is not JSON", "quote strings: --value '\"text\"'") from None
    conflict = queries.get_conflict(engine, conflict_id)
    if account is not None:
        account.check_allowed(conflict["module"])
    seen: int | None = None
    if not change:
        summary = queries.session_summary(engine, conflict["session"])
        if summary.decidable:  # else the engine says "read-only once the load has started"
            resolve.refuse_overwrite(conflict, field_name, person, CHANGE_FIX.format(id=conflict_id))
        seen = conflict["latest_decision_id"]
    try:
        decide(engine, conflict_id, "value" if value_json is not None else str(take), person, field_name, value, seen)
    except AlreadyDecidedError as exc:
        # Someone decided between our look and our write.
        raise DecisionError(exc.problem, CHANGE_FIX.format(id=conflict_id)) from None
    if value_json is not None:
        click.echo(f"conflict {conflict_id}: field {field_name} set to {value!r}")
    else:
        click.echo(f"conflict {conflict_id}: take {take}" + (f" for field {field_name}" if field_name else ""))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("serve")
@master_option
@accounts_option
@click.option("--host", default=DEFAULT_REVIEW_HOST, show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_REVIEW_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--dagster-url",
    envvar="DAGSTER_UI_URL",
    default=None,
    help="The Dagster UI the page links to (default: $DAGSTER_UI_URL, else http://127.0.0.1:3000).",
)
@click.option("--secure-cookies", is_flag=True, help="Send the login cookie over HTTPS only (behind a TLS proxy).")
@handles_errors
def serve_command(
    master_url: str | None,
    accounts_path: str | None,
    host: str,
    port: int,
    dagster_url: str | None,
    secure_cookies: bool,
) -> None:
    """Serve the conflict review page (127.0.0.1 unless --host says otherwise)."""
    import uvicorn

    from sync_pipeline.review.app import create_app

    path = Path(accounts_path).expanduser() if accounts_path else default_accounts_path()
    accounts = Accounts.load(path)
    if not any(a.password_hash or a.tokens for a in accounts.entries):
        raise BadInputError(
            f"{path} has no account that can log in",
            'add one with `sync-pipeline accounts add --name "Your Name" --modules crm`',
        )
    app = create_app(master_url, path, dagster_ui_url=dagster_url, https_only=secure_cookies)
    if not _is_loopback(host):
        click.echo(
            f"warning: listening on {host}: the page is reachable from the network; serve it behind HTTPS "
            "(a TLS proxy) and pass --secure-cookies",
            err=True,
        )
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"review page: http://{shown}:{port}/  (accounts: {path}; stop with Ctrl+C)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False, server_header=False)
