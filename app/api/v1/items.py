"""Items: the reference resource (tenant-scoped CRUD with paging, ETags and idempotency)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.api.deps import (
    ActiveAccount,
    CacheDep,
    CurrentPrincipal,
    CurrentUser,
    CursorCodecDep,
    JobsDep,
    JobStatusDep,
    ReadConnectionDep,
    SessionDep,
    SettingsDep,
    StorageDep,
    job_owner,
)
from app.api.files import download_responses, file_download
from app.api.idempotency import IdempotencyDep
from app.api.openapi import ETAG, LOCATION, REPLAYED, errors, success
from app.api.preconditions import IfMatch
from app.api.responses import ModelResponse, Replayed, tagged
from app.core.exceptions import ConflictError, NotFoundError
from app.core.ratelimit import rate_limit
from app.core.route_templates import path_for
from app.jobs.exports import export_items
from app.jobs.queue import JobState
from app.resources import ScopeDep
from app.schemas.common import Page
from app.schemas.item import ItemCreate, ItemExportParams, ItemListParams, ItemRead, ItemUpdate
from app.schemas.job import JobAccepted
from app.services import items as service
from app.services.item_exports import CONTENT_TYPE, export_key

router = APIRouter(prefix="/items", tags=["items"], dependencies=[ActiveAccount])
limit_writes = rate_limit(scope="items:write")  # RATE_LIMIT_ITEM_WRITES
limit_exports = rate_limit(scope="items:export")  # RATE_LIMIT_EXPORTS


@router.post(
    "",
    status_code=201,
    response_model=ItemRead,
    responses=success(201, "The created item.", **LOCATION, **ETAG, **REPLAYED),
    dependencies=[limit_writes],
)
async def create_item(
    body: ItemCreate,
    request: Request,
    user: CurrentUser,
    principal: CurrentPrincipal,
    session: SessionDep,
    idempotency: IdempotencyDep,
) -> ModelResponse[ItemRead] | Replayed:
    """Create an item. A retry with the same `Idempotency-Key` returns the first response."""
    replay = await idempotency.replay(body)
    if replay is not None:
        return replay
    item = await service.create_item(session, user, principal.tenant_id, body)
    location = path_for(request, "read_item", item_id=str(item.id))
    response = tagged(item, 201, Location=location)
    await idempotency.remember(response)
    return response


@router.get("", response_model=Page[ItemRead])
async def list_items(
    params: Annotated[ItemListParams, Query()],
    scope: ScopeDep,
    db: ReadConnectionDep,
    codec: CursorCodecDep,
) -> ModelResponse[Page[ItemRead]]:
    """List items, newest first by default, with cursor paging and filters."""
    page = await service.list_items(db, scope, params, codec)
    items = Page[ItemRead](items=page.items, next_cursor=page.next_cursor, total=page.total)
    return ModelResponse(items)


@router.post(
    "/exports",
    status_code=202,
    response_model=JobAccepted,
    responses=success(202, "The export is queued.", **LOCATION),
    dependencies=[limit_exports],
)
async def export_items_csv(
    request: Request,
    principal: CurrentPrincipal,
    jobs: JobsDep,
    body: ItemExportParams | None = None,
) -> ModelResponse[JobAccepted]:
    """Queue a CSV export of the caller's items (same filters as the list); 202 + job URL."""
    body = body or ItemExportParams()
    scope = {
        "tenant_id": principal.tenant_id,
        "issuer": principal.issuer,
        "subject": principal.subject,
        "email": principal.email,  # told by mail when it is ready, if mail is on
    }
    filters = body.model_dump(mode="json")
    job_id = await jobs.enqueue(export_items, scope, filters, _owner=job_owner(principal))
    status_url = path_for(request, "read_job", job_id=job_id)
    accepted = JobAccepted(job_id=job_id, status_url=status_url)
    return ModelResponse(accepted, 202, {"Location": status_url})


@router.get(
    "/exports/{job_id}/download",
    response_class=Response,
    responses=download_responses("text/csv") | errors(404, 409),
)
async def download_export(
    job_id: str,
    principal: CurrentPrincipal,
    statuses: JobStatusDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> Response:
    """Download a finished export (only the caller who asked for it can): a `307` to a
    short-lived URL (S3), or the file streamed (filesystem)."""
    info = await statuses.for_owner(job_id, job_owner(principal))
    if info is None or info.function != export_items.name:
        raise NotFoundError("Export not found.")
    if info.state is JobState.FAILED:
        raise ConflictError("The export failed; start a new one.")
    if info.state is not JobState.COMPLETE:
        raise ConflictError("The export has not finished yet; poll its status URL.")
    return await file_download(
        storage,
        export_key(job_id),
        filename=f"items-{job_id}.csv",
        media_type=CONTENT_TYPE,
        url_ttl=settings.STORAGE_URL_TTL,
        missing="The export file has expired.",
    )


@router.get(
    "/{item_id}", response_model=ItemRead, responses=success(200, "The item.", **ETAG) | errors(404)
)
async def read_item(
    item_id: uuid.UUID, scope: ScopeDep, db: ReadConnectionDep, cache: CacheDep
) -> ModelResponse[ItemRead]:
    """One item, with its `ETag`."""
    return tagged(await service.read_item(db, cache, scope, item_id))


@router.patch(
    "/{item_id}",
    response_model=ItemRead,
    responses=success(200, "The item as changed.", **ETAG) | errors(404),
    dependencies=[limit_writes],
)
async def update_item(
    item_id: uuid.UUID,
    body: ItemUpdate,
    if_match: IfMatch,
    scope: ScopeDep,
    session: SessionDep,
    cache: CacheDep,
) -> ModelResponse[ItemRead]:
    """Change the fields sent; with `If-Match`, only if the item is still at that version."""
    item = await service.update_item(session, cache, scope, item_id, body.changes(), if_match)
    return tagged(item)


@router.delete("/{item_id}", status_code=204, responses=errors(404), dependencies=[limit_writes])
async def delete_item(
    item_id: uuid.UUID, if_match: IfMatch, scope: ScopeDep, session: SessionDep, cache: CacheDep
) -> Response:
    """Soft-delete an item (restorable until the retention purge)."""
    await service.delete_item(session, cache, scope, item_id, if_match)
    return Response(status_code=204)


@router.post(
    "/{item_id}/restore",
    response_model=ItemRead,
    responses=success(200, "The restored item.", **ETAG) | errors(404),
    dependencies=[limit_writes],
)
async def restore_item(
    item_id: uuid.UUID, scope: ScopeDep, session: SessionDep, cache: CacheDep
) -> ModelResponse[ItemRead]:
    """Undo a soft delete."""
    return tagged(await service.restore_item(session, cache, scope, item_id))
