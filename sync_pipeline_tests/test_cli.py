"""The public contract of the CLI (README, docs/sync_rules.md §7): commands, JSON shapes and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner

from sync_pipeline.cli import main
from sync_pipeline_tests.helpers import TABLES, make_master, replica_engine, row, sample_metadata, settings_yaml
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 - `backend` over all three masters

P, C = TABLES["parent"], TABLES["child"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_whole_cycle_through_the_cli(master_url: str, tmp_path: Path) -> None:
    # init-master on a master that has only its business tables
    from sync_pipeline.engine.master import connect_master

    engine = connect_master(master_url, must_exist=False)
    sample_metadata().create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(P), [{"id": i, "name": f"P{i}", "city": "Base", "email": f"p{i}@x"} for i in (1, 2, 3)])
        conn.execute(sa.insert(C), [{"id": i, "parent_id": i, "label": "c"} for i in (1, 2, 3)])
    settings = tmp_path / "sync.yaml"
    settings.write_text(settings_yaml("manual"))
    code, output = run("init-master", "--master", master_url, "--settings", str(settings))
    assert code == 0 and "master ready: 3 table(s)" in output, output

    replica = tmp_path / "r.db"
    code, output = run("checkout", "--master", master_url, "--replica", str(replica), "--owner", "Kim")
    assert code == 0, output
    replica_id = output.splitlines()[0].strip()
    assert len(replica_id) == 36

    code, output = run("replicas", "--master", master_url, "--json")
    (listed,) = json.loads(output)
    assert (listed["replica_id"], listed["owner"], listed["modules"], listed["status"]) == (
        replica_id,
        "Kim",
        ["core"],
        "offline",
    )

    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="Local", name="Local name"))
        r.execute(sa.update(P).where(P.c.id == 2).values(city="Local 2"))
        r.execute(sa.update(P).where(P.c.id == 3).values(city="Local 3"))
    with engine.begin() as m:
        m.execute(sa.update(P).where(P.c.id == 1).values(city="Master", name="Master name"))
        m.execute(sa.update(P).where(P.c.id == 2).values(city="Master 2"))
        m.execute(sa.update(P).where(P.c.id == 3).values(city="Master 3"))

    code, output = run("sync", "--master", master_url, "--replica", str(replica), "--json")
    assert code == 3, output
    result = json.loads(output)
    assert result["status"] == "waiting" and result["pending"] == {"core": 3}
    session = result["session"]

    code, output = run("conflicts", "list", "--master", master_url, "--session", session, "--json")
    conflicts = json.loads(output)
    assert len(conflicts) == 3
    first = conflicts[0]
    assert set(first) >= {"id", "session", "module", "table", "key", "kind", "fields", "status", "decision"}
    assert first["key"] == {"id": 1} and first["kind"] == "update_update" and first["status"] == "pending"
    assert {f["name"] for f in first["fields"]} == {"city", "name"}
    assert {"name": "city", "base": "Base", "local": "Local", "master": "Master"} in first["fields"]

    # Per field: local city, an edited name.
    assert (
        run(
            "conflicts",
            "resolve",
            "--master",
            master_url,
            "--id",
            str(first["id"]),
            "--field",
            "city",
            "--take",
            "local",
            "--by",
            "Ada",
        )[0]
        == 0
    )
    code, output = run("sync", "--master", master_url, "--replica", str(replica))
    assert code == 3 and "pending decisions: core 3" in output  # one field of the first is still open
    code, output = run(
        "conflicts",
        "resolve",
        "--master",
        master_url,
        "--id",
        str(first["id"]),
        "--field",
        "name",
        "--value",
        '"Edited ✓"',
        "--by",
        "Ada",
    )
    assert code == 0, output
    # An edited value that does not fit the column is refused.
    code, output = run(
        "conflicts",
        "resolve",
        "--master",
        master_url,
        "--id",
        str(first["id"]),
        "--field",
        "name",
        "--value",
        json.dumps("x" * 60),
        "--by",
        "Ada",
    )
    assert code == 2 and "longer than the column's 50" in output
    # Per row, then the rest of the module in bulk.
    assert (
        run(
            "conflicts",
            "resolve",
            "--master",
            master_url,
            "--id",
            str(conflicts[1]["id"]),
            "--take",
            "master",
            "--by",
            "Ada",
        )[0]
        == 0
    )
    code, output = run(
        "conflicts",
        "resolve",
        "--master",
        master_url,
        "--session",
        session,
        "--module",
        "core",
        "--take",
        "local",
        "--by",
        "Ben",
    )
    assert code == 0 and "decided 1 pending conflict(s)" in output

    code, output = run("conflicts", "list", "--master", master_url, "--status", "pending", "--json")
    assert json.loads(output) == []

    code, output = run("sync", "--master", master_url, "--replica", str(replica), "--json")
    assert code == 0, output
    assert json.loads(output)["status"] == "done"
    assert row(engine, "parent", id=1) == {"id": 1, "name": "Edited ✓", "city": "Local", "email": "p1@x"}
    assert row(engine, "parent", id=2)["city"] == "Master 2"
    assert row(engine, "parent", id=3)["city"] == "Local 3"
    decided = json.loads(run("conflicts", "list", "--master", master_url, "--json")[1])
    assert [d["decision"]["by"] for d in decided] == ["Ada", "Ada", "Ben"]
    assert [h["field"] for h in decided[0]["decision"]["history"]] == ["city", "name"]

    code, output = run("sync", "--master", master_url, "--replica", str(replica))
    assert code == 2 and "already synchronised" in output
    code, output = run(
        "conflicts", "resolve", "--master", master_url, "--id", str(first["id"]), "--take", "master", "--by", "Late"
    )
    assert code == 2 and "read-only once the load has started" in output


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run("sync")[0] == 2  # missing --replica
    code, output = run("sync", "--master", f"sqlite:///{tmp_path / 'none.db'}", "--replica", "x.db")
    assert code == 2 and "does not exist" in output
    code, output = run("checkout", "--master", "not a url", "--replica", "x.db", "--owner", "a")
    assert code == 2 and "not a database URL" in output
    code, output = run("conflicts", "resolve", "--master", f"sqlite:///{tmp_path / 'none.db'}", "--by", "a")
    assert code == 2


def test_uninitialised_master_says_run_init_master(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    make = sa.create_engine(url)
    sample_metadata().create_all(make)
    code, output = run("checkout", "--master", url, "--replica", str(tmp_path / "r.db"), "--owner", "a")
    assert code == 2 and "sync-pipeline init-master" in output
    assert not (tmp_path / "r.db").exists()


def test_checkout_unknown_module(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    make_master(url)
    code, output = run(
        "checkout", "--master", url, "--replica", str(tmp_path / "r.db"), "--owner", "a", "--modules", "core,payroll"
    )
    assert code == 2 and "unknown module(s): payroll" in output and "choose from: core" in output
    assert not (tmp_path / "r.db").exists()


def test_bulk_decision_keeps_fields_a_person_already_decided(tmp_path: Path) -> None:
    from sync_pipeline.engine.queries import list_conflicts
    from sync_pipeline.engine.session import decide, decide_module, run_sync
    from sync_pipeline_tests.helpers import make_replica

    engine = make_master(f"sqlite:///{tmp_path / 'm.db'}", "manual")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="Local", name="Local name"))
    with engine.begin() as m:
        m.execute(sa.update(P).where(P.c.id == 1).values(city="Master", name="Master name"))
    session = run_sync(engine, replica).session_id
    (conflict,) = list_conflicts(engine, session)
    decide(engine, conflict["id"], "value", "Ada", "name", "Typed by Ada")
    assert decide_module(engine, session, "core", "local", "Ben") == 1
    assert run_sync(engine, replica).status == "done"
    assert row(engine, "parent", id=1) == {"id": 1, "name": "Typed by Ada", "city": "Local", "email": "p1@example.com"}
