"""Run stored webhook events through their handlers again: after a fix, the events
that failed (`--failed`); events still `received` long after they arrived, whose job
was lost to a timeout, a crash or a failed commit (`--stuck`, older than
`--older-than` minutes, 60 by default); or named ones (provider ids, `evt_...`).

Failed events go back to `received`, and a `process_webhook_event` job is queued for
each chosen event in the same transaction (through the job outbox: if Redis is down,
the worker's relay sends it later). Events already processed or ignored are never run
again, and a job finding its event settled by another leaves it alone.

    make webhooks-replay ARGS="--failed"
    make webhooks-replay ARGS="--stuck --older-than 30"
    make webhooks-replay ARGS="evt_1PQ... evt_1PR..."
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime, timedelta

from app.core.cache import create_redis
from app.core.config import ConfigError, Settings, load_settings
from app.core.db import create_engine, create_session_factory, session_context
from app.jobs.enqueue import Jobs
from app.jobs.queue import JobQueue
from app.jobs.webhooks import process_webhook_event
from app.models.base import utcnow
from app.services.webhooks import events_to_replay


async def replay(
    settings: Settings,
    *,
    event_ids: list[str],
    failed: bool,
    stuck_before: datetime | None = None,
) -> int:
    """Queue the chosen events again; returns how many."""
    engine = create_engine(settings)
    redis = create_redis(settings)
    try:
        queue = JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME) if redis else None
        async with session_context(create_session_factory(engine)) as session:
            jobs = Jobs(queue, session)
            row_ids = await events_to_replay(
                session, event_ids=event_ids, failed=failed, stuck_before=stuck_before
            )
            for row_id in row_ids:
                await jobs.enqueue(process_webhook_event, str(row_id))
        return len(row_ids)
    finally:
        if redis is not None:
            await redis.aclose()
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="replay_webhooks", description="Run stored webhook events again."
    )
    parser.add_argument("event_ids", nargs="*", help="provider event ids (evt_...)")
    parser.add_argument("--failed", action="store_true", help="every event that failed")
    parser.add_argument(
        "--stuck", action="store_true", help="events still waiting after --older-than"
    )
    parser.add_argument("--older-than", type=float, default=60.0, help="minutes (--stuck)")
    args = parser.parse_args(argv)
    if not (args.event_ids or args.failed or args.stuck):
        parser.error("name events, or pass --failed or --stuck")
    if args.older_than <= 0:
        parser.error("--older-than must be greater than 0")
    stuck_before = utcnow() - timedelta(minutes=args.older_than) if args.stuck else None
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"replay_webhooks: {exc}", file=sys.stderr)
        return 2
    if not settings.REDIS_URL:
        print("replay_webhooks: REDIS_URL must be set (events are processed by the worker)",
              file=sys.stderr)  # fmt: skip
        return 2
    count = asyncio.run(
        replay(settings, event_ids=args.event_ids, failed=args.failed, stuck_before=stuck_before)
    )
    print(f"queued {count} webhook event{'' if count == 1 else 's'} again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
