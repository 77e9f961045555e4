"""CLI parity with the review page: `conflicts list|show|resolve` enforce the same rules (allowed
modules, "already decided by X at T", validation, read-only after the load), plus `accounts` and `serve`.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from sync_pipeline.accounts import Accounts, AccountsError
from sync_pipeline.cli import main
from sync_pipeline.engine.queries import get_conflict
from sync_pipeline.engine.records import latest_decision_id
from sync_pipeline.engine.session import run_sync
from sync_pipeline_tests.test_review_http import make_review_master

PASSWORD = "correct horse battery"


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=stdin, env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def accounts_file(tmp_path: Path) -> Path:
    path = tmp_path / "accounts.yaml"
    for name, modules in (("Ada Core", "core"), ("Eve Extra", "extra"), ("Root Admin", "*")):
        code, out, err = run("accounts", "add", "--accounts", str(path), "--name", name, "--modules", modules,
                             "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
        assert code == 0, err
    return path


def test_without_an_accounts_file_the_cli_works_as_before(master_url: str, tmp_path: Path) -> None:
    engine, _replica, session, ids = make_review_master(master_url, tmp_path)
    code, out, _ = run("conflicts", "list", "--master", master_url, "--session", session, "--json")
    assert code == 0 and {c["module"] for c in json.loads(out)} == {"core", "extra"}
    code, _, err = run("conflicts", "resolve", "--master", master_url, "--id", str(ids["title"]), "--take", "local")
    assert code == 2 and "--by NAME" in err
    code, out, _ = run(
        "conflicts", "resolve", "--master", master_url, "--id", str(ids["title"]), "--take", "local", "--by", "Kim"
    )
    assert code == 0 and get_conflict(engine, ids["title"])["decision"]["by"] == "Kim"


def test_allowed_modules_are_enforced(master_url: str, tmp_path: Path, accounts_file: Path) -> None:
    engine, _replica, session, ids = make_review_master(master_url, tmp_path)
    base = ("--master", master_url, "--accounts", str(accounts_file))
    code, _, err = run("conflicts", "list", *base, "--session", session)
    assert code == 2 and "say who you are" in err
    code, out, err = run("conflicts", "list", *base, "--session", session, "--by", "Ada Core", "--json")
    assert code == 0 and {c["module"] for c in json.loads(out)} == {"core"}
    assert "conflicts of extra left out" in err
    code, _, err = run("conflicts", "show", *base, "--id", str(ids["title"]), "--by", "ada core")
    assert code == 2 and "Ada Core may not see conflicts of module 'extra'" in err
    code, _, err = run("conflicts", "resolve", *base, "--id", str(ids["title"]), "--take", "local", "--by", "Ada Core")
    assert code == 2 and "may not decide conflicts of module 'extra'" in err
    code, _, err = run(
        "conflicts", "resolve", *base, "--session", session, "--module", "extra", "--take", "local", "--by", "Ada Core"
    )
    assert code == 2 and "may not decide" in err
    code, _, err = run("conflicts", "resolve", *base, "--id", str(ids["title"]), "--take", "local", "--by", "Mallory")
    assert code == 2 and "no account named 'Mallory'" in err
    assert latest_decision_id(engine, ids["title"]) == 0
    # The person allowed for the module decides; the history records the account's own spelling.
    code, out, err = run(
        "conflicts", "resolve", *base, "--id", str(ids["title"]), "--take", "local", "--by", "eve extra"
    )
    assert code == 0, err
    assert get_conflict(engine, ids["title"])["decision"]["by"] == "Eve Extra"


def test_tokens_identify_automation(master_url: str, tmp_path: Path, accounts_file: Path) -> None:
    engine, _replica, session, ids = make_review_master(master_url, tmp_path)
    code, out, _ = run("accounts", "add", "--accounts", str(accounts_file), "--name", "Bot", "--modules", "core",
                       "--no-password")  # fmt: skip
    assert code == 0
    code, token, err = run("accounts", "token", "--accounts", str(accounts_file), "--name", "Bot")
    assert code == 0 and "not shown again" in err
    token = token.strip()
    base = ("--master", master_url, "--accounts", str(accounts_file))
    env = {"SYNC_TOKEN": token}
    code, _, err = run("conflicts", "resolve", *base, "--id", str(ids["name"]), "--take", "master", env=env)
    assert code == 0, err
    assert get_conflict(engine, ids["name"])["decision"]["by"] == "Bot"
    code, _, err = run("conflicts", "resolve", *base, "--id", str(ids["title"]), "--take", "master", env=env)
    assert code == 2 and "Bot may not decide" in err
    code, _, err = run("conflicts", "resolve", *base, "--id", str(ids["amount"]), "--take", "master", "--by",
                       "Ada Core", env=env)  # fmt: skip
    assert code == 2 and "is not the token's account (Bot)" in err
    code, _, err = run("conflicts", "list", *base, "--token", token[:-2] + "xx")
    assert code == 2 and "the token matches no account" in err
    token_id = token.split("_")[1]
    assert run("accounts", "revoke", "--accounts", str(accounts_file), "--name", "Bot", "--token-id", token_id)[0] == 0
    code, _, err = run("conflicts", "list", *base, env=env)
    assert code == 2 and "the token matches no account" in err
    assert session


def test_someone_elses_decision_is_replaced_only_with_change(
    master_url: str, tmp_path: Path, accounts_file: Path
) -> None:
    engine, _replica, _session, ids = make_review_master(master_url, tmp_path)
    base = ("--master", master_url, "--accounts", str(accounts_file))
    pair = str(ids["pair"])
    assert (
        run("conflicts", "resolve", *base, "--id", pair, "--field", "city", "--take", "local", "--by", "Ada Core")[0]
        == 0
    )
    # Ada may change her own decision and decide the other field.
    assert (
        run("conflicts", "resolve", *base, "--id", pair, "--field", "city", "--take", "master", "--by", "Ada Core")[0]
        == 0
    )
    # Root: the field Ada decided is refused, the open one is not.
    code, _, err = run("conflicts", "resolve", *base, "--id", pair, "--field", "city", "--take", "local",
                       "--by", "Root Admin")  # fmt: skip
    assert code == 2 and f"field city of conflict {pair} was already decided by Ada Core at" in err
    assert "--change" in err
    code, _, err = run("conflicts", "resolve", *base, "--id", pair, "--take", "local", "--by", "Root Admin")
    assert code == 2 and "already decided by Ada Core" in err
    code, _, err = run("conflicts", "resolve", *base, "--id", pair, "--field", "name", "--value", '"Root name"',
                       "--by", "Root Admin")  # fmt: skip
    assert code == 0, err
    code, _, err = run("conflicts", "resolve", *base, "--id", pair, "--take", "local", "--by", "Root Admin",
                       "--change")  # fmt: skip
    assert code == 0, err
    code, out, _ = run("conflicts", "show", *base, "--id", pair, "--by", "Root Admin", "--json")
    shown = json.loads(out)
    assert [(h["by"], h["field"], h["take"]) for h in shown["decision"]["history"]] == [
        ("Ada Core", "city", "local"),
        ("Ada Core", "city", "master"),
        ("Root Admin", "name", "value"),
        ("Root Admin", None, "local"),
    ]
    assert shown["latest_decision_id"] == latest_decision_id(engine, ids["pair"])
    # Bulk: a pending conflict that someone else partly decided stops the module decision.
    name = str(ids["name"])
    assert run("conflicts", "resolve", *base, "--id", name, "--take", "master", "--by", "Root Admin")[0] == 0
    amount_before = latest_decision_id(engine, ids["amount"])
    code, out, err = run("conflicts", "resolve", *base, "--session", shown["session"], "--module", "core",
                         "--take", "local", "--by", "Ada Core")  # fmt: skip
    assert code == 0 and "decided 1 pending conflict(s)" in out  # only `amount` was pending
    assert latest_decision_id(engine, ids["amount"]) > amount_before


def test_bulk_keeps_the_field_decisions_of_others(master_url: str, tmp_path: Path, accounts_file: Path) -> None:
    engine, _replica, session, ids = make_review_master(master_url, tmp_path)
    base = ("--master", master_url, "--accounts", str(accounts_file))
    pair = str(ids["pair"])
    code, _, err = run("conflicts", "resolve", *base, "--id", pair, "--field", "city", "--take", "master",
                       "--by", "Root Admin")  # fmt: skip
    assert code == 0, err
    code, out, err = run("conflicts", "resolve", *base, "--session", session, "--module", "core", "--take", "local",
                         "--by", "Ada Core")  # fmt: skip
    assert code == 0 and "decided 3 pending conflict(s)" in out, err
    decision = get_conflict(engine, ids["pair"])["decision"]
    assert decision["fields"] == {"city": {"take": "master"}, "name": {"take": "local"}}
    assert latest_decision_id(engine, ids["title"]) == 0


def test_show_prints_sides_meaning_and_history(master_url: str, tmp_path: Path) -> None:
    _engine, _replica, _session, ids = make_review_master(master_url, tmp_path)
    pair = str(ids["pair"])
    run(
        "conflicts",
        "resolve",
        "--master",
        master_url,
        "--id",
        pair,
        "--field",
        "city",
        "--take",
        "local",
        "--by",
        "Kim",
    )
    code, out, _ = run("conflicts", "show", "--master", master_url, "--id", pair)
    assert code == 0
    assert "update_update: Changed on both sides" in out
    assert "--take local:  write the local value" in out
    assert "Local city" in out and "Master city" in out and "Base" in out
    assert "Kim: field city -> local" in out
    code, _, err = run("conflicts", "show", "--master", master_url, "--id", "9999")
    assert code == 2 and "conflict 9999 does not exist" in err


def test_typed_values_are_validated(master_url: str, tmp_path: Path) -> None:
    engine, _replica, _session, ids = make_review_master(master_url, tmp_path)
    name = str(ids["name"])
    base = ("conflicts", "resolve", "--master", master_url, "--id", name, "--field", "name", "--by", "Kim")
    code, _, err = run(*base, "--value", json.dumps("x" * 51))
    assert code == 2 and "longer than the column's 50" in err
    code, _, err = run(*base, "--value", "null")
    assert code == 2 and "cannot be empty (NOT NULL)" in err
    code, _, err = run(*base, "--value", "not json")
    assert code == 2 and "is not JSON" in err
    assert latest_decision_id(engine, ids["name"]) == 0
    assert run(*base, "--value", '"Fine"')[0] == 0


def test_decisions_are_read_only_after_the_load(master_url: str, tmp_path: Path) -> None:
    engine, replica, session, ids = make_review_master(master_url, tmp_path)
    for module in ("core", "extra"):
        code, _, err = run("conflicts", "resolve", "--master", master_url, "--session", session, "--module", module,
                           "--take", "local", "--by", "Kim")  # fmt: skip
        assert code == 0, err
    assert run_sync(engine, replica).status == "done"
    before = latest_decision_id(engine, ids["pair"])
    for extra in ((), ("--change",)):
        code, _, err = run("conflicts", "resolve", "--master", master_url, "--id", str(ids["pair"]), "--take",
                           "master", "--by", "Lee", *extra)  # fmt: skip
        assert code == 2 and "read-only once the load has started" in err
    assert latest_decision_id(engine, ids["pair"]) == before


def test_accounts_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Default location: $SYNC_HOME/accounts.yaml (SYNC_HOME is a temporary folder in tests).
    path = Path(os.environ["SYNC_HOME"]) / "accounts.yaml"
    code, out, err = run(
        "accounts", "add", "--name", "Ada", "--modules", "crm,sales", stdin=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert code == 0 and str(path) in out, err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PASSWORD not in path.read_text()
    code, _, err = run("accounts", "add", "--name", "ada", "--modules", "crm", "--password-stdin", stdin=PASSWORD)
    assert code == 2 and "exists already" in err
    code, _, err = run("accounts", "add", "--name", "Bo", "--modules", "crm", "--password-stdin", stdin="short\n")
    assert code == 2 and "shorter than 8" in err
    code, _, err = run("accounts", "add", "--name", "Bo", "--modules", "crm;drop", "--password-stdin", stdin=PASSWORD)
    assert code == 2 and "is not a module name" in err
    assert run("accounts", "modules", "--name", "Ada", "--modules", "*")[0] == 0
    assert run("accounts", "password", "--name", "Ada", "--password-stdin", stdin="another password\n")[0] == 0
    accounts = Accounts.load(path)
    assert accounts.authenticate_password("Ada", "another password") is not None
    assert accounts.authenticate_password("Ada", PASSWORD) is None
    assert accounts.require("ada").may_decide("anything")
    code, out, _ = run("accounts", "list", "--json")
    assert json.loads(out) == [{"name": "Ada", "modules": ["*"], "password": True, "tokens": []}]
    assert run("accounts", "remove", "--name", "Ada")[0] == 0
    assert Accounts.load(path).entries == []
    # A hand-edited file with a mistake names the file, the line and the key.
    path.write_text("accounts:\n  - name: Ada\n    modules: [crm]\n    pasword_hash: x\n")
    with pytest.raises(AccountsError) as error:
        Accounts.load(path)
    assert f"{path}:4: accounts[0].pasword_hash: unknown key 'pasword_hash'" in str(error.value)
    path.write_text("accounts:\n  - {name: Ada, modules: [crm]}\n  - {name: ada, modules: [sales]}\n")
    code, _, err = run("accounts", "list")
    assert code == 2 and "the name 'ada' appears twice" in err and ":3:" in err


def test_serve_needs_accounts_that_can_log_in(tmp_path: Path) -> None:
    code, _, err = run("serve", "--accounts", str(tmp_path / "missing.yaml"))
    assert code == 2 and "the accounts file does not exist" in err and "accounts add" in err
    empty = tmp_path / "empty.yaml"
    empty.write_text("accounts: []\n")
    code, _, err = run("serve", "--accounts", str(empty))
    assert code == 2 and "has no account that can log in" in err


def test_accounts_file_that_is_not_yaml_names_the_line() -> None:
    with pytest.raises(AccountsError) as raised:
        Accounts.parse("accounts:\n  - name: Ada\n    modules: [crm\n", "accounts.yaml")
    assert (raised.value.path, raised.value.line, raised.value.key) == ("accounts.yaml", 4, "<yaml>")
    assert "not valid YAML" in str(raised.value) and "fix the YAML syntax" in str(raised.value)
