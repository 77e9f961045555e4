"""Gaps of issue 16 ("real schemas"), on SQLite and PostgreSQL masters, asserting the master's data:

- a computed (generated) column is never a local change nor a conflict field; the master's value stays;
- a local value is rounded as the master's column rounds it (timestamp(0), time(0), numeric(5,2),
  varchar(n) cutting trailing spaces), so detection, the load and its verification see what it stores;
- a text-carried key (cidr) logged in another spelling is the master's row under its canonical text;
- a domain over an integer with a sequence default is a generated key: remapped when the master took it.

SQLite has no domains, cidr or fractional-second precision: there the same scenarios run on the
SQLite counterparts and must keep working as before.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.session import run_sync
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline_tests.helpers import make_replica, replica_engine


def master_with(url: str, postgresql_ddl: str, sqlite_ddl: str, settings: str) -> tuple[Engine, dict[str, sa.Table]]:
    engine = connect_master(url, must_exist=False)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(postgresql_ddl)
        else:
            conn.connection.driver_connection.executescript(sqlite_ddl)  # type: ignore[union-attr]
    infos = init_master(engine, parse_settings(settings, "gaps.yaml"))
    return engine, {name: info.table for name, info in infos.items()}


def rows_of(engine: Engine, table: str, *columns: str) -> list[tuple[Any, ...]]:
    t = sa.Table(table, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        query = sa.select(*[sa.cast(t.c[c[:-6]], sa.Text) if c.endswith("::text") else t.c[c] for c in columns])
        return [tuple(r) for r in conn.execute(query.order_by(*t.primary_key.columns))]


# --- 1. generated columns -------------------------------------------------------------------------

ITEM_PG = """
CREATE TABLE item (
    item_id integer PRIMARY KEY,
    code varchar(10) NOT NULL UNIQUE,
    qty integer NOT NULL,
    doubled integer GENERATED ALWAYS AS (qty * 2) STORED
);
INSERT INTO item (item_id, code, qty) VALUES (1, 'n1', 3), (2, 'n2', 4);
"""
ITEM_SQLITE = """
CREATE TABLE item (
    item_id INTEGER PRIMARY KEY,
    code VARCHAR(10) NOT NULL UNIQUE,
    qty INTEGER NOT NULL,
    doubled INTEGER GENERATED ALWAYS AS (qty * 2) STORED
);
INSERT INTO item (item_id, code, qty) VALUES (1, 'n1', 3), (2, 'n2', 4);
"""
MANUAL_ITEMS = """\
modules:
  stock:
    policy: manual
    tables:
      item: {natural_key: [code]}
"""


def test_a_generated_column_is_never_a_local_change_or_a_conflict(master_url: str, tmp_path: Path) -> None:
    engine, tables = master_with(master_url, ITEM_PG, ITEM_SQLITE, MANUAL_ITEMS)
    item = tables["item"]
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        # The replica holds computed columns as plain ones: an edit of one alone, and a new row whose
        # computed column the replica left NULL while the master computes it.
        r.execute(sa.update(item).where(item.c.item_id == 1).values(doubled=999))
        r.execute(sa.insert(item).values(item_id=3, code="n3", qty=5, doubled=None))
        r.execute(sa.update(item).where(item.c.item_id == 2).values(doubled=-1, qty=6))
    with engine.begin() as m:  # meanwhile the master's application adds the same record n3 itself
        m.execute(sa.insert(item).values(item_id=3, code="n3", qty=5))
        m.execute(sa.update(item).where(item.c.item_id == 1).values(qty=7))

    result = run_sync(engine, replica)

    # No conflict waits for a decision under the manual policy: no computed column counted as a difference.
    assert result.status == "done", result.message
    assert rows_of(engine, "item", "item_id", "code", "qty", "doubled") == [
        (1, "n1", 7, 14),  # the master's edit; the local edit of the computed column was no change
        (2, "n2", 6, 12),  # the local qty, its computed column computed by the master
        (3, "n3", 5, 10),
    ]


# --- 2. precision -------------------------------------------------------------------------------

READING_PG = """
CREATE TABLE reading (
    reading_id integer PRIMARY KEY,
    taken_at timestamp(0) NOT NULL,
    taken_zoned timestamptz(0),
    taken_time time(0),
    amount numeric(5, 2) NOT NULL,
    code varchar(2)
);
INSERT INTO reading VALUES (1, '2026-01-01 04:05:06', '2026-01-01 04:05:06+00', '04:05:06', 1.00, 'ab');
INSERT INTO reading VALUES (3, '2026-01-01 04:05:06', NULL, NULL, 7.00, NULL);
"""
READING_SQLITE = """
CREATE TABLE reading (
    reading_id INTEGER PRIMARY KEY,
    taken_at TIMESTAMP NOT NULL,
    taken_zoned TIMESTAMP,
    taken_time TIME,
    amount NUMERIC(5, 2) NOT NULL,
    code VARCHAR(2)
);
INSERT INTO reading VALUES (1, '2026-01-01 04:05:06', '2026-01-01 04:05:06', '04:05:06', 1.00, 'ab');
INSERT INTO reading VALUES (3, '2026-01-01 04:05:06', NULL, NULL, 7.00, NULL);
"""
READINGS = """\
modules:
  lab:
    policy: {policy}
    tables:
      reading: {{}}
