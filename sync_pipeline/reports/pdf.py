"""The printable protocol (PDF, A4): the HTML rendering's content and look, laid out by `pdf_layout`.

Every text of `templates/protocol.html.j2` is here, in the same order (test_protocol_pdf.py compares
the two), with the print stylesheet's fonts, sizes and colours: a running header with the replica and
the sync's date, "Session …" and "Page n of N" in the footer, the conflicts table's header row on every
page, and each conflict kept on one page. A change to the template's text belongs here too.
"""

from __future__ import annotations

from collections.abc import Iterator

from fpdf import FPDF

from sync_pipeline.engine.protocol import ConflictRecord, ModuleProtocol, Protocol
from sync_pipeline.reports import formatting as f
from sync_pipeline.reports.pdf_layout import (
    CONTENT_WIDTH,
    MARGIN_BOTTOM,
    MARGIN_LEFT,
    MARGIN_TOP,
    PAGE_HEIGHT,
    Box,
    Cell,
    Flow,
    Row,
)
from sync_pipeline.reports.pdf_text import PT, Canvas, Fonts, Line, Paragraph, Run, Style, lines_height

# protocol.css, as styles
MUTED, RULE, BAND = "#5b6675", "#d5dbe3", "#1f3a5f"
BODY = Style()
MUTED_BODY = BODY.but(color=MUTED)
GRID = Style(size=8.2)
BOLD = GRID.but(bold=True)
TH = BOLD.but(break_words=False)  # header cells: a word overflows rather than breaks
SMALL = GRID.but(size=7, color=MUTED)  # .take, .who
NONE = GRID.but(color="#9aa3af")
PENDING = GRID.but(bold=True, color="#9a6400")
FIELD = GRID.but(family="mono", size=7.6)
LOCAL, MASTER = GRID.but(color="#1d5fa8"), GRID.but(color="#7a4b00")
KEPT = GRID.but(bold=True, color="#12643a")
PLANNED = KEPT.but(italic=True)  # decided, not loaded yet
CID, TABLE, KEY = GRID.but(bold=True, color=BAND), BOLD, GRID.but(color=MUTED)
KIND = GRID.but(size=7, bold=True, color="#2d3d55", box="#e4e9f1", box_pad=(1.5, 0.3))
OUTCOME = GRID.but(italic=True, color=MUTED)
LEGEND = BODY.but(size=7.6, color=MUTED)
PRE = Style(family="mono", size=7.6, leading=1.35, preserve=True)
H1 = Style(bold=True, size=19, leading=1.1, color=BAND)
H2 = Style(bold=True, size=11.5, color=BAND)
H2_COUNT = BODY.but(size=9.5, color=MUTED)
H3 = BODY.but(size=9.5, bold=True)
SUBTITLE = BODY.but(size=9.5, color=MUTED)
RUNNING = BODY.but(size=7.5, color=MUTED)
STATES = {  # badge background and text, notice border and background
    "done": ("#dff3e6", "#12643a", "#1f8a4c", "#f1faf4"),
    "empty": ("#e8ebf0", "#3d4654", "#6b7686", "#f3f4f6"),
    "waiting": ("#fff1d6", "#7a4b00", "#c98a00", "#fff8ea"),
    "in_progress": ("#fff1d6", "#7a4b00", "#c98a00", "#fff8ea"),
    "failed": ("#fbe1e1", "#9b1c1c", "#9b1c1c", "#fdf1f1"),
}
GRID_HEAD = Box(1.2, 1.5, 1.2, 1.5, fill="#eef2f7", bottom=(0.8, "#aab4c3"), valign="bottom")
GRID_CELL = Box(1.0, 1.5, 1.0, 1.5, bottom=(0.4, "#e3e7ed"))
GRID_FOOT = Box(1.0, 1.5, 1.0, 1.5, top=(0.8, "#aab4c3"))
CONFLICT_HEAD = Box(1.3, 1.5, 1.3, 1.5, fill="#f7f9fb", top=(0.8, "#c3cbd6"), bottom=(0.4, "#dfe4ea"))
FACT = Box(0.9, 3, 0.9, 0, bottom=(0.4, "#edf0f4"))
SETTINGS = Box(2.5, 3, 2.5, 3, fill="#f6f8fa", frame=(0.4, RULE))
ERROR = Box(2.5, 3, 2.5, 3, fill="#fdf4f4", frame=(0.4, "#e7b4b4"))
# The template's colgroups, in per cent of the content width.
FACT_COLUMNS = (14, 38, 14, 34)
MODULE_COLUMNS = (11, 12, 8, 8, 8, 8, 9, 20, 16)
CONFLICT_COLUMNS = (15, 15, 16, 16, 17, 21)
MODULE_HEADINGS = ("Module", "Policy", "Local changes", "Inserted", "Updated", "Deleted", "Keys remapped",
                   "Conflicts by kind", "Decided by")  # fmt: skip
