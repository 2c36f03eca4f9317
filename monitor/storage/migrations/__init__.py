"""Numbered ClickHouse migrations, applied in order and recorded in ``schema_migrations``.

Each module ``mNNNN_name.py`` defines ``STATEMENTS``: SQL templates formatted with ``db``,
``text_ttl_days`` and ``metrics_ttl_days``. Migrations are append-only: never edit one that
has shipped; add the next number.
"""
