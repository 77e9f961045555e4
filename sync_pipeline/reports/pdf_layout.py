"""Pages of the printable protocol: blocks and table rows placed down A4 pages.

WeasyPrint laid out the protocol's HTML at about a third of a second per page (68 pages for 1,000 conflicts: 25
s; with no stylesheet at all still four fifths of that), in its CSS cascade, Pango's line breaking and its table
layout (docs/benchmarks.md, "The printable protocol"). The protocol needs only paragraphs, preformatted text and
tables of fixed column widths, so it is laid out here: a block or a group of table rows (a conflict) moves to
the next page whole when it does not fit, the table's header row repeats on every page, and only what is taller
than a page breaks (between lines, as the HTML's rows and blocks do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sync_pipeline.reports.pdf_text import PT, Canvas, Line, Paragraph, lines_height, wrap

PAGE_WIDTH, PAGE_HEIGHT = 210.0, 297.0  # A4
MARGIN_TOP, MARGIN_RIGHT, MARGIN_BOTTOM, MARGIN_LEFT = 21.0, 14.0, 17.0, 14.0  # protocol.css's @page
CONTENT_WIDTH = PAGE_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
CONTENT_BOTTOM = PAGE_HEIGHT - MARGIN_BOTTOM
EPSILON = 0.01  # mm: rounding in sums of line heights never moves a block to the next page


Border = tuple[float, str]  # width (pt), colour


@dataclass(frozen=True)
class Box:
    """A block's or a table row's padding (mm), background and borders."""

    pad_top: float = 0.0
    pad_right: float = 0.0
    pad_bottom: float = 0.0
    pad_left: float = 0.0
    fill: str | None = None
    top: Border | None = None
    bottom: Border | None = None
    left: Border | None = None
    frame: Border | None = None  # all four sides
    valign: str = "top"  # a table row's cells: top | bottom


@dataclass
class Cell:
    paragraphs: Sequence[Paragraph]
    align: str = "left"


@dataclass
class Row:
    """A table row laid out: each cell's lines, and the row's height with its padding."""

    cells: list[list[Line]]
    widths: list[float]  # the cells' (a cell spanning columns: their sum)
    aligns: list[str]
    box: Box
    height: float


class Flow:
    """Places blocks and table rows down the pages, starting a new page where the next one does not fit."""

    def __init__(self, canvas: Canvas, on_new_page: Callable[[], None]) -> None:
        self.canvas = canvas
        self.fonts = canvas.fonts
        self.on_new_page = on_new_page  # draws the running header and footer
        self.y = MARGIN_TOP

    def new_page(self) -> None:
        self.canvas.new_page()
        self.on_new_page()
        self.y = MARGIN_TOP

    def room(self) -> float:
        return CONTENT_BOTTOM - self.y

    def at_top(self) -> bool:
        return self.y <= MARGIN_TOP + EPSILON

    def ensure(self, height: float) -> None:
        """A new page unless `height` fits below (or the page is still empty: then it cannot fit better)."""
        if height > self.room() + EPSILON and not self.at_top():
            self.new_page()

    def skip(self, height: float) -> None:
        """A vertical margin; dropped at the top of a page, as CSS truncates margins at a page break."""
        if not self.at_top():
            self.y = min(self.y + height, CONTENT_BOTTOM)

    def wrap(self, paragraphs: Iterable[Paragraph], width: float = CONTENT_WIDTH) -> list[Line]:
        return wrap(self.fonts, paragraphs, width)

    def block(self, lines: list[Line], box: Box = Box(), keep: bool = True) -> None:
        """Lines in a box across the content width. `keep`: moved to the next page whole when that page
        holds it; a block taller than a page breaks between lines."""
        padding = box.pad_top + box.pad_bottom
        if keep and lines_height(lines) + padding <= CONTENT_BOTTOM - MARGIN_TOP:
            self.ensure(lines_height(lines) + padding)
        while True:
            if self.room() < padding + (lines[0].height if lines else 0) + EPSILON or self.y >= CONTENT_BOTTOM:
                self.new_page()
            room = self.room() - padding
            count, used = 0, 0.0
            while count < len(lines) and used + lines[count].height <= room + EPSILON:
                used += lines[count].height
                count += 1
            count = max(count, 1) if lines else 0
            here, lines = lines[:count], lines[count:]
            height = lines_height(here) + padding
            self._decorate(box, MARGIN_LEFT, self.y, CONTENT_WIDTH, height)
            x = MARGIN_LEFT + box.pad_left
            self.canvas.lines(here, x, self.y + box.pad_top, CONTENT_WIDTH - box.pad_left - box.pad_right)
            self.y += height
            if not lines:
                return
            self.new_page()

    def _decorate(self, box: Box, x: float, y: float, width: float, height: float) -> None:
        if box.fill:
            self.canvas.rect(x, y, width, height, box.fill)
        if box.left:
            w = box.left[0] * PT
            self.canvas.rect(x, y, w, height, box.left[1])
        if box.top:
            self.canvas.line(x, y, x + width, y, *box.top)
        if box.bottom:
            self.canvas.line(x, y + height, x + width, y + height, *box.bottom)
        if box.frame:
            self.canvas.frame(x, y, width, height, *box.frame)

    # -- tables ------------------------------------------------------------------------------------

    def row(self, cells: Sequence[Cell], widths: Sequence[float], box: Box) -> Row:
        laid = [
            self.wrap(cell.paragraphs, width - box.pad_left - box.pad_right)
            for cell, width in zip(cells, widths, strict=True)
        ]
        height = max((lines_height(lines) for lines in laid), default=0.0) + box.pad_top + box.pad_bottom
        return Row(laid, list(widths), [cell.align for cell in cells], box, height)

    def draw_row(self, row: Row) -> None:
        box = row.box
        self._decorate(
            Box(fill=box.fill, top=box.top, bottom=box.bottom), MARGIN_LEFT, self.y, sum(row.widths), row.height
        )
        x = MARGIN_LEFT
        for lines, align, width in zip(row.cells, row.aligns, row.widths, strict=True):
            inner = width - box.pad_left - box.pad_right
            top = self.y + box.pad_top
            if box.valign == "bottom":
                top = self.y + row.height - box.pad_bottom - lines_height(lines)
            self.canvas.lines(lines, x + box.pad_left, top, inner, align)
            x += width
        self.y += row.height

    def table(self, header: Row | None, groups: Iterable[Sequence[Row]]) -> None:
        """Rows in groups that stay on one page (a conflict's rows); `header` repeats on every page."""
        head_height = header.height if header else 0.0
        page_room = CONTENT_BOTTOM - MARGIN_TOP - head_height
        started = False
        for group in groups:
            height = sum(row.height for row in group)
            if not started:
                self.ensure(head_height + min(height, page_room))
                if header:
                    self.draw_row(header)
                started = True
            elif height > self.room() + EPSILON and height <= page_room:
                self._table_page(header)
            for row in group:
                self._table_row(row, header, page_room)

    def _table_page(self, header: Row | None) -> None:
        self.new_page()
        if header:
            self.draw_row(header)

    def _table_row(self, row: Row, header: Row | None, page_room: float) -> None:
        while row.height > self.room() + EPSILON:
            if row.height <= page_room:
                self._table_page(header)
                break
            # Taller than a page: what fits here, the rest on the next page (the HTML's rows break too).
            first, row = split_row(row, self.room())
            if first is not None:
                self.draw_row(first)
            self._table_page(header)
        self.draw_row(row)


def split_row(row: Row, room: float) -> tuple[Row | None, Row]:
    """The lines of `row` that fit in `room` mm, and a row of the rest (None first: nothing fits)."""
    box = row.box
    available = room - box.pad_top - box.pad_bottom
    heads: list[list[Line]] = []
    tails: list[list[Line]] = []
    for lines in row.cells:
        used, count = 0.0, 0
        while count < len(lines) and used + lines[count].height <= available + EPSILON:
            used += lines[count].height
            count += 1
        heads.append(lines[:count])
        tails.append(lines[count:])
    if not any(heads):
        return None, row
    padding = box.pad_top + box.pad_bottom
    first = Row(heads, row.widths, row.aligns, box, max(lines_height(x) for x in heads) + padding)
    rest = Row(tails, row.widths, row.aligns, box, max(lines_height(x) for x in tails) + padding)
    return first, rest
