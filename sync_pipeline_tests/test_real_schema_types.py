"""Column types of real schemas nobody here wrote (issue 16 points 1, 5 `text[]`, 6).

A DVD-rental-like PostgreSQL schema (a domain `year` over integer, an enum `mpaa_rating`, `text[]`
special features, `tsvector`, `bytea`, `interval`, `jsonb`, `uuid`, `inet`, `numeric(5,2)`,
`timestamptz`, and a table of rarer types) and a music-store-like SQLite master whose DATETIME, DATE
and TIMESTAMP columns hold text in formats of their own. Each value travels master -> replica -> change
log -> detection -> load, edited locally, on the master and on both sides at once; the master's
values are asserted afterwards.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from sync_pipeline.cli import main
from sync_pipeline.engine.errors import BadInputError, ReplicaError
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.session import run_sync
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline_tests.conftest import fresh_master_url
from sync_pipeline_tests.helpers import make_replica, master_state, pause

FILM_DDL = """
CREATE DOMAIN year AS integer CONSTRAINT year_check CHECK (VALUE >= 1901 AND VALUE <= 2155);
CREATE DOMAIN short_title AS varchar(40);
CREATE TYPE mpaa_rating AS ENUM ('G', 'PG', 'PG-13', 'R', 'NC-17');
CREATE TABLE language (language_id serial PRIMARY KEY, name character(20) NOT NULL);
CREATE TABLE film (
    film_id serial PRIMARY KEY,
    title short_title NOT NULL,
    release_year year,
    language_id integer NOT NULL REFERENCES language,
    rental_period interval,
    rental_rate numeric(5,2) NOT NULL DEFAULT 4.99,
    rating mpaa_rating DEFAULT 'G',
    special_features text[],
    fulltext tsvector,
    picture bytea,
    details jsonb,
    external_id uuid,
    last_ip inet,
    last_update timestamptz NOT NULL DEFAULT now()
);
"""

FILM_SETTINGS = """
modules:
  films:
    policy: {policy}
    tables:
      language: {{}}
      film: {{}}
