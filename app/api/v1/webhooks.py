"""Inbound webhooks: `POST /webhooks/stripe`.

Public (the signature is the authentication) and not rate limited (a provider
retrying a backlog must not be refused), with a small body limit. The event is
verified before anything parses it, stored once, and answered as soon as it is
stored; processing happens in a job, so a slow handler never makes the provider time
out and retry.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel

from app.api.deps import JobsDep, SettingsDep
from app.api.openapi import errors
from app.core.db import SessionDep
from app.core.exceptions import NotFoundError, PayloadTooLargeError
from app.integrations.payments import verify_stripe_event
from app.jobs.webhooks import process_webhook_event
from app.services.webhooks import record_event

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

# Stripe's events are a few KiB; this leaves room for large invoices and no more.
MAX_WEBHOOK_BYTES = 256 * 1024


class WebhookReceived(BaseModel):
    received: Literal[True] = True
    duplicate: bool


@router.post(
    "/stripe",
    response_model=WebhookReceived,
    responses=errors(400, 404, 413),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A Stripe event, signed in `Stripe-Signature`.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def receive_stripe_webhook(
    request: Request,
    settings: SettingsDep,
    session: SessionDep,
    jobs: JobsDep,
    stripe_signature: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> WebhookReceived:
    """Store a verified Stripe event once and queue its processing; 2xx for a repeat."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        raise NotFoundError("Stripe webhooks are not configured.")
    secrets = [secret.get_secret_value() for secret in settings.STRIPE_WEBHOOK_SECRET]
    body = await _read_body(request, MAX_WEBHOOK_BYTES)
    event = verify_stripe_event(body, stripe_signature, secrets, settings.STRIPE_WEBHOOK_TOLERANCE)
    row_id = await record_event(session, "stripe", event)
    if row_id is not None:
        await jobs.enqueue(process_webhook_event, str(row_id))
    return WebhookReceived(duplicate=row_id is None)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) past `limit` bytes: declared or as it streams in."""
    too_large = PayloadTooLargeError(f"A webhook body is at most {limit} bytes.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)
