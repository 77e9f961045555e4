"""The suites the checks validate: pandas-ready frames of a session, built from the master's sync tables
(or, for the local changes, from the changes the run's detection holds in memory), and the expectations
each must meet, derived from the reflected master schema and the settings' per-table `expectations`.
Plain data: validating them is `gx_adapter.validate`.
"""

import json
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.defs.gx_adapter import ExpectationSpec, FrameSuite
from sync_pipeline.defs.step_session import table_row_counts
from sync_pipeline.engine import records as sync_records
from sync_pipeline.engine.detect import fetch_rows_by_key
from sync_pipeline.engine.resolve import current_decision
from sync_pipeline.engine.schema import (
    TableInfo,
    decode_row,
    dumps,
    encode,
    filled_by_default,
    normalizer,
    reflect_tables,
)
from sync_pipeline.engine.session import SessionContext, load_changes
from sync_pipeline.engine.settings import SyncSettings

OPERATIONS = ("insert", "update", "delete")

ROW_MARKERS = ["_change_id", "_op"]


def lenient_value(value: Any, normal_form: Callable[[Any], Any]) -> Any:
    """The column's Python form of a value (`normal_form`: the column's `normalizer`), or the raw value
    when the master's type would reject it, so that the type and length expectations report it instead
    of the decoding raising."""
    try:
        normal = normal_form(value)
    except ValueError:
        return value
    return str(normal) if isinstance(normal, uuid.UUID) else normal


def column_normalizers(table: sa.Table) -> dict[str, Callable[[Any], Any]]:
    """Each column's `normalizer` by name, looked up once per table (cached on it, as `normalizer` caches
    on the column): the frames decode every value of a session's changes."""
    cached = table.info.get("_normalizers")
    if cached is None:
        cached = table.info["_normalizers"] = {column.name: normalizer(column) for column in table.columns}
    return cached


def type_names(column: sa.Column) -> list[str] | None:
    """Type names for expect_column_values_to_be_in_type_list (None: not checked, e.g. JSON).

    GX resolves `Decimal`, `date`, `datetime` and `time` through pandas' dtypes module; `int`,
    `float`, `str`, `bool` and `bytes` are its native names.
    """
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return ["bool"]
    if isinstance(kind, sa.Integer):
        return ["int"]
    if isinstance(kind, sa.Float):
        return ["float", "int"]
    if isinstance(kind, sa.Numeric):
        return ["Decimal"] if getattr(kind, "asdecimal", True) else ["float", "int"]
    if isinstance(kind, sa.DateTime):
        return ["datetime"]
    if isinstance(kind, sa.Date):
        return ["date"]
    if isinstance(kind, sa.Time):
        return ["time"]
    if isinstance(kind, sa.LargeBinary):
        return ["bytes"]
    if isinstance(kind, (sa.Uuid, sa.String)):
        return ["str"]
    return None


def unique_key_expectation(columns: list[str]) -> ExpectationSpec:
    if len(columns) == 1:
        return ExpectationSpec("expect_column_values_to_be_unique", {"column": columns[0]})
    return ExpectationSpec("expect_compound_columns_to_be_unique", {"column_list": columns})


def schema_expectations(info: TableInfo) -> list[ExpectationSpec]:
    """What the master's reflected schema demands of a row written into `info`'s table."""
    pk = list(info.pk)
    specs = [
        ExpectationSpec(
            "expect_table_columns_to_match_set", {"column_set": [*ROW_MARKERS, *info.columns], "exact_match": True}
        ),
        *[ExpectationSpec("expect_column_values_to_not_be_null", {"column": c}) for c in pk],
        unique_key_expectation(pk),
    ]
    for column in info.table.columns:
        if not column.nullable and column.name not in pk:
            # An insert may leave a column the master fills to the master's default.
            unless = ("_op", "insert") if filled_by_default(column) else None
            specs.append(ExpectationSpec("expect_column_values_to_not_be_null", {"column": column.name}, unless))
        names = type_names(column)
        if names:
            specs.append(
                ExpectationSpec("expect_column_values_to_be_in_type_list", {"column": column.name, "type_list": names})
            )
        length = getattr(column.type, "length", None)
        if isinstance(column.type, sa.String) and length:
            specs.append(
                ExpectationSpec(
                    "expect_column_value_lengths_to_be_between", {"column": column.name, "max_value": int(length)}
                )
            )
    return specs


