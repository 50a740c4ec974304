"""Stream cursors: opaque to peers, checked by the change log that issued them."""

from __future__ import annotations

import pytest

from services.lists.cursor import CURSOR_LEN, CursorCodec, InvalidCursor

SECRET = b"s" * 32


def test_a_cursor_round_trips_and_the_empty_cursor_is_the_start() -> None:
    codec = CursorCodec("320500", SECRET)
    cursor = codec.encode(1042)
    assert len(cursor) == CURSOR_LEN
    assert codec.decode(cursor) == 1042
    assert codec.decode(b"") == 0


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c[:-1],  # truncated
        lambda c: c[:10] + bytes([c[10] ^ 1]) + c[11:],  # sequence altered
        lambda c: b"XX1" + c[3:],  # not a cursor
        lambda c: c + b"\x00",  # trailing byte
    ],
)
def test_an_altered_cursor_is_refused(tamper: object) -> None:
    codec = CursorCodec("320500", SECRET)
    with pytest.raises(InvalidCursor):
        codec.decode(tamper(codec.encode(7)))  # type: ignore[operator]


def test_cursors_of_another_city_or_an_earlier_store_are_refused() -> None:
    suzhou = CursorCodec("320500", SECRET)
    with pytest.raises(InvalidCursor):
        CursorCodec("320200", SECRET).decode(suzhou.encode(7))
    with pytest.raises(InvalidCursor):
        CursorCodec("320500", b"t" * 32).decode(suzhou.encode(7))


def test_bad_codec_arguments_fail_fast() -> None:
    with pytest.raises(ValueError, match="6-digit"):
        CursorCodec("suzhou", SECRET)
    with pytest.raises(ValueError, match="16 bytes"):
        CursorCodec("320500", b"short")
