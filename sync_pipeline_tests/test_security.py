"""Security: SQL is never built from strings, secrets never leave the master, hostile replicas are refused.

1. No SQL is built by pasting names or values into strings anywhere in `sync_pipeline/` except the
   reviewed trigger DDL in `sync_pipeline/engine/dialects/` (`*capture.py`, `sqlite_replica.py`). A checker
   walks the syntax tree of every module and finds f-strings, `%`, `.format()` and `+` that build the
   text given to `execute`, `executemany`, `executescript`, `exec_driver_sql` or `text()` (directly or
   through a variable).
2. Secrets (the signing key in `sync_meta`, password hashes and API tokens of accounts, the database
   password in the URL) never appear in CLI output, logs, protocols, Dagster's run storage or the replica.
3. Hostile replicas beyond test_bad_input.py: SQL in identifiers and values of the change log, type and
   length changes on the master, values the master's types reject that SQLite accepted, settings
   changed incompatibly since checkout: exit 2, a clear message, the master byte for byte as it was.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sync_pipeline.cli import main
from sync_pipeline.engine import store
from sync_pipeline.engine.master import init_master
from sync_pipeline.engine.session import run_sync
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline.engine.signing_key import require_signing_key
from sync_pipeline_tests.helpers import (
    TABLES,
    make_master,
    make_replica,
    master_state,
    replica_engine,
    settings_yaml,
)

P, C, T = TABLES["parent"], TABLES["child"], TABLES["tagged"]
PACKAGE = Path(__file__).resolve().parent.parent / "sync_pipeline"
# The reviewed trigger DDL: the change-capture modules of engine/dialects/.
REVIEWED_DDL = {
    PACKAGE / "engine" / "dialects" / name
    for name in ("capture.py", "sqlite_capture.py", "sqlite_replica.py", "postgresql_capture.py", "mysql_capture.py")
}
SQL_METHODS = {"execute", "executemany", "executescript", "exec_driver_sql"}


# ------------------------------------------------------------------------------------------------
# 1. SQL built from strings
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    code: str
    dynamic: bool  # pastes something other than a module's UPPER_CASE constant

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.code}"


def _constant_like(node: ast.AST) -> bool:
    """A module constant (LOG_TABLE, store.MANIFEST_TABLE) or a literal: not data from outside."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id.isupper()
    if isinstance(node, ast.Attribute):
        return node.attr.isupper()
    return False


def _built(node: ast.AST) -> bool | None:
    """None if `node` is not text built from pieces; else whether a piece is more than a constant."""
    if isinstance(node, ast.JoinedStr):
        pieces = [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
        return None if not pieces else not all(_constant_like(p) for p in pieces)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and _is_text(node.left):
        parts = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
        return not all(_constant_like(p) for p in parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and (_is_text(node.left) or _is_text(node.right)):
        return not (_constant_like(node.left) or _built(node.left) is False) or not (
            _constant_like(node.right) or _built(node.right) is False
        )
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and _is_text(node.func.value)
    ):
        return not all(_constant_like(a) for a in [*node.args, *(k.value for k in node.keywords)])
    return None


def _is_text(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)) or isinstance(node, ast.JoinedStr)


def _sql_argument(call: ast.Call) -> ast.AST | None:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name in SQL_METHODS or name == "text":
        if name == "text" and isinstance(func, ast.Attribute) and not _is_sqlalchemy(func.value):
            return None  # e.g. `path.read_text()`, `dg.MetadataValue.text(...)`
        return call.args[0] if call.args else None
    return None


def _is_sqlalchemy(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id in ("sa", "sqlalchemy", "sql")


def sql_built_from_strings(source: str, path: str) -> list[Finding]:
    tree = ast.parse(source)
    findings: list[Finding] = []
    lines = source.splitlines()
    scopes: list[ast.AST] = [
        tree,
        *[n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)],
    ]
    for scope in scopes:
        assigned: dict[str, ast.AST] = {}
        body = ast.walk(scope) if scope is tree else ast.walk(scope)
        for node in body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                assigned[node.targets[0].id] = node.value
        for node in ast.walk(scope):
            if not isinstance(node, ast.Call):
                continue
            argument = _sql_argument(node)
            if argument is None:
                continue
            if isinstance(argument, ast.Name) and argument.id in assigned:
                argument = assigned[argument.id]
            dynamic = _built(argument)
            if dynamic is not None:
                findings.append(Finding(path, node.lineno, lines[node.lineno - 1].strip(), dynamic))
    return sorted(set(findings), key=lambda f: (f.path, f.line))


