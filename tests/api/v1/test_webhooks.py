"""Stripe webhooks end to end: signature checks, storing once (also under concurrent
redelivery), processing in a job with retries, replay, and out-of-order events."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from app.core.cache import create_redis
from app.core.config import Settings
from app.jobs.queue import JobQueue
from app.jobs.webhooks import process_webhook_event
from app.models.base import utcnow
from app.models.subscription import Subscription
from app.models.user import User
from app.models.webhook_event import WebhookEvent
from app.services import webhooks
from scripts.replay_webhooks import replay
from tests.jobs.conftest import job_settings, outbox_ids, run_worker
from tests.stripe_events import OLD_SECRET, SECRET, signed, subscription_event
from tests.support import auth_headers, make_settings, running_app

URL = "/api/v1/webhooks/stripe"


@pytest.fixture
def settings(database_url: str, redis_url: str, clean_db: None) -> Settings:
    return job_settings(
        database_url,
        redis_url,
        STRIPE_WEBHOOK_SECRET=f"{SECRET},{OLD_SECRET}",
        RATE_LIMIT_DEFAULT="2/minute",
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    async with running_app(settings) as (_, client):
        yield client


async def deliver(client: AsyncClient, event: dict[str, Any] | str, **signing: Any) -> Any:
    body, headers = signed(event, **signing)
    return await client.post(URL, content=body, headers=headers)


async def queued(settings: Settings) -> int:
    """Jobs waiting: in the queue, or in the outbox when the queue was not reachable."""
    redis = create_redis(settings)
    assert redis is not None
    try:
        return await JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME).depth()
    finally:
        await redis.aclose()


async def events(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(WebhookEvent.__table__))).all())  # type: ignore[attr-defined]


async def subscriptions(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(Subscription.__table__))).all())  # type: ignore[attr-defined]


async def test_a_verified_event_is_stored_answered_then_processed(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    event = subscription_event("customer.subscription.created", status="trialing")
    response = await deliver(client, event)
    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    (stored,) = await events(db_engine)
    assert (stored.provider, stored.event_id, stored.type) == ("stripe", event["id"], event["type"])
    assert (stored.status, stored.attempts, stored.processed_at) == ("received", 0, None)
    assert stored.payload == event
    assert await queued(settings) == 1

    worker = await run_worker(settings, [process_webhook_event])

    assert worker.jobs_complete == 1
    (stored,) = await events(db_engine)
    assert (stored.status, stored.attempts, stored.error) == ("processed", 1, None)
    assert stored.processed_at is not None
    (subscription,) = await subscriptions(db_engine)
    assert subscription.stripe_subscription_id == "sub_123"
    assert (subscription.status, subscription.tenant_id) == ("trialing", "acme")
    assert subscription.price_id == "price_pro"
    assert subscription.current_period_end.timestamp() == event["created"] + 30 * 86_400


@pytest.mark.parametrize(
    "attack",
    [
        "wrong secret",
        "no signature",
        "garbled signature",
        "old timestamp",
        "tampered body",
        "signature of another body",
        "non-ascii signature",
    ],
)
async def test_unverified_requests_are_400_and_nothing_is_stored(
    client: AsyncClient, db_engine: AsyncEngine, attack: str
) -> None:
    event = subscription_event()
    body, headers = signed(event)
    if attack == "wrong secret":
        body, headers = signed(event, secret="whsec_someone_else")
    elif attack == "no signature":
        del headers["Stripe-Signature"]
    elif attack == "garbled signature":
        headers["Stripe-Signature"] = "t=abc,v1"
    elif attack == "old timestamp":  # a captured delivery replayed later
        body, headers = signed(event, timestamp=int(time.time()) - 3600)
    elif attack == "non-ascii signature":
        headers["Stripe-Signature"] = f"t={int(time.time())},v1=\u00e9".encode("latin-1")  # type: ignore[assignment]
    elif attack == "tampered body":
        body = body.replace(b'"active"', b'"canceled"')
    else:
        _, headers = signed(subscription_event())
    response = await client.post(URL, content=body, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_webhook"
    assert error["request_id"]
    assert await events(db_engine) == []
    assert await outbox_ids(db_engine) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json at all", "The webhook body is not JSON."),
        ("[1, 2]", "The webhook body is not a Stripe event."),
        ('{"id": "evt_1", "type": "x"}', "The webhook body is not a Stripe event."),
    ],
)
async def test_a_verified_body_that_is_no_event_is_400(
    client: AsyncClient, db_engine: AsyncEngine, body: str, message: str
) -> None:
    response = await deliver(client, body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == message
    assert await events(db_engine) == []


async def test_both_secrets_are_accepted_during_a_rotation(
    client: AsyncClient, db_engine: AsyncEngine
) -> None:
    assert (await deliver(client, subscription_event(), secret=OLD_SECRET)).status_code == 200
    assert (await deliver(client, subscription_event(), secret=SECRET)).status_code == 200
    assert len(await events(db_engine)) == 2


async def test_a_redelivered_event_is_answered_but_stored_and_queued_once(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    event = subscription_event()
    first = await deliver(client, event)
    again = await deliver(client, event)
    assert first.json()["duplicate"] is False
    assert (again.status_code, again.json()["duplicate"]) == (200, True)
    concurrent = await asyncio.gather(*(deliver(client, subscription_event(event_id="evt_same"))
                                        for _ in range(5)))  # fmt: skip
    assert [r.status_code for r in concurrent] == [200] * 5
    assert sorted(r.json()["duplicate"] for r in concurrent) == [False, True, True, True, True]
    assert len(await events(db_engine)) == 2
    assert await queued(settings) == 2
    worker = await run_worker(settings, [process_webhook_event])
    assert worker.jobs_complete == 2


async def test_webhooks_are_not_rate_limited_and_their_size_is_bounded(
    client: AsyncClient, db_engine: AsyncEngine
) -> None:
    # RATE_LIMIT_DEFAULT is 2/minute here: a provider's backlog is still all taken.
    responses = [await deliver(client, subscription_event()) for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 6
    huge = subscription_event()
    huge["data"]["object"]["metadata"] = {"padding": "x" * 300_000}
    too_big = await deliver(client, huge)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "payload_too_large"
    assert len(await events(db_engine)) == 6


async def test_without_a_secret_the_endpoint_does_not_exist(
    database_url: str, clean_db: None
) -> None:
    settings = make_settings(database_url)
    async with running_app(settings) as (_, client):
        response = await deliver(client, subscription_event())
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Stripe webhooks are not configured."


async def test_a_failing_handler_is_retried_then_failed_and_can_be_replayed(
    database_url: str,
    redis_url: str,
    clean_db: None,
    db_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = job_settings(database_url, redis_url, STRIPE_WEBHOOK_SECRET=SECRET, JOB_MAX_TRIES=2)
    calls: list[str] = []

    async def broken(session: Any, event: dict[str, Any]) -> None:
        calls.append(event["id"])
        raise RuntimeError("the ledger is down")

    monkeypatch.setitem(webhooks._handlers, ("stripe", "invoice.paid"), broken)
    event = subscription_event("invoice.paid")
    async with running_app(settings) as (_, client):
        assert (await deliver(client, event)).status_code == 200

    worker = await run_worker(settings, [process_webhook_event])

    assert (worker.jobs_retried, worker.jobs_failed) == (1, 1)
    assert calls == [event["id"]] * 2
    (stored,) = await events(db_engine)
    assert (stored.status, stored.attempts) == ("failed", 2)
    assert stored.error == "RuntimeError: the ledger is down"

    async def fixed(session: Any, event: dict[str, Any]) -> None:
        calls.append("fixed")

    monkeypatch.setitem(webhooks._handlers, ("stripe", "invoice.paid"), fixed)
    assert await replay(settings, event_ids=[], failed=True) == 1
    worker = await run_worker(settings, [process_webhook_event])
    assert worker.jobs_complete == 1
    (stored,) = await events(db_engine)
    assert (stored.status, stored.attempts, stored.error) == ("processed", 3, None)
    assert calls[-1] == "fixed"
    assert await replay(settings, event_ids=[], failed=True) == 0  # nothing failed now


async def test_an_event_type_without_a_handler_is_ignored(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    assert (await deliver(client, subscription_event("charge.refunded"))).status_code == 200
    await run_worker(settings, [process_webhook_event])
    (stored,) = await events(db_engine)
    assert stored.status == "ignored"
    assert await subscriptions(db_engine) == []


async def test_late_events_never_move_a_subscription_backwards(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    now = int(time.time())

    async def apply(event_type: str, created: int, status: str) -> str:
        event = subscription_event(event_type, created=created, status=status)
        assert (await deliver(client, event)).status_code == 200
        await run_worker(settings, [process_webhook_event])
        (subscription,) = await subscriptions(db_engine)
        return str(subscription.status)

    assert await apply("customer.subscription.updated", now - 10, "past_due") == "past_due"
    # Older than what the row reflects: delivered late, changes nothing.
    assert await apply("customer.subscription.created", now - 60, "incomplete") == "past_due"
    assert await apply("customer.subscription.updated", now - 30, "active") == "past_due"
    # Newer: applied. A deletion of the same second as an update wins over it.
    assert await apply("customer.subscription.updated", now, "active") == "active"
    assert await apply("customer.subscription.deleted", now, "canceled") == "canceled"
    assert await apply("customer.subscription.updated", now, "active") == "canceled"
    assert [e.status for e in await events(db_engine)] == ["processed"] * 6


async def test_created_then_updated_in_one_second_ends_active(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    now = int(time.time())
    for event_type, status in (
        ("customer.subscription.updated", "active"),  # delivered first, but later in life
        ("customer.subscription.created", "incomplete"),
    ):
        event = subscription_event(event_type, created=now, status=status)
        assert (await deliver(client, event)).status_code == 200
        await run_worker(settings, [process_webhook_event])
    (subscription,) = await subscriptions(db_engine)
    assert subscription.status == "active"


async def test_two_jobs_for_one_event_run_its_handler_once(
    client: AsyncClient,
    settings: Settings,
    db_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    async def slow(session: Any, event: dict[str, Any]) -> None:
        calls.append(event["id"])
        await asyncio.sleep(0.3)

    monkeypatch.setitem(webhooks._handlers, ("stripe", "invoice.paid"), slow)
    event = subscription_event("invoice.paid")
    assert (await deliver(client, event)).status_code == 200
    # A replay while the first job has not run yet: two jobs for the same event.
    assert await replay(settings, event_ids=[event["id"]], failed=False) == 1
    worker = await run_worker(settings, [process_webhook_event])
    assert worker.jobs_complete == 2
    assert calls == [event["id"]]
    (stored,) = await events(db_engine)
    assert (stored.status, stored.attempts) == ("processed", 1)
    # Settled events are never run again, by name or otherwise.
    assert await replay(settings, event_ids=[event["id"]], failed=True) == 0


async def test_a_run_cut_short_leaves_the_event_for_a_stuck_replay(
    database_url: str,
    redis_url: str,
    clean_db: None,
    db_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = job_settings(database_url, redis_url, STRIPE_WEBHOOK_SECRET=SECRET, JOB_TIMEOUT=0.3)
    hang = True

    async def sometimes_slow(session: Any, event: dict[str, Any]) -> None:
        if hang:
            await asyncio.sleep(5)

    monkeypatch.setitem(webhooks._handlers, ("stripe", "invoice.paid"), sometimes_slow)
    async with running_app(settings) as (_, client):
        assert (await deliver(client, subscription_event("invoice.paid"))).status_code == 200
    worker = await run_worker(settings, [process_webhook_event])
    assert worker.jobs_failed == 1  # the queue does not retry a run it cancelled
    (stored,) = await events(db_engine)
    assert stored.status == "received"
    assert stored.error == "cancelled (timed out, or the worker stopped)"
    assert await replay(settings, event_ids=[], failed=True) == 0  # not failed: stuck
    an_hour_ago, soon = utcnow() - timedelta(hours=1), utcnow() + timedelta(seconds=2)
    assert await replay(settings, event_ids=[], failed=False, stuck_before=an_hour_ago) == 0
    hang = False
    assert await replay(settings, event_ids=[], failed=False, stuck_before=soon) == 1
    await run_worker(settings, [process_webhook_event])
    (stored,) = await events(db_engine)
    assert (stored.status, stored.error) == ("processed", None)


async def test_the_subscription_links_an_existing_user_only(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    me = await client.get("/api/v1/users/me", headers=auth_headers(settings, "payer"))
    user_id = me.json()["id"]
    for subscription_id, named in (("sub_known", user_id), ("sub_ghost", str(uuid.uuid4()))):
        event = subscription_event(
            subscription_id=subscription_id, metadata={"tenant_id": "acme", "user_id": named}
        )
        assert (await deliver(client, event)).status_code == 200
    await run_worker(settings, [process_webhook_event])
    linked = {row.stripe_subscription_id: row.user_id for row in await subscriptions(db_engine)}
    assert linked == {"sub_known": uuid.UUID(user_id), "sub_ghost": None}
    async with db_engine.connect() as conn:
        assert (await conn.execute(select(col(User.id)))).scalar_one() == uuid.UUID(user_id)


async def test_the_replay_command_runs_against_the_configured_database(
    settings: Settings,
    client: AsyncClient,
    db_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (await deliver(client, subscription_event("invoice.paid"))).status_code == 200
    async with db_engine.begin() as conn:  # its job lost an hour ago
        an_hour_ago = utcnow() - timedelta(hours=1)
        await conn.execute(update(WebhookEvent).values(received_at=an_hour_ago))
    for name in ("DATABASE_URL", "REDIS_URL", "JOBS_QUEUE_NAME"):
        monkeypatch.setenv(name, str(getattr(settings, name)))
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "scripts.replay_webhooks", "--stuck", "--older-than", "30"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "ENVIRONMENT": "test"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "queued 1 webhook event again"
    refused = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "scripts.replay_webhooks"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "name events, or pass --failed or --stuck" in refused.stderr
