"""Error reporting to Sentry: optional (the `observability` extra), on when SENTRY_DSN is set.

Only bugs are reported: an exception nothing turned into an answer (the last-resort
500, or a database error that is not an outage) and a job try that raised anything but
`Retry` or `PermanentJobError`. `AppError`s (4xx, 502, 503) are answers, not bugs.
Events are sent explicitly by `report_exception`, tagged with the request id, the
route template, the caller's subject and the component (`api` or `worker`).

Sentry's automatic integrations stay off: they would wrap every request in a
middleware layer of their own and read headers, cookies and bodies. Local variables
are not collected (they hold tokens and parsed bodies), and `scrub_event` strips from
whatever is left request bodies, cookies, credential headers, token-like parameters
and any string that looks like a JWT, a bearer token or a URL with credentials.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

from app import __version__
from app.core.config import ConfigError, Settings
from app.core.logging import request_id_var
from app.core.route_templates import route_template

if TYPE_CHECKING:
    from sentry_sdk._types import Event, Hint
    from starlette.types import Scope

FILTERED = "[Filtered]"
# A header, parameter, variable or extra whose name contains one of these is filtered.
_SENSITIVE_NAME = re.compile(
    r"auth|cookie|token|secret|passw|key|signature|credential|session", re.IGNORECASE
)
_NAME = re.compile(r"[\w.-]{1,100}")
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A JWT (or JWE): its JOSE header is base64url JSON, so it always starts with eyJ.
    (re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w.-]*"), FILTERED),
    (re.compile(r"\b(Bearer|Basic)\s+[\w.~+/=-]+", re.IGNORECASE), rf"\1 {FILTERED}"),
    # The user-info part of a URL: a DSN's key, a database password.
    (re.compile(r"\b([a-z][a-z0-9+.-]*://)[^\s/@]+@", re.IGNORECASE), rf"\1{FILTERED}@"),
    # name=value where the name says secret (query strings, form bodies, messages).
    (
        re.compile(r"\b([\w.-]*(?:token|secret|passw|key|signature)[\w.-]*)=[^\s&;,'\"]+", re.I),
        rf"\1={FILTERED}",
    ),
)

_initialised: tuple[str, str, str] | None = None  # (dsn, environment, release)
_component = "api"


def release_name(settings: Settings) -> str:
    """`project-name@version`, e.g. `orders-api@0.1.0`."""
    return f"{settings.project_slug}@{__version__}"


def init_error_reporting(settings: Settings, *, component: str) -> bool:
    """Start the Sentry client if SENTRY_DSN is set; True when reporting is on.

    The client is process-global: a second call with the same DSN, environment and
    release (another `create_app` in the same process) keeps the running client.
    """
    global _initialised, _component
    if settings.SENTRY_DSN is None:
        return False
    try:
        import sentry_sdk
        from sentry_sdk.integrations.atexit import AtexitIntegration
        from sentry_sdk.integrations.dedupe import DedupeIntegration
    except ImportError as exc:
        raise ConfigError(
            "SENTRY_DSN is set but sentry-sdk is not installed: install the `observability` "
            "extra (uv sync --extra observability) or unset SENTRY_DSN"
        ) from exc
    dsn = settings.SENTRY_DSN.get_secret_value()
    environment, release = settings.ENVIRONMENT.value, release_name(settings)
    _component = component
    if _initialised == (dsn, environment, release) and sentry_sdk.get_client().is_active():
        return True
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        # send_default_pii is left unset: deprecated since 2.75, and unset means False
        # (no user data, IPs, cookies or bodies from the SDK itself).
        # No automatic integrations (Starlette, FastAPI, arq, logging, ...): only the
        # explicit reports below. Atexit sends what is queued when the process exits;
        # Dedupe drops an exception reported twice.
        default_integrations=False,
        integrations=[AtexitIntegration(), DedupeIntegration()],
        include_local_variables=False,
        max_request_body_size="never",
        traces_sample_rate=None,  # no performance monitoring
        before_send=scrub_event,
    )
    _initialised = (dsn, environment, release)
    return True


def report_exception(
    exc: BaseException,
    *,
    request_id: str | None,
    route: str | None = None,
    user_id: str | None = None,
    level: Literal["error", "warning"] = "error",
    **tags: str | None,
) -> None:
    """Send `exc` to Sentry with these tags (None values are left out); a no-op when
    reporting is off."""
    if _initialised is None:
        return
    import sentry_sdk

    values = {"component": _component, "request_id": request_id, "route": route}
    values |= {"user_id": user_id, **tags}
    sentry_sdk.capture_exception(
        exc,
        level=level,
        tags={name: value for name, value in values.items() if value is not None},
        user={"id": user_id} if user_id else None,
    )


def report_request_exception(exc: BaseException, scope: Scope) -> None:
    """`report_exception` for the request being served: its id, its route template and
    the authenticated principal's subject, if any."""
    if _initialised is None:
        return
    principal = (scope.get("state") or {}).get("principal")
    report_exception(
        exc,
        request_id=request_id_var.get(),
        route=route_template(scope),
        user_id=getattr(principal, "subject", None),
        method=scope.get("method"),
    )


def scrub_event(event: Event, hint: Hint) -> Event | None:
    """Sentry's `before_send`: drop request bodies and cookies, then every value named
    like a credential and every secret-looking string, anywhere in the event."""
    request = event.get("request")
    if isinstance(request, dict):
        for field in ("data", "cookies", "env"):
            request.pop(field, None)
    return cast("Event", _scrub(event))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for pattern, replacement in _SECRET_PATTERNS:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, Mapping):
        return {
            name: FILTERED if _is_sensitive(name) else _scrub(item) for name, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and _is_sensitive(value[0]):  # a (name, value) pair
            return [value[0], FILTERED]
        return [_scrub(item) for item in value]
    return value


def _is_sensitive(name: object) -> bool:
    return (
        isinstance(name, str)
        and _NAME.fullmatch(name) is not None
        and _SENSITIVE_NAME.search(name) is not None
    )