def package_findings() -> list[Finding]:
    findings: list[Finding] = []
    for file in sorted(PACKAGE.rglob("*.py")):
        if file in REVIEWED_DDL:
            continue
        findings += sql_built_from_strings(file.read_text(encoding="utf-8"), str(file.relative_to(PACKAGE.parent)))
    return findings


BAD_SAMPLES = [
    'conn.execute(f"SELECT * FROM {table} WHERE id = {key}")',
    "conn.execute(sa.text(\"DELETE FROM t WHERE name = '%s'\" % name))",
    'conn.exec_driver_sql("DROP TABLE {}".format(table_name))',
    'cursor.executescript("UPDATE t SET a = " + value)',
    'query = f"SELECT {column} FROM t"\nconn.execute(query)',
    'sqlite.execute(f"PRAGMA {pragma}")',
]
GOOD_SAMPLES = [
    "conn.execute(sa.select(table).where(table.c.id == key))",
    'conn.execute(sa.text("SELECT name FROM sqlite_master WHERE tbl_name = :t"), {"t": name})',
    'cursor.execute("SELECT value FROM t WHERE key = ?", (key,))',
    'path.read_text(encoding="utf-8")',
    "conn.execute(str(compiled), params)",
]


@pytest.mark.parametrize("sample", BAD_SAMPLES)
def test_the_checker_finds_sql_built_from_strings(sample: str) -> None:
    (finding,) = [
        f for f in sql_built_from_strings(f"def f():\n    {sample.replace(chr(10), chr(10) + '    ')}\n", "x")
    ]
    assert finding.dynamic


@pytest.mark.parametrize("sample", GOOD_SAMPLES)
def test_the_checker_leaves_bound_parameters_alone(sample: str) -> None:
    assert sql_built_from_strings(f"def f():\n    {sample}\n", "x") == []


def test_no_sql_pastes_names_or_values_from_outside() -> None:
    """Nothing but module constants is ever pasted into SQL outside the reviewed trigger DDL."""
    dynamic = [str(f) for f in package_findings() if f.dynamic]
    assert dynamic == []


def test_no_sql_built_from_strings_at_all() -> None:
    assert [str(f) for f in package_findings()] == []


# ------------------------------------------------------------------------------------------------
# 2. Secrets
# ------------------------------------------------------------------------------------------------

PASSWORD = "correct horse battery staple 42"


def _signing_key(engine: sa.Engine) -> str:
    return require_signing_key(engine, store.read_meta(engine)["master_id"])


def _texts_of_folder(folder: Path, skip: set[Path]) -> Iterator[tuple[Path, bytes]]:
    for file in folder.rglob("*"):
        if file.is_file() and file not in skip:
            yield file, file.read_bytes()


