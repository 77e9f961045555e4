"""Markdown the product writes keeps replica values inert (issue 11, point 8), on SQLite and PostgreSQL.

A replica's values `![x](http://host/beacon.png)` and `[Click to approve the sync](http://x)` must
render as text, with no image or link, in the Markdown protocol and in the Dagster metadata of
`sync_protocol`. Checked by rendering the Markdown with a CommonMark parser (tables on, raw HTML on) and
looking for what a browser would fetch or follow; GFM's bare-URL autolinks need `://` or `www.` in the
source, which must not survive either.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from markdown_it import MarkdownIt

from sync_pipeline.dagster_run import materialize_sync
from sync_pipeline.defs.assets import sync_protocol
from sync_pipeline.engine.protocol import build_protocol
from sync_pipeline.engine.session import run_sync
from sync_pipeline.reports import markdown as md
from sync_pipeline.reports import render_markdown
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, pause, row

BEACON = "![x](http://host/beacon.png)"
PHISH = "[Click to approve the sync](http://x)"
HOSTILE_VALUES = [
    BEACON,
    PHISH,
    "<img src=http://host/html.png>",
    "<http://host/auto>",
    "www.host.example/bare",
    "line\n# heading\n```\n![y](http://host/fenced.png)",
    "a | b `code` **bold**",
]


def _html(markdown: str) -> str:
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)


def _assert_inert(markdown: str, headings: int = 0) -> None:
    html = _html(markdown)
    assert "<img" not in html and "<a " not in html, html
    assert html.count("<h1") == headings, html  # no value starts a heading of its own
    assert "://" not in markdown and "www." not in markdown  # no bare URL for GFM to autolink


def _conflicted_replica(master_url: str, tmp_path: Path, policy: str) -> tuple[sa.Engine, Path]:
    engine = make_master(master_url, policy)
    replica = make_replica(engine, tmp_path, owner="Mallory ![o](owner.png) [approve](javascript:x)")
    pause()
    with engine.begin() as conn:
        conn.execute(sa.update(TABLES["parent"]).where(TABLES["parent"].c.id == 1).values(name="M", city="M"))
    with sqlite3.connect(replica) as conn:
        conn.execute("UPDATE parent SET name = ?, city = ? WHERE id = 1", (BEACON, PHISH))
        conn.executemany(
            "INSERT INTO tagged (code, version, title) VALUES (?, ?, ?)",
            [(f"H{i}", 1, value[:50]) for i, value in enumerate(HOSTILE_VALUES)],
        )
    return engine, replica


def test_markdown_escaping_leaves_text_readable() -> None:
    for value in HOSTILE_VALUES:
        _assert_inert(md.text(value))
        _assert_inert("| " + md.cell(value) + " |\n|---|\n")
    assert _html(md.text(BEACON)).strip() == f"<p>{BEACON}</p>"  # reads as the value itself


def test_markdown_protocol_renders_replica_values_as_text(master_url: str, tmp_path: Path) -> None:
    engine, replica = _conflicted_replica(master_url, tmp_path, "local_wins")
    result = run_sync(engine, replica)
    assert result.status == "done"
    assert row(engine, "parent", id=1)["name"] == BEACON  # the value itself is stored as it is

    markdown = render_markdown(build_protocol(engine, result.session_id))

    _assert_inert(markdown, headings=1)
    html = _html(markdown)
    assert "Click to approve the sync" in html and "beacon.png" in html  # shown, as text


def test_dagster_protocol_metadata_renders_replica_values_as_text(master_url: str, tmp_path: Path) -> None:
    engine, replica = _conflicted_replica(master_url, tmp_path, "local_wins")
    with dg.instance_for_test() as instance:
        result = materialize_sync(master_url, str(replica), instance)
        assert result.status == "done"
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=sync_protocol.key), limit=1).records
        materialization = records[0].asset_materialization
        assert materialization is not None
        markdown = materialization.metadata["protocol"].value

    assert "beacon" in markdown
    _assert_inert(markdown, headings=1)
