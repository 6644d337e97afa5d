"""Mail: messages rendered from templates and handed to a transport, always from a job.

Handlers never send mail themselves: they enqueue `send_email` (app/jobs/email.py),
which leaves after their transaction commits, and the worker renders and sends it,
retrying temporary failures with back-off. A slow or failing mail server then never
delays a request or loses a message. Delivery is at least once: a worker that stops
between the server accepting a message and the job finishing sends it again, so the
`Message-ID` is derived from the job id and receivers can drop the duplicate.

Two transports implement `Mailer`, chosen by `EMAIL_BACKEND`: `console` logs each
message (the development default) and `smtp` sends it (`app/integrations/email/smtp.py`).
Rendering and address checks need the `email` extra (Jinja2, email-validator,
aiosmtplib); `EMAIL_BACKEND=none` turns mail off.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from email.message import EmailMessage
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.config import Settings

logger = logging.getLogger(__name__)


class MailError(Exception):
    """A message could not be sent."""


class TemporaryMailError(MailError):
    """Worth trying again later: the server was unreachable, timed out or answered 4xx."""


class PermanentMailError(MailError):
    """Trying again cannot help: a 5xx answer, a refused recipient, an invalid message."""


class Mailer(ABC):
    name: str

    @abstractmethod
    async def send(self, message: EmailMessage) -> None:
        """Hand `message` over for delivery; `TemporaryMailError` or `PermanentMailError`
        if that fails."""

    async def aclose(self) -> None:  # noqa: B027 (transports with nothing to close)
        """Release what the transport holds; the worker calls it on shutdown."""


class ConsoleMailer(Mailer):
    """Logs each message instead of sending it: development and tests."""

    name = "console"

    async def send(self, message: EmailMessage) -> None:
        text = message.get_body(preferencelist=("plain",))
        logger.info(
            "email (console transport, not sent) to %s: %s\n%s",
            message["To"],
            message["Subject"],
            text.get_content() if text is not None else "",
            extra={"message_id": message["Message-ID"]},
        )


def require_email_extra(settings: Settings) -> None:
    """Raise ConfigError naming the extra when mail is on but the extra is missing."""
    from app.core.config import ConfigError

    if settings.EMAIL_BACKEND == "none":
        return
    try:
        import aiosmtplib  # noqa: F401
        import email_validator  # noqa: F401
        import jinja2  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"EMAIL_BACKEND={settings.EMAIL_BACKEND} needs the `email` extra: install it "
            "with `uv sync --extra email` (or set EMAIL_BACKEND=none)"
        ) from None


def create_mailer(settings: Settings) -> Mailer | None:
    """The transport `EMAIL_BACKEND` names; None when mail is off."""
    if settings.EMAIL_BACKEND == "none":
        return None
    if settings.EMAIL_BACKEND == "smtp":
        from app.integrations.email.smtp import SmtpMailer  # the `email` extra

        return SmtpMailer.from_settings(settings)
    return ConsoleMailer()


__all__ = [
    "ConsoleMailer",
    "MailError",
    "Mailer",
    "PermanentMailError",
    "TemporaryMailError",
    "create_mailer",
    "require_email_extra",
]