def settings_expectations(settings: SyncSettings, table: str) -> list[ExpectationSpec]:
    try:
        declared = settings.table(table).expectations
    except KeyError:
        return []
    return [ExpectationSpec(e.type, dict(e.kwargs)) for e in declared]


def row_frame_columns(info: TableInfo, rows: list[dict[str, Any]]) -> list[str]:
    # Columns a row carries that the master's table lacks are kept, so the column-set expectation
    # names them instead of them silently disappearing.
    extra = sorted({k for r in rows for k in r} - set(ROW_MARKERS) - set(info.columns))
    return [*ROW_MARKERS, *info.columns, *extra]


def decode_lenient(data: dict[str, Any] | None, info: TableInfo) -> dict[str, Any]:
    normalizers = column_normalizers(info.table)
    out = {}
    for name, value in (data or {}).items():
        normal_form = normalizers.get(name)  # a column the table lacks keeps its value (row_frame_columns)
        out[name] = value if normal_form is None else lenient_value(value, normal_form)
    return out


def session_changes(engine: Engine, ctx: SessionContext) -> list[dict[str, Any]]:
    """The session's changes as `{change_id, module, table_name, op, key, local}` (key and local as plain
    dicts, not yet decoded), in change order.

    Right after detection the run holds them in memory (`ctx.cached_detected`, decoded from the very
    change rows it stored): they are taken from there instead of read back from the master and parsed
    again. Otherwise (a later run, e.g. `sync_apply` started by the sensor) they are read from the master."""
    if ctx.cached_detected is not None:
        found = [
            {
                "change_id": d.change.seq,
                "module": d.module,
                "table_name": d.change.table,
                "op": d.change.op,
                "key": d.change.key_dict(ctx.infos[d.change.table].pk),
                "local": d.change.local,
            }
            for d in ctx.cached_detected
        ]
        return sorted(found, key=lambda r: r["change_id"])
    return [
        {
            "change_id": r["change_id"],
            "module": r["module"],
            "table_name": r["table_name"],
            "op": r["op"],
            "key": json.loads(r["row_key"]),
            "local": None if r["local"] is None else json.loads(r["local"]),
        }
        for r in load_changes(engine, ctx)
    ]


def local_change_suites(
    engine: Engine, ctx: SessionContext, with_settings: bool, with_schema: bool
) -> list[FrameSuite]:
    if not with_schema and not any(settings_expectations(ctx.settings, t) for t in ctx.infos):
        return []  # the settings declare no expectation: nothing to validate, no change to read
    records = session_changes(engine, ctx)
    modules = sorted({ctx.settings.module_of(t) for t in ctx.infos})
    suites: list[FrameSuite] = []
    if with_schema:
        suites.append(
            FrameSuite(
                "changes",
                ["_change_id", "module", "table", "op"],
                [
                    {"_change_id": r["change_id"], "module": r["module"], "table": r["table_name"], "op": r["op"]}
                    for r in records
                ],
                [
                    ExpectationSpec(
                        "expect_column_values_to_be_in_set", {"column": "op", "value_set": list(OPERATIONS)}
                    ),
                    ExpectationSpec(
                        "expect_column_values_to_be_in_set", {"column": "table", "value_set": sorted(ctx.infos)}
                    ),
                    ExpectationSpec("expect_column_values_to_be_in_set", {"column": "module", "value_set": modules}),
                    ExpectationSpec("expect_column_values_to_be_unique", {"column": "_change_id"}),
                ],
                ["_change_id", "table"],
            )
        )
    by_table: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_table[record["table_name"]].append(record)
    for table, info in ctx.infos.items():
        mine = by_table.get(table)
        if not mine:  # nothing of this table is written: its suites would validate empty frames, at GX's cost
            continue
        pk = list(info.pk)
        if with_schema:
            keys = [{"_change_id": r["change_id"], "_op": r["op"], **decode_lenient(r["key"], info)} for r in mine]
            suites.append(
                FrameSuite(
                    f"keys:{table}",
                    [*ROW_MARKERS, *pk],
                    keys,
                    [
                        *[ExpectationSpec("expect_column_values_to_not_be_null", {"column": c}) for c in pk],
                        unique_key_expectation(pk),
                    ],
                    ["_change_id", *pk],
                )
            )
        specs = [
            *(schema_expectations(info) if with_schema else []),
            *(settings_expectations(ctx.settings, table) if with_settings else []),
        ]
        if not specs:  # e.g. the settings declare no expectation for this table: no rows to decode
            continue
        rows = [
            {"_change_id": r["change_id"], "_op": r["op"], **decode_lenient(r["local"], info)}
            for r in mine
            if r["op"] in ("insert", "update") and r["local"] is not None
        ]
        suites.append(FrameSuite(f"rows:{table}", row_frame_columns(info, rows), rows, specs, ["_change_id", *pk]))
    return suites


