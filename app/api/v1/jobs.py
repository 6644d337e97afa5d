"""Background jobs as their owners see them."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ActiveAccount, CurrentPrincipal, JobStatusDep, job_owner
from app.api.openapi import errors
from app.core.exceptions import NotFoundError
from app.schemas.job import JobRead

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[ActiveAccount])


@router.get(
    "/{job_id}",
    response_model=JobRead,
    responses=errors(404),
)
async def read_job(job_id: str, principal: CurrentPrincipal, statuses: JobStatusDep) -> JobRead:
    """A job's status (`queued`, `in_progress`, `complete`, `failed`); only its owner sees it."""
    info = await statuses.for_owner(job_id, job_owner(principal))
    if info is None:
        raise NotFoundError("Job not found.")
    return JobRead.from_info(info)
