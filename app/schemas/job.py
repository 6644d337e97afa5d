"""Background job bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.jobs.queue import JobInfo, JobState
from app.schemas.common import Timestamp


class JobAccepted(BaseModel):
    """A job was queued; poll `status_url` for its progress."""

    job_id: str
    status: JobState = JobState.QUEUED
    status_url: str


class JobRead(BaseModel):
    id: str
    status: JobState
    function: str
    attempts: int = Field(description="Tries so far (a failed try is retried with back-off).")
    enqueued_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    result: Any = Field(default=None, description="What the job returned, once complete.")
    error: str | None = Field(default=None, description="The error type, once failed.")

    @classmethod
    def from_info(cls, info: JobInfo) -> JobRead:
        return cls(
            id=info.id,
            status=info.state,
            function=info.function,
            attempts=info.attempts,
            enqueued_at=info.enqueued_at,
            started_at=info.started_at,
            finished_at=info.finished_at,
            result=info.result,
            error=info.error,
        )
