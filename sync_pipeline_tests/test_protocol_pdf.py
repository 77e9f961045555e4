"""The printable protocol (PDF) says what the HTML says, in the same order, and cuts nothing off.

The PDF is laid out by `reports/pdf.py`, not printed from the HTML, so these tests hold the two together:
every text of the HTML page is found in the PDF's text in order (poppler's `pdftotext`), and a protocol
of 300 conflicts keeps each conflict (its table, key, field values and decision) whole on one page,
with every word inside the page's margins. The sessions are real syncs on a SQLite master (the PDF does
not depend on the master's database).
"""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_pipeline.engine import store
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.protocol import Protocol, build_protocol
from sync_pipeline.engine.session import run_sync
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline.reports import formatting, render_html, render_pdf
from sync_pipeline.reports.pdf import CONFLICT_COLUMNS
from sync_pipeline.reports.pdf_layout import CONTENT_WIDTH, MARGIN_LEFT, PAGE_WIDTH
from sync_pipeline.reports.pdf_text import PT, Fonts, Run, Style, wrap
from sync_pipeline_tests.helpers import make_replica, pause, replica_engine
from sync_pipeline_tests.test_protocol import _demo_session

NOTE = sa.Table("note", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("body", sa.Text))
NOTES = "modules:\n  notes:\n    policy: master_wins\n    tables:\n      note: {}\n"
LONG_WORD = "x" * 400  # wider than its column: breaks anywhere (overflow-wrap: anywhere)
LONG_TEXT = " ".join(f"word{i}" for i in range(450))  # a row taller than a page: breaks between lines
FALLBACK = "Prüfung ✓ Ωmega"  # ✓ is not in Liberation Sans: drawn with DejaVu Sans


def _squeeze(text: str) -> str:
    """Text without whitespace, case-folded: line breaks and wrapping differ between HTML and PDF."""
    return "".join(text.split()).casefold()


