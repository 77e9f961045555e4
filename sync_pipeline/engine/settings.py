"""Sync settings: modules, their tables and policies (README "Settings", docs/sync_rules.md §4), from YAML.

Every error names the file, the line, the key and the fix. Line numbers come from PyYAML's node
tree, so a pydantic error location (`modules.crm.policy`) maps back to where the user wrote it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from sync_pipeline.engine.errors import SettingsError

Policy = Literal["master_wins", "local_wins", "newest_wins", "manual"]
POLICIES: tuple[str, ...] = get_args(Policy)


class Expectation(BaseModel):
    """One Great Expectations expectation declared for a table: its GX name and its arguments."""

    model_config = ConfigDict(extra="forbid")
    type: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class TableSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Policy | None = None
    natural_key: list[str] | None = None
    modified_column: str | None = None
    # The columns that tell a person which row a conflict is about (review page, `conflicts show`).
    display: list[str] | None = None
    expectations: list[Expectation] = Field(default_factory=list)

    @field_validator("expectations", mode="before")
    @classmethod
    def _expectations_as_single_key_mappings(cls, value: Any) -> Any:
        # Users write `- expect_column_values_to_be_between: {column: qty, min_value: 1}`.
        if not isinstance(value, list):
            return value
        out = []
        for item in value:
            if isinstance(item, dict) and "type" not in item and len(item) == 1:
                ((name, kwargs),) = item.items()
                out.append({"type": name, "kwargs": kwargs or {}})
            else:
                out.append(item)
        return out


class ModuleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Policy
    tables: dict[str, TableSettings]

    @field_validator("tables", mode="before")
    @classmethod
    def _empty_table_entries(cls, value: Any) -> Any:
        # `company:` with nothing after it is a table with default settings.
        if isinstance(value, dict):
            return {name: ({} if spec is None else spec) for name, spec in value.items()}
        return value


class SyncSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modules: dict[str, ModuleSettings]
    master_change_capture: bool = True
    inbox: str | None = None
    retention_days: int = Field(default=90, ge=1)

    _source_path: str = PrivateAttr(default="<settings>")
    _source_text: str = PrivateAttr(default="")
    _lines: dict[tuple[str, ...], int] = PrivateAttr(default_factory=dict)

    # ----- lookups used by the engine -----
    @property
    def source_text(self) -> str:
        return self._source_text

    @property
    def source_path(self) -> str:
        return self._source_path

    def tables(self, modules: Iterable[str] | None = None) -> list[str]:
        chosen = self.modules if modules is None else {m: self.modules[m] for m in modules}
        return [t for module in chosen.values() for t in module.tables]

    def module_of(self, table: str) -> str:
        for name, module in self.modules.items():
            if table in module.tables:
                return name
        raise KeyError(table)

    def table(self, table: str) -> TableSettings:
        return self.modules[self.module_of(table)].tables[table]

    def policy_for(self, table: str) -> Policy:
        module = self.modules[self.module_of(table)]
        return module.tables[table].policy or module.policy

    def line_of(self, *path: str) -> int | None:
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None

    def error(self, path: tuple[str, ...], problem: str, fix: str) -> SettingsError:
        return SettingsError(self._source_path, self.line_of(*path), ".".join(path), problem, fix)


def _line_map(node: yaml.Node, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, str(key_node.value))
            lines.update(_line_map(value_node, child))
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_line_map(item, (*path, str(index))))
    return lines


def _fix_for(error: dict[str, Any], path: tuple[str, ...]) -> tuple[str, str]:
    kind = error["type"]
    key = path[-1] if path else ""
    if kind == "extra_forbidden":
        return f"unknown key '{key}'", "remove it or check its spelling against the settings format in README.md"
    if kind == "literal_error":
        return (
            f"policy {error.get('input')!r} does not exist",
            f"use one of: {', '.join(POLICIES)}",
        )
    if kind == "missing":
        return f"required key '{key}' is missing", f"add '{key}:' here (see the settings format in README.md)"
    return error["msg"], "correct the value (see the settings format in README.md)"


def compose_yaml(
    text: str, source: str, error: Callable[[str, int | None, str, str, str], Exception]
) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data of a YAML text; `error(path, line, key, problem, fix)`
    builds the exception raised for text that is not YAML."""
    try:
        return yaml.compose(text), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise error(
            source,
            mark.line + 1 if mark else None,
            "<yaml>",
            f"not valid YAML ({getattr(exc, 'problem', exc)})",
            "fix the YAML syntax at that line",
        ) from None


def parse_settings(text: str, source: str = "<settings>") -> SyncSettings:
    """Parse settings from YAML text; `source` names the file in error messages."""
    root, data = compose_yaml(text, source, SettingsError)
    lines = _line_map(root) if root is not None else {}
    if not isinstance(data, dict):
        raise SettingsError(
            source,
            1,
            "<root>",
            "the settings file must be a mapping with a 'modules:' key",
            "start the file with 'modules:' (see README.md)",
        )
    try:
        settings = SyncSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = tuple(str(p) for p in first["loc"])
        # Pydantic reports `modules.crm.policy` for a missing module policy; the literal error's
        # location may carry a trailing discriminator we do not want in the message.
        problem, fix = _fix_for(first, path)
        line = None
        probe = path
        while probe and line is None:
            line = lines.get(probe)
            probe = probe[:-1]
        raise SettingsError(source, line, ".".join(path) or "<root>", problem, fix) from None
    settings._source_path = source
    settings._source_text = text
    settings._lines = lines
    _check_internal_consistency(settings)
    return settings


def load_settings(path: str | Path) -> SyncSettings:
    """Load a settings file from disk."""
    file = Path(path)
    if not file.is_file():
        raise SettingsError(
            str(file),
            None,
            "<file>",
            "the settings file does not exist",
            "pass the path of an existing YAML file with --settings",
        )
    return parse_settings(file.read_text(encoding="utf-8"), str(file))


def _check_internal_consistency(settings: SyncSettings) -> None:
    if not settings.modules:
        raise settings.error(("modules",), "no module is defined", "define at least one module with its tables")
    seen: dict[str, str] = {}
    for module_name, module in settings.modules.items():
        if not module.tables:
            raise settings.error(
                ("modules", module_name, "tables"),
                "the module has no tables",
                "list at least one table under 'tables:'",
            )
        for table in module.tables:
            if table in seen:
                raise settings.error(
                    ("modules", module_name, "tables", table),
                    f"table '{table}' is already in module '{seen[table]}'",
                    "a table belongs to exactly one module: remove it from one of them",
                )
            seen[table] = module_name
            if module.tables[table].display == []:
                raise settings.error(
                    ("modules", module_name, "tables", table, "display"),
                    "display lists no column",
                    "name the columns that identify a row (e.g. display: [name, email]), or remove the key",
                )
