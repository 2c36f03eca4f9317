"""One root error and one subclass per concern, so callers catch exactly what they can handle."""


class MonitorError(Exception):
    """Root of every error llm-monitor raises on purpose."""


class ConfigError(MonitorError):
    """Configuration is invalid; the message names the field and how to fix it."""


class SchemaError(MonitorError):
    """An event failed decoding or validation; `reason` is a bounded code usable as a label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class StorageError(MonitorError):
    """ClickHouse could not be reached or refused a statement."""


class BrokerError(MonitorError):
    """The Kafka broker could not be started or reached."""
