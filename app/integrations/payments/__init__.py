"""Payments (the `payments` extra, the official `stripe` library): verifying Stripe's
webhook signatures, and a client for handlers that call Stripe's API.

`verify_stripe_event` checks the `Stripe-Signature` header over the raw body with each
configured secret in turn (several during a rotation, so no event is refused while
both are live) and refuses a timestamp older than the tolerance; only then is the body
parsed. A forged, tampered, replayed-too-late or unsigned request never reaches JSON
parsing, let alone the database.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from app.core.exceptions import AppError

if TYPE_CHECKING:
    import stripe

    from app.core.config import Settings

MAX_EVENT_ID_LENGTH = 255


class WebhookRejectedError(AppError):
    status_code = 400
    code = "invalid_webhook"
    default_message = "The webhook could not be verified."


def verify_stripe_event(
    payload: bytes, header: str | None, secrets: Sequence[str], tolerance: int
) -> dict[str, Any]:
    """The event the body holds, once its signature checks out with one of `secrets`;
    `WebhookRejectedError` (400) otherwise, or when the verified body is no event."""
    import stripe  # the `payments` extra

    if not header:
        raise WebhookRejectedError("The Stripe-Signature header is missing.")
    if not header.isascii():  # the library's comparison would fail on anything else
        raise WebhookRejectedError()
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejectedError() from None
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance)
        except (stripe.SignatureVerificationError, ValueError, TypeError):
            continue
        break
    else:
        # One message for a wrong secret, a tampered body, an old timestamp and a
        # garbled header alike: the caller learns nothing about which check failed.
        raise WebhookRejectedError()
    try:
        event = json.loads(text)
    except ValueError:
        raise WebhookRejectedError("The webhook body is not JSON.") from None
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and 0 < len(event["id"]) <= MAX_EVENT_ID_LENGTH
        and isinstance(event.get("type"), str)
        and 0 < len(event["type"]) <= MAX_EVENT_ID_LENGTH
        and isinstance(event.get("created"), int)
        and isinstance(event.get("data"), dict)
    ):
        raise WebhookRejectedError("The webhook body is not a Stripe event.")
    return event


def stripe_client(settings: Settings) -> stripe.StripeClient:
    """A client for Stripe's API with `STRIPE_API_KEY`, for handlers that need more
    than the event carries (the reference handler does not)."""
    import stripe

    key = settings.STRIPE_API_KEY
    if key is None:
        raise RuntimeError("STRIPE_API_KEY is not set")
    return stripe.StripeClient(key.get_secret_value())


def require_payments_extra(settings: Settings) -> None:
    """Raise ConfigError naming the extra when Stripe is configured but not installed."""
    from app.core.config import ConfigError

    if not (settings.STRIPE_WEBHOOK_SECRET or settings.STRIPE_API_KEY):
        return
    try:
        import stripe  # noqa: F401
    except ImportError:
        raise ConfigError(
            "STRIPE_WEBHOOK_SECRET and STRIPE_API_KEY need the `payments` extra: install "
            "it with `uv sync --extra payments`"
        ) from None
