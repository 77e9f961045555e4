"""Dagster definitions of the sync, one concern per module: partitions, resources, assets, checks,
jobs and sensors. `sync_pipeline.definitions` is the one place that puts them into `Definitions`."""
