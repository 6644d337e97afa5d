"""Stripe events for the webhook tests, signed with the stripe library's own helper."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import stripe

SECRET = "whsec_test_current_secret_value"
OLD_SECRET = "whsec_test_previous_secret_value"


def subscription_event(
    event_type: str = "customer.subscription.updated",
    *,
    created: int | None = None,
    status: str = "active",
    subscription_id: str = "sub_123",
    metadata: dict[str, str] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    created = int(time.time()) if created is None else created
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "created": created,
        "livemode": False,
        "data": {
            "object": {
                "id": subscription_id,
                "object": "subscription",
                "customer": "cus_123",
                "status": status,
                "cancel_at_period_end": False,
                "metadata": metadata if metadata is not None else {"tenant_id": "acme"},
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": "si_1",
                            "price": {"id": "price_pro"},
                            "current_period_end": created + 30 * 86_400,
                        }
                    ],
                },
            }
        },
    }


def signed(
    event: dict[str, Any] | str, secret: str = SECRET, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers Stripe would send."""
    body = event if isinstance(event, str) else json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp)
    return body.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}
