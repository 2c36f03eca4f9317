"""Incidents grouped per (model, deployment) episode (docs/policy.md, Incidents).

An incident is no longer one acting decision: later rules attach to it, a kill escalates it,
it resolves when every attached rule has. Each change re-inserts the incident's row as a new
``revision`` with its current state: ``status`` (open, resolved), ``rules`` (every rule that
fired in it), ``updated_at``, ``resolved_at`` and the ``timeline`` of what happened, as tuples
(``at_ms`` epoch milliseconds). Readers take the highest revision (``argMax(..., revision)``
or ``ORDER BY revision DESC LIMIT 1 BY incident_id``): revisions may be inserted out of order.
Rows stored before this migration read as revision 0 with an empty status.

``decisions.incident_id`` names the incident a decision opened, escalated, attached to or
resolved a rule of (empty for the others).
"""

_TIMELINE = (
    "Array(Tuple(at_ms Int64, kind String, rule String, model_version String, action String, "
    "idempotency_key String, detail String))"
)

STATEMENTS = [
    "ALTER TABLE {db}.incidents "
    "ADD COLUMN IF NOT EXISTS status LowCardinality(String), "
    "ADD COLUMN IF NOT EXISTS rules Array(String), "
    "ADD COLUMN IF NOT EXISTS revision UInt32, "
    "ADD COLUMN IF NOT EXISTS updated_at DateTime64(3, 'UTC'), "
    "ADD COLUMN IF NOT EXISTS resolved_at DateTime64(3, 'UTC'), "
    f"ADD COLUMN IF NOT EXISTS timeline {_TIMELINE}",
    "ALTER TABLE {db}.decisions ADD COLUMN IF NOT EXISTS incident_id String",
]
