"""Tags on every sync run that let the production instance's QueuedRunCoordinator limit runs (deploy/dagster.yaml).

- `sync/master`: the master's id (from its `sync_meta`, never its URL, which may hold a password);
- `sync/stage`: `detect` or `load`, so that detection and loads are limited separately;
- `sync/load_master`: the master's id on load runs only, for a limit of concurrent loads per master
  (`applyLimitPerUniqueValue`): the coordinator matches one tag per limit, so "loads of one master"
  needs a tag of its own.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from sync_pipeline.engine import records

MASTER_TAG = "sync/master"
STAGE_TAG = "sync/stage"
LOAD_MASTER_TAG = "sync/load_master"
DETECT_STAGE = "detect"
LOAD_STAGE = "load"


def stage_tags(engine: Engine, stage: str) -> dict[str, str]:
    """The limit tags of a `sync_detect` (stage `detect`) or `sync_apply` (stage `load`) run."""
    master_id = records.master_id(engine)
    tags = {MASTER_TAG: master_id, STAGE_TAG: stage}
    if stage == LOAD_STAGE:
        tags[LOAD_MASTER_TAG] = master_id
    return tags
