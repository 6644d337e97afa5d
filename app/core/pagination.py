"""Opaque, tamper-proof cursors for keyset pagination.

A cursor carries the sort key of the last row of a page (and which sort it belongs
to), serialised as JSON, signed with an HMAC of `SECRET_KEY` and base64url-encoded.
A cursor that was altered, truncated or made for another sort is a 422, never a
silently wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

from app.core.exceptions import ValidationError

_MAC_BYTES = 12


class CursorCodec:
    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"cursor:" + secret.encode()).digest()

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, kind: str, values: list[Any]) -> str:
        # UTF-8 rather than \u escapes: a cursor on a non-ASCII title stays short.
        payload = json.dumps(
            [kind, *values], separators=(",", ":"), default=str, ensure_ascii=False
        ).encode()
        return base64.urlsafe_b64encode(self._mac(payload) + payload).rstrip(b"=").decode()

    def decode(self, kind: str, cursor: str) -> list[Any]:
        """The values encoded for `kind`; a 422 for anything else."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise invalid_cursor("cursor is not valid base64url") from None
        mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise invalid_cursor("cursor was not issued by this API or has been altered")
        values = json.loads(payload)
        if not isinstance(values, list) or not values or values[0] != kind:
            raise invalid_cursor("cursor belongs to a different sort order; start again without it")
        return values[1:]


def invalid_cursor(reason: str) -> ValidationError:
    return ValidationError(
        "Invalid cursor.", details=[{"loc": ["query", "cursor"], "message": reason}]
    )
