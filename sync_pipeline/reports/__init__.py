"""Renderings of the sync protocol (JSON, Markdown, HTML, PDF) and writing them to files.

The protocol itself is data (`sync_pipeline.engine.protocol`); nothing here reads the sync tables.
"""

from sync_pipeline.reports.files import (
    default_protocol_folder,
    protocol_file_name,
    write_protocol,
    write_protocol_files,
)
from sync_pipeline.reports.renderers import (
    FORMATS,
    TEXT_FORMATS,
    render,
    render_html,
    render_json,
    render_markdown,
    render_pdf,
)

__all__ = [
    "FORMATS",
    "TEXT_FORMATS",
    "default_protocol_folder",
    "protocol_file_name",
    "render",
    "render_html",
    "render_json",
    "render_markdown",
    "render_pdf",
    "write_protocol",
    "write_protocol_files",
]
