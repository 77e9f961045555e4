"""A session that stops for a person looks waiting in the UI: a non-blocking check of severity WARN on
`resolutions` ("5 manual decisions pending: crm 5"), with the review page's link for the session.

It runs in every job with `resolutions`, inside that asset's step (defs/checks.py says why). In
`sync_detect` a warning is the normal outcome of a session with manual conflicts and the run stays a
success (the check does not block); the asset's check badge turns yellow until the decisions are made
and the load runs.
"""

import dagster as dg

from sync_pipeline.defs.step_session import pending_summary
from sync_pipeline.engine.session_state import SessionContext
from sync_pipeline.links import review_session_url

WAITING_CHECK_NAME = "no_manual_decisions_pending"

no_manual_decisions_pending = dg.AssetCheckSpec(
    WAITING_CHECK_NAME,
    asset=dg.AssetKey("resolutions"),
    blocking=False,
    description="WARN while conflicts of `manual` modules wait for a person: how many per module, and the "
    "review page of the session, where they are decided.",
)


def waiting_result(ctx: SessionContext, pending: dict[str, int]) -> dg.AssetCheckResult:
    """The check's result for the conflicts pending per module (`pending_of`, or what the step resolved)."""
    return dg.AssetCheckResult(
        asset_key=no_manual_decisions_pending.asset_key,
        check_name=WAITING_CHECK_NAME,
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
