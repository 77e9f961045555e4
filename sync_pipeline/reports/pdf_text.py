"""Text for the printable protocol on fpdf2: the fonts, styled runs, lines wrapped to a width, drawing.

Lengths are millimetres, font sizes points. Text wraps at spaces, and anywhere inside a word that is
wider than its column (the HTML's `overflow-wrap: anywhere`); runs of whitespace collapse as in HTML.
Characters the style's font lacks are drawn with a fallback font that has them (as fontconfig does for
a browser); a character that no installed font has is drawn as U+FFFD. Widths come from fpdf2's font
metrics; text is written with fpdf2's low-level `text` (its `multi_cell` costs a millisecond a call).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from fpdf import FPDF

PT = 25.4 / 72  # one point in millimetres
REPLACEMENT = "\ufffd"

# The font stacks of protocol.css, by file name (Debian: fonts-liberation, fonts-dejavu-core). Faces:
# regular, bold, italic, bold italic; a family without an italic face prints italics upright.
FAMILIES: dict[str, list[tuple[str, str, str, str]]] = {
    "sans": [
        (
            "LiberationSans-Regular.ttf",
            "LiberationSans-Bold.ttf",
            "LiberationSans-Italic.ttf",
            "LiberationSans-BoldItalic.ttf",
        ),
        ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf"),
    ],
    "mono": [
        (
            "DejaVuSansMono.ttf",
            "DejaVuSansMono-Bold.ttf",
            "DejaVuSansMono-Oblique.ttf",
            "DejaVuSansMono-BoldOblique.ttf",
        ),
        (
            "LiberationMono-Regular.ttf",
            "LiberationMono-Bold.ttf",
            "LiberationMono-Italic.ttf",
            "LiberationMono-BoldItalic.ttf",
        ),
    ],
}
# Tried in order for characters the style's own font lacks.
FALLBACKS = ("DejaVuSans.ttf", "DejaVuSansMono.ttf", "LiberationSans-Regular.ttf", "FreeSans.ttf", "FreeSerif.ttf")
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")


@cache
def installed_fonts() -> dict[str, str]:
    """File name -> path of the TrueType fonts installed (`$SYNC_PDF_FONT_DIR` first, then the system's)."""
    found: dict[str, str] = {}
    folders = [os.environ.get("SYNC_PDF_FONT_DIR", ""), *FONT_DIRS]
    for folder in filter(None, folders):
        for root, _dirs, files in os.walk(Path(folder).expanduser()):
            for name in files:
                if name.lower().endswith(".ttf"):
                    found.setdefault(name, os.path.join(root, name))
    return found


def _hex(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


@dataclass(frozen=True)
class Style:
    """How a run of text looks: the font, its size and line height, its colour, an inline box behind it."""

    family: str = "sans"
    bold: bool = False
    italic: bool = False
    size: float = 9.0
    leading: float = 1.38  # line height as a multiple of the size
    color: str = "#1d2430"
    box: str | None = None  # the background of an inline box (the badges), drawn behind the text
    box_pad: tuple[float, float] = (0.0, 0.0)  # the inline box's padding: horizontal, vertical (mm)
    break_words: bool = True  # a word wider than its column breaks anywhere (`overflow-wrap: anywhere`)
    preserve: bool = False  # spaces kept, not collapsed (`white-space: pre-wrap`; a line is a paragraph)

    def but(self, **changes: Any) -> Style:
        return replace(self, **changes)


@dataclass(frozen=True)
class Run:
    """Text in one style; `gap` is space (mm) before it (a CSS margin)."""

    text: str
    style: Style
    gap: float = 0.0


Paragraph = Sequence[Run]  # runs that flow together; a cell or block holds one or more paragraphs


@dataclass
class Face:
    """One font file, registered with the document as a family of its own."""

    key: str  # the family name given to fpdf2
    chars: frozenset[str]  # the characters it has
    widths: Any  # fpdf2's codepoint -> advance width in 1/1000 em


@dataclass
class Piece:
    """Text laid out on a line: its x offset from the line start, its width and style."""

    x: float
    text: str
    width: float
    style: Style


@dataclass
class Line:
    pieces: list[Piece] = field(default_factory=list)
    width: float = 0.0
    height: float = 0.0
    size: float = 0.0  # the largest font size on the line (pt): places the baseline


class Fonts:
    """The faces used so far, registered with the document when first needed."""

    def __init__(self, pdf: FPDF) -> None:
        self.pdf = pdf
        self.faces: dict[tuple[str, bool, bool], Face] = {}
        self.by_file: dict[str, Face] = {}
        self.fallbacks: list[Face] | None = None

    def _load(self, file: str) -> Face | None:
        if file in self.by_file:
            return self.by_file[file]
        path = installed_fonts().get(file)
        if path is None:
            return None
        key = file.rsplit(".", 1)[0].replace("-", "").lower()
        self.pdf.add_font(key, "", path)
        font = self.pdf.fonts[key]
        face = Face(key, frozenset(map(chr, font.cmap)), font.cw)
        self.by_file[file] = face
        return face

    def face(self, style: Style) -> Face:
        wanted = (style.family, style.bold, style.italic)
        if wanted not in self.faces:
            index = (1 if style.bold else 0) + (2 if style.italic else 0)
            for faces in FAMILIES[style.family]:
                face = self._load(faces[index]) or (self._load(faces[index & 1]) if index > 1 else None)
                face = face or self._load(faces[0])
                if face is not None:
                    break
            else:
                raise RuntimeError(
                    "no font for the PDF protocol: install Liberation or DejaVu (Debian: fonts-dejavu-core), "
                    "or point SYNC_PDF_FONT_DIR at a folder that holds DejaVuSans.ttf"
                )
            self.faces[wanted] = face
        return self.faces[wanted]

    def segments(self, text: str, style: Style) -> list[tuple[str, Face]]:
        """`text` split into runs that one face each can draw, the style's own face first."""
        face = self.face(style)
        if face.chars.issuperset(text):
            return [(text, face)]
        if self.fallbacks is None:
            self.fallbacks = [f for f in map(self._load, FALLBACKS) if f is not None]
        out: list[tuple[str, Face]] = []
        for char in text:
            chosen = face if char in face.chars else next((f for f in self.fallbacks if char in f.chars), None)
            if chosen is None:
                char, chosen = REPLACEMENT, next((f for f in [face, *self.fallbacks] if REPLACEMENT in f.chars), face)
            if out and out[-1][1] is chosen:
                out[-1] = (out[-1][0] + char, chosen)
            else:
                out.append((char, chosen))
        return out

    def width(self, text: str, style: Style) -> float:
        return sum(_advance(part, face) for part, face in self.segments(text, style)) * style.size * 0.001 * PT


def _advance(text: str, face: Face) -> float:
    widths = face.widths
    return sum([widths[ord(char)] for char in text])


class Canvas:
    """Draws on the current page, calling fpdf2 only when a colour, font or line width changes (fpdf2
    carries them over to a new page itself)."""

    def __init__(self, pdf: FPDF, fonts: Fonts) -> None:
        self.pdf = pdf
        self.fonts = fonts
        self._state: dict[str, object] = {}

    def _set(self, name: str, value: object) -> bool:
        """Whether `name` changes to `value` (and remember it)."""
        if self._state.get(name) == value:
            return False
        self._state[name] = value
        return True

    def _font(self, key: str, size: float) -> None:
        if self._set("font", (key, size)):
            self.pdf.set_font(key, "", size)

    def _text_color(self, color: str) -> None:
        if self._set("text", color):
            self.pdf.set_text_color(*_hex(color))

    def _stroke(self, width_pt: float, color: str) -> None:
        if self._set("draw", color):
            self.pdf.set_draw_color(*_hex(color))
        if self._set("width", width_pt):
            self.pdf.set_line_width(width_pt * PT)

    def text(self, x: float, baseline: float, text: str, style: Style) -> None:
        self._text_color(style.color)
        for part, face in self.fonts.segments(text, style):
            self._font(face.key, style.size)
            self.pdf.text(x, baseline, part)
            if len(part) < len(text):  # more segments follow
                x += _advance(part, face) * style.size * 0.001 * PT

    def page_number(self, right: float, baseline: float, text: str, style: Style) -> None:
        """`text` and the page count, ending at `right`: fpdf2 writes the count ({nb}) into text that
        `cell` wrote when it closes the document."""
        self._font(self.fonts.face(style).key, style.size)
        self._text_color(style.color)
        height = style.size * PT * 1.2
        self.pdf.set_xy(right - 60, baseline - height / 2 - 0.3 * style.size * PT)
        self.pdf.cell(60, height, text + "{nb}", align="R")

    def rect(self, x: float, y: float, w: float, h: float, fill: str, radius: float = 0.0) -> None:
        if self._set("fill", fill):
            self.pdf.set_fill_color(*_hex(fill))
        if radius:
            self.pdf.rect(x, y, w, h, style="F", round_corners=True, corner_radius=radius)
        else:
            self.pdf.rect(x, y, w, h, style="F")

    def frame(self, x: float, y: float, w: float, h: float, width_pt: float, color: str) -> None:
        self._stroke(width_pt, color)
        self.pdf.rect(x, y, w, h, style="D")

    def line(self, x1: float, y1: float, x2: float, y2: float, width_pt: float, color: str) -> None:
        self._stroke(width_pt, color)
        self.pdf.line(x1, y1, x2, y2)

    def new_page(self) -> None:
        self.pdf.add_page()

    def lines(self, lines: Iterable[Line], x: float, y: float, width: float, align: str = "left") -> float:
        """Draws wrapped lines from `y` (their top); returns the y below the last one."""
        for line in lines:
            baseline = y + (line.height - line.size * PT) / 2 + 0.8 * line.size * PT
            start = x + (width - line.width if align == "right" else 0.0)
            for piece in line.pieces:
                style = piece.style
                if style.box:
                    pad_x, pad_y = style.box_pad
                    top = baseline - 0.8 * style.size * PT - pad_y
                    height = style.size * PT + 2 * pad_y
                    self.rect(start + piece.x, top, piece.width, height, style.box, min(1.5, height / 2))
                    self.text(start + piece.x + pad_x, baseline, piece.text, style)
                else:
                    self.text(start + piece.x, baseline, piece.text, style)
            y += line.height
        return y


def wrap(fonts: Fonts, paragraphs: Iterable[Paragraph], width: float) -> list[Line]:
    """Lines of at most `width` mm; each paragraph starts a new line. Whitespace collapses as in HTML."""
    lines: list[Line] = []
    for paragraph in paragraphs:
        line = Line()
        lines.append(line)
        spaced = False  # whitespace before the next word (also across runs)
        if len(paragraph) == 1 and _fits_whole(fonts, line, paragraph[0], width):
            continue
        for run in paragraph:
            style = run.style
            height = style.size * style.leading * PT
            space = fonts.width(" ", style)
            pad = style.box_pad[0] if style.box else 0.0
            words = _words(run.text, style)
            spaced = spaced or (run.text[:1].isspace() and not style.box and not style.preserve)
            for index, word in enumerate(words):
                gap = run.gap if index == 0 else 0.0
                sep = space if line.pieces and (index > 0 or spaced) and not style.preserve else 0.0
                word_width = fonts.width(word, style) + 2 * pad
                if line.pieces and line.width + sep + gap + word_width > width + 0.01:
                    line = Line()
                    lines.append(line)
                    sep = gap = 0.0
                while style.break_words and not style.box and word_width > width - line.width - gap + 0.01:
                    # Wider than a whole line: as much as fits, then the rest on the next lines.
                    cut = max(_fitting(fonts, word, style, width - line.width - gap), 1)
                    if cut >= len(word):
                        break
                    _place(line, word[:cut], fonts.width(word[:cut], style), style, gap, height)
                    line = Line()
                    lines.append(line)
                    word, gap = word[cut:], 0.0
                    word_width = fonts.width(word, style)
                _place(line, word, word_width, style, sep + gap, height, joined=sep > 0 and gap == 0)
            spaced = run.text[-1:].isspace() if words else spaced or bool(run.text)
    return lines


def _fits_whole(fonts: Fonts, line: Line, run: Run, width: float) -> bool:
    """The common case (a cell's short value), placed without splitting it into words."""
    style, text = run.style, run.text
    if style.box or style.preserve or run.gap or not text or text != " ".join(text.split()):
        return False
    text_width = fonts.width(text, style)
    if text_width > width:
        return False
    _place(line, text, text_width, style, 0.0, style.size * style.leading * PT)
    return True


def _words(text: str, style: Style) -> list[str]:
    """What wraps as a unit: a badge whole; preserved text in words that carry their spaces."""
    if style.box:
        return [text]
    if style.preserve:
        return re.findall(r"\s*\S+\s*|\s+", text) or [""]  # an empty line keeps its height
    return text.split()


def _fitting(fonts: Fonts, word: str, style: Style, room: float) -> int:
    """How many leading characters of `word` fit in `room` mm."""
    used = 0.0
    for index, char in enumerate(word):
        used += fonts.width(char, style)
        if used > room:
            return index
    return len(word)


def _place(
    line: Line, text: str, width: float, style: Style, before: float, height: float, joined: bool = False
) -> None:
    last = line.pieces[-1] if line.pieces else None
    if last is not None and last.style == style and not style.box and (joined or style.preserve):
        # The same style after a space: one piece, one text call.
        last.text += (" " if joined else "") + text
        last.width += before + width
    else:
        line.pieces.append(Piece(line.width + before, text, width, style))
    line.width += before + width
    line.height = max(line.height, height)
    line.size = max(line.size, style.size)


def lines_height(lines: Sequence[Line]) -> float:
    return sum(line.height for line in lines)