"""

FILM_1 = {
    "title": "ACADEMY DINOSAUR",
    "release_year": 2006,
    "rental_period": "6 days",
    "rental_rate": Decimal("0.99"),
    "rating": "PG",
    "special_features": ["Deleted Scenes", "Behind the Scenes"],
    "picture": b"\x89PNG\x00\x01",
    "details": {"stars": [1, 2.5], "note": "épique"},
    "external_id": uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    "last_ip": "192.168.0.1",
    "last_update": dt.datetime(2006, 2, 15, 10, 3, 42, tzinfo=dt.UTC),
}


def _pg_url(tmp_path: Path):  # type: ignore[no-untyped-def]
    return fresh_master_url("postgresql", tmp_path, prefix="types")


def _film_master(url: str, policy: str = "master_wins") -> Engine:
    engine = connect_master(url, must_exist=False)
    with engine.begin() as conn:
        conn.exec_driver_sql(FILM_DDL)
        conn.exec_driver_sql("INSERT INTO language (name) VALUES ('English'), ('Italian')")
        for title, year in ((FILM_1["title"], 2006), ("ACE GOLDFINGER", 2007)):
            conn.exec_driver_sql(
                "INSERT INTO film (title, release_year, language_id, rental_period, rental_rate, rating, "
                "special_features, fulltext, picture, details, external_id, last_ip, last_update) VALUES "
                "(%(title)s, %(year)s, 1, '6 days', 0.99, 'PG', ARRAY['Deleted Scenes', 'Behind the Scenes'], "
                "to_tsvector('english', %(words)s), '\\x89504e470001'::bytea, "
                """'{"stars": [1, 2.50], "note": "épique"}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', """
                "'192.168.0.1', '2006-02-15 10:03:42+00')",
                {"title": title, "year": year, "words": title},
            )
    init_master(engine, parse_settings(FILM_SETTINGS.format(policy=policy), "films.yaml"))
    return engine


def _film(engine: Engine, film_id: int) -> dict[str, Any]:
    """The master's film row; interval, tsvector and inet as the server's text."""
    with engine.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT title, release_year, language_id, rental_period::text AS rental_period, rental_rate, rating, "
            "special_features, fulltext::text AS fulltext, picture, details, external_id, host(last_ip) AS last_ip, "
            "last_update FROM film WHERE film_id = %(id)s",
            {"id": film_id},
        ).mappings()
        result = found.one_or_none()
        return {} if result is None else {k: bytes(v) if isinstance(v, memoryview) else v for k, v in result.items()}


def _local(replica: Path, sql: str, *params: Any) -> None:
    """An edit by the application that uses the replica, through plain sqlite3."""
    conn = sqlite3.connect(replica)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def test_domain_enum_array_and_friends_round_trip_without_edits(tmp_path: Path) -> None:
    """A replica that changed nothing of these columns syncs: every base compares equal to the master."""
    with _pg_url(tmp_path) as url:
        engine = _film_master(url)
        before = _film(engine, 1)
        replica = make_replica(engine, tmp_path)
        _local(replica, "UPDATE film SET title = 'ACADEMY DINOSAUR II' WHERE film_id = 1")
        result = run_sync(engine, replica)
        assert result.status == "done", result.message
        assert _film(engine, 1) == {**before, "title": "ACADEMY DINOSAUR II"}
        assert before["release_year"] == 2006 and before["special_features"] == FILM_1["special_features"]
        engine.dispose()


def test_every_type_edited_locally_reaches_the_master(tmp_path: Path) -> None:
    with _pg_url(tmp_path) as url:
        engine = _film_master(url)
        replica = make_replica(engine, tmp_path)
        # The replica holds plain values: the domain as an integer, the array as a JSON list.
        with sqlite3.connect(replica) as conn:
            assert conn.execute(
                "SELECT release_year, special_features, rental_period, rating FROM film WHERE film_id = 1"
            ).fetchone() == (2006, '["Deleted Scenes", "Behind the Scenes"]', "6 days", "PG")
        _local(
            replica,
            "UPDATE film SET release_year = 2011, rental_period = '1 mon 2 days', rental_rate = 4.5, rating = 'NC-17',"
            " special_features = ?, fulltext = 'academy dinosaur', picture = X'00FF10', details = ?, "
            " external_id = ?, last_ip = '10.1.2.3', last_update = '2024-01-02 03:04:05+02:00' WHERE film_id = 1",
            '["Trailers", "Commentaries, \\"director\\""]',
            '{"stars": [5], "tags": {"b": 1, "a": null}}',
            "6ecd8c99-4036-403d-bf84-cf8400f67836",
        )
        _local(
            replica,
            "INSERT INTO film (title, release_year, language_id, rental_period, rental_rate, rating, special_features,"
            " last_update) VALUES ('LOCAL FILM', 2020, 2, '3 days 04:00:00', 2.99, 'R', '[]', '2024-05-06 07:08:09')",
        )
        result = run_sync(engine, replica)
        assert result.status == "done", result.message

        assert _film(engine, 1) == {
            "title": "ACADEMY DINOSAUR",
            "release_year": 2011,
            "language_id": 1,
            "rental_period": "1 mon 2 days",
            "rental_rate": Decimal("4.50"),
            "rating": "NC-17",
            "special_features": ["Trailers", 'Commentaries, "director"'],
            "fulltext": "'academy' 'dinosaur'",
            "picture": b"\x00\xff\x10",
            "details": {"stars": [5], "tags": {"a": None, "b": 1}},
            "external_id": uuid.UUID("6ecd8c99-4036-403d-bf84-cf8400f67836"),
            "last_ip": "10.1.2.3",
            "last_update": dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=dt.UTC),
        }
        with engine.connect() as conn:
            new_id = conn.exec_driver_sql("SELECT film_id FROM film WHERE title = 'LOCAL FILM'").scalar_one()
        inserted = _film(engine, new_id)
        assert (inserted["release_year"], inserted["rental_period"], inserted["rating"]) == (
            2020,
            "3 days 04:00:00",
            "R",
        )
        assert inserted["special_features"] == [] and inserted["rental_rate"] == Decimal("2.99")
        # A time without zone for a timestamptz column is taken as UTC (what the load wrote is what it reads).
        assert inserted["last_update"] == dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
        engine.dispose()


@pytest.mark.parametrize("policy", ["master_wins", "local_wins"])
def test_concurrent_edits_of_domain_array_and_interval(tmp_path: Path, policy: str) -> None:
    with _pg_url(tmp_path) as url:
        engine = _film_master(url, policy)
        replica = make_replica(engine, tmp_path)
        _local(
            replica,
            "UPDATE film SET release_year = 2001, special_features = ?, rental_period = '2 days', details = ?"
            " WHERE film_id = 1",
            '["Local"]',
            '{"side": "local"}',
        )
        _local(replica, "UPDATE film SET rating = 'R' WHERE film_id = 2")
        pause()
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE film SET release_year = 2002, special_features = ARRAY['Master', NULL],"
                """ rental_period = '48:00:00', details = '{"side": "master"}' WHERE film_id = 1"""
            )
            conn.exec_driver_sql("UPDATE film SET rental_rate = 1.25 WHERE film_id = 2")
        result = run_sync(engine, replica)
        assert result.status == "done", result.message

        film = _film(engine, 1)
        picked = {k: film[k] for k in ("release_year", "special_features", "rental_period", "details")}
        if policy == "master_wins":
            assert picked == {
                "release_year": 2002,
                "special_features": ["Master", None],
                "rental_period": "48:00:00",
                "details": {"side": "master"},
            }
        else:
            assert picked == {
                "release_year": 2001,
                "special_features": ["Local"],
                "rental_period": "2 days",
                "details": {"side": "local"},
            }
        # No conflict on film 2: both sides' edits are there.
        assert (_film(engine, 2)["rating"], _film(engine, 2)["rental_rate"]) == ("R", Decimal("1.25"))
        engine.dispose()


RARE_DDL = """
CREATE DOMAIN price AS numeric(7,2);
CREATE DOMAIN day AS date;
CREATE DOMAIN year AS integer;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (a integer, b text);
CREATE TABLE rare (
    id integer PRIMARY KEY,
    code character(3), price price, day day, years year[], moods mood[], grid integer[][], amounts numeric[],
    days date[], plain json, cost money, flags bit(3), bits varbit, net cidr, mac macaddr, at_time time,
    at_timetz timetz, spot point, area box, doc xml, seats int4range, stay tstzrange, query tsquery, couple pair,
    note text
);
INSERT INTO rare VALUES (
    1, 'ab', 12.5, '2020-01-02', '{2006,2007}', '{ok,happy}', '{{1,2},{3,4}}', '{1.50,2}', '{2020-01-01,NULL}',
    '{"b": 1,  "a": 2.50}', 12.34, '101', '1101', '10.0.0.0/8', '08:00:2b:01:02:03', '04:05:06.789',
    '04:05:06+02', '(1,2)', '((0,0),(1,1))', '<a>x</a>', '[1,5)', '[2020-01-01,2020-02-01)', 'fat & cat',
    '(1,x)', 'n'
);
"""

RARE_TEXT_QUERY = "SELECT to_jsonb(r) - 'id' AS row FROM (SELECT * FROM rare WHERE id = %(id)s) AS r"


def _rare(engine: Engine, row_id: int = 1) -> dict[str, Any]:
    with engine.connect() as conn:
        return conn.exec_driver_sql(RARE_TEXT_QUERY, {"id": row_id}).scalar_one()


def _citext_schema(engine: Engine) -> str | None:
    """The schema holding the citext extension, where the server has it (else the test skips citext)."""
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS citext SCHEMA public")
    except sa.exc.DBAPIError:
        return None
    with engine.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE extname = 'citext'"
        ).scalar()


def test_rare_postgresql_types_are_carried_faithfully(tmp_path: Path) -> None:
    with _pg_url(tmp_path) as url:
        engine = connect_master(url, must_exist=False)
        with engine.begin() as conn:
            conn.exec_driver_sql(RARE_DDL)
        citext = _citext_schema(engine)
        if citext == "public":
            with engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE rare ADD COLUMN email public.citext")
                conn.exec_driver_sql("UPDATE rare SET email = 'Kim@Example.org'")
        settings = "modules:\n  m:\n    policy: master_wins\n    tables:\n      rare: {}\n"
        init_master(engine, parse_settings(settings, "rare.yaml"))
        untouched = _rare(engine)

        # 1. A sync that edits another column: every base of these types equals the master's value.
        replica = make_replica(engine, tmp_path)
        _local(replica, "UPDATE rare SET note = 'edited' WHERE id = 1")
        assert run_sync(engine, replica).status == "done"
        assert _rare(engine) == {**untouched, "note": "edited"}

        # 2. Every column edited in the replica, as text an application would write.
        replica = make_replica(engine, tmp_path)
        edits = {
            "code": "xy",
            "price": "3.5",
            "day": "2021-03-04",
            "years": "{1999}",
            "moods": "{sad}",
            "grid": "[[5, 6], [7, 8]]",
            "amounts": '["0.1", "2.25"]',
            "days": '["2022-02-02"]',
            "plain": '{"z": [1, 2.50]}',
            "cost": "$7.00",
            "flags": "011",
            "bits": "1",
            "net": "192.168.0.0/16",
            "mac": "08:00:2b:0a:0b:0c",
            "at_time": "23:59:58.5",
            "at_timetz": "01:02:03-05",
            "spot": "(3,4)",
            "area": "(2,2),(0,0)",
            "doc": "<b>y</b>",
            "seats": "[2,9)",
            "stay": '["2021-01-01 00:00:00+00","2021-01-02 00:00:00+00")',
            "query": "'dog' | 'cat'",
            "couple": '(2,"y z")',
        }
        if citext == "public":
            edits["email"] = "Lee@Example.org"
        assignments = ", ".join(f"{name} = ?" for name in edits)
        _local(replica, f"UPDATE rare SET {assignments} WHERE id = 1", *edits.values())
        _local(replica, "INSERT INTO rare (id, code, years, grid, spot) VALUES (2, 'new', '{2010}', '[[1]]', '(0,0)')")
        result = run_sync(engine, replica)
        assert result.status == "done", result.message
        expected = {
            **untouched,
            "note": "edited",
            "code": "xy ",
            "price": 3.50,
            "day": "2021-03-04",
            "years": [1999],
            "moods": ["sad"],
            "grid": [[5, 6], [7, 8]],
            "amounts": [0.1, 2.25],
            "days": ["2022-02-02"],
            "plain": {"z": [1, 2.50]},
            "cost": "$7.00",
            "flags": "011",
            "bits": "1",
            "net": "192.168.0.0/16",
            "mac": "08:00:2b:0a:0b:0c",
            "at_time": "23:59:58.5",
            "at_timetz": "01:02:03-05",
            "spot": "(3,4)",
            "area": "(2,2),(0,0)",
            "doc": "<b>y</b>",
            "seats": "[2,9)",
            "stay": '["2021-01-01 00:00:00+00","2021-01-02 00:00:00+00")',
            "query": "'dog' | 'cat'",
            "couple": {"a": 2, "b": "y z"},
        }
        if citext == "public":
            expected["email"] = "Lee@Example.org"
        assert _rare(engine) == expected
        inserted = _rare(engine, 2)
        assert (inserted["code"], inserted["years"], inserted["grid"], inserted["spot"]) == (
            "new",
            [2010],
            [[1]],
            "(0,0)",
        )
        engine.dispose()


def test_init_master_refuses_a_type_it_cannot_carry(tmp_path: Path) -> None:
    with _pg_url(tmp_path) as url:
        engine = connect_master(url, must_exist=False)
        with engine.begin() as conn:
            # The lo extension's type: a domain over oid, a reference to a large object outside the row.
            conn.exec_driver_sql("CREATE DOMAIN lo AS oid")
            conn.exec_driver_sql("CREATE TABLE poster (id integer PRIMARY KEY, image lo, caption text)")
        settings = tmp_path / "poster.yaml"
        settings.write_text("modules:\n  m:\n    policy: master_wins\n    tables:\n      poster: {}\n")
        before = master_state(engine)
        with pytest.raises(BadInputError) as refused:
            init_master(engine, parse_settings(settings.read_text(), str(settings)))
        assert "poster.image" in str(refused.value) and "large object" in str(refused.value)
        assert "bytea" in refused.value.fix
        result = CliRunner().invoke(main, ["init-master", "--master", url, "--settings", str(settings)])
        assert result.exit_code == 2 and "poster.image" in result.output, result.output
        assert "Traceback" not in result.output
        assert master_state(engine) == before  # nothing created, no trigger installed
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# SQLite masters: DATETIME text in the format each column already uses
# ---------------------------------------------------------------------------------------------

INVOICE_DDL = """
CREATE TABLE invoice (
    InvoiceId INTEGER PRIMARY KEY,
    BillingCity NVARCHAR(40),
    InvoiceDate DATETIME NOT NULL,
    DueDate DATE,
    PaidAt TIMESTAMP,
    ShippedOn DATE,
    Total NUMERIC(10,2) NOT NULL
);
INSERT INTO invoice VALUES
    (1, 'Oslo', '2009-01-01 00:00:00', '2009-01-15', '2009-01-02T10:11:12.345', '2009-01-03 00:00:00', 1.98);