"""


def test_local_values_are_rounded_as_the_master_stores_them(master_url: str, tmp_path: Path) -> None:
    engine, _ = master_with(master_url, READING_PG, READING_SQLITE, READINGS.format(policy="manual"))
    postgresql = engine.dialect.name == "postgresql"
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.exec_driver_sql(
            "UPDATE reading SET taken_at = '2026-01-01 04:05:06.7', taken_time = '04:05:06.5', amount = 1.005 "
            + (", code = 'cd  ', taken_zoned = '2026-01-01 04:05:06.5+00:00' " if postgresql else "")
            + "WHERE reading_id = 1"
        )
        code = "x   " if postgresql else "x "  # SQLite keeps every character: longer is refused there
        r.exec_driver_sql(
            f"INSERT INTO reading VALUES (2, '1999-12-31 23:59:59.5', NULL, '23:00:00.4', -2.345, '{code}')"
        )

        r.exec_driver_sql("UPDATE reading SET amount = 7.125 WHERE reading_id = 3")
    with engine.begin() as m:  # the master's application wrote what the local value becomes there
        m.exec_driver_sql("UPDATE reading SET amount = 7.13 WHERE reading_id = 3")

    result = run_sync(engine, replica)

    # Both sides hold the same stored value: no conflict waits for a decision (manual policy).
    assert result.status == "done", result.message
    got = rows_of(engine, "reading", "reading_id", "taken_at", "taken_time", "amount", "code")
    assert got[2][3] == Decimal("7.13")
    got = got[:2]
    assert [r[3] for r in got] == [Decimal("1.01"), Decimal("-2.35")]  # halves away from zero, as NUMERIC rounds
    if postgresql:
        assert got == [
            (1, dt.datetime(2026, 1, 1, 4, 5, 7), dt.time(4, 5, 7), Decimal("1.01"), "cd"),
            # 'x   ' cut to varchar(2), as the master does
            (2, dt.datetime(1999, 12, 31, 23, 59, 59), dt.time(23), Decimal("-2.35"), "x "),
        ]
        zoned = rows_of(engine, "reading", "taken_zoned")[0][0]
        assert zoned == dt.datetime(2026, 1, 1, 4, 5, 7, tzinfo=dt.UTC)
        # A second sync of a fresh replica sees no difference: the master holds what the first one wrote.
        again = make_replica(engine, tmp_path)
        with replica_engine(again).begin() as r:
            r.exec_driver_sql("UPDATE reading SET taken_at = '2026-01-01 04:05:07.2' WHERE reading_id = 3")
        with engine.begin() as m:
            m.exec_driver_sql("UPDATE reading SET taken_at = '2026-01-01 04:05:07' WHERE reading_id = 3")
        assert run_sync(engine, again).status == "done"  # 07.2 is 07 in timestamp(0): the same value
        assert rows_of(engine, "reading", "taken_at")[2][0] == dt.datetime(2026, 1, 1, 4, 5, 7)


# --- 3. text-carried keys ------------------------------------------------------------------------

HOST_PG = """
CREATE TABLE host (
    network cidr PRIMARY KEY,
    label text NOT NULL
);
INSERT INTO host VALUES ('10.0.0.1/32', 'gateway');
"""
HOST_SQLITE = """
CREATE TABLE host (
    network TEXT PRIMARY KEY,
    label TEXT NOT NULL
);
INSERT INTO host VALUES ('10.0.0.1/32', 'gateway');
"""
HOSTS = """\
modules:
  net:
    policy: manual
    tables:
      host: {}
