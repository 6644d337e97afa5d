"""Item attachments: the reference upload route (streamed, size-limited, type-checked
against the bytes, stored under keys no client input can steer, tenant-scoped)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from app.api.deps import ActiveAccount, CacheDep, SettingsDep, StorageDep
from app.api.files import download_responses, file_download
from app.api.openapi import LOCATION, errors, success
from app.api.responses import ModelResponse
from app.core.config import UPLOAD_TYPES
from app.core.db import ReadConnectionDep, SessionDep, SessionFactoryDep
from app.core.exceptions import PayloadTooLargeError
from app.core.ratelimit import rate_limit
from app.core.route_templates import path_for
from app.models.attachment import attachment_key
from app.resources import ScopeDep
from app.schemas.attachment import AttachmentRead
from app.services import attachments as service
from app.services.uploads import MAX_FILENAME_LENGTH, media_type

router = APIRouter(
    prefix="/items/{item_id}/attachments", tags=["attachments"], dependencies=[ActiveAccount]
)
limit_writes = rate_limit(scope="items:write")  # RATE_LIMIT_ITEM_WRITES

# The route streams the body itself and enforces UPLOAD_MAX_BYTES (up to this) while
# it does; the app-wide MAX_REQUEST_BODY_BYTES would otherwise stop it at 1 MiB.
_UPLOAD_CEILING = 5 * 1024**3
_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.post(
    "",
    status_code=201,
    response_model=AttachmentRead,
    responses=success(201, "The stored attachment.", **LOCATION) | errors(404, 409, 413, 415),
    dependencies=[limit_writes],
    max_body_size=_UPLOAD_CEILING,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The file's bytes, with its type in `Content-Type`.",
            "content": dict.fromkeys(UPLOAD_TYPES, _BINARY),
        }
    },
)
async def upload_attachment(
    item_id: uuid.UUID,
    request: Request,
    filename: Annotated[str, Query(min_length=1, max_length=MAX_FILENAME_LENGTH)],
    scope: ScopeDep,
    sessions: SessionFactoryDep,
    storage: StorageDep,
    settings: SettingsDep,
    content_length: Annotated[int | None, Header(ge=0, include_in_schema=False)] = None,
) -> ModelResponse[AttachmentRead]:
    """Attach a file (the raw request body; `UPLOAD_MAX_BYTES` at most, of a type in
    `UPLOAD_ALLOWED_TYPES` that its content confirms). `filename` is only displayed."""
    if content_length is not None and content_length > settings.UPLOAD_MAX_BYTES:
        raise PayloadTooLargeError(f"The file is larger than {settings.UPLOAD_MAX_BYTES} bytes.")
    attachment = await service.add_attachment(
        sessions,
        storage,
        scope,
        item_id,
        request.stream(),
        filename=filename,
        declared_type=media_type(request.headers.get("content-type")),
        allowed_types=settings.UPLOAD_ALLOWED_TYPES,
        max_bytes=settings.UPLOAD_MAX_BYTES,
    )
    location = path_for(
        request, "download_attachment", item_id=str(item_id), attachment_id=str(attachment.id)
    )
    return ModelResponse(attachment, 201, {"Location": location})


@router.get("", response_model=list[AttachmentRead], responses=errors(404))
async def list_attachments(
    item_id: uuid.UUID, scope: ScopeDep, db: ReadConnectionDep, cache: CacheDep
) -> list[AttachmentRead]:
    """The item's attachments, oldest first."""
    return await service.list_attachments(db, cache, scope, item_id)


@router.get(
    "/{attachment_id}",
    response_class=Response,
    responses=download_responses("application/octet-stream") | errors(404),
)
async def download_attachment(
    item_id: uuid.UUID,
    attachment_id: uuid.UUID,
    scope: ScopeDep,
    db: ReadConnectionDep,
    cache: CacheDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> Response:
    """The file: a `307` to a short-lived URL (S3), or the bytes streamed (filesystem)."""
    attachment = await service.get_attachment(db, cache, scope, item_id, attachment_id)
    return await file_download(
        storage,
        attachment_key(item_id, attachment_id),
        filename=attachment.filename,
        media_type=attachment.content_type,
        url_ttl=settings.STORAGE_URL_TTL,
        missing="The attachment's file is missing.",
    )


@router.delete(
    "/{attachment_id}", status_code=204, responses=errors(404), dependencies=[limit_writes]
)
async def delete_attachment(
    item_id: uuid.UUID,
    attachment_id: uuid.UUID,
    scope: ScopeDep,
    session: SessionDep,
    storage: StorageDep,
) -> Response:
    """Remove an attachment and its file."""
    await service.delete_attachment(session, storage, scope, item_id, attachment_id)
    return Response(status_code=204)