INSERT INTO invoice VALUES (2, 'Lyon', '2009-01-02 00:00:00', '2009-01-16', '2009-01-03T09:00:00.000', NULL, 3.96);
INSERT INTO invoice VALUES (3, 'Rome', '2009-01-03 00:00:00', '2009-01-17', NULL, NULL, 5.94);
"""


def _sqlite_invoice_master(tmp_path: Path, policy: str) -> tuple[Engine, Path]:
    path = tmp_path / "music.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(INVOICE_DDL)
    engine = connect_master(f"sqlite:///{path}")
    settings = f"modules:\n  sales:\n    policy: {policy}\n    tables:\n      invoice: {{}}\n"
    init_master(engine, parse_settings(settings, "sales.yaml"))
    return engine, path


def _stored(path: Path, invoice_id: int) -> tuple[Any, ...]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT InvoiceDate, DueDate, PaidAt, ShippedOn, Total FROM invoice WHERE InvoiceId = ?", (invoice_id,)
        ).fetchone()


@pytest.mark.parametrize("policy", ["master_wins", "local_wins"])
def test_sqlite_datetime_text_keeps_the_column_format(tmp_path: Path, policy: str) -> None:
    engine, path = _sqlite_invoice_master(tmp_path, policy)
    replica = make_replica(engine, tmp_path)
    # The replica holds the master's text as it is.
    with sqlite3.connect(replica) as conn:
        assert conn.execute("SELECT InvoiceDate, PaidAt FROM invoice WHERE InvoiceId = 1").fetchone() == (
            "2009-01-01 00:00:00",
            "2009-01-02T10:11:12.345",
        )
    # The replica's application writes ISO text with a 'T' and six fraction digits.
    _local(
        replica,
        "UPDATE invoice SET InvoiceDate = '2010-05-06T07:08:09', DueDate = '2010-06-01', "
        "PaidAt = '2010-05-07 08:09:10.500000', ShippedOn = '2010-05-08', Total = 2.5 WHERE InvoiceId = 1",
    )
    _local(
        replica,
        "INSERT INTO invoice (BillingCity, InvoiceDate, DueDate, PaidAt, Total) "
        "VALUES ('Bern', '2011-01-01T00:00:00.000000', '2011-01-31', '2011-01-05 06:07:08', 0.99)",
    )
    _local(replica, "UPDATE invoice SET InvoiceDate = '2012-02-02 12:00:00' WHERE InvoiceId = 2")
    pause()
    with sqlite3.connect(path) as conn:  # another application edits the master meanwhile
        conn.execute("UPDATE invoice SET InvoiceDate = '2012-03-03 00:00:00' WHERE InvoiceId = 2")
        conn.execute("UPDATE invoice SET BillingCity = 'Roma' WHERE InvoiceId = 3")
    result = run_sync(engine, replica)
    assert result.status == "done", result.message

    assert _stored(path, 1) == (
        "2010-05-06 07:08:09",
        "2010-06-01",
        "2010-05-07T08:09:10.500",
        "2010-05-08 00:00:00",  # this DATE column holds midnight timestamps: so does the written one
        2.5,
    )
    with sqlite3.connect(path) as conn:
        new_id = conn.execute("SELECT InvoiceId FROM invoice WHERE BillingCity = 'Bern'").fetchone()[0]
    assert _stored(path, new_id) == ("2011-01-01 00:00:00", "2011-01-31", "2011-01-05T06:07:08.000", None, 0.99)
    winner = "2012-03-03 00:00:00" if policy == "master_wins" else "2012-02-02 12:00:00"
    assert _stored(path, 2)[0] == winner
    assert _stored(path, 3) == ("2009-01-03 00:00:00", "2009-01-17", None, None, 5.94)
    engine.dispose()


KEYS_DDL = """
CREATE DOMAIN station_code AS varchar(10);
CREATE TABLE station (code station_code PRIMARY KEY, name text NOT NULL, open_hours tstzrange);
CREATE TABLE host (addr inet PRIMARY KEY, station station_code REFERENCES station, name text, seen interval);
INSERT INTO station VALUES ('OSL', 'Oslo', NULL), ('BER', 'Berlin', '[2020-01-01 08:00+00,2020-01-01 17:00+00)');
INSERT INTO host VALUES ('10.0.0.1/32', 'OSL', 'alpha', '1 mon'), ('10.0.0.2/32', 'BER', 'beta', '2 days');
"""


def test_domain_and_text_carried_primary_keys(tmp_path: Path) -> None:
    """Keys of a domain type and of a type carried as text: field clock look-ups, conflicts, deletes."""
    with _pg_url(tmp_path) as url:
        engine = connect_master(url, must_exist=False)
        with engine.begin() as conn:
            conn.exec_driver_sql(KEYS_DDL)
        settings = "modules:\n  net:\n    policy: master_wins\n    tables:\n      station: {}\n      host: {}\n"
        init_master(engine, parse_settings(settings, "net.yaml"))
        replica = make_replica(engine, tmp_path)
        _local(replica, "UPDATE host SET name = 'local alpha', seen = '3 mons' WHERE addr = '10.0.0.1/32'")
        _local(replica, "DELETE FROM host WHERE addr = '10.0.0.2/32'")
        _local(replica, "INSERT INTO station (code, name) VALUES ('ROM', 'Rome')")
        _local(replica, "INSERT INTO host VALUES ('10.0.0.3/32', 'ROM', 'gamma', '00:05:00')")
        _local(replica, "UPDATE station SET name = 'Oslo local' WHERE code = 'OSL'")
        pause()
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE host SET name = 'master alpha' WHERE addr = '10.0.0.1'")
        result = run_sync(engine, replica)
        assert result.status == "done", result.message
        with engine.connect() as conn:
            hosts = conn.exec_driver_sql(
                "SELECT addr::text, station, name, seen::text FROM host ORDER BY addr"
            ).fetchall()
            stations = conn.exec_driver_sql("SELECT code, name FROM station ORDER BY code").fetchall()
        assert [tuple(h) for h in hosts] == [
            ("10.0.0.1/32", "OSL", "master alpha", "3 mons"),  # name conflicted: the master's kept
            ("10.0.0.3/32", "ROM", "gamma", "00:05:00"),
        ]
        assert [tuple(s) for s in stations] == [("BER", "Berlin"), ("OSL", "Oslo local"), ("ROM", "Rome")]
        engine.dispose()


def test_text_the_master_type_rejects_is_bad_input(tmp_path: Path) -> None:
    """A local value the column's type does not parse is refused before anything is written, naming it."""
    with _pg_url(tmp_path) as url:
        engine = _film_master(url)
        replica = make_replica(engine, tmp_path)
        _local(replica, "UPDATE film SET rental_period = '1 monz', title = 'X' WHERE film_id = 2")
        before = master_state(engine)
        with pytest.raises(ReplicaError) as refused:
            run_sync(engine, replica)
        message = str(refused.value)
        assert "column 'rental_period'" in message and "1 monz" in message and "'film_id': 2" in message
        assert master_state(engine) == before
        # The replica stays writable: corrected, it syncs.
        _local(replica, "UPDATE film SET rental_period = '1 mon' WHERE film_id = 2")
        assert run_sync(engine, replica).status == "done"
        assert (_film(engine, 2)["rental_period"], _film(engine, 2)["title"]) == ("1 mon", "X")
        engine.dispose()


