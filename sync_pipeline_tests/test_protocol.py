"""The sync protocol: its JSON equals what the master holds, the HTML and Markdown show every module and
conflict, the PDF renders (A4, text extractable), and sessions that synced nothing, wait, or failed say so.

The scenario is the demo's (every conflict kind, a manual module and automatic ones), built on each
backend; expected values come from the master's data rows and sync tables, read here with plain SQL.
"""

from __future__ import annotations

import json
import struct
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import markupsafe
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from sync_pipeline.cli import main
from sync_pipeline.cli_reports import protocol_command
from sync_pipeline.demo import DEMO_SETTINGS, build_master, make_demo_edits
from sync_pipeline.engine import store
from sync_pipeline.engine.checkout import checkout
from sync_pipeline.engine.errors import ConflictNotFoundError, SyncError
from sync_pipeline.engine.load import advance_sequence
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.protocol import build_protocol
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.schema import encode, reflect_tables
from sync_pipeline.engine.session import decide, decide_module, run_sync
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline.reports import formatting, render_html, render_json, render_markdown, write_protocol_files
from sync_pipeline.reports import markdown as md
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, pause, replica_engine, row

ALL_KINDS = {"update_update", "update_delete", "delete_update", "insert_insert", "duplicate", "orphan"}
OWNER = "Alex Field"
EDITED_PHONE = "+49 170 7777777"


def esc(text: str) -> str:
    """Text as Jinja's autoescape writes it into the page."""
    return str(markupsafe.escape(text))


@dataclass
class DemoSession:
    engine: Engine
    url: str
    session_id: str


def _demo_session(master_url: str, folder: Path) -> DemoSession:
    """The demo on any backend; crm decided by two people (an edited value, a master side, a bulk local)."""
    engine = connect_master(master_url, must_exist=False)
    build_master(engine, companies=40)
    if engine.dialect.name == "postgresql":
        # The demo inserts explicit ids; a real master's sequences are past them (the master's own inserts
        # in the demo rely on that to take the key the replica also took).
        with engine.begin() as conn:
            for info in reflect_tables(conn, ["company", "contact", "activity", "order"]).values():
                advance_sequence(conn, info)
    init_master(engine, parse_settings(DEMO_SETTINGS, "demo-settings.yaml"))
    replica = folder / "demo-replica.db"
    checkout(engine, replica, OWNER)
    make_demo_edits(engine, replica)
    first = run_sync(engine, replica)
    assert first.status == "waiting" and first.session_id
    pending = {c["kind"]: c for c in list_conflicts(engine, first.session_id, "pending")}
    update_update = pending["update_update"]
    decide(engine, update_update["id"], "value", "Dana Lead", "phone", EDITED_PHONE)
    decide(engine, update_update["id"], "master", "Dana Lead", "updated_at")
    decide(engine, pending["orphan"]["id"], "master", "Dana Lead")
    decide_module(engine, first.session_id, "crm", "local", "Sam Second")
    second = run_sync(engine, replica)
    assert second.status == "done"
    return DemoSession(engine, master_url, first.session_id)


@pytest.fixture
def demo(master_url: str, tmp_path: Path) -> DemoSession:
    return _demo_session(master_url, tmp_path)


def _sync_rows(engine: Engine, table: sa.Table, session_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table).where(table.c.session_id == session_id)).mappings()]


