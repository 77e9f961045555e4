"""The Dagster entry point named by workspace.yaml and [tool.dg]."""

import dagster as dg

defs = dg.Definitions()
