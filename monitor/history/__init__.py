"""Re-scoring history: run a detector version over stored events (``backfill``) and compare
two versions' findings on the same events (``compare``). docs/history.md has the usage.

- ``reader``: stored events back as ``Event`` objects, in keyset pages of
  ``(event_time, request_id)``.
- ``checkpoint``: where a backfill stopped, a row per (detector, version, model filter) in
  ``backfills``.
- ``scorer``: one detector built by name from the settings, enabled or not.
- ``backfill``: read a page, score it, insert its findings into ``findings_versions``, save
  the checkpoint; again until the range is done.
- ``compare``: agreement, flag rates and Cohen's kappa of two versions per model version.
- ``storage``: opening the store (a clear error when a worker holds the chdb directory) and
  the versioned findings table.
"""
