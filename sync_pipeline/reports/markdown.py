"""Values placed into Markdown the product writes (the protocol, Dagster metadata) as inert text.

A value comes from a replica, which anyone may have held: `![x](http://host/beacon.png)` in a field
made the Dagster UI fetch a URL, and `[Click to approve the sync](http://x)` became a link. CommonMark
lets any ASCII punctuation be escaped with a backslash and then reads it as itself, so escaping every one
of them leaves no image, link, autolink, raw HTML, emphasis, heading, list or table syntax in a value
(GFM's bare-URL autolinks need `://`, `www.` or `@` unescaped, so they cannot form either). Line breaks
become spaces: a value stays on its line (a table row, a list item).
"""

from __future__ import annotations

import re
import string
from typing import Any

_PUNCTUATION = frozenset(string.punctuation)
_LINE_BREAKS = re.compile(r"[\r\n\u0085\u2028\u2029\v\f]+")


def text(value: Any) -> str:
    """`value` as literal inline Markdown text: every ASCII punctuation escaped, line breaks made spaces."""
    flat = _LINE_BREAKS.sub(" ", str(value))
    return "".join("\\" + ch if ch in _PUNCTUATION else ch for ch in flat)


def cell(value: Any) -> str:
    """A table cell's literal text (a `|` is escaped like any punctuation, so it cannot end the cell)."""
    return text(value)


def code(value: Any) -> str:
    """`value` in a code span (shown literally: no Markdown inside), or escaped text where a backtick in it
    would end the span."""
    flat = _LINE_BREAKS.sub(" ", str(value))
    if "`" in flat or not flat.strip():
        return text(flat)
    return f"`{flat}`"


def fenced(body: str, info: str = "text") -> list[str]:
    """A fenced code block holding `body` literally: the fence is longer than any run of backticks in it,
    so no line of the body can close it early."""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{info}", body, fence]
