"""Ingest: the event contract, decoding raw records, and dead letters for what is refused."""
