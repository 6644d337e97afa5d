"""Application settings: the one place that reads the environment.

Every value comes from an environment variable of the same name (or `.env`), is
validated and normalised here, and is documented one-for-one in `.env.example`.
Unsafe values refuse to start in production.
"""

from __future__ import annotations

import json
import re
from email.utils import parseaddr
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.rates import Rate, parse_rate

DEFAULT_SECRET_KEY = "change-me-in-production-this-is-not-a-secret"  # noqa: S105
MIN_SECRET_KEY_LENGTH = 32


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    STAGING = "staging"
    PRODUCTION = "production"


class AuthProvider(StrEnum):
    LOCAL = "local"
    SUPABASE = "supabase"
    CLERK = "clerk"
    OIDC = "oidc"


# Asymmetric JWS algorithms an OpenID Connect issuer may sign with.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MIN_HMAC_SECRET_BYTES = 32

# Content types an upload may have: each is recognised from its first bytes
# (app/services/uploads.py), so a declared type is checked against the content.
UPLOAD_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf")
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
# A plausible mail address (the worker validates fully, with the `email` extra).
_ADDRESS = re.compile(r"[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+")
# S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


class ConfigError(RuntimeError):
    """Raised at start-up when the environment holds an invalid setting."""


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _check_url(value: str) -> str:
    url = value.strip()
    if not url:
        return url
    parts = urlsplit(url)
    if parts.scheme not in {"https", "http"} or not parts.hostname or parts.query or " " in url:
        raise ValueError("must be an https:// URL (http:// only outside production)")
    return url


def _pem(value: str) -> str:
    # Environment variables often carry PEM blocks with literal "\n" sequences.
    return value.strip().replace("\\n", "\n")