def test_film_sync_through_the_cli_and_its_checks(tmp_path: Path) -> None:
    """The same types through `sync` (the Dagster asset graph and its Great Expectations checks)."""
    with _pg_url(tmp_path) as url:
        engine = _film_master(url)
        replica = make_replica(engine, tmp_path)
        _local(
            replica,
            "UPDATE film SET release_year = 2012, special_features = '[\"Trailers\"]', fulltext = 'new words',"
            " rental_period = '36:00:00', details = '{\"b\": 2, \"a\": 1.50}', last_ip = '10.9.9.9' WHERE film_id = 1",
        )
        _local(
            replica,
            "INSERT INTO film (title, release_year, language_id, rating, special_features, last_update, rental_rate)"
            " VALUES ('CLI FILM', 1999, 1, 'PG-13', '[\"Commentaries\"]', '2024-01-01 00:00:00+00:00', 1.99)",
        )
        result = CliRunner().invoke(main, ["sync", "--master", url, "--replica", str(replica)])
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output
        film = _film(engine, 1)
        assert (film["release_year"], film["special_features"], film["fulltext"]) == (
            2012,
            ["Trailers"],
            "'new' 'words'",
        )
        assert (film["rental_period"], film["details"], film["last_ip"]) == ("36:00:00", {"a": 1.5, "b": 2}, "10.9.9.9")
        with engine.connect() as conn:
            assert conn.exec_driver_sql(
                "SELECT release_year, rating::text, special_features FROM film WHERE title = 'CLI FILM'"
            ).one() == (1999, "PG-13", ["Commentaries"])
        engine.dispose()
