"""Renderings of a `Protocol`: JSON (the stable, documented format), Markdown (the Dagster asset's
metadata), HTML (print stylesheet: A4, running header, page numbers) and PDF (the same content and look,
laid out with fpdf2 in `reports/pdf.py`).
"""

from __future__ import annotations

import json
from typing import Any

import jinja2

from sync_pipeline.engine.protocol import Protocol
from sync_pipeline.reports import formatting
from sync_pipeline.reports import markdown as md

FORMATS = ("json", "md", "html", "pdf")
TEXT_FORMATS = ("json", "md", "html")


def render_json(protocol: Protocol) -> str:
    return json.dumps(protocol.as_json(), indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------


def _cell(text: Any) -> str:
    # Every cell is literal text: replica values must not become links, images or HTML (reports/markdown.py).
    return md.cell(text)


def _row(*cells: Any) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def render_markdown(protocol: Protocol, max_conflicts: int | None = None) -> str:
    """Markdown of the protocol; `max_conflicts` caps the conflict rows per module (Dagster metadata is
    shown in a browser and stored in the event log: a session with thousands of conflicts would bloat
    both), saying how many more the full protocol files hold."""
    f = formatting
    p = protocol
    t = md.text  # every value written into the Markdown goes through it (or md.code / md.fenced)
    lines = [
        f"# Sync protocol — {t(p.replica.owner)}",
        "",
        f"**{t(f.STATE_LABELS.get(p.state, p.state))}:** {t(p.notice)}",
        "",
        f"- **Replica:** {md.code(p.replica.id)} ({t(p.replica.owner)}), modules {t(', '.join(p.replica.modules))}",
        f"- **Checked out:** {t(f.time(p.replica.checked_out_at))}",
        f"- **Session:** {md.code(p.session.id)} ({t(p.session.status)})",
        f"- **Sync:** {t(f.time(p.session.started_at))} → {t(f.time(p.session.finished_at))}"
        f" ({t(f.duration(p.session.duration_seconds))})",
        f"- **Decided by:** {t(f.counts(p.deciders['people'])) if p.deciders['people'] else 'no person'}",
        f"- **Rules applied:** {t(f.counts(p.deciders['rules']))}",
        f"- **Dagster run:** {md.code(p.session.dagster_run_id) if p.session.dagster_run_id else f.EMPTY}",
        "",
        "## Per module",
        "",
        _row(
            "module",
            "policy",
            "local changes",
            "inserted",
            "updated",
            "deleted",
            "remapped",
            "conflicts",
            "pending",
            "decided by rule",
            "decided by person",
        ),
        "|---|---|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for m in p.modules:
        lines.append(
            _row(
                m.name,
                m.policy,
                m.local_changes.total,
                m.applied.inserts,
                m.applied.updates,
                m.applied.deletes,
                len(m.remapped),
                f"{m.conflicts_total}" + (f" ({f.counts(m.conflicts_by_kind)})" if m.conflicts_by_kind else ""),
                m.conflicts_pending,
                f.counts(m.decisions_by_rule),
                f.counts(m.decisions_by_person),
            )
        )
    for m in p.modules:
        lines += ["", f"## Conflicts — {t(m.name)} ({m.conflicts_total})", ""]
        own = p.conflicts_of(m.name)
        if not own:
            lines.append("No conflicts.")
            continue
        lines += [
            _row("#", "table", "key", "kind", "field", "base", "local", "master", "kept", "decided by", "when"),
            "|---:|---|---|---|---|---|---|---|---|---|---|",
        ]
        shown = own if max_conflicts is None else own[:max_conflicts]
        for c in shown:
            shown_key = f.key(c.key) + (f" → {f.key(c.master_key)}" if c.master_key else "")
            for index, fd in enumerate(c.fields or [None]):
                first = index == 0
                lines.append(
                    _row(
                        c.id if first else "",
                        c.table if first else "",
                        shown_key if first else "",
                        c.kind if first else "",
                        fd.name if fd else "(row)",
                        f.side(c.no_row, "base", fd.base) if fd else "",
                        f.side(c.no_row, "local", fd.local) if fd else "",
                        f.side(c.no_row, "master", fd.master) if fd else "",
                        ("pending" if fd.take is None else f.side(c.no_row, "kept", fd.kept)) if fd else "",
                        f.decider(fd.rule, fd.decided_by) if fd else f.decider(c.rule, c.decided_by),
                        f.time(fd.decided_at if fd else c.decided_at),
                    )
                )
            lines.append(_row("", "", "", "", c.outcome, "", "", "", "", "", ""))
            if c.kind == "orphan" and c.detail.get("parent_table"):
                lines.append(_row("", "", "", "", _orphan_parent(c.detail), "", "", "", "", "", ""))
        if len(shown) < len(own):
            lines += ["", f"… and {len(own) - len(shown)} more conflict(s): see the HTML, PDF or JSON protocol."]
        if m.remapped:
            lines += ["", "Keys remapped:", ""]
            lines += [
                f"- {t(r.table)} {t(f.key(r.local_key))} → {t(f.key(r.master_key))} ({t(r.reason)})" for r in m.remapped
            ]
        if m.dropped:
            lines += ["", "Rows not written:", ""]
            lines += [f"- {t(d.table)} {t(f.key(d.key))}: {t(d.reason)}" for d in m.dropped]
    lines += ["", "## Settings in force", "", *md.fenced(p.settings.yaml.rstrip(), "yaml"), ""]
    if p.session.error:
        lines += ["## Error", "", *md.fenced(p.session.error.rstrip()), ""]
    lines.append(f"_Generated {t(f.time(p.generated_at))} · protocol format {t(p.protocol_version)}_")
    return "\n".join(lines) + "\n"


def _orphan_parent(detail: dict[str, Any]) -> str:
    """Where an orphan's parent would come back from: the master's tombstone of it, or nowhere."""
    parent = f"parent {detail['parent_table']} {formatting.key(detail.get('parent_key'))}"
    if detail.get("parent_source") == "tombstone":
        who = f" by {detail['parent_deleted_by']}" if detail.get("parent_deleted_by") else ""
        when = formatting.time(detail.get("parent_deleted_at"))
        return f"{parent}: re-created from the master's tombstone (deleted {when}{who})"
    if detail.get("parent_missing"):
        return f"{parent}: {detail['parent_missing']}"
    return parent


# ------------------------------------------------------------------------------------------------
# HTML and PDF
# ------------------------------------------------------------------------------------------------

_environment: jinja2.Environment | None = None


def _jinja() -> jinja2.Environment:
    global _environment
    if _environment is None:
        _environment = jinja2.Environment(
            loader=jinja2.PackageLoader("sync_pipeline.reports", "templates"),
            autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
            undefined=jinja2.StrictUndefined,  # a misspelt field fails the tests instead of printing nothing
            trim_blocks=True,
            lstrip_blocks=True,
        )
        _environment.filters.update(
            value=formatting.value,
            optional=formatting.optional,
            key=formatting.key,
            time=formatting.time,
            date=formatting.date,
            duration=formatting.duration,
            counts=formatting.counts,
            take=formatting.take,
        )
        _environment.globals.update(
            decider=formatting.decider, side=formatting.side, state_labels=formatting.STATE_LABELS
        )
    return _environment


def render_html(protocol: Protocol) -> str:
    return _jinja().get_template("protocol.html.j2").render(p=protocol)


def render_pdf(protocol: Protocol) -> bytes:
    """The protocol printed to A4: the HTML rendering's content and look, laid out directly (reports/pdf.py)."""
    from sync_pipeline.reports.pdf import protocol_pdf  # fpdf2 and the fonts load only when a PDF is wanted

    return protocol_pdf(protocol)


def render(protocol: Protocol, fmt: str) -> str | bytes:
    """The protocol in one of FORMATS: text for json/md/html, bytes for pdf."""
    renderers = {"json": render_json, "md": render_markdown, "html": render_html, "pdf": render_pdf}
    if fmt not in renderers:
        raise ValueError(f"unknown protocol format {fmt!r}; use one of {', '.join(FORMATS)}")
    return renderers[fmt](protocol)