def test_secrets_never_leave_the_master(master_url: str, tmp_path: Path) -> None:
    """Every command a person runs, the protocol in every format, the Dagster run storage and the
    replica itself: none holds the signing key, a password, a password hash or an API token."""
    runner = CliRunner()
    home = tmp_path / "sync_home"
    home.mkdir(exist_ok=True)
    settings = tmp_path / "sync.yaml"
    settings.write_text(settings_yaml("manual"), encoding="utf-8")
    engine = make_master(master_url, "manual")
    key = _signing_key(engine)
    outputs: list[str] = []

    def run(*args: str, stdin: str | None = None, ok: tuple[int, ...] = (0,)) -> str:
        result = runner.invoke(main, list(args), input=stdin)
        assert result.exit_code in ok, (args, result.output)
        outputs.append(result.output)
        return result.output

    accounts = tmp_path / "accounts.yaml"
    run(
        "accounts",
        "add",
        "--accounts",
        str(accounts),
        "--name",
        "Ada",
        "--modules",
        "*",
        "--password-stdin",
        stdin=f"{PASSWORD}\n{PASSWORD}\n",
    )
    created = runner.invoke(main, ["accounts", "token", "--accounts", str(accounts), "--name", "Ada"])
    token = created.stdout.split()[0]  # shown once, on purpose, when it is made: not checked below
    outputs.append(created.stderr)
    run("accounts", "list", "--accounts", str(accounts), "--json")
    password_hash = re.search(r"\$argon2[^\s'\"]+", accounts.read_text()).group(0)  # type: ignore[union-attr]

    run("init-master", "--master", master_url, "--settings", str(settings))  # again: keeps the key
    assert _signing_key(engine) == key
    replica = tmp_path / "laptop.db"
    run("checkout", "--master", master_url, "--replica", str(replica), "--owner", "Field Worker")
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="Local"))
    with engine.begin() as m:
        m.execute(sa.update(P).where(P.c.id == 1).values(city="Master"))
    run("sync", "--master", master_url, "--replica", str(replica), "--dry-run", "--json")
    run("sync", "--master", master_url, "--replica", str(replica), ok=(3,))
    listed = json.loads(run("conflicts", "list", "--master", master_url, "--json"))
    conflict = listed[0]["id"]
    run("conflicts", "show", "--master", master_url, "--id", str(conflict))
    run(
        "conflicts",
        "resolve",
        "--master",
        master_url,
        "--accounts",
        str(accounts),
        "--token",
        token,
        "--id",
        str(conflict),
        "--take",
        "local",
    )
    run("sync", "--master", master_url, "--replica", str(replica), "--json")
    run("replicas", "--master", master_url, "--json")
    run("history", "--master", master_url, "--json")
    session = listed[0]["session"]
    protocols = tmp_path / "protocols"
    protocols.mkdir()
    for fmt in ("md", "html", "json"):
        run("protocol", "--master", master_url, "--session", session, "--format", fmt)
    run("protocol", "--master", master_url, "--session", session, "--format", "pdf", "--out", str(protocols / "p.pdf"))
    from pypdf import PdfReader

    outputs.append("\n".join(page.extract_text() for page in PdfReader(protocols / "p.pdf").pages))
    # A replica edited by an attacker: the refusal must not show what the right signature would be.
    tampered = tmp_path / "tampered.db"
    run("checkout", "--master", master_url, "--replica", str(tampered), "--owner", "Mallory")
    conn = sqlite3.connect(tampered)
    conn.execute("UPDATE _sync_manifest SET value = ? WHERE key = 'owner'", (json.dumps("root"),))
    conn.commit()
    conn.close()
    refused = run("sync", "--master", master_url, "--replica", str(tampered), ok=(2,))
    assert "signature" in refused

    secrets = {"signing key": key, "password": PASSWORD, "password hash": password_hash, "token": token}
    for name, secret in secrets.items():
        for output in outputs:
            assert secret not in output, f"the {name} was printed"
    # Files a sync leaves outside the master: replicas (they travel), protocols, Dagster's storage.
    skip = {accounts}
    if master_url.startswith("sqlite"):
        skip.add(Path(sa.engine.make_url(master_url).database))  # type: ignore[arg-type]
    for folder in (tmp_path, home):
        for file, data in _texts_of_folder(folder, skip):
            for name in ("signing key", "password", "token"):
                assert secrets[name].encode() not in data, f"the {name} is in {file}"
            assert password_hash.encode() not in data, f"the password hash is in {file}"


