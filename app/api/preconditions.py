"""HTTP conditional requests: `ETag` from a row version and `If-Match` checks.

`tagged` answers a versioned resource with its `ETag`; `IfMatch` hands a write the
versions the client accepts (app/resources/versioning.py checks them in the UPDATE).
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel

_STRONG_TAG = re.compile(r'^"(\d{1,18})"$')


def etag(version: int) -> str:
    return f'"{version}"'


def tagged(body: BaseModel, status_code: int = 200, **headers: str) -> JSONResponse:
    """`body` as JSON with its `ETag` (and any other `headers`, such as `Location`)."""
    content = body.model_dump(mode="json")
    return JSONResponse(
        content, status_code=status_code, headers={"ETag": etag(content["version"]), **headers}
    )


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
