"""Mail messages and transports: rendering, injection attempts, the console transport,
and SMTP against a real server on loopback (STARTTLS, login, 4xx and 5xx answers)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from app.core.config import ConfigError, Settings, load_settings
from app.integrations.email import (
    ConsoleMailer,
    PermanentMailError,
    TemporaryMailError,
    create_mailer,
)
from app.integrations.email.messages import (
    check_address,
    check_template,
    message_id,
    render_email,
)
from tests.smtp import PASSWORD, USERNAME, Recorder, smtp_overrides, smtp_server
from tests.support import free_port, hung_server, production_config

CONTEXT = {"rows": 3, "download_url": "https://api.acme.test/x?a=1&b=2", "valid_for": "1 hour"}


def settings_for(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **{"EMAIL_FROM": "Acme <noreply@acme.test>", **overrides})


def export_ready(settings: Settings, **context: Any) -> Any:
    return render_email(
        settings,
        to="Alice@Example.COM",
        template="export_ready",
        context={**CONTEXT, **context},
        msgid=message_id("job123", settings.EMAIL_FROM),
    )


def test_a_message_has_both_parts_the_headers_and_the_link() -> None:
    message = export_ready(settings_for())
    assert message["From"] == "Acme <noreply@acme.test>"
    assert message["To"] == "Alice@example.com"  # the domain normalised
    assert message["Subject"] == "Your export of 3 items is ready"
    assert message["Message-ID"] == "<job123@acme.test>"
    assert message["Date"]
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    assert "https://api.acme.test/x?a=1&b=2" in text.get_content()
    assert "within 1 hour" in text.get_content()
    assert '<a href="https://api.acme.test/x?a=1&amp;b=2"' in html.get_content()
    assert "<title>Your export of 3 items is ready</title>" in html.get_content()


def test_values_are_escaped_in_html_and_cannot_break_headers() -> None:
    hostile = '"><script>alert(1)</script>'
    message = export_ready(settings_for(), download_url=hostile)
    html = message.get_body(preferencelist=("html",))
    assert html is not None
    assert "<script>" not in html.get_content()
    assert "&lt;script&gt;" in html.get_content()
    for separator in ("\r\n", "\n", "\u2028", "\x85", "\x0b"):
        with pytest.raises(PermanentMailError, match="line break"):
            export_ready(settings_for(), rows=f"1{separator}Bcc: victim@example.com")
    with pytest.raises(PermanentMailError, match="'download_url' is undefined"):
        render_email(
            settings_for(), to="a@example.com", template="export_ready",
            context={"rows": 1, "valid_for": "1 hour"}, msgid="<x@acme.test>",
        )  # fmt: skip


@pytest.mark.parametrize(
    "address",
    [
        "alice@example.com\r\nBcc: victim@example.com",
        "alice@example.com\nBcc: victim@example.com",
        "Alice <alice@example.com>",
        "alice",
        "alice@@example.com",
        "",
    ],
)
def test_bad_or_hostile_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the message comes from email-validator)
        check_address(address)
    with pytest.raises(PermanentMailError):
        render_email(
            settings_for(), to=address, template="export_ready", context=CONTEXT, msgid="<x@y.z>"
        )


def test_an_international_domain_is_addressed_in_ascii() -> None:
    assert check_address("user@exämple.com") == "user@xn--exmple-cua.com"
    message = render_email(
        settings_for(), to="user@xn--exmple-cua.com", template="export_ready",
        context=CONTEXT, msgid="<x@acme.test>",
    )  # fmt: skip
    assert message["To"] == "user@xn--exmple-cua.com"
    assert message.as_bytes().isascii()  # no SMTPUTF8 needed


@pytest.mark.parametrize("name", ["_base", "../etc/passwd", "missing", "Export_Ready"])
def test_only_complete_mail_templates_can_be_named(name: str) -> None:
    with pytest.raises(ValueError, match="no email template"):
        check_template(name)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"EMAIL_FROM": "Acme <noreply@acme.test>\r\nBcc: x@y.z"}, "EMAIL_FROM"),
        ({"EMAIL_FROM": "noreply"}, "EMAIL_FROM"),
        ({"SMTP_TLS": True, "SMTP_STARTTLS": True}, "exclude each other"),
        ({"SMTP_USERNAME": "u"}, "set both SMTP_USERNAME and SMTP_PASSWORD"),
        (
            {"SMTP_USERNAME": "u", "SMTP_PASSWORD": "p", "SMTP_STARTTLS": False},
            "the password would otherwise cross the network in the clear",
        ),
        ({"PUBLIC_BASE_URL": "api.example.com"}, "PUBLIC_BASE_URL"),
    ],
)
def test_bad_mail_settings_are_refused(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        load_settings(_env_file=None, **overrides)


def test_production_refuses_the_console_transport_unless_allowed() -> None:
    production = {
        "ENVIRONMENT": "production",
        "SECRET_KEY": "s" * 48,
        "DATABASE_URL": "postgresql://app@db/app",
        **production_config(),
        "EMAIL_BACKEND": "console",
    }
    with pytest.raises(ConfigError, match="EMAIL_BACKEND=console only logs mail"):
        load_settings(_env_file=None, **production)
    with pytest.raises(ConfigError, match="SMTP needs SMTP_STARTTLS=true or SMTP_TLS=true"):
        load_settings(
            _env_file=None, **(production | {"EMAIL_BACKEND": "smtp", "SMTP_STARTTLS": False})
        )
    for allowed in (
        {"EMAIL_CONSOLE_IN_PRODUCTION": True},
        {"EMAIL_BACKEND": "none"},
        {"EMAIL_BACKEND": "smtp"},
    ):
        assert load_settings(_env_file=None, **(production | allowed)).is_production


async def test_the_console_transport_logs_the_message(caplog: pytest.LogCaptureFixture) -> None:
    mailer = create_mailer(settings_for())
    assert isinstance(mailer, ConsoleMailer)
    assert create_mailer(settings_for(EMAIL_BACKEND="none")) is None
    with caplog.at_level(logging.INFO, "app.integrations.email"):
        await mailer.send(export_ready(settings_for()))
    (line,) = [record.getMessage() for record in caplog.records]
    assert "Alice@example.com: Your export of 3 items is ready" in line
    assert "https://api.acme.test/x?a=1&b=2" in line
    assert "not sent" in line


async def test_smtp_with_starttls_and_a_login_delivers_the_message(tmp_path: Path) -> None:
    recorder = Recorder()
    with smtp_server(recorder, tls_dir=tmp_path) as port:
        settings = settings_for(
            **smtp_overrides(
                port, SMTP_STARTTLS=True, SMTP_CA_FILE=str(tmp_path / "smtp-cert.pem")
            ),
            SMTP_USERNAME=USERNAME,
            SMTP_PASSWORD=PASSWORD,
        )
        mailer = create_mailer(settings)
        assert mailer is not None
        await mailer.send(export_ready(settings))
        (received,) = recorder.messages
        assert recorder.envelopes == [("noreply@acme.test", ["Alice@example.com"])]
        assert received["Message-ID"] == "<job123@acme.test>"
        assert received["Subject"] == "Your export of 3 items is ready"
        text = received.get_body(preferencelist=("plain",))
        assert text is not None
        assert "https://api.acme.test/x?a=1&b=2" in text.get_content()

        wrong = settings_for(
            **smtp_overrides(
                port, SMTP_STARTTLS=True, SMTP_CA_FILE=str(tmp_path / "smtp-cert.pem")
            ),
            SMTP_USERNAME=USERNAME,
            SMTP_PASSWORD="wrong",
        )
        refused = create_mailer(wrong)
        assert refused is not None
        with pytest.raises(PermanentMailError, match="535"):
            await refused.send(export_ready(wrong))
        # A certificate nobody vouches for is never accepted.
        untrusted = settings_for(**smtp_overrides(port, SMTP_STARTTLS=True))
        unverified = create_mailer(untrusted)
        assert unverified is not None
        with pytest.raises(TemporaryMailError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            await unverified.send(export_ready(untrusted))
    assert len(recorder.messages) == 1


@pytest.mark.parametrize(
    ("recorder", "error", "code"),
    [
        (Recorder(data_answers=["451 4.3.0 Try again later"]), TemporaryMailError, "451"),
        (Recorder(rcpt_answers=["450 4.2.1 Mailbox busy"]), TemporaryMailError, "450"),
        (Recorder(rcpt_answers=["550 5.1.1 No such user"]), PermanentMailError, "550"),
        (Recorder(data_answers=["554 5.7.1 Rejected as spam"]), PermanentMailError, "554"),
    ],
)
async def test_smtp_answers_are_temporary_or_permanent(
    recorder: Recorder, error: type[Exception], code: str
) -> None:
    with smtp_server(recorder) as port:
        settings = settings_for(**smtp_overrides(port))
        mailer = create_mailer(settings)
        assert mailer is not None
        with pytest.raises(error, match=code):
            await mailer.send(export_ready(settings))
        assert recorder.messages == []


async def test_an_unreachable_or_silent_server_is_temporary() -> None:
    settings = settings_for(**smtp_overrides(free_port()))
    mailer = create_mailer(settings)
    assert mailer is not None
    with pytest.raises(TemporaryMailError, match="SMTPConnect"):
        await mailer.send(export_ready(settings))
    async with hung_server() as address:  # accepts the connection, never greets
        port = int(address.rpartition(":")[2])
        silent = settings_for(**smtp_overrides(port, SMTP_TIMEOUT=0.5))
        mailer = create_mailer(silent)
        assert mailer is not None
        with pytest.raises(TemporaryMailError, match="Timeout"):
            await mailer.send(export_ready(silent))


async def test_a_server_without_starttls_is_a_setting_to_fix_not_retried() -> None:
    with smtp_server(Recorder()) as port:  # plain SMTP only
        settings = settings_for(**smtp_overrides(port, SMTP_STARTTLS=True))
        mailer = create_mailer(settings)
        assert mailer is not None
        with pytest.raises(PermanentMailError, match="STARTTLS"):
            await mailer.send(export_ready(settings))