class _HtmlText(HTMLParser):
    """The HTML page's visible text nodes in order (not the <head>, not the hidden running-header strings)."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[str] = []
        self._hidden = 0  # depth inside <head> or <div class="running">

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._hidden or tag == "head" or dict(attrs).get("class") == "running":
            self._hidden += tag not in ("meta", "br")

    def handle_endtag(self, tag: str) -> None:
        if self._hidden and tag not in ("meta", "br"):
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden and data.strip():
            self.nodes.append(_squeeze(data))


def _pdf_pages(pdf: Path, protocol: Protocol) -> list[str]:
    """Each page's text in the order it was written, without the running header and footer."""
    raw = subprocess.run(["pdftotext", "-raw", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    pages = raw.split("\f")[:-1]
    header = f"Sync protocol · {protocol.replica.owner} · replica {protocol.replica.id}"
    date = formatting.time(protocol.session.finished_at or protocol.session.started_at, False)
    out = []
    for number, page in enumerate(pages, 1):
        text = _squeeze(page)
        for running in (header, date, f"Session {protocol.session.id}", f"Page {number} of {len(pages)}"):
            assert _squeeze(running) in text, (number, running)
            text = text.replace(_squeeze(running), "", 1)  # written first on each page
        out.append(text)
    return out


def _assert_in_order(nodes: list[str], text: str) -> None:
    position = 0
    for node in nodes:
        found = text.find(node, position)
        assert found >= 0, f"{node!r} is missing after {text[max(0, position - 80) : position]!r}"
        position = found + len(node)


def _write(protocol: Protocol, path: Path) -> Path:
    path.write_bytes(render_pdf(protocol))
    return path


def test_the_pdf_holds_every_text_of_the_html_page_in_order(tmp_path: Path) -> None:
    demo = _demo_session(f"sqlite:///{tmp_path / 'demo.db'}", tmp_path)
    done = build_protocol(demo.engine, demo.session_id)
    with demo.engine.begin() as conn:  # the same session failed: the error section too
        conn.execute(
            sa.update(store.sync_session)
            .where(store.sync_session.c.session_id == demo.session_id)
            .values(status="failed", error='IntegrityError: (no row) →\n  at line 2 — "quoted"')
        )
    failed = build_protocol(demo.engine, demo.session_id)
    assert (done.state, failed.state) == ("done", "failed")
    for protocol in (done, failed):
        parser = _HtmlText()
        parser.feed(render_html(protocol))
        assert len(parser.nodes) > 150
        pages = _pdf_pages(_write(protocol, tmp_path / f"{protocol.state}.pdf"), protocol)
        _assert_in_order(parser.nodes, "".join(pages))
    assert _squeeze('at line 2 — "quoted"') in "".join(pages)


def _three_hundred_conflicts(tmp_path: Path) -> Protocol:
    """300 notes changed on the replica and on the master: 300 update_update conflicts, master_wins."""
    engine = connect_master(f"sqlite:///{tmp_path / 'master.db'}", must_exist=False)
    NOTE.create(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(NOTE), [{"id": i, "body": "Base"} for i in range(1, 301)])
    init_master(engine, parse_settings(NOTES, "notes.yaml"))
    replica = make_replica(engine, tmp_path, owner="Mona Many")
    local = {i: f"Local note {i}" for i in range(1, 301)} | {7: LONG_TEXT, 8: LONG_WORD, 9: FALLBACK}
    change = sa.update(NOTE).where(NOTE.c.id == sa.bindparam("k")).values(body=sa.bindparam("b"))
    with replica_engine(replica).begin() as conn:
        conn.execute(change, [{"k": k, "b": b} for k, b in local.items()])
    pause()
    with engine.begin() as conn:
        conn.execute(change, [{"k": k, "b": f"Master note {k}"} for k in local])
    result = run_sync(engine, replica)
    assert result.status == "done" and result.session_id
    return build_protocol(engine, result.session_id)


def _words_with_boxes(pdf: Path) -> list[list[tuple[float, float, float, float, str]]]:
    """Per page, every word with its box (x0, y0, x1, y1 in points) as poppler places it."""
    bbox = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    word = re.compile(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*?)</word>')
    return [
        [(float(a), float(b), float(c), float(d), text) for a, b, c, d, text in word.findall(page)]
        for page in bbox.split("<page ")[1:]
    ]


def test_a_pdf_of_300_conflicts_keeps_each_conflict_whole_on_a_page_and_cuts_nothing_off(tmp_path: Path) -> None:
    protocol = _three_hundred_conflicts(tmp_path)
    assert len(protocol.conflicts) == 300
    pdf = _write(protocol, tmp_path / "many.pdf")
    pages = _pdf_pages(pdf, protocol)
    assert len(pages) > 10

    for conflict in protocol.conflicts:
        (field,) = conflict.fields
        head = _squeeze(f"#{conflict.id} {conflict.table} {formatting.key(conflict.key)} {conflict.kind}")
        rest = [conflict.outcome, "body", "Base", str(field.local), str(field.master), str(field.kept)]
        rest += [f"took {formatting.take(field.take)}", formatting.decider(field.rule, field.decided_by)]
        on = [number for number, page in enumerate(pages) if head + _squeeze(conflict.outcome) in page]
        assert len(on) == 1, (conflict.id, on)
        if field.local == LONG_TEXT:
            # Taller than a page: what fits on this page (of every cell), the rest on the next pages.
            _assert_in_order([head, *map(_squeeze, rest[:3]), "word0", *map(_squeeze, rest[4:])], pages[on[0]])
            _assert_in_order([_squeeze(word) for word in LONG_TEXT.split()], "".join(pages[on[0] :]))
        else:
            _assert_in_order([head, *map(_squeeze, rest)], pages[on[0]])
        assert field.kept == f"Master note {conflict.key['id']}"  # master_wins: the master's value stays

    # Every word inside the page's margins; the long word's pieces inside the Local column.
    left, right = MARGIN_LEFT / PT, (PAGE_WIDTH - MARGIN_LEFT) / PT
    columns = [CONTENT_WIDTH * share / 100 for share in CONFLICT_COLUMNS]
    local_left = (MARGIN_LEFT + sum(columns[:2])) / PT
    local_right = local_left + columns[2] / PT
    pieces = 0
    for words in _words_with_boxes(pdf):
        for x0, y0, x1, y1, text in words:
            assert left - 0.5 <= x0 and x1 <= right + 0.5, (text, x0, x1)
            assert y0 >= 0 and y1 <= 842, (text, y0, y1)
            if set(text) == {"x"} and len(text) > 3:
                assert local_left <= x0 and x1 <= local_right + 0.5, (text, x0, x1)
                pieces += len(text)
    assert pieces == len(LONG_WORD)
    raw = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert "✓" in raw and FALLBACK in raw.replace("\n", " ")


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=30)),
    width=st.floats(min_value=8, max_value=CONTENT_WIDTH),
)
def test_wrapped_lines_fit_their_width_and_lose_no_character(words: list[str], width: float) -> None:
    from fpdf import FPDF

    fonts = Fonts(FPDF())
    style = Style(size=8.2)
    text = " ".join(words)
    lines = wrap(fonts, [[Run(text, style)]], width)
    for line in lines:
        assert line.width <= width + 0.02 or len(line.pieces[0].text) == 1
        assert all(piece.x + piece.width <= line.width + 1e-6 for piece in line.pieces)
    drawn = "".join(piece.text for line in lines for piece in line.pieces)
    assert "".join(drawn.split()) == "".join(text.split())
