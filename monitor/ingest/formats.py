"""What an input file or topic holds, one record each: events, or OTLP trace requests."""

from __future__ import annotations

from enum import StrEnum


class InputFormat(StrEnum):
    """``events``: one event (JSON) a record. ``otlp-json``: one OTLP/JSON trace request a
    record (an ExportTraceServiceRequest with hex ids, as the Collector's file exporter writes
    a line), read by span ingest (monitor/ingest/otlp.py)."""

    EVENTS = "events"
    OTLP_JSON = "otlp-json"
