"""`send_email` on the worker against a real SMTP server on loopback: retries on 4xx,
no retry on 5xx, one Message-ID per job, and the export's "ready" mail end to end."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.cache import create_redis
from app.core.config import Settings
from app.core.db import create_session_factory, session_context
from app.jobs.email import queue_email, send_email
from app.jobs.enqueue import Jobs
from app.jobs.exports import export_items
from app.jobs.queue import JobQueue
from tests.jobs.conftest import job_settings, outbox_ids, run_worker
from tests.smtp import Recorder, smtp_overrides, smtp_server
from tests.support import auth_headers, running_app

CONTEXT = {"rows": 2, "download_url": "https://api.acme.test/d", "valid_for": "1 hour"}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def smtp_port(recorder: Recorder) -> Any:
    with smtp_server(recorder) as port:
        yield port


@pytest.fixture
def settings(database_url: str, redis_url: str, clean_db: None, smtp_port: int) -> Settings:
    return job_settings(
        database_url,
        redis_url,
        RATE_LIMIT_EXPORTS="10000/minute",
        PUBLIC_BASE_URL="https://api.acme.test",
        **smtp_overrides(smtp_port),
    )


async def test_a_4xx_answer_is_retried_and_the_mail_sent_once(
    settings: Settings, queue: JobQueue, recorder: Recorder
) -> None:
    recorder.data_answers.append("451 4.3.0 Try again later")
    job_id = await queue.enqueue(send_email, "bob@example.com", "export_ready", CONTEXT)
    worker = await run_worker(settings, [send_email])
    assert (worker.jobs_complete, worker.jobs_retried, worker.jobs_failed) == (1, 1, 0)
    (message,) = recorder.messages
    assert message["Message-ID"] == f"<{job_id}@acme.test>"
    assert message["To"] == "bob@example.com"


async def test_a_5xx_answer_fails_the_job_at_once_logged_with_its_id(
    settings: Settings, queue: JobQueue, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    recorder.rcpt_answers.append("550 5.1.1 No such user")
    job_id = await queue.enqueue(send_email, "nobody@example.com", "export_ready", CONTEXT)
    with caplog.at_level(logging.ERROR, "app.jobs.email"):
        worker = await run_worker(settings, [send_email])
    assert (worker.jobs_complete, worker.jobs_retried, worker.jobs_failed) == (0, 0, 1)
    assert recorder.messages == []
    (line,) = [r.getMessage() for r in caplog.records if r.name == "app.jobs.email"]
    assert job_id in line
    assert "550" in line


async def test_an_unreachable_server_is_retried_with_back_off(
    database_url: str, redis_url: str, clean_db: None, recorder: Recorder
) -> None:
    # Nothing listens on the port: each try is refused and retried, up to JOB_MAX_TRIES.
    with smtp_server(recorder) as port:
        pass
    settings = job_settings(database_url, redis_url, JOB_MAX_TRIES=2, **smtp_overrides(port))
    redis = create_redis(settings)
    assert redis is not None
    try:
        queue = JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME)
        await queue.enqueue(send_email, "bob@example.com", "export_ready", CONTEXT)
        worker = await run_worker(settings, [send_email])
    finally:
        await redis.aclose()
    assert (worker.jobs_retried, worker.jobs_failed) == (1, 1)  # two tries, both refused


async def test_queue_email_refuses_what_could_never_be_sent(
    settings: Settings, db_engine: AsyncEngine
) -> None:
    async with session_context(create_session_factory(db_engine)) as session:
        jobs = Jobs(None, session)
        with pytest.raises(ValueError, match="line break"):
            await queue_email(jobs, to="a@example.com\r\nBcc: b@x.io", template="export_ready",
                              context=CONTEXT)  # fmt: skip
        with pytest.raises(ValueError, match="no email template"):
            await queue_email(jobs, to="a@example.com", template="../secrets", context=CONTEXT)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    async with running_app(settings) as (_, client):
        yield client


async def test_a_finished_export_mails_its_link_to_the_caller(
    client: AsyncClient, settings: Settings, recorder: Recorder
) -> None:
    sub = f"alice-{uuid.uuid4().hex[:8]}"
    alice = auth_headers(settings, sub, tenant="acme", email="alice@example.com")
    response = await client.post("/api/v1/items", json={"title": "one"}, headers=alice)
    assert response.status_code == 201
    job_id = (await client.post("/api/v1/items/exports", headers=alice)).json()["job_id"]

    worker = await run_worker(settings, [export_items, send_email])

    assert worker.jobs_complete == 2
    (message,) = recorder.messages
    assert message["To"] == "alice@example.com"
    assert message["Subject"] == "Your export of 1 item is ready"
    # Named after the export: the same if the export ran again and mailed again.
    assert message["Message-ID"] == f"<export-{job_id}@acme.test>"
    link = f"https://api.acme.test/api/v1/items/exports/{job_id}/download"
    for part in ("plain", "html"):
        body = message.get_body(preferencelist=(part,))
        assert body is not None
        assert link in body.get_content()


async def test_no_mail_without_an_email_in_the_token_or_with_mail_off(
    database_url: str, redis_url: str, clean_db: None, db_engine: AsyncEngine
) -> None:
    for overrides, email in (({"EMAIL_BACKEND": "none"}, "alice@example.com"), ({}, None)):
        settings = job_settings(database_url, redis_url, **overrides)
        async with running_app(settings) as (_, client):
            headers = auth_headers(settings, f"a-{uuid.uuid4().hex[:8]}", email=email)
            assert (await client.post("/api/v1/items/exports", headers=headers)).status_code == 202
        worker = await run_worker(settings, [export_items, send_email])
        assert worker.jobs_complete == 1  # the export, and no mail job after it
        assert await outbox_ids(db_engine) == []
