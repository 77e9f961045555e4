"""The runs of a session (all partitioned by replica, like their assets): two, split where a person may
have to decide conflicts, and `sync`, both in one run for a launch that need not wait.

`sync_detect` (local_changes, conflicts, resolutions) ends with conflicts pending or with the session
ready; it never loads. `sync_apply` (resolutions, master_load, sync_protocol) re-reads the decisions
and runs the load gate, the blocking check `resolutions_all_decided`, before the master is touched.
That check is left out of the detect run, where waiting for decisions is the normal outcome.

`sync` runs all five assets in one run, for the UI's Materialize/launch and the inbox: a run is a fresh
process that imports Dagster, the code location and Great Expectations (seconds each time), so one run
instead of two halves what a small sync costs beyond the engine's work. Its load gate is master_load's
own (`run_keys.may_load_in_run`): with decisions pending the load step does not materialize and the
run ends `waiting` like a detect run (approval_sensor launches `sync_apply` after the decisions); a
ready session is loaded only under the apply claim of its decision version, so no other launcher
loads it beside this run. The engine refuses to load a session that is not ready in any case.

Both run in process: their steps are short calls into the engine that share one master connection
setup and one Great Expectations import, where the multiprocess executor would start a fresh Python
process (and import GX again) for every asset and check.
"""

from __future__ import annotations

import dagster as dg

from sync_pipeline.defs.assets import conflicts, local_changes, master_load, resolutions, sync_protocol
from sync_pipeline.defs.checks import resolutions_all_decided
from sync_pipeline.defs.run_keys import SYNC_JOB_NAME

DETECT_JOB_NAME = "sync_detect"
APPLY_JOB_NAME = "sync_apply"

sync_detect_job = dg.define_asset_job(
    name=DETECT_JOB_NAME,
    selection=dg.AssetSelection.assets(local_changes, conflicts, resolutions)
    - dg.AssetSelection.checks(resolutions_all_decided.key),
    description="Extract the replica's changes, detect conflicts, apply the policies. Ends waiting for manual "
    "decisions or ready to load; approval_sensor launches sync_apply when nothing is pending.",
)

sync_apply_job = dg.define_asset_job(
    name=APPLY_JOB_NAME,
    selection=dg.AssetSelection.assets(resolutions, master_load, sync_protocol),
    description="Check that every conflict is decided, load the session into the master in one transaction, "
    "retire the replica and write the protocol (JSON, Markdown, HTML; the PDF is sync_protocol_pdf, on demand).",
)

sync_job = dg.define_asset_job(
    name=SYNC_JOB_NAME,
    selection=dg.AssetSelection.assets(local_changes, conflicts, resolutions, master_load, sync_protocol)
    - dg.AssetSelection.checks(resolutions_all_decided.key),
    description="The whole sync in one run: extract, detect, apply the policies and, when no conflict waits "
    "for a person, load and write the protocol. With decisions pending it ends waiting like sync_detect "
    "(master_load not materialized); approval_sensor launches sync_apply once they are decided.",
)

sync_jobs = [sync_detect_job, sync_apply_job, sync_job]
