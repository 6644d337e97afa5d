"""`Idempotency-Key` for POST endpoints, backed by Redis.

A client retrying a POST with the same key and the same body gets the first response
back (same status, body, `Location` and `ETag`, plus `Idempotent-Replayed: true`)
instead of a second resource. The same key with a different body is a 422; a key
whose first request is still running is a 409 with `Retry-After`. The stored
response is written only after the database commit, and kept for `RECORD_TTL`; when
the transaction rolls back instead (the handler failed, or the commit did), the
claim is released so a retry can run. Keys are scoped to the caller (identity and
tenant) and the route. Without Redis (not configured or down) the header is accepted
and every request simply runs: never an error.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.cache import Cache
from app.core.db import SessionDep, on_commit, on_rollback
from app.core.exceptions import ConflictError, ValidationError
from app.core.security import CurrentPrincipal

HEADER = "Idempotency-Key"
RECORD_TTL = 24 * 3600.0
PENDING_TTL = 60.0
_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
_KEY = re.compile(_KEY_PATTERN)
_REPLAYED_HEADERS = ("location", "etag", "content-type")


class Idempotency:
    """The idempotency state of one POST request."""

    def __init__(self, cache: Cache, key: str | None, scope: str) -> None:
        if key is not None and not _KEY.fullmatch(key):
            raise ValidationError(
                "Invalid Idempotency-Key.",
                details=[{"loc": ["header", HEADER], "message": "1-255 visible ASCII characters"}],
            )
        self.cache = cache
        self.key = key
        self.record_key = f"idempotency:{scope}:{key}"
        self.fingerprint = ""
        self._claimed = False

    async def replay(self, body: BaseModel) -> Response | None:
        """The stored response for a repeated request, or None when this one should run."""
        if self.key is None:
            return None
        self.fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        pending = {"state": "pending", "fingerprint": self.fingerprint}
        for _ in range(2):  # a record that expires between the two calls: claim again
            claimed = await self.cache.add_json(self.record_key, pending, PENDING_TTL)
            if claimed is None:  # no Redis: best effort
                return None
            if claimed:
                self._claimed = True
                return None
            record = await self.cache.get_json(self.record_key)
            if record is not None:
                return self._answer(record)
        return None

    def _answer(self, record: dict[str, Any]) -> Response:
        if record.get("fingerprint") != self.fingerprint:
            raise ValidationError(
                "This Idempotency-Key was already used with a different request body.",
                details=[{"loc": ["header", HEADER], "message": "reused with another body"}],
            )
        if record.get("state") != "done":
            raise ConflictError(
                "A request with this Idempotency-Key is still in progress; retry shortly.",
                headers={"Retry-After": "1"},
            )
        headers = {**record["headers"], "Idempotent-Replayed": "true"}
        return Response(record["body"], status_code=record["status"], headers=headers)

    def remember(self, session: AsyncSession, response: Response) -> None:
        """Store `response` for replays once `session` has committed."""
        if not self._claimed:
            return
        headers = {k: v for k, v in response.headers.items() if k in _REPLAYED_HEADERS}
        record = {
            "state": "done",
            "fingerprint": self.fingerprint,
            "status": response.status_code,
            "headers": headers,
            "body": bytes(response.body).decode(),
        }

        async def store() -> None:
            await self.cache.set_json(self.record_key, record, RECORD_TTL)

        on_commit(session, store)

    async def release(self) -> None:
        """Forget an unfinished claim (the request failed), so a retry can run."""
        if self._claimed:
            await self.cache.delete(self.record_key)


async def get_idempotency(
    request: Request,
    principal: CurrentPrincipal,
    session: SessionDep,
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            pattern=_KEY_PATTERN,
            description="Any unique string (1-255 visible ASCII characters); a retry with "
            "the same key and body within 24 hours returns the first response.",
        ),
    ] = None,
) -> Idempotency:
    """Idempotency for this request, keyed by caller and route; released if `session`
    rolls back (whatever order the handler's dependencies were declared in)."""
    who = [principal.provider, principal.subject, principal.tenant_id]
    where = f"{request.method} {request.url.path}"
    scope = hashlib.sha256(json.dumps([*who, where]).encode()).hexdigest()
    idempotency = Idempotency(request.state.cache, key, scope)
    on_rollback(session, idempotency.release)
    return idempotency


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]
