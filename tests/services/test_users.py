import asyncio
import uuid
from types import MappingProxyType

from sqlalchemy import insert, inspect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, func, select

from app.core.db import SessionFactory, create_session_factory, read_engine, session_context
from app.core.security import Principal
from app.models.base import uuid7
from app.models.user import User
from app.services.users import get_or_create_user, lookup_user

ISSUER = "https://idp.example"


def principal(subject: str, provider: str = "oidc", issuer: str = ISSUER) -> Principal:
    return Principal(
        provider, subject, None, frozenset(), None, MappingProxyType({}), issuer=issuer
    )


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


async def test_the_same_subject_at_two_issuers_is_two_users(
    db_engine: AsyncEngine, clean_db: None
) -> None:
    """Pointing OIDC_ISSUER at another identity provider must not hand its users the
    accounts of the old one's users who happen to share a subject."""
    factory = create_session_factory(db_engine)
    subject = uuid.uuid4().hex
    async with session_context(factory) as session:
        first = await get_or_create_user(session, principal(subject, "oidc", ISSUER))
        second = await get_or_create_user(session, principal(subject, "oidc", "https://b.example"))
        again = await get_or_create_user(session, principal(subject, "oidc", ISSUER))
    assert first.id != second.id
    assert again.id == first.id
    assert (first.issuer, second.issuer) == (ISSUER, "https://b.example")


async def insert_legacy_user(factory: SessionFactory, subject: str, provider: str) -> uuid.UUID:
    """A row as it was stored before issuers were recorded."""
    user_id = uuid7()
    async with session_context(factory) as session:
        values = {"id": user_id, "provider": provider, "subject": subject, "issuer": None}
        await session.exec(insert(User).values(**values))
    return user_id


async def test_a_row_from_before_issuers_is_adopted_by_one_issuer_only(
    db_engine: AsyncEngine, clean_db: None
) -> None:
    factory = create_session_factory(db_engine)
    subject = uuid.uuid4().hex
    legacy = await insert_legacy_user(factory, subject, "oidc")
    async with session_context(factory) as session:
        adopted = await get_or_create_user(session, principal(subject, "oidc", ISSUER))
    async with session_context(factory) as session:
        other = await get_or_create_user(session, principal(subject, "oidc", "https://b.example"))
        again = await get_or_create_user(session, principal(subject, "oidc", ISSUER))
    assert adopted.id == legacy
    assert adopted.issuer == ISSUER
    assert other.id != legacy
    assert again.id == legacy


async def test_a_row_from_before_issuers_is_not_adopted_across_providers(
    db_engine: AsyncEngine, clean_db: None
) -> None:
    factory = create_session_factory(db_engine)
    subject = uuid.uuid4().hex
    legacy = await insert_legacy_user(factory, subject, "clerk")
    async with session_context(factory) as session:
        user = await get_or_create_user(session, principal(subject, "oidc", ISSUER))
    assert user.id != legacy


async def test_concurrent_first_logins_adopt_a_legacy_row_once(
    db_engine: AsyncEngine, clean_db: None
) -> None:
    factory = create_session_factory(db_engine)
    subject = uuid.uuid4().hex
    legacy = await insert_legacy_user(factory, subject, "oidc")

    async def resolve() -> uuid.UUID:
        async with session_context(factory) as session:
            return (await get_or_create_user(session, principal(subject))).id

    assert set(await asyncio.gather(*(resolve() for _ in range(6)))) == {legacy}


async def test_lookup_user_returns_the_row_as_the_session_loads_it(
    db_engine: AsyncEngine, clean_db: None
) -> None:
    factory = create_session_factory(db_engine)
    who = principal(uuid.uuid4().hex)
    async with session_context(factory) as session:
        stored = await get_or_create_user(session, who)
    async with read_engine(db_engine).connect() as connection:
        found = await lookup_user(connection, who)
    assert found is not None
    assert found.model_dump() == stored.model_dump()
    assert found.model_fields_set == set(User.model_fields)
    assert found.is_deleted is False
    # A detached copy that still behaves as a model object: changes are tracked.
    found.email = "changed@example.com"
    assert inspect(found).transient
    assert inspect(found).attrs.email.history.added == ["changed@example.com"]
    async with read_engine(db_engine).connect() as connection:
        assert await lookup_user(connection, principal(uuid.uuid4().hex)) is None
