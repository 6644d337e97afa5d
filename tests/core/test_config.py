import subprocess
import sys

import pytest

from app.core.config import ConfigError, Environment, load_settings, normalise_database_url
from tests.support import ROOT, env_example_names, make_settings

SQLITE = "sqlite+aiosqlite:///./test.db"
STRONG_SECRET = "x" * 48
PG = "postgresql+asyncpg://app@db/app"
PROD_AUTH = {"AUTH_PROVIDER": "oidc", "OIDC_ISSUER": "https://id.example/", "OIDC_AUDIENCE": "api"}
PROD_STORAGE = {"STORAGE_BACKEND": "s3", "S3_BUCKET": "app-files", "EMAIL_BACKEND": "none"}
SAFE_PROD = {"DATABASE_URL": PG, "SECRET_KEY": STRONG_SECRET, **PROD_AUTH, **PROD_STORAGE}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h:5432/d", "postgresql+asyncpg://u:p@h:5432/d"),
        ("postgresql://u@h/d?sslmode=require", "postgresql+asyncpg://u@h/d?sslmode=require"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("sqlite:///./app.db", "sqlite+aiosqlite:///./app.db"),
    ],
)
def test_database_urls_are_normalised_to_async_drivers(given: str, expected: str) -> None:
    assert normalise_database_url(given) == expected
    assert expected == make_settings(given).DATABASE_URL


def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJECT_NAME", "Orders API")
    monkeypatch.setenv("DB_POOL_SIZE", "12")
    monkeypatch.setenv("BACKEND_CORS_ORIGINS", "https://a.example, https://b.example/")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = load_settings(_env_file=None)
    assert settings.PROJECT_NAME == "Orders API"
    assert settings.DB_POOL_SIZE == 12
    assert settings.BACKEND_CORS_ORIGINS == ["https://a.example", "https://b.example"]
    assert settings.LOG_LEVEL == "DEBUG"


