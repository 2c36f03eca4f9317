"""OpenTelemetry out: what the monitor concludes, in the GenAI semantic conventions."""
