"""The table codec reads a changelog record it cannot decode as absent, and counts it."""

from __future__ import annotations

import pytest

from streams.codecs import TableText


def test_json_text_round_trips() -> None:
    codec = TableText("windows")
    assert codec.loads(codec.dumps("eyJhIjogMX0=")) == "eyJhIjogMX0="


@pytest.mark.parametrize("raw", [b"\xff\xfe not utf-8", b"{not json", b"42", b'{"a": 1}', b""])
def test_anything_but_json_text_is_skipped_and_counted(raw: bytes) -> None:
    skipped: list[int] = []
    codec = TableText("killswitch", on_skip=lambda: skipped.append(1))
    assert codec.loads(raw) is None
    assert skipped == [1]
