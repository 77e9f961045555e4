"""The layers hold (docs/architecture.md, "Layers"): read from the source with `ast`, every import counted,
also those inside functions.

- The engine imports nothing of the package outside `sync_pipeline.engine` (no shell, no settings of a shell).
- A shell (the Dagster code, the review page, the CLI, and the shared modules the shells use) never imports
  `engine.store`: the sync tables are read and written through `engine.records` and the engine's steps.
- The three shells do not import each other, but where the CLI starts another shell as a program:
  `serve` starts the review page, `sync` runs the Dagster jobs in-process.
- `accounts.py` holds the people model only: no click (its commands are in `cli_accounts.py`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sync_pipeline

PACKAGE = Path(sync_pipeline.__file__).parent

# Which shell a module belongs to, by its dotted name (None: engine or shared).
SHELLS = {
    "review": ("sync_pipeline.review",),
    "dagster": ("sync_pipeline.defs", "sync_pipeline.dagster_run", "sync_pipeline.definitions"),
    "cli": ("sync_pipeline.cli",),  # cli.py and every cli_*.py
}
SHARED_SHELL_MODULES = ("sync_pipeline.accounts", "sync_pipeline.demo", "sync_pipeline.progress")

# The CLI is the program: these imports start another shell, they do not borrow its logic.
CLI_STARTS = {
    ("sync_pipeline.cli_conflicts", "sync_pipeline.review.app"),  # `serve`
    ("sync_pipeline.cli", "sync_pipeline.dagster_run"),  # `sync`, `demo`
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (`from a import b` counts as a and as a.b, since b may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def shell_of(name: str) -> str | None:
    for shell, prefixes in SHELLS.items():
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + ".") or (shell == "cli" and name.startswith(prefix + "_")):
                return shell
    return None


def is_within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def starts_a_shell(importer: str, target: str) -> bool:
    return any(importer == i and is_within(target, t) for i, t in CLI_STARTS)


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_package_is_read() -> None:
    # Guards the checks below against reading nothing (a wrong path would make them pass vacuously).
    assert "sync_pipeline.engine.records" in MODULES
    assert "sync_pipeline.review.app" in MODULES
    assert "sync_pipeline.defs.assets" in MODULES
    assert shell_of("sync_pipeline.cli_conflicts") == "cli"
    assert shell_of("sync_pipeline.engine.store") is None
    assert "sync_pipeline.engine.store" in MODULES["sync_pipeline.engine.session_state"]


def test_the_engine_imports_no_shell_and_nothing_outside_the_engine() -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in MODULES.items()
        if is_within(name, "sync_pipeline.engine")
        for target in targets
        if is_within(target, "sync_pipeline") and not is_within(target, "sync_pipeline.engine")
    )
    assert wrong == [], "\n".join(wrong)


def test_no_shell_imports_the_store() -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in MODULES.items()
        if shell_of(name) is not None or name in SHARED_SHELL_MODULES
        for target in targets
        if is_within(target, "sync_pipeline.engine.store")
    )
    assert wrong == [], "\n".join(wrong)


def test_shells_do_not_import_each_other() -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in MODULES.items()
        if shell_of(name) is not None
        for target in targets
        if shell_of(target) not in (None, shell_of(name)) and not starts_a_shell(name, target)
    )
    assert wrong == [], "\n".join(wrong)


def test_accounts_is_a_model_without_click() -> None:
    assert not {t for t in MODULES["sync_pipeline.accounts"] if t == "click" or t.startswith("click.")}
    assert not {t for t in MODULES["sync_pipeline.accounts"] if shell_of(t) is not None}


@pytest.mark.parametrize("allowed", sorted(CLI_STARTS))
def test_each_allowed_start_is_real(allowed: tuple[str, str]) -> None:
    """An exception nobody uses any more is removed, not kept as a hole in the rule."""
    importer, target = allowed
    assert target in MODULES[importer]
