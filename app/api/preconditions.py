"""HTTP conditional requests: the versions `If-Match` accepts (`IfMatch`).

Responses carry the `ETag` (app/api/responses.py: `tagged`); writes check the
versions in the UPDATE itself (app/resources/versioning.py).
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header

_STRONG_TAG = re.compile(r'^"(\d{1,18})"$')


async def get_if_match(
    if_match: Annotated[str | None, Header(alias="If-Match", max_length=1024)] = None,
) -> frozenset[int] | None:
    """The versions `If-Match` accepts; None when absent or `*` (any current version).

    Comparison is strong (RFC 9110): weak tags (`W/"1"`) and malformed ones match no
    version, so the write is refused with 412 rather than applied blindly.
    """
    if if_match is None or if_match.strip() == "*":
        return None
    versions = set()
    for tag in if_match.split(","):
        match = _STRONG_TAG.match(tag.strip())
        if match:
            versions.add(int(match.group(1)))
    return frozenset(versions)


IfMatch = Annotated[frozenset[int] | None, Depends(get_if_match)]
