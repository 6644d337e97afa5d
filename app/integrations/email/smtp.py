"""The SMTP transport (`EMAIL_BACKEND=smtp`, the `email` extra, aiosmtplib).

One connection per message: mail leaves from jobs, one message each, and a connection
held between jobs would only go stale. STARTTLS (`SMTP_STARTTLS`, port 587) or
implicit TLS (`SMTP_TLS`, port 465) is required when configured, never opportunistic;
certificates are checked against the system's CAs or `SMTP_CA_FILE`.
"""

from __future__ import annotations

import ssl
from email.message import EmailMessage
from typing import TYPE_CHECKING, Self

import aiosmtplib

from app.integrations.email import Mailer, PermanentMailError, TemporaryMailError

if TYPE_CHECKING:
    from app.core.config import Settings


class SmtpMailer(Mailer):
    name = "smtp"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        start_tls: bool,
        use_tls: bool,
        timeout: float,
        tls_context: ssl.SSLContext,
    ) -> None:
        self.host = host
        self.port = port
        self._username = username
        self._password = password
        self._start_tls = start_tls
        self._use_tls = use_tls
        self._timeout = timeout
        self._tls_context = tls_context

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        context = ssl.create_default_context(cafile=settings.SMTP_CA_FILE or None)
        password = settings.SMTP_PASSWORD
        return cls(
            host=settings.SMTP_HOST,
            port=settings.SMTP_PORT,
            username=settings.SMTP_USERNAME or None,
            password=password.get_secret_value() if password else None,
            start_tls=settings.SMTP_STARTTLS,
            use_tls=settings.SMTP_TLS,
            timeout=settings.SMTP_TIMEOUT,
            tls_context=context,
        )

    async def send(self, message: EmailMessage) -> None:
        try:
            await aiosmtplib.send(
                message,
                hostname=self.host,
                port=self.port,
                username=self._username,
                password=self._password,
                start_tls=self._start_tls,
                use_tls=self._use_tls,
                timeout=self._timeout,
                tls_context=self._tls_context,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [refused.code for refused in exc.recipients]
            detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            error = TemporaryMailError if all(400 <= c < 500 for c in codes) else PermanentMailError
            raise error(f"recipients refused ({detail})") from exc
        except aiosmtplib.SMTPResponseException as exc:
            # 5xx is final; 4xx and a garbled answer (code -1) may pass on a later try.
            error = PermanentMailError if 500 <= exc.code < 600 else TemporaryMailError
            raise error(f"the server answered {exc.code} {exc.message}") from exc
        except aiosmtplib.SMTPException as exc:
            if "not supported" in str(exc):  # no STARTTLS, AUTH or SMTPUTF8: a setting to fix
                raise PermanentMailError(f"the server cannot do this: {exc}") from exc
            raise TemporaryMailError(f"{type(exc).__name__}: {exc}") from exc
        except (OSError, TimeoutError) as exc:  # refused, lost, timed out, a TLS failure
            raise TemporaryMailError(f"{type(exc).__name__}: {exc}") from exc
