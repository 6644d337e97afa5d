"""`Idempotency-Key` for POST endpoints, kept in the database.

A client retrying a POST with the same key and the same body gets the first response
back (same status and body bytes, `Location`, `ETag` and content type, plus
`Idempotent-Replayed: true`) instead of a second resource; the same key with a
different body is a 422. The key is claimed in the request's transaction and its
response stored there before the commit (app/services/idempotency.py), so a key is
never stored without what its request created, nor those without the key, whatever
happens to Redis or the process: a request that fails (its commit included) leaves
the key free for a retry. A second request with the same key while the first is
running waits for it, then replays its response. Records are kept for `RECORD_TTL`
(24 h), then purged. Keys are scoped to the caller (issuer, subject and tenant) and
route.

A handler calls `replay(body)` first, returns the response it gives if any, and
otherwise calls `remember(response)` before returning its own response.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlmodel.ext.asyncio.session import AsyncSession

from app.api.responses import Replayed
from app.core import metrics
from app.core.db import SessionDep
from app.core.exceptions import ServiceUnavailableError, ValidationError
from app.core.security import CurrentPrincipal
from app.models.idempotency import IdempotencyRecord
from app.services import idempotency as records

HEADER = "Idempotency-Key"
_REPLAYED_HEADERS = ("location", "etag", "content-type")


class Idempotency:
    """The idempotency state of one POST request."""

    def __init__(self, session: AsyncSession, scope: str, key: str | None) -> None:
        self.session = session
        self.scope = scope
        self.key = key
        self.fingerprint = ""
        self.is_claimed = False

    async def replay(self, body: BaseModel) -> Replayed | None:
        """The stored response when this request repeats an earlier one; None when it
        should run, the key then being held by this request's transaction."""
        if self.key is None:
            return None
        self.fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        record = await records.find_record(self.session, self.scope, self.key)
        if record is None:
            if await records.claim(self.session, self.scope, self.key, self.fingerprint):
                self.is_claimed = True
                return None
            record = await records.find_record(self.session, self.scope, self.key)
        if record is None:  # the live record the claim ran into has expired since
            raise ServiceUnavailableError(
                "The state of this Idempotency-Key is unknown; retry shortly.",
                headers={"Retry-After": "1"},
            )
        return self._answer(record)

    def _answer(self, record: IdempotencyRecord) -> Replayed:
        if record.fingerprint != self.fingerprint:
            raise ValidationError(
                "This Idempotency-Key was already used with a different request body.",
                details=[{"loc": ["header", HEADER], "message": "reused with another body"}],
            )
        headers = {**record.headers, "Idempotent-Replayed": "true"}
        metrics.IDEMPOTENT_REPLAYS.inc()
        return Replayed(record.body, status_code=record.status_code, headers=headers)

    async def remember(self, response: Response) -> None:
        """Store `response` with the claimed key, in the request's transaction."""
        if not self.is_claimed or self.key is None:
            return
        await records.store_response(
            self.session,
            self.scope,
            self.key,
            status_code=response.status_code,
            headers={k: v for k, v in response.headers.items() if k in _REPLAYED_HEADERS},
            body=bytes(response.body).decode(),
        )


async def get_idempotency(
    request: Request,
    principal: CurrentPrincipal,
    session: SessionDep,
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            pattern=r"^[\x21-\x7e]{1,255}$",
            description="Any unique string (1-255 visible ASCII characters); a retry with "
            "the same key and body within 24 hours returns the first response.",
        ),
    ] = None,
) -> Idempotency:
    """Idempotency for this request, keyed by caller and route, in the request's session."""
    if key is None:  # nothing to look up or store
        return Idempotency(session, "", None)
    who = [principal.issuer, principal.subject, principal.tenant_id]
    where = f"{request.method} {request.url.path}"
    scope = hashlib.sha256(json.dumps([*who, where]).encode()).hexdigest()
    return Idempotency(session, scope, key)


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]
