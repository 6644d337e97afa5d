"""Stripe signature checks on their own (the endpoint's tests are in
tests/api/v1/test_webhooks.py), the API client, and the settings."""

from __future__ import annotations

import sys
import time

import pytest

from app.core.config import ConfigError, load_settings
from app.integrations.payments import (
    WebhookRejectedError,
    stripe_client,
    verify_stripe_event,
)
from tests.stripe_events import OLD_SECRET, SECRET, signed, subscription_event


def test_the_event_is_parsed_only_after_one_secret_verifies_it() -> None:
    event = subscription_event()
    body, headers = signed(event, secret=OLD_SECRET)
    header = headers["Stripe-Signature"]
    assert verify_stripe_event(body, header, [SECRET, OLD_SECRET], 300) == event
    with pytest.raises(WebhookRejectedError):
        verify_stripe_event(body, header, [SECRET], 300)
    with pytest.raises(WebhookRejectedError):
        verify_stripe_event(body, header, [], 300)


def test_a_signature_older_than_the_tolerance_is_refused() -> None:
    body, headers = signed(subscription_event(), timestamp=int(time.time()) - 120)
    assert verify_stripe_event(body, headers["Stripe-Signature"], [SECRET], 300)
    with pytest.raises(WebhookRejectedError):
        verify_stripe_event(body, headers["Stripe-Signature"], [SECRET], 60)


def test_bytes_that_are_not_utf8_are_refused_before_anything_else() -> None:
    _, headers = signed(subscription_event())
    with pytest.raises(WebhookRejectedError):
        verify_stripe_event(b"\xff\xfe", headers["Stripe-Signature"], [SECRET], 300)


def test_the_api_client_uses_the_configured_key() -> None:
    settings = load_settings(_env_file=None, STRIPE_API_KEY="sk_test_abc")
    client = stripe_client(settings)
    assert client._requestor.api_key == "sk_test_abc"
    with pytest.raises(RuntimeError, match="STRIPE_API_KEY is not set"):
        stripe_client(load_settings(_env_file=None))


def test_webhook_secrets_are_a_comma_list_of_signing_secrets() -> None:
    settings = load_settings(_env_file=None, STRIPE_WEBHOOK_SECRET=f" {SECRET} , {OLD_SECRET}")
    assert [s.get_secret_value() for s in settings.STRIPE_WEBHOOK_SECRET] == [SECRET, OLD_SECRET]
    with pytest.raises(ConfigError, match="whsec_"):
        load_settings(_env_file=None, STRIPE_WEBHOOK_SECRET="sk_live_oops")
    assert SECRET not in repr(settings)


def test_stripe_settings_without_the_extra_name_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.main import create_app

    monkeypatch.setitem(sys.modules, "stripe", None)  # as if not installed
    settings = load_settings(_env_file=None, STRIPE_WEBHOOK_SECRET=SECRET)
    with pytest.raises(ConfigError, match="need the `payments` extra"):
        create_app(settings)
    create_app(load_settings(_env_file=None))  # not configured: not needed