def decided_rows(
    engine: Engine, ctx: SessionContext, decided: list[dict[str, Any]] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Per table, the rows decisions write from the replica side: the local row with each decided
    field's chosen value (local, master or edited). Rows where the master's values are kept entirely
    are left out: they write nothing new. `decided`: the session's `decided_conflicts`, when the step
    read them already."""
    decided = decided_conflicts(engine, ctx.session_id) if decided is None else decided
    records = _changes_by_id(engine, ctx, sorted({c["change_id"] for c in decided}))
    out: dict[str, list[dict[str, Any]]] = {}
    for item in decided:
        decision = item["decision"] or {}
        record = records.get(item["change_id"])
        if record is None or item["table"] not in ctx.infos or record["local"] is None:
            continue
        info = ctx.infos[item["table"]]
        master = json.loads(record["master"]) if record["master"] else {}
        row = dict(json.loads(record["local"]))
        writes_local = False
        field_choices: dict[str, dict[str, Any]] = decision.get("fields") or {}
        if field_choices:
            for name, chosen in field_choices.items():
                if chosen["take"] == "master":
                    row[name] = master.get(name)
                elif chosen["take"] == "value":
                    row[name] = chosen.get("value")
                    writes_local = True
                else:
                    writes_local = True
        elif decision.get("row") == "local":
            # Taking the local side of a delete_update deletes the row: no value is written.
            writes_local = item["kind"] != "delete_update"
        if writes_local:
            out.setdefault(item["table"], []).append(
                {"_change_id": record["change_id"], "_op": record["op"], **decode_lenient(row, info)}
            )
    return out


def decided_conflicts(engine: Engine, session_id: str) -> list[dict[str, Any]]:
    """The session's decided conflicts as `{id, change_id, table, kind, decision, rule}`, `decision` in
    `queries.list_conflicts`' form (`row`, `fields`) and `rule` its latest decision's (as list_conflicts'
    `decision.rule`): what `decided_rows` and resolutions' metadata need, without the review's
    identities and compared rows that `list_conflicts` builds for each conflict."""
    with engine.connect() as conn:
        conflicts = sync_records.decided_conflict_rows(conn, session_id)
        history = sync_records.decision_history(conn, [row.conflict_id for row in conflicts])
    out = []
    for row in conflicts:
        decisions = history.get(row.conflict_id)
        decision = None
        if decisions:
            current = current_decision(decisions, [f["name"] for f in json.loads(row.fields)])
            decision = {
                "row": current.row,
                "fields": {
                    n: {"take": ch.choice, **({"value": ch.value} if ch.choice == "value" else {})}
                    for n, ch in current.fields.items()
                },
            }
        out.append(
            {
                "id": row.conflict_id,
                "change_id": row.change_id,
                "table": row.table_name,
                "kind": row.kind,
                "decision": decision,
                "rule": decisions[-1]["rule"] if decisions else None,
            }
        )
    return out


CHANGES_PER_QUERY = 5_000  # ids per IN list: the changes of the decided conflicts are read in chunks


def _changes_by_id(engine: Engine, ctx: SessionContext, change_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The stored changes with these ids (only the conflicts' changes, not the whole session's)."""
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(change_ids), CHANGES_PER_QUERY):
        for record in load_changes(engine, ctx, change_ids[start : start + CHANGES_PER_QUERY]):
            found[record["change_id"]] = record
    return found


def decided_value_suites(
    engine: Engine, ctx: SessionContext, decided: list[dict[str, Any]] | None = None
) -> list[FrameSuite]:
    suites = []
    for table, rows in sorted(decided_rows(engine, ctx, decided).items()):
        info = ctx.infos[table]
        suites.append(
            FrameSuite(
                f"decided:{table}",
                row_frame_columns(info, rows),
                rows,
                [*schema_expectations(info), *settings_expectations(ctx.settings, table)],
                ["_change_id", *info.pk],
            )
        )
    return suites


