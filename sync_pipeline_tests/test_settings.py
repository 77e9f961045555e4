"""Settings: the §8 format, and errors that name the file, the line, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sync_pipeline.cli import main
from sync_pipeline.engine.errors import SettingsError
from sync_pipeline.engine.master import check_settings_against_schema, connect_master
from sync_pipeline.engine.settings import load_settings, parse_settings
from sync_pipeline_tests.helpers import master_state, sample_metadata, settings_yaml

GOOD = """\
modules:
  crm:
    policy: manual
    tables:
      company: {}
      contact:
        natural_key: [email]
        modified_column: updated_at
  sales:
    policy: newest_wins
    tables:
      order: {}
      order_line: {policy: local_wins}
"""


def test_design_example_parses() -> None:
    settings = parse_settings(GOOD, "sync.yaml")
    assert settings.policy_for("company") == "manual"
    assert settings.policy_for("order") == "newest_wins"
    assert settings.policy_for("order_line") == "local_wins"
    assert settings.table("contact").natural_key == ["email"]
    assert settings.module_of("order_line") == "sales"
    assert settings.retention_days == 90


@pytest.mark.parametrize(
    ("text", "line", "key", "fix"),
    [
        (GOOD.replace("policy: manual", "policy: majority_vote"), 3, "modules.crm.policy", "master_wins"),
        (
            GOOD.replace("order: {}", "order: {policy: oldest_wins}"),
            12,
            "modules.sales.tables.order.policy",
            "newest_wins",
        ),
        (
            GOOD.replace("        modified_column", "        modified_colum"),
            8,
            "modules.crm.tables.contact.modified_colum",
            "remove it",
        ),
        (GOOD.replace("  sales:\n    policy: newest_wins\n", "  sales:\n"), 9, "modules.sales.policy", "add 'policy:'"),
        (GOOD + "      company: {}\n", 14, "modules.sales.tables.company", "exactly one module"),
        ("modules:\n  crm:\n    policy: manual\n    tables: [company\n", 5, "<yaml>", "YAML syntax"),
        ("- just a list\n", 1, "<root>", "modules:"),
    ],
)
def test_errors_name_file_line_key_and_fix(text: str, line: int, key: str, fix: str) -> None:
    with pytest.raises(SettingsError) as raised:
        parse_settings(text, "sync.yaml")
    error = raised.value
    assert (error.path, error.line, error.key) == ("sync.yaml", line, key)
    assert fix in str(error)
    assert str(error).startswith(f"sync.yaml:{line}: {key}: ")


def _schema_engine(tmp_path: Path) -> sa.Engine:
    engine = connect_master(f"sqlite:///{tmp_path / 'm.db'}", must_exist=False)
    sample_metadata().create_all(engine)
    return engine


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (settings_yaml("manual").replace("tagged:", "taged:"), 7, "table 'taged' does not exist"),
        (
            settings_yaml("manual").replace("natural_key: [email]", "natural_key: [mail]"),
            5,
            "column 'mail' does not exist in table 'parent'",
        ),
        (
            settings_yaml("manual").replace("child: {", "child: {modified_column: changed,"),
            6,
            "column 'changed' does not exist",
        ),
        ("master_change_capture: false\n" + settings_yaml("newest_wins"), 4, "newest_wins needs change times"),
        (
            settings_yaml("manual").replace("child: {", "child: {display: [label, colour],"),
            6,
            "column 'colour' does not exist in table 'child'",
        ),
    ],
)
def test_errors_against_the_master_schema(tmp_path: Path, text: str, line: int, message: str) -> None:
    settings = parse_settings(text, "sync.yaml")
    with pytest.raises(SettingsError, match=message) as raised:
        check_settings_against_schema(settings, _schema_engine(tmp_path))
    assert raised.value.line == line


def test_display_names_columns_of_the_table(tmp_path: Path) -> None:
    text = settings_yaml("manual").replace("child: {", "child: {display: [label, amount],")
    settings = parse_settings(text, "s.yaml")
    check_settings_against_schema(settings, _schema_engine(tmp_path))
    assert settings.table("child").display == ["label", "amount"]
    with pytest.raises(SettingsError, match="display lists no column") as raised:
        parse_settings(settings_yaml("manual").replace("child: {", "child: {display: [],"), "s.yaml")
    assert raised.value.line == 6


def test_newest_wins_with_modified_column_needs_no_capture(tmp_path: Path) -> None:
    text = "master_change_capture: false\n" + settings_yaml("master_wins", table_policies={"parent": "newest_wins"})
    text = text.replace("natural_key: [email]", "natural_key: [email], modified_column: city")
    check_settings_against_schema(parse_settings(text, "s.yaml"), _schema_engine(tmp_path))


def test_expectations_are_read_as_gx_names_with_arguments() -> None:
    text = GOOD.replace(
        "      order: {}\n",
        "      order:\n        expectations:\n          - expect_column_values_to_be_between: "
        "{column: total, min_value: 0}\n",
    )
    (expectation,) = parse_settings(text).table("order").expectations
    assert expectation.type == "expect_column_values_to_be_between"
    assert expectation.kwargs == {"column": "total", "min_value": 0}


def test_missing_settings_file() -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings("/nonexistent/sync.yaml")


def test_init_master_with_wrong_settings_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    engine = _schema_engine(tmp_path)
    before = master_state(engine)
    bad = tmp_path / "sync.yaml"
    bad.write_text(settings_yaml("manual").replace("tagged:", "taged:"))
    result = CliRunner().invoke(main, ["init-master", "--master", str(engine.url), "--settings", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:7: modules.core.tables.taged: table 'taged' does not exist" in result.output
    assert "fix: use one of: child, parent, tagged" in result.output
    assert master_state(engine) == before
