"""The printable protocol, written on demand outside the sync's runs.

A PDF of a thousand conflicts is some 70 pages (about a second to lay out, reports/pdf.py); the sync's own
run (`sync_apply`) writes the protocol as JSON, Markdown and HTML only, so a sync is never kept waiting
for a printout.
Materialize this asset for a replica's partition in the UI (or run
`sync-pipeline protocol --session ID --format pdf --out FILE.pdf`) when a PDF is wanted.
"""

import dagster as dg

from sync_pipeline.defs.assets import sync_asset, sync_protocol
from sync_pipeline.defs.failures import reports_sync_errors
from sync_pipeline.defs.resources import MasterDatabase
from sync_pipeline.defs.step_session import partition_session, session_metadata


@sync_asset(
    deps=[sync_protocol],
    description="The session's protocol as a printable PDF (A4) in $SYNC_HOME/protocols/, next to the JSON, "
    "Markdown and HTML that sync_protocol writes. Not part of the sync's runs: materialize it when a printout "
    "is wanted.",
)
@reports_sync_errors
def sync_protocol_pdf(context: dg.AssetExecutionContext, master: MasterDatabase) -> dg.MaterializeResult:
    from sync_pipeline.engine.protocol import build_protocol
    from sync_pipeline.reports.files import default_protocol_folder, write_protocol

    with partition_session(master, context) as (engine, ctx):
        protocol = build_protocol(engine, ctx.session_id)
    paths = write_protocol(protocol, default_protocol_folder(), formats=("pdf",))
    context.log.info(f"protocol written: {paths['pdf']}")
    return dg.MaterializeResult(
        metadata={
            **session_metadata(ctx),
            "protocol_state": dg.MetadataValue.text(protocol.state),
            "protocol_pdf": dg.MetadataValue.path(str(paths["pdf"])),
        }
    )
