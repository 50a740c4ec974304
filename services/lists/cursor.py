"""Stream cursors of ``ListSyncService``: opaque to peers, checkable by the city that issued them.

A cursor names the last change of the issuing city's change log a peer applied::

    b"LC1" | issuing city code (6 ASCII digits) | sequence (8 bytes, big-endian)
          | first 12 bytes of HMAC-SHA256(log secret, everything before)

The log secret is created with the node's change log and kept in its store. A cursor whose
MAC does not verify — altered, truncated, made by another city, or issued before this node's
store was rebuilt (the contract's "a cursor this server did not issue") — is refused with
INVALID_ARGUMENT; the peer then repairs with GetListDigest/ListEntries and resumes from the
cursor the digest carries. An empty cursor means "from the oldest retained change".
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

MAGIC: Final = b"LC1"
_CITY_LEN = 6
_SEQ_LEN = 8
_MAC_LEN = 12
CURSOR_LEN: Final = len(MAGIC) + _CITY_LEN + _SEQ_LEN + _MAC_LEN


class InvalidCursor(ValueError):
    """The cursor was not issued by this change log."""


class CursorCodec:
    """Issues and checks the cursors of one city's change log."""

    def __init__(self, issuing_city: str, secret: bytes) -> None:
        if len(issuing_city) != _CITY_LEN or not issuing_city.isdigit():
            raise ValueError(f"issuing city {issuing_city!r} is not a 6-digit code")
        if len(secret) < 16:
            raise ValueError("the cursor secret must have at least 16 bytes")
        self._city = issuing_city.encode("ascii")
        self._secret = secret

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:_MAC_LEN]

    def encode(self, sequence: int) -> bytes:
        """The cursor after the change with ``sequence`` (0: before the first change)."""
        if sequence < 0:
            raise ValueError("sequence must not be negative")
        body = MAGIC + self._city + sequence.to_bytes(_SEQ_LEN, "big")
        return body + self._mac(body)

    def decode(self, cursor: bytes) -> int:
        """The sequence a cursor names; 0 for the empty cursor. Raises :class:`InvalidCursor`."""
        if not cursor:
            return 0
        if len(cursor) != CURSOR_LEN or not cursor.startswith(MAGIC):
            raise InvalidCursor("not a list-change cursor")
        body, mac = cursor[:-_MAC_LEN], cursor[-_MAC_LEN:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise InvalidCursor("the cursor was not issued by this city's change log")
        if body[len(MAGIC) : len(MAGIC) + _CITY_LEN] != self._city:
            raise InvalidCursor("the cursor belongs to another city's change log")
        return int.from_bytes(body[len(MAGIC) + _CITY_LEN :], "big")