def _master_row(engine: Engine, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
    t = sa.Table(table, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        found = conn.execute(sa.select(t).where(*[t.c[k] == v for k, v in key.items()])).mappings().first()
    return None if found is None else {k: encode(v) for k, v in found.items()}


# ------------------------------------------------------------------------------------------------
# The JSON protocol against the master
# ------------------------------------------------------------------------------------------------


def test_json_protocol_equals_what_the_master_holds(demo: DemoSession) -> None:
    engine, sid = demo.engine, demo.session_id
    data = json.loads(render_json(build_protocol(engine, sid)))

    with engine.connect() as conn:
        session = conn.execute(sa.select(store.sync_session).where(store.sync_session.c.session_id == sid)).mappings()
        session = dict(session.one())
        replica = dict(
            conn.execute(sa.select(store.sync_replica).where(store.sync_replica.c.replica_id == session["replica_id"]))
            .mappings()
            .one()
        )
    assert data["protocol_version"] == 1
    assert data["state"] == "done"
    assert data["session"]["id"] == sid
    assert data["session"]["status"] == "done"
    assert data["session"]["started_at"] == session["started_at"]
    assert data["session"]["finished_at"] == session["finished_at"]
    assert data["session"]["dagster_run_id"] == session["dagster_run_id"]
    assert data["session"]["duration_seconds"] is not None and data["session"]["duration_seconds"] >= 0
    assert data["replica"] == {
        "id": replica["replica_id"],
        "owner": OWNER,
        "modules": json.loads(replica["modules"]),
        "checked_out_at": replica["checked_out_at"],
        "status": "retired",
        "retired_at": replica["retired_at"],
        "path": replica["path"],
    }
    assert data["settings"]["yaml"] == replica["settings"]
    assert data["settings"]["modules"]["sales"] == {
        "policy": "newest_wins",
        "tables": {"order": "newest_wins", "order_line": "local_wins"},
    }

    # Per module counts, from the sync tables with the demo settings' table -> module map.
    settings = parse_settings(DEMO_SETTINGS)
    applied = _sync_rows(engine, store.sync_applied, sid)
    changes = _sync_rows(engine, store.sync_change, sid)
    conflicts = _sync_rows(engine, store.sync_conflict, sid)
    expected_applied: dict[str, Counter[str]] = defaultdict(Counter)
    for a in applied:
        expected_applied[settings.module_of(a["table_name"])][f"{a['op']}s"] += 1
    expected_local: dict[str, Counter[str]] = defaultdict(Counter)
    for c in changes:
        expected_local[c["module"]][f"{c['op']}s"] += 1
    modules = {m["name"]: m for m in data["modules"]}
    assert list(modules) == ["crm", "sales"]
    summary = json.loads(session["summary"])
    for name, module in modules.items():
        for op in ("inserts", "updates", "deletes"):
            assert module["applied"][op] == expected_applied[name][op], (name, op)
            assert module["applied"][op] == summary["modules"][name].get(op, 0), (name, op)
            assert module["local_changes"][op] == expected_local[name][op], (name, op)
        assert module["conflicts_by_kind"] == dict(Counter(c["kind"] for c in conflicts if c["module"] == name))
        assert module["conflicts_total"] == sum(1 for c in conflicts if c["module"] == name)
        assert module["conflicts_pending"] == 0
    assert {k for m in modules.values() for k in m["conflicts_by_kind"]} == ALL_KINDS
    assert data["totals"]["inserts"] + data["totals"]["updates"] + data["totals"]["deletes"] == len(applied)
    assert data["totals"]["conflicts"] == len(conflicts)
    assert str(len(applied)) in data["notice"]

    # Decisions by rule and by person: the latest decision of each conflict, read from sync_decision.
    with engine.connect() as conn:
        decisions = [
            dict(r)
            for r in conn.execute(
                sa.select(store.sync_decision)
                .where(store.sync_decision.c.conflict_id.in_([c["conflict_id"] for c in conflicts]))
                .order_by(store.sync_decision.c.decision_id)
            ).mappings()
        ]
    latest = {d["conflict_id"]: d for d in decisions}
    module_of_conflict = {c["conflict_id"]: c["module"] for c in conflicts}
    for name, module in modules.items():
        own = [d for cid, d in latest.items() if module_of_conflict[cid] == name]
        assert module["decisions_by_rule"] == dict(sorted(Counter(d["rule"] for d in own).items()))
        assert module["decisions_by_person"] == dict(
            sorted(Counter(d["decided_by"] for d in own if d["rule"] == "person").items())
        )
    assert modules["crm"]["decisions_by_person"] == {"Dana Lead": 2, "Sam Second": 3}
    assert modules["sales"]["decisions_by_rule"] == {"local_wins": 2, "newest_wins": 2}
    assert data["deciders"]["people"] == {"Dana Lead": 2, "Sam Second": 3}

    # Every conflict: the stored versions, the latest decision, and the value the master holds now.
    stored = {c["conflict_id"]: c for c in conflicts}
    assert sorted(c["id"] for c in data["conflicts"]) == sorted(stored)
    for item in data["conflicts"]:
        raw = stored[item["id"]]
        assert (item["module"], item["table"], item["kind"], item["policy"]) == (
            raw["module"],
            raw["table_name"],
            raw["kind"],
            raw["policy"],
        )
        assert item["key"] == json.loads(raw["row_key"])
        assert [(f["name"], f["base"], f["local"], f["master"]) for f in item["fields"]] == [
            (f["name"], f["base"], f["local"], f["master"]) for f in json.loads(raw["fields"])
        ]
        last = latest[item["id"]]
        assert (item["rule"], item["decided_by"], item["decided_at"]) == (
            last["rule"],
            last["decided_by"],
            last["decided_at"],
        )
        assert item["status"] == "decided" and item["loaded"] is True
        master_row = _master_row(engine, item["table"], item["master_key"] or item["key"])
        for f in item["fields"]:
            expected = None if master_row is None else master_row[f["name"]]
            assert f["kept"] == expected, (item["kind"], item["key"], f["name"])

    by_kind = {c["kind"]: c for c in data["conflicts"] if c["module"] == "crm"}
    phone = next(f for f in by_kind["update_update"]["fields"] if f["name"] == "phone")
    assert (phone["take"], phone["kept"], phone["rule"], phone["decided_by"]) == (
        "value",
        EDITED_PHONE,
        "person",
        "Dana Lead",
    )
    assert (phone["local"], phone["master"]) == ("+49 170 1111111", "+49 30 9999999")
    assert by_kind["update_update"]["take"] == "mixed"
    assert by_kind["orphan"]["take"] == "master" and by_kind["orphan"]["fields"][0]["kept"] is None
    assert by_kind["duplicate"]["master_key"] is not None
    assert _master_row(engine, "contact", by_kind["duplicate"]["master_key"])["name"] == "Lead (local)"
    order_4 = next(c for c in data["conflicts"] if c["table"] == "order" and c["key"] == {"id": 4})
    assert (order_4["take"], order_4["rule"], order_4["fields"][0]["kept"]) == ("master", "newest_wins", "invoiced")

    # Remapped keys and dropped rows: the load's summary, with the key columns named.
    remapped = [r for m in data["modules"] for r in m["remapped"]]
    assert sorted((r["table"], r["local_key"]["id"], r["master_key"]["id"]) for r in remapped) == sorted(
        (r["table"], r["local_key"][0], r["master_key"][0]) for r in summary["remapped"]
    )
    company = next(r for r in remapped if r["table"] == "company")
    assert company["reason"] == "key_taken"
    assert _master_row(engine, "company", company["master_key"])["name"] == "Neukunde AG"
    assert {r["reason"] for r in remapped if r["table"] == "contact"} == {"duplicate", "key_taken"}
    dropped = [d for m in data["modules"] for d in m["dropped"]]
    assert [(d["table"], d["key"]["id"]) for d in dropped] == [(d["table"], d["key"][0]) for d in summary["dropped"]]
    assert ("activity", by_kind["orphan"]["key"]["id"]) in [(d["table"], d["key"]["id"]) for d in dropped]


def test_sync_counts_every_remapped_key_the_protocol_lists(demo: DemoSession) -> None:
    """One count, one truth: `sync` (its counts) and the protocol say the same number of remapped keys,
    duplicates (the local key names the master's record) included."""
    from sync_pipeline.engine.session import counts_of

    protocol = build_protocol(demo.engine, demo.session_id)
    counts = counts_of(demo.engine, demo.session_id)
    listed = {m.name: len(m.remapped) for m in protocol.modules if m.remapped}
    assert {"duplicate", "key_taken"} <= {r.reason for m in protocol.modules for r in m.remapped}
    assert {m: c["remapped"] for m, c in counts.items() if c.get("remapped")} == listed
    assert sum(listed.values()) == protocol.totals.remapped


# ------------------------------------------------------------------------------------------------
# HTML, Markdown, PDF, PNG
# ------------------------------------------------------------------------------------------------


def test_html_and_markdown_contain_every_module_and_conflict(demo: DemoSession) -> None:
    protocol = build_protocol(demo.engine, demo.session_id)
    page = render_html(protocol)
    markdown = render_markdown(protocol)
    assert page.startswith("<!DOCTYPE html>") and "@page" in page and "size: A4" in page
    assert "counter(pages)" in page and "table-header-group" in page
    for module in ("crm", "sales"):
        assert f"Conflicts — {module}" in page
        assert f"Conflicts — {md.text(module)}" in markdown
    assert len(protocol.conflicts) == 9
    for conflict in protocol.conflicts:
        assert f'id="conflict-{conflict.id}"' in page
        assert conflict.kind in page and esc(conflict.outcome) in page
        assert esc(formatting.key(conflict.key)) in page
        assert f"| {conflict.id} | {md.cell(conflict.table)} |" in markdown
        for field in conflict.fields:
            for side, shown in (("local", field.local), ("master", field.master), ("kept", field.kept)):
                text = formatting.side(conflict.no_row, side, shown)
                assert esc(text) in page, (conflict.id, field.name, shown)
                assert md.cell(text) in markdown
            assert field.decided_by is None or esc(field.decided_by) in page
    assert EDITED_PHONE in page and OWNER in page and protocol.replica.id in page
    # The Dagster asset caps the Markdown; the cap says how many more the files hold.
    capped = render_markdown(protocol, max_conflicts=1)
    assert "… and 4 more conflict(s)" in capped and "… and 3 more conflict(s)" in capped
    assert sum(f"| {c.id} | {md.cell(c.table)} |" in capped for c in protocol.conflicts) == 2  # one per module


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_pdf_renders_with_the_replica_and_conflict_values(demo: DemoSession, tmp_path: Path) -> None:
    from pypdf import PdfReader

    files = write_protocol_files(demo.engine, demo.session_id, tmp_path / "protocols")
    assert set(files) == {"json", "md", "html", "pdf"}
    assert all(path.exists() and path.parent == tmp_path / "protocols" for path in files.values())
    assert json.loads(files["json"].read_text(encoding="utf-8"))["session"]["id"] == demo.session_id
    pdf = files["pdf"]
    assert pdf.read_bytes().startswith(b"%PDF")
    reader = PdfReader(pdf)
    assert len(reader.pages) >= 2
    # A narrow table cell may wrap a value over two lines: compare with runs of whitespace made one space.
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    protocol = build_protocol(demo.engine, demo.session_id)
    for expected in (OWNER, protocol.replica.id, EDITED_PHONE, "+49 30 9999999", "invoiced", "cancelled"):
        assert expected in text, expected
    assert f"Page 1 of {len(reader.pages)}" in text

    pdftotext = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True)
    for expected in (OWNER, "orphan", "duplicate", "insert_insert", "Rückruf vereinbart", "Sam Second"):
        assert expected in pdftotext.stdout, expected

    subprocess.run(
        ["pdftoppm", "-png", "-r", "80", "-f", "1", "-l", "1", "-singlefile", str(pdf), str(tmp_path / "page1")],
        check=True,
    )
    width, height = _png_size(tmp_path / "page1.png")
    # A4 (210 x 297 mm) at 80 dpi.
    assert (width, height) in {(661, 935), (662, 935), (661, 936), (662, 936)}


def test_default_protocol_folder_is_under_sync_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sync_pipeline.reports import default_protocol_folder

    monkeypatch.setenv("SYNC_HOME", str(tmp_path / "home"))
    assert default_protocol_folder() == tmp_path / "home" / "protocols"


# ------------------------------------------------------------------------------------------------
# The CLI
# ------------------------------------------------------------------------------------------------


def test_protocol_command_in_every_format(demo: DemoSession, tmp_path: Path) -> None:
    # Importing cli_reports registers the command on `sync-pipeline`.
    assert main.commands["protocol"] is protocol_command
    runner = CliRunner()
    base = ["--master", demo.url, "--session", demo.session_id]
    as_json = runner.invoke(main, ["protocol", *base, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    printed = json.loads(as_json.output)
    expected = build_protocol(demo.engine, demo.session_id).as_json()
    assert {k: v for k, v in printed.items() if k != "generated_at"} == {
        k: v for k, v in json.loads(json.dumps(expected)).items() if k != "generated_at"
    }
    markdown = runner.invoke(main, ["protocol", *base, "--format", "md"])
    assert markdown.exit_code == 0 and markdown.output.startswith(f"# Sync protocol — {md.text(OWNER)}")
    page = runner.invoke(main, ["protocol", *base, "--format", "html", "--out", str(tmp_path / "p.html")])
    assert page.exit_code == 0, page.output
    assert "Conflicts — crm" in (tmp_path / "p.html").read_text(encoding="utf-8")
    pdf = runner.invoke(main, ["protocol", *base, "--format", "pdf", "--out", str(tmp_path / "p.pdf")])
    assert pdf.exit_code == 0, pdf.output
    assert (tmp_path / "p.pdf").read_bytes().startswith(b"%PDF")


def test_protocol_command_refuses_pdf_to_the_terminal_and_unknown_sessions(demo: DemoSession) -> None:
    import os
    import pty
    import sys

    runner = CliRunner()
    # A real terminal on stdout (a pty): the PDF is refused before the master is read.
    terminal, screen = pty.openpty()
    try:
        to_terminal = subprocess.run(
            [sys.executable, "-m", "sync_pipeline.cli", "protocol", "--master", demo.url,
             "--session", demo.session_id, "--format", "pdf"],
            stdout=screen, stderr=subprocess.PIPE, text=True, check=False, timeout=300,
        )  # fmt: skip
    finally:
        os.close(screen)
        os.close(terminal)
    assert to_terminal.returncode == 2 and "--out" in to_terminal.stderr
    unknown = runner.invoke(main, ["protocol", "--master", demo.url, "--session", "no-such-session"])
    assert unknown.exit_code == 2 and "does not exist" in unknown.output
    with pytest.raises(ConflictNotFoundError):
        build_protocol(demo.engine, "no-such-session")


# ------------------------------------------------------------------------------------------------
# Sessions that synced nothing, wait, are decided but not loaded, or failed
# ------------------------------------------------------------------------------------------------

P, C = TABLES["parent"], TABLES["child"]


def _applied_count(engine: Engine, session_id: str) -> int:
    return len(_sync_rows(engine, store.sync_applied, session_id))


def test_protocol_of_a_session_without_changes_says_it_synced_nothing(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url)
    result = run_sync(engine, make_replica(engine, tmp_path, owner="Quiet Quinn"))
    assert result.status == "done" and result.session_id
    protocol = build_protocol(engine, result.session_id)
    assert protocol.state == "empty"
    assert "synchronised nothing" in protocol.notice and "no local changes" in protocol.notice
    assert protocol.totals.local_changes == protocol.totals.inserts == protocol.totals.conflicts == 0
    assert [m.name for m in protocol.modules] == ["core"] and protocol.conflicts == []
    assert md.text(protocol.notice) in render_markdown(protocol)
    page = render_html(protocol)
    assert esc(protocol.notice) in page and "No conflicts in this module." in page


def test_protocol_of_a_waiting_session_says_it_waits_and_nothing_was_written(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "manual")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as local:
        local.execute(sa.update(P).where(P.c.id == 1).values(city="Local city"))
    pause()
    with engine.begin() as master:
        master.execute(sa.update(P).where(P.c.id == 1).values(city="Master city"))
    result = run_sync(engine, replica)
    assert result.status == "waiting" and result.session_id

    waiting = build_protocol(engine, result.session_id)
    assert waiting.state == "waiting"
    assert "waits for 1 manual decision" in waiting.notice and "Nothing has been written" in waiting.notice
    (conflict,) = waiting.conflicts
    assert (conflict.status, conflict.take, conflict.loaded) == ("pending", None, False)
    assert conflict.outcome.startswith("pending")
    assert [(f.name, f.local, f.master, f.take, f.kept) for f in conflict.fields] == [
        ("city", "Local city", "Master city", None, None)
    ]
    assert waiting.modules[0].conflicts_pending == 1 and waiting.totals.pending == 1
    assert "pending" in render_html(waiting)
    assert _applied_count(engine, result.session_id) == 0

    # Decided but not loaded: the protocol shows what the decision will write, and still nothing written.
    decide(engine, conflict.id, "local", "Dana Lead")
    ready = build_protocol(engine, result.session_id)
    assert ready.state == "in_progress" and "Nothing has been written" in ready.notice
    (decided,) = ready.conflicts
    assert (decided.take, decided.loaded, decided.decided_by) == ("local", False, "Dana Lead")
    assert decided.fields[0].kept == "Local city" and "not loaded yet" in decided.outcome
    assert row(engine, "parent", id=1)["city"] == "Master city"


def test_protocol_of_a_failed_load_says_it_failed_and_wrote_nothing(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as local:
        local.execute(sa.update(P).where(P.c.id == 2).values(city="Changed offline"))
        local.execute(sa.insert(C).values(id=900, parent_id=1, label="C1", amount=None))
    # The master gains a rule the replica does not know: labels are unique. The load must fail.
    sa.Index("child_label_unique", sa.Table("child", sa.MetaData(), autoload_with=engine).c.label, unique=True).create(
        engine
    )
    with pytest.raises(SyncError):
        run_sync(engine, replica)
    with engine.connect() as conn:
        session_id, status, error = conn.execute(
            sa.select(store.sync_session.c.session_id, store.sync_session.c.status, store.sync_session.c.error)
        ).one()
    assert status == "failed" and error

    protocol = build_protocol(engine, session_id)
    assert protocol.state == "failed"
    assert protocol.notice.startswith("The sync failed:")
    assert "Nothing of this session was written to the master" in protocol.notice
    assert protocol.session.error == error
    assert protocol.totals.inserts == protocol.totals.updates == 0
    assert protocol.modules[0].local_changes.inserts == 1 and protocol.modules[0].local_changes.updates == 1
    assert _applied_count(engine, session_id) == 0
    assert row(engine, "child", id=900) is None and row(engine, "parent", id=2)["city"] == "Base"
    page = render_html(protocol)
    assert "Failed" in page and esc(protocol.notice) in page and "<h2>Error</h2>" in page
    assert "The sync failed" in render_markdown(protocol)


def test_protocol_pdf_of_a_failed_session_renders(master_url: str, tmp_path: Path) -> None:
    from sync_pipeline.reports import render_pdf

    engine = make_master(master_url)
    result = run_sync(engine, make_replica(engine, tmp_path, owner="Quiet Quinn"))
    assert result.session_id
    with engine.begin() as conn:
        conn.execute(
            sa.update(store.sync_session)
            .where(store.sync_session.c.session_id == result.session_id)
            .values(status="failed", error="OperationalError: the disk is full")
        )
    pdf = tmp_path / "failed.pdf"
    pdf.write_bytes(render_pdf(build_protocol(engine, result.session_id)))
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert "Quiet Quinn" in text and "the disk is full" in text and "FAILED" in text.upper()