def loaded_values_suite(engine: Engine, ctx: SessionContext) -> FrameSuite:
    """One row per touched field: the value the load wrote (sync_applied `after` of each row's last write)
    and the master's now."""
    by_table: dict[str, list[tuple[str, dict[str, Any] | None]]] = {}
    for table_name, row_key, after in sync_records.applied_after_latest(engine, ctx.session_id):
        by_table.setdefault(table_name, []).append((row_key, after))
    infos = dict(ctx.infos)
    # An orphan's re-created parent may belong to a table outside the replica's modules.
    outside = [t for t in by_table if t not in infos]
    if outside:  # reflecting nothing still costs an inspection of the master's tables
        infos.update(reflect_tables(engine, outside))
    rows: list[dict[str, Any]] = []
    with engine.connect() as conn:
        for table, items in by_table.items():
            info = infos[table]
            names = {column.name for column in info.table.columns}
            keys = {}
            for row_key, _after in items:
                key = decode_row(json.loads(row_key), info.table) or {}
                keys[row_key] = tuple(key[c] for c in info.pk)
            current = fetch_rows_by_key(conn, info, keys.values())
            for row_key, after in items:
                found = current.get(keys[row_key])
                if after is None:  # a delete: the row must be gone
                    rows.append(
                        {
                            "table": table,
                            "key": row_key,
                            "column": "*",
                            "expected": "absent",
                            "actual": "absent" if found is None else "present",
                        }
                    )
                    continue
                compared = _written_and_now(after, found, info, names)
                for name, (expected, actual) in sorted(compared.items()):
                    rows.append(
                        {"table": table, "key": row_key, "column": name, "expected": expected, "actual": actual}
                    )
    return FrameSuite(
        "loaded_values",
        ["table", "key", "column", "expected", "actual"],
        rows,
        [ExpectationSpec("expect_column_pair_values_to_be_equal", {"column_A": "expected", "column_B": "actual"})],
        ["table", "key", "column"],
    )


def _written_and_now(
    after: dict[str, Any],
    found: dict[str, Any] | None,
    info: TableInfo,
    names: set[str],
) -> dict[str, tuple[str, str]]:
    """Per written column (of `names`, the table's): the value written and the master's now, both in their
    canonical JSON form.

    A stored value already equal, type and all, to the encoding of the master's (normalised) value is
    that value: it is not decoded again. Any other is decoded with its column first, so that only a
    real difference, not a spelling of the same value, fails the comparison."""
    out: dict[str, tuple[str, str]] = {}
    for name, stored in after.items():
        if name not in names:
            continue  # as decode_row: only the table's columns are compared
        now = "absent"
        if found is not None:
            encoded = encode(found.get(name))
            if type(encoded) is type(stored) and encoded == stored:
                text = dumps(encoded)
                out[name] = (text, text)
                continue
            now = dumps(encoded)
        written = (decode_row({name: stored}, info.table) or {}).get(name)
        out[name] = (dumps(encode(written)), now)
    return out


def row_count_suite(
    engine: Engine, ctx: SessionContext, before: dict[str, int], now: dict[str, int] | None = None
) -> FrameSuite:
    """Each table's row count moved by the session's inserts - deletes. `now`: the counts master_load took
    after its commit, in the same step (counted here when not given)."""
    moved: defaultdict[str, int] = defaultdict(int)
    inserts: defaultdict[str, int] = defaultdict(int)
    deletes: defaultdict[str, int] = defaultdict(int)
    for table, op, count in sync_records.applied_counts(engine, ctx.session_id):
        if op == "insert":
            inserts[table] += count
            moved[table] += count
        elif op == "delete":
            deletes[table] += count
            moved[table] -= count
    now = table_row_counts(engine, ctx.infos) if now is None else now
    rows = [
        {
            "table": t,
            "before": before.get(t),
            "inserts": inserts[t],
            "deletes": deletes[t],
            "expected": None if before.get(t) is None else before[t] + moved[t],
            "actual": now[t],
        }
        for t in sorted(now)
    ]
    return FrameSuite(
        "row_counts",
        ["table", "before", "inserts", "deletes", "expected", "actual"],
        rows,
        [
            ExpectationSpec("expect_column_values_to_not_be_null", {"column": "before"}),
            ExpectationSpec("expect_column_pair_values_to_be_equal", {"column_A": "expected", "column_B": "actual"}),
        ],
        ["table", "before", "inserts", "deletes"],
    )