def normalise_database_url(url: str) -> str:
    """Map the schemes hosting providers hand out to the async drivers the app uses."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,
        frozen=True,
    )

    PROJECT_NAME: str = "FastAPI Template"
    ENVIRONMENT: Environment = Environment.DEVELOPMENT
    DEBUG: bool = False
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    LOG_FORMAT: Literal["console", "json"] | None = None
    SECRET_KEY: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    API_V1_STR: str = "/api/v1"
    MAX_REQUEST_BODY_BYTES: int = Field(default=1_048_576, ge=1024, le=1 << 34)
    BACKEND_CORS_ORIGINS: Annotated[list[str], NoDecode] = Field(default_factory=list)
    DOCS_ENABLED: bool | None = None

    DATABASE_URL: str = "sqlite+aiosqlite:///./app.db"
    DB_POOL_SIZE: int = Field(default=20, ge=1, le=1000)
    DB_MAX_OVERFLOW: int = Field(default=10, ge=0, le=1000)
    DB_POOL_TIMEOUT: float = Field(default=10.0, gt=0, le=300)
    DB_CONNECT_TIMEOUT: float = Field(default=5.0, gt=0, le=300)
    DB_COMMAND_TIMEOUT: float = Field(default=15.0, gt=0, le=86_400)
    DB_POOL_RECYCLE: int = Field(default=1800, ge=-1, le=86_400)
    DB_POOL_PRE_PING: bool = False
    DB_USE_NULL_POOL: bool = False
    DB_ECHO: bool = False

    REDIS_URL: str = ""
    REDIS_SOCKET_TIMEOUT: float = Field(default=1.0, gt=0, le=60)

    HEALTH_CHECK_TIMEOUT: float = Field(default=2.0, gt=0, le=60)
    READINESS_REQUIRES_REDIS: bool = False

    JOBS_QUEUE_NAME: str = Field(default="arq:queue", pattern=r"^[A-Za-z0-9:._\-]{1,100}$")
    JOB_TIMEOUT: float = Field(default=300.0, gt=0, le=86_400)
    JOB_MAX_TRIES: int = Field(default=5, ge=1, le=100)
    JOB_RETRY_DELAY: float = Field(default=5.0, ge=0, le=3600)
    JOB_KEEP_RESULT: int = Field(default=86_400, ge=60, le=30 * 86_400)
    SOFT_DELETE_RETENTION_DAYS: int = Field(default=30, ge=1, le=36_500)

    # Files (exports, attachments): a directory, or an S3-compatible bucket (the
    # `storage` extra). Production refuses the directory unless explicitly allowed.
    STORAGE_BACKEND: Literal["filesystem", "s3"] = "filesystem"
    STORAGE_DIR: Path = Path("./storage")
    STORAGE_FILESYSTEM_IN_PRODUCTION: bool = False
    STORAGE_URL_TTL: int = Field(default=300, ge=1, le=604_800)
    S3_BUCKET: str = ""
    S3_REGION: str = "us-east-1"
    S3_ENDPOINT_URL: str = ""
    S3_PUBLIC_ENDPOINT_URL: str = ""
    S3_ACCESS_KEY_ID: str = ""
    S3_SECRET_ACCESS_KEY: SecretStr | None = None
    S3_FORCE_PATH_STYLE: bool = False
    S3_TIMEOUT: float = Field(default=5.0, gt=0, le=300)
    UPLOAD_MAX_BYTES: int = Field(default=10 * 1024 * 1024, ge=1, le=5 * 1024**3)
    UPLOAD_ALLOWED_TYPES: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(UPLOAD_TYPES)
    )

    # Mail, sent by the `send_email` job (the `email` extra): logged to the console (the
    # development default), sent over SMTP, or off. Production refuses the console
    # unless explicitly allowed.
    EMAIL_BACKEND: Literal["console", "smtp", "none"] = "console"
    EMAIL_FROM: str = "FastAPI Template <noreply@example.com>"
    EMAIL_CONSOLE_IN_PRODUCTION: bool = False
    SMTP_HOST: str = "localhost"
    SMTP_PORT: int = Field(default=587, ge=1, le=65_535)
    SMTP_USERNAME: str = ""
    SMTP_PASSWORD: SecretStr | None = None
    SMTP_STARTTLS: bool = True
    SMTP_TLS: bool = False
    SMTP_TIMEOUT: float = Field(default=10.0, gt=0, le=300)
    SMTP_CA_FILE: str = ""
    # Where clients reach the API: the base of links in mail (no trailing slash).
    PUBLIC_BASE_URL: str = "http://127.0.0.1:8000"

    # Stripe (the `payments` extra): the API key for handlers that call Stripe, and the
    # webhook signing secrets (a comma list: old and new during a rotation).
    STRIPE_API_KEY: SecretStr | None = None
    STRIPE_WEBHOOK_SECRET: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    STRIPE_WEBHOOK_TOLERANCE: int = Field(default=300, ge=1, le=3600)

    # A language model behind an OpenAI-compatible API (the `ai` extra); AI_MODEL empty:
    # the AI routes answer 404.
    AI_BASE_URL: str = ""
    AI_API_KEY: SecretStr | None = None
    AI_MODEL: str = ""
    AI_TIMEOUT: float = Field(default=60.0, gt=0, le=600)
    AI_MAX_RETRIES: int = Field(default=2, ge=0, le=10)
    AI_MAX_MESSAGES: int = Field(default=50, ge=1, le=1000)
    AI_MAX_INPUT_CHARS: int = Field(default=32_000, ge=1, le=10_000_000)
    AI_MAX_OUTPUT_TOKENS: int = Field(default=1024, ge=1, le=1_000_000)

    RATE_LIMIT_DEFAULT: str = "100/minute"
    RATE_LIMIT_ITEM_WRITES: str = "60/minute"
    RATE_LIMIT_EXPORTS: str = "5/minute"
    RATE_LIMIT_AUTH_FAILURES: str = "30/minute"
    RATE_LIMIT_AI: str = "20/minute"
    RATE_LIMIT_FAIL_OPEN: bool = True
    TRUSTED_PROXIES: Annotated[list[IPvAnyNetwork], NoDecode] = Field(default_factory=list)

    AUTH_PROVIDER: AuthProvider = AuthProvider.LOCAL
    AUTH_HTTP_TIMEOUT: float = Field(default=5.0, gt=0, le=60)
    AUTH_JWKS_CACHE_TTL: float = Field(default=600.0, ge=1, le=86_400)
    AUTH_JWKS_REFRESH_COOLDOWN: float = Field(default=30.0, ge=0, le=3_600)
    AUTH_LEEWAY: float = Field(default=30.0, ge=0, le=300)
    AUTH_JWKS_MAX_STALE: float = Field(default=86_400.0, ge=1, le=30 * 86_400)
    AUTH_MAX_TOKEN_BYTES: int = Field(default=16_384, ge=1024, le=262_144)
    AUTH_MAX_TOKEN_LIFETIME: int = Field(default=86_400, ge=0, le=366 * 86_400)
    # Seconds a process trusts its cached "this account is active" answer (0: no cache).
    AUTH_DEACTIVATION_TTL: float = Field(default=5.0, ge=0, le=3_600)

    SUPABASE_URL: str = ""
    SUPABASE_JWT_AUDIENCE: str = "authenticated"
    SUPABASE_JWT_SECRET: SecretStr | None = None
    SUPABASE_ALLOW_ANONYMOUS: bool = True

    CLERK_ISSUER: str = ""
    CLERK_AUTHORIZED_PARTIES: Annotated[list[str], NoDecode] = Field(default_factory=list)
    CLERK_JWT_KEY: str = ""

    OIDC_ISSUER: str = ""
    OIDC_AUDIENCE: Annotated[list[str], NoDecode] = Field(default_factory=list)
    OIDC_JWKS_URL: str = ""
    OIDC_ALGORITHMS: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["RS256"])
    OIDC_ROLES_CLAIM: str = "roles"
    OIDC_TENANT_CLAIM: str = ""
    OIDC_AUDIENCE_CLAIM: str = "aud"
    OIDC_REQUIRE_AT_JWT: bool = False

    LOCAL_AUTH_PRIVATE_KEY: SecretStr | None = None
    LOCAL_AUTH_KEY_FILE: str = ".secrets/local_auth_key.pem"
    LOCAL_AUTH_ALGORITHM: Literal["RS256", "ES256"] = "RS256"
    LOCAL_AUTH_TOKEN_TTL: int = Field(default=3600, ge=60, le=30 * 86_400)

    # Prometheus metrics on a port of their own (0: off); host empty: 127.0.0.1 in
    # development, every interface elsewhere.
    METRICS_PORT: int = Field(default=9000, ge=0, le=65_535)
    WORKER_METRICS_PORT: int = Field(default=9001, ge=0, le=65_535)
    METRICS_HOST: str = ""

    SENTRY_DSN: SecretStr | None = None

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("API_V1_STR")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value.startswith("/") or value.endswith("/") or " " in value:
            raise ValueError("must start with '/' and not end with '/', e.g. /api/v1")
        return value

    @field_validator(
        "BACKEND_CORS_ORIGINS",
        "CLERK_AUTHORIZED_PARTIES",
        "OIDC_AUDIENCE",
        "OIDC_ALGORITHMS",
        "UPLOAD_ALLOWED_TYPES",
        "STRIPE_WEBHOOK_SECRET",
        mode="before",
    )
    @classmethod
    def _parse_lists(cls, value: object) -> object:
        return _comma_list(value)

    @field_validator("BACKEND_CORS_ORIGINS")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"{origin!r} is not an http(s) origin")
        return [origin.rstrip("/") for origin in value]

    @field_validator("TRUSTED_PROXIES", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "RATE_LIMIT_DEFAULT",
        "RATE_LIMIT_ITEM_WRITES",
        "RATE_LIMIT_EXPORTS",
        "RATE_LIMIT_AUTH_FAILURES",
        "RATE_LIMIT_AI",
    )
    @classmethod
    def _check_rate(cls, value: str) -> str:
        parse_rate(value)  # raises ValueError with the accepted forms
        return value.strip()

    @field_validator("DATABASE_URL")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        url = normalise_database_url(value.strip())
        if not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError(
                "must be a PostgreSQL (postgresql://...) or SQLite (sqlite:///...) URL"
            )
        return url

    @field_validator("REDIS_URL")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        url = value.strip()
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be empty or a redis://, rediss:// or unix:// URL")
        return url

    @field_validator("SUPABASE_URL", "CLERK_ISSUER")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        return _check_url(value).rstrip("/")

    @field_validator("AI_BASE_URL")
    @classmethod
    def _check_ai_url(cls, value: str) -> str:
        if "@" in urlsplit(value.strip()).netloc:
            raise ValueError("must not carry credentials (use AI_API_KEY)")
        return _check_url(value).rstrip("/")

    @field_validator("S3_ENDPOINT_URL", "S3_PUBLIC_ENDPOINT_URL")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if "@" in urlsplit(value.strip()).netloc:
            raise ValueError(
                "must not carry credentials (use S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY)"
            )
        return _check_url(value).rstrip("/")

    @field_validator("STRIPE_WEBHOOK_SECRET")
    @classmethod
    def _check_webhook_secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        for secret in value:
            if not secret.get_secret_value().startswith("whsec_"):
                raise ValueError("each secret starts with whsec_ (the endpoint's signing secret)")
        return value

    @field_validator("PUBLIC_BASE_URL")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be the http(s) URL clients reach the API at")
        return _check_url(value).rstrip("/")

    @field_validator("EMAIL_FROM")
    @classmethod
    def _check_sender(cls, value: str) -> str:
        address = parseaddr(value)[1]
        if "\r" in value or "\n" in value or not _ADDRESS.fullmatch(address):
            raise ValueError(
                "must be an address, with or without a display name: "
                "noreply@example.com or Example <noreply@example.com>"
            )
        return value.strip()

    @model_validator(mode="after")
    def _check_smtp(self) -> Self:
        if self.SMTP_TLS and self.SMTP_STARTTLS:
            raise ValueError(
                "SMTP_TLS (implicit TLS, usually port 465) and SMTP_STARTTLS (usually "
                "port 587) exclude each other: set one of them to false"
            )
        if bool(self.SMTP_USERNAME) != (self.SMTP_PASSWORD is not None):
            raise ValueError("set both SMTP_USERNAME and SMTP_PASSWORD, or neither")
        if self.SMTP_USERNAME and not (self.SMTP_TLS or self.SMTP_STARTTLS):
            raise ValueError(
                "SMTP_USERNAME needs SMTP_STARTTLS=true or SMTP_TLS=true: the password "
                "would otherwise cross the network in the clear"
            )
        return self

    @field_validator("UPLOAD_ALLOWED_TYPES")
    @classmethod
    def _check_upload_types(cls, value: list[str]) -> list[str]:
        types = [item.lower() for item in value]
        unknown = [item for item in types if item not in UPLOAD_TYPES]
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} cannot be recognised from its content; "
                f"choose from {', '.join(UPLOAD_TYPES)}"
            )
        return types

    @model_validator(mode="after")
    def _check_storage(self) -> Self:
        if self.STORAGE_BACKEND == "s3" and not _BUCKET.fullmatch(self.S3_BUCKET):
            raise ValueError(
                "STORAGE_BACKEND=s3 needs S3_BUCKET, a bucket name of 3-63 lowercase "
                f"letters, digits, dots and hyphens (got {self.S3_BUCKET!r})"
            )
        if bool(self.S3_ACCESS_KEY_ID) != (self.S3_SECRET_ACCESS_KEY is not None):
            raise ValueError(
                "set both S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY, or neither (the "
                "standard AWS credential chain is used then)"
            )
        return self

    @field_validator("OIDC_ISSUER", "OIDC_JWKS_URL")
    @classmethod
    def _check_exact_url(cls, value: str) -> str:
        # Kept exactly as given: Auth0's issuer ends with "/" and `iss` is compared as is.
        return _check_url(value)

    @field_validator("SUPABASE_JWT_SECRET")
    @classmethod
    def _check_shared_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_HMAC_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_HMAC_SECRET_BYTES} bytes")
        return value

    @field_validator("OIDC_ALGORITHMS")
    @classmethod
    def _check_algorithms(cls, value: list[str]) -> list[str]:
        unknown = [alg for alg in value if alg not in ASYMMETRIC_ALGORITHMS]
        if unknown or not value:
            raise ValueError(
                f"must be a comma list of asymmetric algorithms from "
                f"{', '.join(sorted(ASYMMETRIC_ALGORITHMS))} (got {', '.join(unknown) or 'none'})"
            )
        return value

    @field_validator("CLERK_JWT_KEY")
    @classmethod
    def _check_public_key(cls, value: str) -> str:
        pem = _pem(value)
        if pem and "-----BEGIN PUBLIC KEY-----" not in pem:
            raise ValueError("must be a PEM public key (-----BEGIN PUBLIC KEY-----)")
        return pem

    @field_validator("LOCAL_AUTH_PRIVATE_KEY")
    @classmethod
    def _check_private_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        pem = _pem(value.get_secret_value())
        if "PRIVATE KEY-----" not in pem:
            raise ValueError("must be a PEM private key (-----BEGIN PRIVATE KEY-----)")
        return SecretStr(pem)

    @model_validator(mode="after")
    def _check_auth_provider(self) -> Self:
        required = {
            AuthProvider.SUPABASE: ("SUPABASE_URL",),
            AuthProvider.CLERK: ("CLERK_ISSUER",),
            AuthProvider.OIDC: ("OIDC_ISSUER", "OIDC_AUDIENCE"),
            AuthProvider.LOCAL: (),
        }[self.AUTH_PROVIDER]
        missing = [name for name in required if not getattr(self, name)]
        if missing:
            raise ValueError(
                f"AUTH_PROVIDER={self.AUTH_PROVIDER.value} needs {' and '.join(missing)}"
            )
        return self

    @model_validator(mode="after")
    def _check_auth_limits(self) -> Self:
        if self.AUTH_JWKS_MAX_STALE < self.AUTH_JWKS_CACHE_TTL:
            raise ValueError(
                "AUTH_JWKS_MAX_STALE must be at least AUTH_JWKS_CACHE_TTL: keys are only "
                "refetched once the cache expires"
            )
        lifetime = self.AUTH_MAX_TOKEN_LIFETIME
        if self.AUTH_PROVIDER is AuthProvider.LOCAL and 0 < lifetime < self.LOCAL_AUTH_TOKEN_TTL:
            raise ValueError(
                f"LOCAL_AUTH_TOKEN_TTL ({self.LOCAL_AUTH_TOKEN_TTL}) exceeds "
                f"AUTH_MAX_TOKEN_LIFETIME ({lifetime}): every local token would be refused"
            )
        return self

    def _auth_production_problems(self) -> list[str]:
        problems = []
        if self.AUTH_PROVIDER is AuthProvider.LOCAL:
            problems.append(
                "AUTH_PROVIDER=local is for development and tests; use supabase, clerk or oidc"
            )
        if self.AUTH_PROVIDER is AuthProvider.CLERK and not self.CLERK_AUTHORIZED_PARTIES:
            problems.append(
                "CLERK_AUTHORIZED_PARTIES must list the front-end origins: without it any "
                "site's token (azp) is accepted and cookie requests cannot be checked"
            )
        for name in ("SUPABASE_URL", "CLERK_ISSUER", "OIDC_ISSUER", "OIDC_JWKS_URL"):
            if urlsplit(str(getattr(self, name))).scheme == "http":  # any case: HTTP://
                problems.append(f"{name} must be an https:// URL")
        return problems

    @model_validator(mode="after")
    def _fail_closed_needs_redis(self) -> Self:
        if not self.RATE_LIMIT_FAIL_OPEN and not self.REDIS_URL:
            raise ValueError(
                "RATE_LIMIT_FAIL_OPEN=false needs REDIS_URL: without Redis every limited "
                "route would answer 503"
            )
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Self:
        if self.ENVIRONMENT is not Environment.PRODUCTION:
            return self
        problems = []
        secret = self.SECRET_KEY.get_secret_value()
        if secret == DEFAULT_SECRET_KEY or len(secret) < MIN_SECRET_KEY_LENGTH:
            problems.append(
                f"SECRET_KEY must be set to a random value of at least "
                f"{MIN_SECRET_KEY_LENGTH} characters (try `make secret`)"
            )
        if self.DEBUG:
            problems.append("DEBUG must be false")
        if self.is_sqlite:
            problems.append("DATABASE_URL must point at PostgreSQL, not SQLite")
        problems.extend(self._auth_production_problems())
        ai_url = urlsplit(self.AI_BASE_URL)
        if self.AI_API_KEY and ai_url.scheme == "http" and ai_url.hostname not in _LOOPBACK:
            problems.append("AI_BASE_URL must be https:// when AI_API_KEY is sent to it")
        if self.EMAIL_BACKEND == "console" and not self.EMAIL_CONSOLE_IN_PRODUCTION:
            problems.append(
                "EMAIL_BACKEND=console only logs mail; use smtp (or none), or set "
                "EMAIL_CONSOLE_IN_PRODUCTION=true"
            )
        if self.EMAIL_BACKEND == "smtp" and not (self.SMTP_TLS or self.SMTP_STARTTLS):
            problems.append("SMTP needs SMTP_STARTTLS=true or SMTP_TLS=true (no plain-text mail)")
        if self.STORAGE_BACKEND == "filesystem" and not self.STORAGE_FILESYSTEM_IN_PRODUCTION:
            problems.append(
                "STORAGE_BACKEND=filesystem keeps files on one host's disk; use s3, or set "
                "STORAGE_FILESYSTEM_IN_PRODUCTION=true if every API and worker process "
                "shares STORAGE_DIR"
            )
        if problems:
            raise ValueError("refusing to start in production: " + "; ".join(problems))
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.DATABASE_URL.startswith("sqlite")

    @property
    def is_production(self) -> bool:
        return self.ENVIRONMENT is Environment.PRODUCTION

    @property
    def rate_limit_default(self) -> Rate:
        return parse_rate(self.RATE_LIMIT_DEFAULT)

    @property
    def named_rate_limits(self) -> dict[str, Rate]:
        """Rates of the `RateLimit(scope=...)` budgets that settings configure."""
        return {
            "items:write": parse_rate(self.RATE_LIMIT_ITEM_WRITES),
            "items:export": parse_rate(self.RATE_LIMIT_EXPORTS),
            "auth:failures": parse_rate(self.RATE_LIMIT_AUTH_FAILURES),
            "ai:completions": parse_rate(self.RATE_LIMIT_AI),
        }

    @property
    def log_format(self) -> Literal["console", "json"]:
        if self.LOG_FORMAT is not None:
            return self.LOG_FORMAT
        return "console" if self.ENVIRONMENT is Environment.DEVELOPMENT else "json"

    @property
    def project_slug(self) -> str:
        """PROJECT_NAME as a name for machines (release and service names), e.g. `orders-api`."""
        return re.sub(r"[^a-z0-9._-]+", "-", self.PROJECT_NAME.lower()).strip("-") or "app"

    @property
    def metrics_host(self) -> str:
        if self.METRICS_HOST:
            return self.METRICS_HOST
        return "127.0.0.1" if self.ENVIRONMENT is Environment.DEVELOPMENT else "0.0.0.0"  # noqa: S104

    @property
    def docs_enabled(self) -> bool:
        if self.DOCS_ENABLED is not None:
            return self.DOCS_ENABLED
        return not self.is_production


def describe_validation_error(error: ValidationError) -> str:
    """Turn a settings ValidationError into one line per bad variable."""
    lines = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]) or "settings"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {name}: {message}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning validation errors into a ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
