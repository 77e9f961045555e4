"""The engine asks its master's `DialectImpl` (engine/dialects/) and never tests the database's name.

A syntax-tree scan of every engine module outside `engine/dialects/`: no `….dialect.name`, no
`get_backend_name()` or `drivername`, and no string that names a database (`"sqlite"`, `"postgresql"`,
`"mysql"` …) as a value compared, looked up or used as a key. A new database is then one module in
`dialects/`, not branches across the engine.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sync_pipeline.engine.dialects import UnsupportedDatabase, impl_for

ENGINE = Path(__file__).resolve().parent.parent / "sync_pipeline" / "engine"
DIALECTS = ENGINE / "dialects"
NAMES = {"sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql"}
NAME_SOURCES = {"get_backend_name", "get_dialect", "drivername"}


def dialect_branches(source: str, path: str) -> list[str]:
    """`path:line: code` of every place that reads or compares a database's name."""
    tree = ast.parse(source)
    lines = source.splitlines()
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        hit = False
        if isinstance(node, ast.Attribute):
            reads_name = node.attr == "name" and isinstance(node.value, ast.Attribute) and node.value.attr == "dialect"
            hit = reads_name or node.attr in NAME_SOURCES
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            hit = node.value.lower() in NAMES
        if hit:
            found.append(f"{path}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def engine_modules() -> list[Path]:
    return sorted(p for p in ENGINE.rglob("*.py") if DIALECTS not in p.parents)


def test_no_engine_module_outside_dialects_branches_on_the_database() -> None:
    modules = engine_modules()
    assert len(modules) > 20  # the scan sees the engine
    found = [hit for p in modules for hit in dialect_branches(p.read_text(), str(p.relative_to(ENGINE)))]
    assert found == [], "database-specific code belongs in engine/dialects/:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "code",
    [
        'if conn.dialect.name == "sqlite":\n    pass\n',
        "batch = 5000 if engine.dialect.name == kind else 500\n",
        'RULES = {"postgresql": 1}\n',
        'ok = url.get_backend_name() in ("mysql", "mariadb")\n',
        'x = "postgresql" if flag else "other"\n',
    ],
)
def test_the_scan_finds_a_branch(code: str) -> None:
    assert dialect_branches(code, "example.py")


def test_the_scan_leaves_docstrings_and_other_text_alone() -> None:
    code = '"""On PostgreSQL, sqlite"""\n\ndef f():\n    """postgresql"""\n    return "sqlite3 file"\n'
    assert dialect_branches(code, "example.py") == []


def test_registry_chooses_by_sqlalchemy_dialect_name(tmp_path: Path) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    assert type(impl_for(engine)).__dialect__ == "sqlite"
    with engine.connect() as conn:
        assert impl_for(conn) is impl_for(engine)
    assert type(impl_for(sa.engine.make_url("postgres://u@h/db"))).__dialect__ == "postgresql"
    with pytest.raises(UnsupportedDatabase) as raised:
        impl_for(sa.engine.make_url("oracle://u@h/db"))
    assert "'oracle' is not supported" in str(raised.value)
    assert "sqlite" in raised.value.fix and "postgresql" in raised.value.fix
