"""What people read on the command line and the conflict page, against real SQLite and PostgreSQL masters:

- context for a decision: the row's identifying fields, the master row a duplicate matched, and the
  conflicts policies settled in the same session (`conflicts list|show`, the page);
- one notation for NULL / (no row) / — in `conflicts list`, `conflicts show`, the protocol and the page;
- counts that group conflict kinds apart from changes, `replicas` with a header;
- next steps that work as printed, with or without accounts (each printed command is run);
- `protocol --out` writes atomically and refuses a symlink; a PDF goes to a stdout that is not a terminal.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from sync_pipeline.accounts import Account, Accounts
from sync_pipeline.cli import main
from sync_pipeline.engine.protocol import build_protocol
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.session import run_sync
from sync_pipeline.reports import markdown as md
from sync_pipeline.reports import render_html, render_json, render_markdown
from sync_pipeline.review.app import create_app
from sync_pipeline.review.auth import AuthSettings
from sync_pipeline.review.server import BackgroundServer
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, master_state, replica_engine, row
from sync_pipeline_tests.test_review_http import PASSWORD, csrf_of, make_review_master

P, C, T = TABLES["parent"], TABLES["child"], TABLES["tagged"]

CONTEXT_SETTINGS = """\
modules:
  core:
    policy: manual
    tables:
      parent: {natural_key: [email], display: [name, email]}
      child: {}
  extra:
    policy: master_wins
    tables:
      tagged: {}
