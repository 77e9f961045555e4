"""A session that stops for a person looks waiting in the UI: a non-blocking check of severity WARN on
`resolutions` ("5 manual decisions pending: crm 5"), with the review page's link for the session.

It runs in both jobs. In `sync_detect` a warning is the normal outcome of a session with manual
conflicts and the run stays a success (the check does not block); the asset's check badge turns
yellow until the decisions are made and the load runs.
"""

import dagster as dg

from sync_pipeline.defs.assets import partition_session, pending_summary
from sync_pipeline.defs.assets import resolutions as resolutions_asset
from sync_pipeline.defs.resources import MasterDatabase
from sync_pipeline.engine.session import pending_of
from sync_pipeline.links import review_session_url

WAITING_CHECK_NAME = "no_manual_decisions_pending"


@dg.asset_check(
    asset=resolutions_asset,
    name=WAITING_CHECK_NAME,
    blocking=False,
    description="WARN while conflicts of `manual` modules wait for a person: how many per module, and the "
    "review page of the session, where they are decided.",
)
def no_manual_decisions_pending(context: dg.AssetCheckExecutionContext, master: MasterDatabase) -> dg.AssetCheckResult:
    with partition_session(master, context) as (engine, ctx):
        pending = pending_of(engine, ctx.session_id)
    return dg.AssetCheckResult(
        passed=not pending,
        severity=dg.AssetCheckSeverity.WARN,
        description=pending_summary(pending) if pending else "no manual decision pending",
        metadata={
            "session_id": dg.MetadataValue.text(ctx.session_id),
            "pending_total": dg.MetadataValue.int(sum(pending.values())),
            **{f"pending/{module}": dg.MetadataValue.int(n) for module, n in sorted(pending.items())},
            "review": dg.MetadataValue.url(review_session_url(ctx.session_id)),
        },
    )