CONFLICT_HEADINGS = ("Field", "Base", "Local", "Master", "Kept", "Decided by")
KEY_TAKEN = "the key was taken in the master: a new one was assigned"


def _widths(percentages: tuple[int, ...]) -> list[float]:
    return [CONTENT_WIDTH * p / 100 for p in percentages]


def _p(text: object, style: Style = GRID, gap: float = 0.0) -> list[Run]:
    """A paragraph of one run."""
    return [Run(str(text), style, gap)]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


class ProtocolPdf:
    """One protocol's document: `render` lays out the template's sections in order."""

    def __init__(self, protocol: Protocol) -> None:
        p = self.p = protocol
        self.pdf = FPDF(unit="mm", format="A4")
        self.pdf.set_auto_page_break(False)  # the flow breaks pages
        self.pdf.set_margins(MARGIN_LEFT, MARGIN_TOP)
        self.pdf.set_title(f"Sync protocol — {p.replica.owner} — {f.date(p.session.started_at)}")
        self.pdf.set_creator(f"sync_pipeline protocol format {p.protocol_version}")
        self.pdf.set_lang("en")
        self.canvas = Canvas(self.pdf, Fonts(self.pdf))
        self.flow = Flow(self.canvas, self._running_header_and_footer)
        self.header_text = f"Sync protocol · {p.replica.owner} · replica {p.replica.id}"
        self.header_date = f.time(p.session.finished_at or p.session.started_at, False)

    def render(self) -> bytes:
        self.flow.new_page()
        self.title()
        self.facts()
        self.modules_table()
        legend_shown = False
        for module in self.p.modules:
            legend_shown = self.conflicts(module, legend_shown)
            self.remapped(module)
            self.dropped(module)
        if self.p.session.error:
            self.heading("Error")
            self.pre(self.p.session.error, ERROR)
        self.settings()
        return bytes(self.pdf.output())

    def _running_header_and_footer(self) -> None:
        flow, canvas = self.flow, self.canvas
        # Bottom-aligned in the top margin, 4 mm above the content; a long owner name wraps upwards.
        date = flow.wrap([_p(self.header_date, RUNNING)])
        replica = flow.wrap([_p(self.header_text, RUNNING)], CONTENT_WIDTH - date[0].width - 4)
        canvas.lines(replica, MARGIN_LEFT, MARGIN_TOP - 4 - lines_height(replica), CONTENT_WIDTH)
        canvas.lines(date, MARGIN_LEFT, MARGIN_TOP - 4 - lines_height(date), CONTENT_WIDTH, "right")
        baseline = PAGE_HEIGHT - MARGIN_BOTTOM / 2 + 1
        canvas.text(MARGIN_LEFT, baseline, f"Session {self.p.session.id}", BODY.but(size=7, color="#8a94a3"))
        canvas.page_number(MARGIN_LEFT + CONTENT_WIDTH, baseline, f"Page {self.pdf.page_no()} of ", RUNNING)

    # -- the sections, in the template's order ------------------------------------------------------

    def title(self) -> None:
        p, flow, canvas = self.p, self.flow, self.canvas
        badge_bg, badge_fg, notice_border, notice_bg = STATES.get(p.state, STATES["empty"])
        label = f.STATE_LABELS.get(p.state, p.state).upper()  # text-transform: uppercase
        badge = flow.wrap([_p(label, BODY.but(bold=True, size=8.5, color=badge_fg, box=badge_bg, box_pad=(3, 1.2)))])
        subtitle = [
            Run("Replica of ", SUBTITLE),
            Run(p.replica.owner, SUBTITLE.but(bold=True)),
            Run(f" · modules {', '.join(p.replica.modules)}", SUBTITLE),
        ]
        left = flow.wrap([_p("Sync protocol", H1), subtitle], CONTENT_WIDTH - badge[0].width - 7)
        bottom = canvas.lines(left, MARGIN_LEFT, flow.y, CONTENT_WIDTH) + 1
        # The badge sits at the bottom right of the title (flex, align-items: flex-end).
        canvas.lines(badge, MARGIN_LEFT, bottom - lines_height(badge), CONTENT_WIDTH - 3, "right")
        flow.y = bottom + 2.5
        canvas.line(MARGIN_LEFT, flow.y, MARGIN_LEFT + CONTENT_WIDTH, flow.y, 2.2, BAND)
        flow.y += 1.1 + 4
        notice = Box(2.2, 3.5, 2.2, 3.5 + 3 * PT, fill=notice_bg, left=(3, notice_border))
        flow.block(flow.wrap([_p(p.notice, BODY.but(size=9.5))], CONTENT_WIDTH - 7 - 3 * PT), notice)
        flow.skip(4.5)

    def facts(self) -> None:
        p = self.p
        people = ", ".join(f"{person} ({_plural(n, 'conflict')})" for person, n in p.deciders["people"].items())
        rules = ", ".join(f"{rule} ({n})" for rule, n in p.deciders["rules"].items() if rule != "person")
        status = p.replica.status + (f" since {f.time(p.replica.retired_at)}" if p.replica.retired_at else "")
        pairs = [
            ("Owner", p.replica.owner, "Checked out", f.time(p.replica.checked_out_at)),
            ("Replica", p.replica.id, "Sync started", f.time(p.session.started_at)),
            ("Modules", ", ".join(p.replica.modules), "Sync finished", f.time(p.session.finished_at)),
            ("Session", p.session.id, "Duration", f.duration(p.session.duration_seconds)),
            ("Decided by", people or "no person", "Policies applied", rules or "none"),
            ("Dagster run", f.optional(p.session.dagster_run_id), "Replica status", status),
        ]
        widths = _widths(FACT_COLUMNS)
        styles = (MUTED_BODY, BODY, MUTED_BODY, BODY)
        rows = [
            [self.flow.row([Cell([_p(text, style)]) for text, style in zip(pair, styles, strict=True)], widths, FACT)]
            for pair in pairs
        ]
        self.flow.table(None, rows)
        self.flow.skip(1)

    def modules_table(self) -> None:
        p, flow = self.p, self.flow
        self.heading("Per module", keep_next=15)
        widths = _widths(MODULE_COLUMNS)
        aligns = ["right" if 2 <= i <= 6 else "left" for i in range(len(MODULE_HEADINGS))]
        header = flow.row(
            [Cell([_p(n, TH)], a) for n, a in zip(MODULE_HEADINGS, aligns, strict=True)], widths, GRID_HEAD
        )
        rows = [[flow.row(self._module_cells(m), widths, GRID_CELL)] for m in p.modules]
        t = p.totals
        conflicts = _p(_plural(t.conflicts, "conflict"), BOLD) + (
            [Run(f" ({t.pending} pending)", PENDING)] if t.pending else []
        )
        numbers = (t.local_changes, t.inserts, t.updates, t.deletes, t.remapped)
        total = [
            Cell([_p("Total", BOLD)]),
            Cell([]),
            *(Cell([_p(n, BOLD)], "right") for n in numbers),
            Cell([conflicts]),
            Cell([]),
        ]
        rows.append([flow.row(total, widths, GRID_FOOT)])
        flow.table(header, rows)

    def _module_cells(self, m: ModuleProtocol) -> list[Cell]:
        policy: list[Paragraph] = [_p(m.policy)]
        policy += [_p(f"{table}: {rule}", SMALL) for table, rule in m.tables.items() if rule != m.policy]
        kinds: list[Paragraph] = [_p(f"{kind}: {n}") for kind, n in m.conflicts_by_kind.items()] or [_p("none", NONE)]
        if m.conflicts_pending:
            kinds.append(_p(f"{m.conflicts_pending} pending", PENDING))
        deciders: list[Paragraph] = [_p(f"{rule}: {n}") for rule, n in m.decisions_by_rule.items() if rule != "person"]
        deciders += [_p(f"{person}: {n}") for person, n in m.decisions_by_person.items()]
        if not m.decisions_by_rule:
            deciders.append(_p("—", NONE))
        counts = (m.local_changes.total, m.applied.inserts, m.applied.updates, m.applied.deletes, len(m.remapped))
        return [
            Cell([_p(m.name, BOLD)]),
            Cell(policy),
            *(Cell([_p(n)], "right") for n in counts),
            Cell(kinds),
            Cell(deciders),
        ]

    def conflicts(self, module: ModuleProtocol, legend_shown: bool) -> bool:
        """The module's conflicts table (the legend before the first one); True once a legend is shown."""
        flow = self.flow
        own = self.p.conflicts_of(module.name)
        widths = _widths(CONFLICT_COLUMNS)
        groups = (self._conflict_rows(c, widths) for c in own)
        first = next(groups, None)
        legend = flow.wrap([self._legend()]) if own and not legend_shown else []
        # The heading stays with the legend, the table's header and its first conflict.
        following = lines_height(legend) + 3 + (8 + sum(r.height for r in first) if first else 6)
        self.heading(f"Conflicts — {module.name}", f"({len(own)})", keep_next=min(following, 60))
        if first is None:
            flow.block(flow.wrap([_p("No conflicts in this module.", BODY.but(color="#9aa3af"))]), Box(2, 0, 2, 0))
            return legend_shown
        if legend:
            flow.block(legend, Box(1, 0, 2, 0))
        header = flow.row([Cell([_p(n, TH)]) for n in CONFLICT_HEADINGS], widths, GRID_HEAD)
        flow.table(header, _chain(first, groups))
        return True

    def _legend(self) -> list[Run]:
        planned = (
            ", in italics: what the decision will write, not loaded yet"
            if self.p.state not in ("done", "empty")
            else ""
        )
        side = LEGEND.but(bold=True)
        marks = "NULL: the field is empty (SQL NULL); (no row): that side has no such row; —: nothing to show."
        return [
            Run("Per field: the value at checkout (base), on the replica (", LEGEND),
            Run("local", side.but(color=LOCAL.color)),
            Run("), on the master (", LEGEND),
            Run("master", side.but(color=MASTER.color)),
            Run("), and the value the master holds after the sync (", LEGEND),
            Run("kept", side.but(color=KEPT.color)),
            Run(f"){planned}. {marks}", LEGEND),
        ]

    def _conflict_rows(self, c: ConflictRecord, widths: list[float]) -> list[Row]:
        """One conflict: its heading row (id, table, key, kind, outcome) and a row per field."""
        flow = self.flow
        key = f.key(c.key) + (f" → master {f.key(c.master_key)}" if c.master_key else "")
        head = [
            Run(f"#{c.id}", CID),
            Run(c.table, TABLE, 2),
            Run(key, KEY, 1.5),
            Run(c.kind, KIND, 2),
            Run(" " + c.outcome, OUTCOME, 3),
        ]
        rows = [flow.row([Cell([head])], [sum(widths)], CONFLICT_HEAD)]
        for fd in c.fields:
            kept: list[Paragraph] = [_p("pending", PENDING)]
            if fd.take is not None:
                kept = [
                    _p(f.side(c.no_row, "kept", fd.kept), KEPT if c.loaded else PLANNED),
                    _p(f"took {f.take(fd.take)}", SMALL),
                ]
            decided: list[Paragraph] = [_p("—", NONE)]
            if fd.rule is not None:
                decided = [_p(f.decider(fd.rule, fd.decided_by)), _p(f.time(fd.decided_at), SMALL)]
            cells = [
                Cell([_p(fd.name, FIELD)]),
                Cell([_p(f.side(c.no_row, "base", fd.base))]),
                Cell([_p(f.side(c.no_row, "local", fd.local), LOCAL)]),
                Cell([_p(f.side(c.no_row, "master", fd.master), MASTER)]),
                Cell(kept),
                Cell(decided),
            ]
            rows.append(flow.row(cells, widths, GRID_CELL))
        if not c.fields:
            decided = [_p(f.decider(c.rule, c.decided_by))] + (
                [_p(f.time(c.decided_at), SMALL)] if c.decided_at else []
            )
            cells = [
                Cell([_p("(row)", FIELD)]),
                Cell([]),
                Cell([]),
                Cell([]),
                Cell([_p(f.take(c.take), KEPT)]),
                Cell(decided),
            ]
            rows.append(flow.row(cells, widths, GRID_CELL))
        return rows

    def remapped(self, module: ModuleProtocol) -> None:
        if module.remapped:
            names = ("Table", "Key on the replica", "Key in the master", "Why")
            why = {"duplicate": "the same record exists in the master"}
            rows = [
                (r.table, f.key(r.local_key), f.key(r.master_key), why.get(r.reason, KEY_TAKEN))
                for r in module.remapped
            ]
            self._simple_table(f"Keys remapped — {module.name}", names, rows)

    def dropped(self, module: ModuleProtocol) -> None:
        if module.dropped:
            rows = [(d.table, f.key(d.key), d.reason) for d in module.dropped]
            self._simple_table(f"Rows not written — {module.name}", ("Table", "Key", "Why"), rows)

    def _simple_table(self, title: str, names: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        """A heading (h3) and a table of equal columns (the template's tables without a colgroup)."""
        flow = self.flow
        lines = flow.wrap([_p(title, H3)])
        flow.skip(3.5)
        flow.ensure(lines_height(lines) + 1.5 + 12)
        flow.block(lines)
        flow.y += 1.5
        widths = [CONTENT_WIDTH / len(names)] * len(names)
        header = flow.row([Cell([_p(n, TH)]) for n in names], widths, GRID_HEAD)
        flow.table(header, ([flow.row([Cell([_p(text)]) for text in row], widths, GRID_CELL)] for row in rows))

    def settings(self) -> None:
        flow = self.flow
        retention = self.p.settings.retention_days
        kept = f"; the master keeps sync history for {retention} days" if retention else ""
        legend = flow.wrap([_p(f"Frozen into the replica at checkout{kept}.", LEGEND)])
        settings = self._pre_lines(self.p.settings.yaml, SETTINGS)
        # The heading and its line stay with the settings when these fit on a page.
        following = lines_height(legend) + 3 + lines_height(settings) + 5
        self.heading("Settings in force", keep_next=following if following < 200 else 10)
        flow.block(legend, Box(1, 0, 2, 0))
        flow.block(settings, SETTINGS)
        self.flow.skip(6)
        generated = (
            f"Generated {f.time(self.p.generated_at)} by sync_pipeline · protocol format "
            f"{self.p.protocol_version} · session {self.p.session.id}"
        )
        self.flow.block(self.flow.wrap([_p(generated, RUNNING)]), Box(1.5, top=(0.4, RULE)))

    # -- headings and preformatted text ------------------------------------------------------------

    def heading(self, text: str, count: str | None = None, keep_next: float = 10.0) -> None:
        """An h2, kept on a page with `keep_next` mm of what follows (break-after: avoid)."""
        lines = self.flow.wrap([_p(text, H2) + ([Run(" " + count, H2_COUNT)] if count else [])])
        self.flow.skip(6)
        self.flow.ensure(lines_height(lines) + 3 + keep_next)
        self.flow.block(lines, Box(0, 0, 1, 0, bottom=(0.6, RULE)))
        self.flow.y += 2

    def pre(self, text: str, box: Box) -> None:
        self.flow.block(self._pre_lines(text, box), box)

    def _pre_lines(self, text: str, box: Box) -> list[Line]:
        """`white-space: pre-wrap`: each line of `text` starts a line; long lines wrap."""
        lines = text.rstrip("\n").expandtabs(8).split("\n")
        return self.flow.wrap([_p(line, PRE) for line in lines], CONTENT_WIDTH - box.pad_left - box.pad_right)


def _chain(first: list[Row], rest: Iterator[list[Row]]) -> Iterator[list[Row]]:
    yield first
    yield from rest


def protocol_pdf(protocol: Protocol) -> bytes:
    """The protocol as a PDF (A4)."""
    return ProtocolPdf(protocol).render()