"""


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


@dataclass
class ContextSession:
    engine: Engine
    url: str
    replica: Path
    session_id: str
    duplicate: int  # parent: a local insert whose email master parent 5 has
    gone: int  # child 10: label set to NULL locally, the row deleted in the master
    settled: int  # tagged A/1: changed on both sides, settled by master_wins


def make_context_session(master_url: str, folder: Path) -> ContextSession:
    engine = make_master(master_url, settings=CONTEXT_SETTINGS)
    replica = make_replica(engine, folder, owner="Alex Field")
    with replica_engine(replica).begin() as local:
        local.execute(sa.insert(P).values(name="Local Five", city="Field", email="p5@example.com"))
        local.execute(sa.update(C).where(C.c.id == 10).values(label=None))
        local.execute(sa.update(T).where(T.c.code == "A").values(title="Local title"))
    with engine.begin() as master:
        master.execute(sa.delete(C).where(C.c.id == 10))
        master.execute(sa.update(T).where(T.c.code == "A").values(title="Master title"))
    result = run_sync(engine, replica)
    assert result.status == "waiting" and result.session_id
    by_table = {c["table"]: c["id"] for c in list_conflicts(engine, result.session_id)}
    return ContextSession(
        engine, master_url, replica, result.session_id, by_table["parent"], by_table["child"], by_table["tagged"]
    )


@pytest.fixture
def context(master_url: str, tmp_path: Path) -> ContextSession:
    return make_context_session(master_url, tmp_path)


# ------------------------------------------------------------------------------------------------
# 17.6 Context for a decision; 17.9 one notation
# ------------------------------------------------------------------------------------------------


def test_conflict_json_carries_identity_sides_without_a_row_and_the_matched_row(context: ContextSession) -> None:
    conflicts = {c["id"]: c for c in list_conflicts(context.engine, context.session_id)}
    duplicate = conflicts[context.duplicate]
    # The `display` setting decides, in its order.
    assert duplicate["identity"] == {"name": "Local Five", "email": "p5@example.com"}
    assert duplicate["no_row"] == ["base"]
    master_five = row(context.engine, "parent", id=5)
    assert duplicate["matched"]["key"] == {"id": 5}
    assert duplicate["matched"]["natural_key"] == {"email": "p5@example.com"}
    assert duplicate["matched"]["row"] == master_five
    gone = conflicts[context.gone]
    # No display setting, no natural key: the first text columns (child has one: label).
    assert gone["identity"] == {"label": None}
    assert gone["no_row"] == ["master"] and gone["matched"] is None
    code, out, _ = run("conflicts", "list", "--master", context.url, "--session", context.session_id, "--json")
    assert code == 0 and {c["id"]: c["matched"] for c in json.loads(out)}[context.duplicate]["key"] == {"id": 5}


def test_show_names_the_row_the_matched_master_row_and_what_policies_settled(context: ContextSession) -> None:
    code, out, err = run("conflicts", "show", "--master", context.url, "--id", str(context.duplicate))
    assert code == 0, err
    assert "row: name=Local Five, email=p5@example.com" in out
    assert "matches the master row (id=5) by its natural key (email=p5@example.com)" in out
    assert "name=P5" in out and "city=Base" in out
    assert re.search(
        rf"#{context.settled} extra/tagged \(code=\"A\", version=1\) update_update\s+policy master_wins", out
    )
    code, out, _ = run("conflicts", "show", "--master", context.url, "--id", str(context.duplicate), "--json")
    assert [c["id"] for c in json.loads(out)["settled"]["conflicts"]] == [context.settled]


def test_one_notation_for_null_and_no_row_in_list_show_and_protocol(context: ContextSession) -> None:
    code, out, _ = run("conflicts", "list", "--master", context.url, "--session", context.session_id)
    assert code == 0
    assert "label: base=C10 local=NULL master=(no row)" in out
    assert "None" not in out and "∅" not in out
    assert "row: name=Local Five, email=p5@example.com" in out
    code, out, _ = run("conflicts", "show", "--master", context.url, "--id", str(context.gone))
    label = next(line for line in out.splitlines() if line.strip().startswith("label"))
    assert re.split(r"\s{2,}", label.strip())[1:4] == ["C10", "NULL", "(no row)"]
    protocol = build_protocol(context.engine, context.session_id)
    record = next(c for c in protocol.conflicts if c.id == context.gone)
    assert record.no_row == ["master"]
    assert json.loads(render_json(protocol))["conflicts"][[c.id for c in protocol.conflicts].index(context.gone)][
        "no_row"
    ] == ["master"]
    markdown = render_markdown(protocol)
    # Markdown escapes every punctuation character of a value (reports/markdown.py).
    assert f"| label | C10 | NULL | {md.cell('(no row)')} | pending |" in markdown, markdown
    page = render_html(protocol)
    assert "<td>C10</td>" in page and '<td class="local">NULL</td>' in page
    assert '<td class="master">(no row)</td>' in page


def test_text_that_reads_like_a_mark_is_quoted() -> None:
    from sync_pipeline.reports import formatting as f

    assert [f.value(None), f.value(None, row_exists=False), f.optional(None)] == ["NULL", "(no row)", "—"]
    assert [f.value("NULL"), f.value("(no row)"), f.value(""), f.value(" x")] == ['"NULL"', '"(no row)"', '""', '" x"']
    assert f.side(["kept"], "kept", None) == "(no row)" and f.side(["kept"], "local", None) == "NULL"


def test_conflict_page_shows_identity_matched_row_settled_links_and_the_notation(
    context: ContextSession, password_hash: str
) -> None:
    accounts = Accounts([Account(name="Root Admin", modules=["*"], password_hash=password_hash)])
    app = create_app(context.url, accounts, auth=AuthSettings(idle_seconds=600, max_seconds=3600))
    try:
        with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            answer = client.post(
                "/login",
                data={"name": "Root Admin", "password": PASSWORD, "csrf_token": csrf_of(client.get("/login"))},
            )
            assert answer.status_code == 303
            page = client.get(f"/conflicts/{context.duplicate}").text
            identity = re.search(r'<div id="identity">(.*?)</div>', page, re.S)
            assert identity and "Local Five" in identity.group(1) and "p5@example.com" in identity.group(1)
            matched = re.search(r'<div id="matched">(.*?)</div>', page, re.S)
            assert matched and "id=5" in matched.group(1) and "email=p5@example.com" in matched.group(1)
            assert "<td>P5</td>" in matched.group(1)
            settled = re.search(r'<section class="card" id="settled">(.*?)</section>', page, re.S)
            assert settled and f'href="/conflicts/{context.settled}"' in settled.group(1)
            gone = client.get(f"/conflicts/{context.gone}").text
            assert ">NULL</span>" in gone and ">(no row)</span>" in gone
            assert ">no such row<" not in gone and ">row deleted<" not in gone and ">empty<" not in gone
            session = client.get(f"/sessions/{context.session_id}").text
            assert '<div class="small muted identity">name=Local Five, email=p5@example.com</div>' in session
            history = client.get("/history").text
            cells = re.search(rf'<tr data-conflict="{context.gone}">(.*?)</tr>', history, re.S)
            assert cells and "<td>NULL</td>" in cells.group(1) and "<td>(no row)</td>" in cells.group(1)
    finally:
        app.state.engine.dispose()


@pytest.fixture(scope="module")
def password_hash() -> str:
    from argon2 import PasswordHasher

    return PasswordHasher().hash(PASSWORD)


# ------------------------------------------------------------------------------------------------
# 17.9 counts, replicas, protocol output; 11.9 protocol --out
# ------------------------------------------------------------------------------------------------


def test_sync_groups_conflict_kinds_apart_from_changes_and_replicas_has_a_header(
    master_url: str, tmp_path: Path
) -> None:
    _engine, replica, _session, _ids = make_review_master(master_url, tmp_path)
    code, out, _ = run("sync", "--without-dagster", "--master", master_url, "--replica", str(replica))
    assert code == 3
    lines = out.splitlines()
    core = next(i for i, line in enumerate(lines) if line.strip().startswith("core"))
    assert "changes: local updates 3" in lines[core] and "conflict" not in lines[core]
    assert lines[core + 1].strip() == "conflicts: 3 (update_update 3)"
    code, out, _ = run("replicas", "--master", master_url)
    header, first = out.splitlines()[:2]
    assert header.split()[:3] == ["REPLICA", "STATUS", "OWNER"] and "Alex Field" in first


def test_protocol_out_refuses_a_symlink_and_replaces_files_atomically(master_url: str, tmp_path: Path) -> None:
    engine, _replica, session_id, _ids = make_review_master(master_url, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious", encoding="utf-8")
    planted = tmp_path / "out" / "protocol.md"
    planted.parent.mkdir()
    planted.symlink_to(victim)
    before = master_state(engine)
    base = ("protocol", "--master", master_url, "--session", session_id)
    code, _, err = run(*base, "--out", str(planted))
    assert code == 2 and "symbolic link" in err
    assert victim.read_text(encoding="utf-8") == "precious" and planted.is_symlink()
    dangling = tmp_path / "out" / "dangling.md"
    dangling.symlink_to(tmp_path / "would-be-created.md")
    assert run(*base, "--out", str(dangling))[0] == 2 and not (tmp_path / "would-be-created.md").exists()
    # A regular file is replaced by rename: the folder holds the new file and no temporary one.
    target = tmp_path / "out" / "real.md"
    target.write_text("old", encoding="utf-8")
    code, _, err = run(*base, "--out", str(target))
    assert code == 0, err
    assert target.read_text(encoding="utf-8").startswith("# Sync protocol")
    assert sorted(p.name for p in target.parent.iterdir()) == ["dangling.md", "protocol.md", "real.md"]
    assert master_state(engine) == before


def test_protocol_pdf_goes_to_a_stdout_that_is_not_a_terminal(master_url: str, tmp_path: Path) -> None:
    _engine, _replica, session_id, _ids = make_review_master(master_url, tmp_path)
    target = tmp_path / "f.pdf"
    with target.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "sync_pipeline.cli", "protocol", "--master", master_url,
             "--session", session_id, "--format", "pdf"],
            stdout=out, stderr=subprocess.PIPE, check=False, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert target.read_bytes().startswith(b"%PDF") and target.read_bytes().rstrip().endswith(b"%%EOF")


# ------------------------------------------------------------------------------------------------
# 17.8 next steps that work as printed
# ------------------------------------------------------------------------------------------------


def _next_steps(out: str) -> list[str]:
    lines = out.splitlines()
    start = lines.index("next:") + 1
    return [line.strip() for line in lines[start:] if line.startswith("  ") and not line.strip().startswith("#")]


def _args(command: str) -> tuple[str, list[str]]:
    """The program and the arguments of a printed command (its `# comment` dropped)."""
    words = shlex.split(command, comments=True)
    if words[0] == "sync-pipeline" or words[0].endswith("/sync-pipeline"):
        return words[0], words[1:]
    assert words[1:3] == ["-m", "sync_pipeline.cli"], command
    return " ".join(words[:3]), words[3:]


def _run_printed(commands: list[str], password: str | None = None) -> list[str]:
    """Run each printed command as printed (in-process, same arguments); returns their outputs."""
    outputs = []
    for command in commands:
        _program, args = _args(command)
        stdin = f"{password}\n{password}\n" if args[:2] == ["accounts", "add"] else None
        result = CliRunner().invoke(main, args, input=stdin)
        assert result.exit_code in (0, 3), (command, result.output)
        outputs.append(result.stdout)
    return outputs


def _sync_hints(master_url: str, replica: Path) -> list[str]:
    code, out, err = run("sync", "--without-dagster", "--master", master_url, "--replica", str(replica))
    assert code == 3, err
    return _next_steps(out)


def test_next_steps_without_accounts_run_as_printed_with_the_programs_path(master_url: str, tmp_path: Path) -> None:
    engine, replica, session, _ids = make_review_master(master_url, tmp_path)
    steps = _sync_hints(master_url, replica)
    assert all("|" not in s.split("#")[0] and "ID" not in s.split("#")[0] for s in steps), steps
    assert all(f"--master {shlex.quote(master_url)}" in s for s in steps)
    # The program as printed: on PATH, or this installation's own path.
    program, _ = _args(steps[0])
    version = subprocess.run([*shlex.split(program), "--version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0 and "version" in version.stdout
    outputs = _run_printed(steps)
    assert "done" in outputs[-1]
    assert row(engine, "parent", id=1)["city"] == "Local city"
    assert all(c["status"] == "decided" for c in list_conflicts(engine, session))


def test_next_steps_name_an_account_that_may_decide(master_url: str, tmp_path: Path) -> None:
    engine, replica, session, _ids = make_review_master(master_url, tmp_path)
    accounts = Path(os.environ["SYNC_HOME"]) / "accounts.yaml"
    for name, modules in (("Ada Core", "core"), ("Root Admin", "*")):
        code, _, err = run("accounts", "add", "--accounts", str(accounts), "--name", name, "--modules", modules,
                           "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
        assert code == 0, err
    steps = _sync_hints(master_url, replica)
    assert all("--by 'Root Admin'" in s for s in steps if " conflicts " in s), steps
    outputs = _run_printed(steps)
    assert "title" in outputs[0] and "city" in outputs[0]  # the list shows both modules' conflicts
    assert "done" in outputs[-1]
    assert {c["decision"]["by"] for c in list_conflicts(engine, session)} == {"Root Admin"}


def test_next_steps_create_an_account_first_when_none_may_decide(master_url: str, tmp_path: Path) -> None:
    engine, replica, session, _ids = make_review_master(master_url, tmp_path)
    accounts = Path(os.environ["SYNC_HOME"]) / "accounts.yaml"
    code, _, err = run("accounts", "add", "--accounts", str(accounts), "--name", "Your Name", "--modules", "extra",
                       "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert code == 0, err
    steps = _sync_hints(master_url, replica)
    assert _args(steps[0])[1] == ["accounts", "add", "--name", "Your Name 2", "--modules", "core,extra"]
    outputs = _run_printed(steps, password=PASSWORD)
    assert "done" in outputs[-1]
    assert Accounts.load(accounts).get("Your Name 2") is not None
    assert {c["decision"]["by"] for c in list_conflicts(engine, session)} == {"Your Name 2"}


def test_protocol_files_are_named_after_a_sync(master_url: str, tmp_path: Path) -> None:
    from sync_pipeline.reports import write_protocol_files
    from sync_pipeline.reports.files import default_protocol_folder

    engine = make_master(master_url)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as local:
        local.execute(sa.update(P).where(P.c.id == 2).values(city="Offline"))
    code, out, err = run("sync", "--without-dagster", "--master", master_url, "--replica", str(replica))
    assert code == 0, err
    session = re.search(r"session (\S+): done", out)
    assert session
    # Without Dagster nothing writes the files: the output says how to get the protocol.
    assert " protocol --master " in out and f"--session {session.group(1)} --format html --out" in out
    written = write_protocol_files(engine, session.group(1))
    from sync_pipeline.cli_output import protocol_note

    (note,) = protocol_note(session.group(1), "done", master_url)
    assert note.startswith(f"protocol written to {default_protocol_folder()}/")
    assert all(path.name in note for path in written.values())


def test_a_master_password_is_never_printed_in_next_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    from sync_pipeline.cli_output import master_args, master_setup

    url = "postgresql+psycopg://sync:Pa55-w0rd-never-shown@db.example/master"
    monkeypatch.delenv("SYNC_MASTER_URL", raising=False)
    assert master_args(url) == ' --master "$SYNC_MASTER_URL"'
    (comment,) = master_setup(url)
    assert comment.startswith("# first: export SYNC_MASTER_URL='postgresql+psycopg://sync:***@db.example/master'")
    assert "Pa55" not in comment
    monkeypatch.setenv("SYNC_MASTER_URL", url)  # the commands find it by themselves
    assert master_args(url) == "" and master_setup(url) == []
    assert master_args("sqlite:////tmp/m.db") == " --master sqlite:////tmp/m.db"
