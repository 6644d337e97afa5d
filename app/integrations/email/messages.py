"""Mail messages: addresses checked, templates rendered, headers that cannot be
injected.

Each mail is two templates in `templates/`: `<name>.txt` (the plain-text part, whose
`{% block subject %}` is the subject) and `<name>.html`, extending the layouts
`_base.txt` and `_base.html` (a leading underscore: a layout, never a mail). HTML is
autoescaped, so a value such as an item title renders as text; the subject may not
contain a line break (a value carrying one is refused, not trimmed), and addresses
are validated, so nothing a user controls can add a header.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.integrations.email import PermanentMailError

if TYPE_CHECKING:
    import jinja2

    from app.core.config import Settings

TEMPLATES = Path(__file__).parent / "templates"
_TEMPLATE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


@functools.cache
def _environment() -> jinja2.Environment:
    """The templates, loaded once per process: no disk access while sending."""
    import jinja2  # the `email` extra

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"], default_for_string=False, default=False),
        undefined=jinja2.StrictUndefined,  # a missing value fails, never renders empty
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=-1,
    )
    for name in environment.list_templates():
        environment.get_template(name)
    return environment


@functools.cache
def _mail_names() -> frozenset[str]:
    """The mails that have both of their templates."""
    stems = {path.stem for path in TEMPLATES.iterdir() if path.suffix in {".txt", ".html"}}
    return frozenset(
        stem for stem in stems
        if _TEMPLATE_NAME.fullmatch(stem)
        and all((TEMPLATES / f"{stem}.{part}").is_file() for part in ("txt", "html"))
    )  # fmt: skip


def check_address(address: str) -> str:
    """`address` normalised (the domain in lower case), or ValueError."""
    from email_validator import EmailNotValidError, validate_email  # the `email` extra

    if "\r" in address or "\n" in address:
        raise ValueError("an address cannot contain a line break")
    try:
        checked = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    # The ASCII form where there is one (an IDN domain as punycode): any relay takes it,
    # where the Unicode form would need SMTPUTF8.
    return checked.ascii_email or checked.normalized


def check_template(name: str) -> str:
    """`name` if both of its templates exist, else ValueError."""
    if name not in _mail_names():
        raise ValueError(f"no email template {name!r}")
    return name


def message_id(key: str, sender: str) -> str:
    """A `Message-ID` from a key that stays the same when the mail is sent again (the
    job id, the same for every try): receivers drop the repeat."""
    domain = parseaddr(sender)[1].rpartition("@")[2]
    return f"<{key}@{domain}>"


def render_email(
    settings: Settings, *, to: str, template: str, context: dict[str, Any], msgid: str
) -> EmailMessage:
    """The message `template` makes for `to`; `PermanentMailError` if it cannot be made
    (unknown template or address, a missing value, a line break in the subject)."""
    import jinja2

    try:
        recipient = check_address(to)
        environment = _environment()
        text_template = environment.get_template(f"{check_template(template)}.txt")
        values = {"project_name": settings.PROJECT_NAME, **context}
        subject_block = text_template.blocks["subject"]
        subject = "".join(subject_block(text_template.new_context(values))).strip()
        # Any line boundary, Unicode's included (U+2028, U+0085, ...), not only CR/LF.
        if len(subject.splitlines()) > 1:
            raise ValueError("the subject would contain a line break")
        text = text_template.render(values)
        html = environment.get_template(f"{template}.html").render(values, subject=subject)
        name, sender = parseaddr(settings.EMAIL_FROM)
        local, _, domain = sender.rpartition("@")
        message = EmailMessage(policy=SMTP)
        message["From"] = Address(display_name=name, username=local, domain=domain)
        message["To"] = recipient
        message["Subject"] = subject
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = msgid
        message.set_content(text)
        message.add_alternative(html, subtype="html")
    except (ValueError, KeyError, jinja2.TemplateError) as exc:
        raise PermanentMailError(f"cannot make the {template!r} email: {exc}") from exc
    return message
