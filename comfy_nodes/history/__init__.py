"""The run history: each recorded prompt's figures in an SQLite file (store.py: ``History``,
``HistoryError``, ``run_from_report``), keyed by its workflow's identity (identity.py: ``workflow_id``),
read by the regression rule, ``stagetrace history`` and the history routes."""
