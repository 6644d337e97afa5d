"""Pre-start step for a deployment: wait for the database, then apply migrations.

A container platform starts the database and the app in no particular order (and a
managed database may be restarting), so this retries `SELECT 1` a bounded number of
times, each attempt bounded by a timeout, and then runs `alembic upgrade head`. If the
database never answers it exits non-zero with one line naming the database (password
hidden), the number of attempts and the last error.

    python -m scripts.prestart [--attempts 30] [--interval 2] [--timeout 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.core.config import ConfigError, Settings, load_settings
from app.core.logging import setup_logging

ROOT = Path(__file__).resolve().parent.parent
# Refused, reset, DNS not resolving yet, "the database system is starting up", timeouts.
RETRYABLE = (OSError, TimeoutError, DBAPIError)

logger = logging.getLogger("prestart")


class DatabaseUnavailableError(RuntimeError):
    """The database did not answer within the allowed attempts."""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="prestart", description="Wait for the database, then apply migrations."
    )
    parser.add_argument("--attempts", type=int, default=30, help="tries before giving up")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between tries")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds each try may take")
    args = parser.parse_args(argv)
    for name in ("attempts", "interval", "timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be greater than 0")
    return args


def _describe(exc: BaseException) -> str:
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {detail[0]}" if detail else type(exc).__name__


async def _ping(url: str, timeout: float) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with asyncio.timeout(timeout), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


async def wait_for_database(url: str, *, attempts: int, interval: float, timeout: float) -> None:
    """Return once `SELECT 1` succeeds; raise DatabaseUnavailableError after `attempts`."""
    shown = make_url(url).render_as_string(hide_password=True)
    for attempt in range(1, attempts + 1):
        try:
            await _ping(url, timeout)
        except RETRYABLE as exc:
            error = _describe(exc)
            if attempt == attempts:
                raise DatabaseUnavailableError(
                    f"database {shown} is unreachable after {attempts} attempts "
                    f"(every {interval:g}s, {timeout:g}s each); last error: {error}"
                ) from None
            logger.warning(
                "database not ready (attempt %d/%d): %s; retrying in %gs",
                attempt,
                attempts,
                error,
                interval,
            )
            await asyncio.sleep(interval)
        else:
            logger.info("database %s is up (attempt %d/%d)", shown, attempt, attempts)
            return


def migrate(settings: Settings) -> None:
    """`alembic upgrade head` against the settings' database."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", settings.DATABASE_URL.replace("%", "%%"))
    # Keep the app's log format (JSON in production) instead of alembic.ini's.
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"prestart: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.LOG_LEVEL, settings.log_format)
    try:
        asyncio.run(
            wait_for_database(
                settings.DATABASE_URL,
                attempts=args.attempts,
                interval=args.interval,
                timeout=args.timeout,
            )
        )
    except DatabaseUnavailableError as exc:
        print(f"prestart: {exc}", file=sys.stderr)
        return 1
    migrate(settings)
    logger.info("migrations applied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
