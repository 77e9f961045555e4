"""The two runs of a session, split where a person may have to decide conflicts (both are partitioned by
replica, like their assets).

`sync_detect` (local_changes, conflicts, resolutions) ends with conflicts pending or with the session
ready; it never loads. `sync_apply` (resolutions, master_load, sync_protocol) re-reads the decisions
and runs the load gate, the blocking check `resolutions_all_decided`, before the master is touched.
That check is left out of the detect run, where waiting for decisions is the normal outcome.

Both run in process: their steps are short calls into the engine that share one master connection
setup and one Great Expectations import, where the multiprocess executor would start a fresh Python
process (and import GX again) for every asset and check.
"""

from __future__ import annotations

import dagster as dg

from sync_pipeline.defs.assets import conflicts, local_changes, master_load, resolutions, sync_protocol
from sync_pipeline.defs.checks import resolutions_all_decided

DETECT_JOB_NAME = "sync_detect"
APPLY_JOB_NAME = "sync_apply"

sync_detect_job = dg.define_asset_job(
    name=DETECT_JOB_NAME,
    selection=dg.AssetSelection.assets(local_changes, conflicts, resolutions)
    - dg.AssetSelection.checks(resolutions_all_decided),
    description="Extract the replica's changes, detect conflicts, apply the policies. Ends waiting for manual "
    "decisions or ready to load; approval_sensor launches sync_apply when nothing is pending.",
)

sync_apply_job = dg.define_asset_job(
    name=APPLY_JOB_NAME,
    selection=dg.AssetSelection.assets(resolutions, master_load, sync_protocol),
    description="Check that every conflict is decided, load the session into the master in one transaction, "
    "retire the replica and write the protocol (JSON, Markdown, HTML; the PDF is sync_protocol_pdf, on demand).",
)

sync_jobs = [sync_detect_job, sync_apply_job]
