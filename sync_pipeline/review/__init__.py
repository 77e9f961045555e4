"""The conflict review page: people decide a session's manual conflicts in a browser.

`app.create_app` builds the Starlette app; `data` holds the rules that the page and the CLI share
(who may see what, "already decided by X at T"); `links` builds URLs to the page and to Dagster and
imports nothing heavy, so the Dagster layer can use it.
"""