def test_the_database_password_is_never_printed(tmp_path: Path) -> None:
    url = "postgresql://sync:Pa55-w0rd-never-shown@127.0.0.1:1/master"  # nothing listens on port 1
    runner = CliRunner()
    replica = tmp_path / "r.db"
    for args in (
        ["sync", "--master", url, "--replica", str(replica)],
        ["replicas", "--master", url],
        ["conflicts", "list", "--master", url],
        ["checkout", "--master", url, "--replica", str(replica), "--owner", "x"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, result.output
        assert "Pa55-w0rd-never-shown" not in result.output
        assert "***" in result.output or "sync@127.0.0.1" in result.output


def test_sql_logging_does_not_reveal_the_signing_key(
    master_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    engine = make_master(master_url, "master_wins")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="Local"))
    run_sync(engine, replica)
    assert _signing_key(engine) not in caplog.text


# ------------------------------------------------------------------------------------------------
# 3. Hostile replicas
# ------------------------------------------------------------------------------------------------


def _sync(master_url: str, replica: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["sync", "--master", master_url, "--replica", str(replica)])
    return result.exit_code, result.output


def _log(replica: Path, table: str, op: str, key: str, old: str | None, new: str | None) -> None:
    conn = sqlite3.connect(replica)
    conn.execute(
        "INSERT INTO _sync_log (table_name, op, row_key, old_values, new_values, changed_at) "
        "VALUES (?, ?, ?, ?, ?, '2026-01-01T00:00:00.000')",
        (table, op, key, old, new),
    )
    conn.commit()
    conn.close()


def _sql_in_table_name(engine: sa.Engine, replica: Path) -> None:
    _log(replica, 'parent"; DROP TABLE child; --', "I", "[90]", None, '{"id": 90}')


def _sql_in_column_name(engine: sa.Engine, replica: Path) -> None:
    _log(replica, "parent", "I", "[91]", None, '{"id": 91, "name = 1; DROP TABLE child; --": 1}')


def _sql_in_key(engine: sa.Engine, replica: Path) -> None:
    _log(replica, "parent", "U", '["1; DROP TABLE child"]', '{"id": 1}', '{"id": 1}')


def _unknown_operation(engine: sa.Engine, replica: Path) -> None:
    _log(replica, "parent", "X", "[1]", '{"id": 1}', '{"id": 1}')


def _row_not_an_object(engine: sa.Engine, replica: Path) -> None:
    _log(replica, "parent", "I", "[92]", None, "[92, 1, 2]")


def _not_utf8(engine: sa.Engine, replica: Path) -> None:
    conn = sqlite3.connect(replica)
    conn.execute(
        "INSERT INTO _sync_log (table_name, op, row_key, old_values, new_values, changed_at) "
        "VALUES ('parent', 'I', '[93]', NULL, CAST(x'7b226964223a2039332c226e616d65223a2022ff227d' AS TEXT), "
        "'2026-01-01T00:00:00.000')"
    )
    conn.commit()
    conn.close()


def _manifest_tables_with_sql(engine: sa.Engine, replica: Path) -> None:
    conn = sqlite3.connect(replica)
    schema = json.loads(conn.execute("SELECT value FROM _sync_manifest WHERE key = 'schema'").fetchone()[0])
    schema["tables"]["parent; DROP TABLE child; --"] = schema["tables"]["parent"]
    conn.execute("UPDATE _sync_manifest SET value = ? WHERE key = 'schema'", (json.dumps(schema),))
    conn.commit()
    conn.close()


def _manifest_incomplete(engine: sa.Engine, replica: Path) -> None:
    conn = sqlite3.connect(replica)
    conn.execute("DELETE FROM _sync_manifest WHERE key = 'signature'")
    conn.commit()
    conn.close()


def _column_dropped_on_master(engine: sa.Engine, replica: Path) -> None:
    with engine.begin() as m:
        m.execute(sa.text("ALTER TABLE parent DROP COLUMN city"))


def _retype(engine: sa.Engine, table: str, column: str, new_type: str) -> None:
    mysql = engine.dialect.name in ("mysql", "mariadb")
    sql = (
        f"ALTER TABLE {table} MODIFY COLUMN {column} {new_type}"
        if mysql
        else (f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {new_type}")
    )
    with engine.begin() as m:
        m.execute(sa.text(sql))


def _length_changed_on_master(engine: sa.Engine, replica: Path) -> None:
    _retype(engine, "parent", "city", "VARCHAR(20)")


def _type_changed_on_master(engine: sa.Engine, replica: Path) -> None:
    _retype(engine, "child", "label", "TEXT")


def _replica_directory(engine: sa.Engine, replica: Path) -> None:
    replica.unlink()
    replica.mkdir()


HOSTILE: dict[str, tuple[Callable[[sa.Engine, Path], None], str, tuple[str, ...] | None]] = {
    # case: (make it hostile, what the message says, only on these backends)
    "SQL in a table name of the change log": (_sql_in_table_name, "not in the replica's modules", None),
    "SQL in a column name of the change log": (_sql_in_column_name, "DROP TABLE child", None),
    "SQL in a key of the change log": (_sql_in_key, "key value rejected|malformed key", None),
    "unknown operation in the change log": (_unknown_operation, "malformed change log entry", None),
    "row in the change log that is not an object": (_row_not_an_object, "malformed row", None),
    "text in the change log that is not UTF-8": (_not_utf8, "cannot be read|damaged|not JSON", None),
    "SQL in a table name of the manifest": (_manifest_tables_with_sql, "does not match its signature", None),
    "manifest without its signature": (_manifest_incomplete, "incomplete or unreadable", None),
    "replica path is a folder": (_replica_directory, "is a directory|is not a file", None),
    # SQLite refuses to drop a column its change-capture triggers name (the column added: test_bad_input).
    "column dropped on the master since checkout": (
        _column_dropped_on_master,
        "parent.city was dropped",
        ("postgresql", "mariadb"),
    ),
    "length changed on the master since checkout": (
        _length_changed_on_master,
        "parent.city changed from \\S*50\\S* to \\S*20",
        ("postgresql", "mariadb"),
    ),
    "type changed on the master since checkout": (
        _type_changed_on_master,
        "(?i)child.label changed from \\S*50\\S* to Text",
        ("postgresql", "mariadb"),
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_replica_is_refused_and_master_unchanged(
    case: str, backend: str, master_url: str, tmp_path: Path
) -> None:
    make_hostile, message, only = HOSTILE[case]
    if only is not None and backend not in only:
        pytest.skip(f"{case}: {backend} cannot do that without rebuilding the table")
    engine = make_master(master_url)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="edited"))
    make_hostile(engine, replica)
    before = master_state(engine)
    code, output = _sync(master_url, replica)
    assert code == 2, output
    assert re.search(message, output), output
    if case != "replica path is a folder":  # that one is a usage error of click's
        assert "error: " in output and "fix:" in output
    assert master_state(engine) == before
    with engine.connect() as conn:  # nothing dropped by any SQL in the input
        assert conn.execute(sa.select(sa.func.count()).select_from(C)).scalar_one() == 10


def test_sql_in_values_is_stored_as_text(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "local_wins")
    replica = make_replica(engine, tmp_path)
    nasty = ["'; DROP TABLE child; --", 'Robert"); DELETE FROM parent; --', "%(name)s :name ? $1 \\x00"]
    with replica_engine(replica).begin() as r:
        for i, text in enumerate(nasty, start=1):
            r.execute(sa.update(P).where(P.c.id == i).values(name=text[:50]))
        r.execute(sa.insert(T).values(code="'; --", version=1, title="x"))
    assert run_sync(engine, replica).status == "done"
    with engine.connect() as conn:
        names = [conn.execute(sa.select(P.c.name).where(P.c.id == i)).scalar_one() for i in (1, 2, 3)]
        assert names == [t[:50] for t in nasty]
        assert conn.execute(sa.select(sa.func.count()).select_from(C)).scalar_one() == 10
        assert conn.execute(sa.select(T.c.title).where(T.c.code == "'; --")).scalar_one() == "x"


@pytest.mark.parametrize("value", ["nul", "integer range"])
def test_values_postgresql_rejects_are_bad_input(value: str, tmp_path: Path) -> None:
    from sync_pipeline_tests.conftest import require_postgres
    from sync_pipeline_tests.test_crash_safety import fresh_master_url

    require_postgres()
    with fresh_master_url("postgresql", tmp_path) as url:
        engine = make_master(url)
        replica = make_replica(engine, tmp_path)
        with replica_engine(replica).begin() as r:
            if value == "nul":
                r.execute(sa.update(P).where(P.c.id == 1).values(name="a\x00b"))
            else:
                r.execute(sa.insert(T).values(code="Z", version=2**40, title="big"))
        before = master_state(engine)
        code, output = _sync(url, replica)
        engine.dispose()
        assert code == 2, output
        assert master_state(engine) == before


def _settings_without_child() -> str:
    return "modules:\n  core:\n    policy: master_wins\n    tables:\n      parent: {natural_key: [email]}\n"


def _settings_child_elsewhere() -> str:
    return (
        "modules:\n  core:\n    policy: master_wins\n    tables:\n      parent: {natural_key: [email]}\n"
        "      tagged: {}\n  other:\n    policy: local_wins\n    tables:\n      child: {}\n"
    )


@pytest.mark.parametrize("settings", ["table removed", "table moved to another module"])
def test_settings_changed_incompatibly_since_checkout(settings: str, master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(C).where(C.c.id == 1).values(label="edited"))
    text = _settings_without_child() if settings == "table removed" else _settings_child_elsewhere()
    init_master(engine, parse_settings(text, "changed.yaml"))
    before = master_state(engine)
    code, output = _sync(master_url, replica)
    assert code == 2, output
    assert "child" in output and "settings" in output
    assert master_state(engine) == before