"""


def test_a_text_carried_key_is_canonicalised_to_the_masters_row(master_url: str, tmp_path: Path) -> None:
    engine, _ = master_with(master_url, HOST_PG, HOST_SQLITE, HOSTS)
    postgresql = engine.dialect.name == "postgresql"
    # On PostgreSQL the replica writes the key as a person types it; cidr holds it as '10.0.0.9/32'.
    typed = "10.0.0.9" if postgresql else "10.0.0.9/32"
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.exec_driver_sql(f"INSERT INTO host VALUES ('{typed}', 'printer')")
        r.exec_driver_sql("UPDATE host SET label = 'router' WHERE network = '10.0.0.1/32'")
    with engine.begin() as m:  # the master's application registered the same host meanwhile
        m.exec_driver_sql("INSERT INTO host VALUES ('10.0.0.9/32', 'printer')")

    result = run_sync(engine, replica)

    # The same row under the master's spelling of its key: already held, not a second insert that fails.
    assert result.status == "done", result.message
    assert rows_of(engine, "host", "network::text", "label") == [
        ("10.0.0.1/32", "router"),
        ("10.0.0.9/32", "printer"),
    ]


# --- 4. domain-over-integer generated keys --------------------------------------------------------

TICKET_PG = """
CREATE DOMAIN ticket_id AS integer CHECK (VALUE > 0);
CREATE SEQUENCE ticket_seq;
CREATE TABLE ticket (
    ticket_id ticket_id DEFAULT nextval('ticket_seq') PRIMARY KEY,
    title text NOT NULL
);
CREATE SEQUENCE note_seq;
CREATE DOMAIN note_id AS integer DEFAULT nextval('note_seq');
CREATE TABLE note (
    note_id note_id PRIMARY KEY,
    ticket_id ticket_id NOT NULL REFERENCES ticket (ticket_id),
    body text NOT NULL
);
INSERT INTO ticket (title) VALUES ('first');
INSERT INTO note (ticket_id, body) VALUES (1, 'a note');
"""
TICKET_SQLITE = """
CREATE TABLE ticket (
    ticket_id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL
);
CREATE TABLE note (
    note_id INTEGER PRIMARY KEY,
    ticket_id INTEGER NOT NULL REFERENCES ticket (ticket_id),
    body TEXT NOT NULL
);
INSERT INTO ticket (title) VALUES ('first');
INSERT INTO note (ticket_id, body) VALUES (1, 'a note');
"""
TICKETS = """\
modules:
  desk:
    policy: manual
    tables:
      ticket: {}
      note: {}
"""


def test_a_domain_key_with_a_sequence_default_is_remapped(master_url: str, tmp_path: Path) -> None:
    engine, tables = master_with(master_url, TICKET_PG, TICKET_SQLITE, TICKETS)
    ticket, note = tables["ticket"], tables["note"]
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.insert(ticket).values(ticket_id=2, title="local"))
        r.execute(sa.insert(note).values(note_id=2, ticket_id=2, body="local note"))
    with engine.begin() as m:  # the master's application takes keys 2 meanwhile
        m.execute(sa.insert(ticket).values(title="master"))
        m.execute(sa.insert(note).values(ticket_id=2, body="master note"))

    result = run_sync(engine, replica)

    # Generated keys: the local rows get new keys (no insert_insert conflict waiting for a decision).
    assert result.status == "done", result.message
    tickets = rows_of(engine, "ticket", "ticket_id", "title")
    assert tickets[:2] == [(1, "first"), (2, "master")]
    assert len(tickets) == 3 and tickets[2][1] == "local"
    notes = rows_of(engine, "note", "note_id", "ticket_id", "body")
    assert notes[:2] == [(1, 1, "a note"), (2, 2, "master note")]
    assert len(notes) == 3 and notes[2][1:] == (tickets[2][0], "local note")
    with engine.begin() as m:  # and the master's application can still insert with its defaults
        m.execute(sa.insert(ticket).values(title="after"))
        m.execute(sa.insert(note).values(ticket_id=1, body="after"))
