"""The sync engine: plain Python and SQLAlchemy Core. It knows nothing of Dagster, the page or the CLI."""