def test_cors_origins_accept_a_json_list() -> None:
    settings = make_settings(SQLITE, BACKEND_CORS_ORIGINS='["https://app.example"]')
    assert settings.BACKEND_CORS_ORIGINS == ["https://app.example"]


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("DB_POOL_SIZE", "lots", "valid integer"),
        ("DB_POOL_SIZE", "0", "greater than or equal to 1"),
        ("DATABASE_URL", "mysql://u@h/d", "PostgreSQL"),
        ("REDIS_URL", "http://cache", "redis://"),
        ("ENVIRONMENT", "prod", "development"),
        ("API_V1_STR", "api/v1", "start with '/'"),
        ("BACKEND_CORS_ORIGINS", "ftp://x", "http(s) origin"),
        ("HEALTH_CHECK_TIMEOUT", "-1", "greater than 0"),
        ("TRUSTED_PROXIES", "10.0.0.0/8, proxy.local", "IPv4 or IPv6 network"),
        ("JOBS_QUEUE_NAME", "my queue", "pattern"),
        ("JOB_MAX_TRIES", "0", "greater than or equal to 1"),
    ],
)
def test_bad_values_fail_naming_the_variable_and_reason(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    assert variable in str(caught.value)
    assert reason in str(caught.value)


def test_development_defaults_are_safe_for_a_laptop() -> None:
    settings = load_settings(_env_file=None, ENVIRONMENT="development")
    assert settings.DATABASE_URL.startswith("sqlite+aiosqlite://")
    assert settings.log_format == "console"
    assert settings.docs_enabled


def test_json_logs_and_no_docs_outside_development() -> None:
    settings = load_settings(_env_file=None, ENVIRONMENT="production", **SAFE_PROD)
    assert settings.ENVIRONMENT is Environment.PRODUCTION
    assert settings.log_format == "json"
    assert not settings.docs_enabled
    assert load_settings(
        _env_file=None, ENVIRONMENT="production", DOCS_ENABLED=True, **SAFE_PROD
    ).docs_enabled


def test_production_refuses_the_filesystem_backend_unless_allowed() -> None:
    filesystem = {**SAFE_PROD, "STORAGE_BACKEND": "filesystem"}
    with pytest.raises(ConfigError, match="STORAGE_BACKEND=filesystem") as refused:
        load_settings(_env_file=None, ENVIRONMENT="production", **filesystem)
    assert "STORAGE_FILESYSTEM_IN_PRODUCTION=true" in str(refused.value)
    allowed = load_settings(
        _env_file=None,
        ENVIRONMENT="production",
        STORAGE_FILESYSTEM_IN_PRODUCTION=True,
        **filesystem,
    )
    assert allowed.STORAGE_BACKEND == "filesystem"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"STORAGE_BACKEND": "s3"}, "STORAGE_BACKEND=s3 needs S3_BUCKET"),
        ({"STORAGE_BACKEND": "s3", "S3_BUCKET": "Bad_Name"}, "STORAGE_BACKEND=s3 needs S3_BUCKET"),
        ({"STORAGE_BACKEND": "gcs"}, "STORAGE_BACKEND"),
        ({"S3_ACCESS_KEY_ID": "AKIA1"}, "set both S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY"),
        ({"S3_ENDPOINT_URL": "minio:9000"}, "S3_ENDPOINT_URL"),
        ({"S3_ENDPOINT_URL": "https://key:secret@s3.example"}, "must not carry credentials"),
        ({"UPLOAD_ALLOWED_TYPES": "image/png,text/html"}, "text/html cannot be recognised"),
        ({"UPLOAD_MAX_BYTES": "0"}, "UPLOAD_MAX_BYTES"),
    ],
)
def test_bad_storage_settings_are_refused(overrides: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        load_settings(_env_file=None, **overrides)


def test_storage_settings_are_normalised() -> None:
    settings = load_settings(
        _env_file=None,
        UPLOAD_ALLOWED_TYPES="Image/PNG, application/pdf",
        S3_ENDPOINT_URL="http://minio:9000/",
    )
    assert settings.UPLOAD_ALLOWED_TYPES == ["image/png", "application/pdf"]
    assert settings.S3_ENDPOINT_URL == "http://minio:9000"


def test_s3_without_the_storage_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.main import create_app

    monkeypatch.setitem(sys.modules, "aiobotocore", None)  # as if not installed
    settings = load_settings(_env_file=None, STORAGE_BACKEND="s3", S3_BUCKET="app-files")
    with pytest.raises(ConfigError, match="needs the `storage` extra: install it with `uv sync"):
        create_app(settings)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"DATABASE_URL": PG}, "SECRET_KEY"),
        ({"DATABASE_URL": PG, "SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"DATABASE_URL": PG, "SECRET_KEY": STRONG_SECRET, "DEBUG": True}, "DEBUG"),
        ({"DATABASE_URL": SQLITE, "SECRET_KEY": STRONG_SECRET}, "SQLite"),
        ({**SAFE_PROD, "AUTH_PROVIDER": "local"}, "AUTH_PROVIDER=local"),
        ({**SAFE_PROD, "OIDC_ISSUER": "http://id.example"}, "OIDC_ISSUER must be an https"),
        ({**SAFE_PROD, "OIDC_JWKS_URL": "http://id.example/k"}, "OIDC_JWKS_URL must be an https"),
        ({**SAFE_PROD, "OIDC_JWKS_URL": "HTTP://id.example/k"}, "OIDC_JWKS_URL must be an https"),
        (
            {**SAFE_PROD, "AUTH_PROVIDER": "supabase", "SUPABASE_URL": "http://x.supabase.co"},
            "SUPABASE_URL must be an https",
        ),
        (
            {**SAFE_PROD, "AUTH_PROVIDER": "clerk", "CLERK_ISSUER": "http://clerk.example"},
            "CLERK_ISSUER must be an https",
        ),
    ],
)
def test_production_refuses_unsafe_values(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        load_settings(_env_file=None, ENVIRONMENT="production", **overrides)


def test_server_refuses_to_start_with_a_clear_message() -> None:
    env = {"ENVIRONMENT": "production", "DATABASE_URL": PG, "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", "import app.main; app.main.app"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert "refusing to start in production" in result.stderr
    assert "SECRET_KEY" in result.stderr


def test_env_example_documents_every_setting_once() -> None:
    from app.core.config import Settings

    settings_names, infrastructure_names = env_example_names()
    assert sorted(settings_names) == sorted(Settings.model_fields)
    # The container's own variables are documented apart and never shadow a setting.
    assert infrastructure_names
    assert len(set(infrastructure_names)) == len(infrastructure_names)
    assert not set(infrastructure_names) & set(Settings.model_fields)
    # The example file itself is a valid configuration.
    assert load_settings(_env_file=ROOT / ".env.example")


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"AUTH_PROVIDER": "oidc"}, "OIDC_ISSUER and OIDC_AUDIENCE"),
        ({"AUTH_PROVIDER": "oidc", "OIDC_ISSUER": "https://id.example"}, "OIDC_AUDIENCE"),
        ({"AUTH_PROVIDER": "supabase"}, "SUPABASE_URL"),
        ({"AUTH_PROVIDER": "clerk"}, "CLERK_ISSUER"),
        ({"AUTH_PROVIDER": "auth0"}, "AUTH_PROVIDER"),
        ({"SUPABASE_JWT_SECRET": "too-short"}, "SUPABASE_JWT_SECRET"),
        ({"OIDC_ALGORITHMS": "RS256,HS256"}, "OIDC_ALGORITHMS"),
        ({"OIDC_ALGORITHMS": "none"}, "OIDC_ALGORITHMS"),
        ({"OIDC_ISSUER": "ftp://id.example"}, "OIDC_ISSUER"),
        ({"OIDC_JWKS_URL": "https://"}, "OIDC_JWKS_URL"),
        ({"CLERK_JWT_KEY": "not a key"}, "CLERK_JWT_KEY"),
        ({"LOCAL_AUTH_PRIVATE_KEY": "not a key"}, "LOCAL_AUTH_PRIVATE_KEY"),
        ({"LOCAL_AUTH_ALGORITHM": "HS256"}, "LOCAL_AUTH_ALGORITHM"),
        ({"AUTH_HTTP_TIMEOUT": "0"}, "AUTH_HTTP_TIMEOUT"),
        ({"AUTH_JWKS_CACHE_TTL": "7200", "AUTH_JWKS_MAX_STALE": "3600"}, "AUTH_JWKS_MAX_STALE"),
        ({"AUTH_MAX_TOKEN_BYTES": "512"}, "AUTH_MAX_TOKEN_BYTES"),
        (
            {"LOCAL_AUTH_TOKEN_TTL": "7200", "AUTH_MAX_TOKEN_LIFETIME": "3600"},
            "LOCAL_AUTH_TOKEN_TTL",
        ),
        ({"AUTH_DEACTIVATION_TTL": "-1"}, "AUTH_DEACTIVATION_TTL"),
    ],
)
def test_auth_misconfiguration_names_the_variable(
    overrides: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in overrides.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    assert named in str(caught.value)


def test_auth_lists_and_urls_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_PROVIDER", "oidc")
    monkeypatch.setenv("OIDC_ISSUER", "https://tenant.auth0.com/")
    monkeypatch.setenv("OIDC_AUDIENCE", "https://api.example, mobile")
    monkeypatch.setenv("OIDC_ALGORITHMS", "RS256,ES256")
    monkeypatch.setenv("CLERK_AUTHORIZED_PARTIES", "https://app.example")
    monkeypatch.setenv("CLERK_ISSUER", "https://clerk.example.com/")
    settings = load_settings(_env_file=None)
    assert settings.OIDC_ISSUER == "https://tenant.auth0.com/"  # kept exactly
    assert settings.CLERK_ISSUER == "https://clerk.example.com"
    assert settings.OIDC_AUDIENCE == ["https://api.example", "mobile"]
    assert settings.OIDC_ALGORITHMS == ["RS256", "ES256"]
    assert settings.CLERK_AUTHORIZED_PARTIES == ["https://app.example"]


def test_pem_values_may_use_escaped_newlines() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----"
    settings = make_settings(SQLITE, LOCAL_AUTH_PRIVATE_KEY=pem)
    assert settings.LOCAL_AUTH_PRIVATE_KEY is not None
    assert settings.LOCAL_AUTH_PRIVATE_KEY.get_secret_value().count("\n") == 2
