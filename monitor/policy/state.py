"""Policy state kept as JSON text in the role's changelog-backed tables (incidents, promotion
gates, budget periods). A value that does not decode — written by another version — is
forgotten with a warning, never an error: the next decision sets it again."""

from __future__ import annotations

import logging
from typing import TypeVar

import msgspec

log = logging.getLogger(__name__)
T = TypeVar("T")


def decode_state(decoder: msgspec.json.Decoder[T], raw: str | None, what: str) -> T | None:
    """The stored ``what`` in ``raw``; None when nothing is stored or it does not decode."""
    if not raw:
        return None
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:
        log.warning("%s state that does not decode, forgotten: %s", what, exc)
        return None
