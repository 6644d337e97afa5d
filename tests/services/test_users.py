import asyncio
import uuid
from types import MappingProxyType

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, func, select

from app.core.db import create_session_factory, session_context
from app.core.security import Principal
from app.models.user import User
from app.services.users import get_or_create_user


def principal(subject: str, provider: str = "oidc") -> Principal:
    return Principal(provider, subject, None, frozenset(), None, MappingProxyType({}))


async def test_concurrent_first_use_in_separate_transactions_yields_one_user(
    db_engine: AsyncEngine, clean_db: None
) -> None:
    factory = create_session_factory(db_engine)
    who = principal(uuid.uuid4().hex)

    async def resolve() -> uuid.UUID:
        async with session_context(factory) as session:
            return (await get_or_create_user(session, who)).id

    ids = await asyncio.gather(*(resolve() for _ in range(8)))
    assert len(set(ids)) == 1
    async with session_context(factory) as session:
        count = await session.exec(select(func.count()).where(col(User.subject) == who.subject))
        assert count.one() == 1


async def test_the_same_subject_at_two_providers_is_two_users(
    db_engine: AsyncEngine, clean_db: None
) -> None:
    factory = create_session_factory(db_engine)
    subject = uuid.uuid4().hex
    async with session_context(factory) as session:
        first = await get_or_create_user(session, principal(subject, "oidc"))
        second = await get_or_create_user(session, principal(subject, "clerk"))
    assert first.id != second.id
