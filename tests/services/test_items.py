"""Item service rules that HTTP cannot reach directly."""

from __future__ import annotations

import uuid
from types import MappingProxyType

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.cache import Cache
from app.core.db import create_session_factory, session_context
from app.core.security import Principal
from app.resources import OwnerScope
from app.schemas.item import ItemCreate
from app.services import items as service
from app.services.users import get_or_create_user


async def test_an_update_returns_what_it_wrote_when_the_session_already_holds_the_row(
    db_engine: AsyncEngine, clean_db: None
) -> None:
    who = Principal("local", uuid.uuid4().hex, None, frozenset(), "acme", MappingProxyType({}))
    scope = OwnerScope("acme", who.provider, who.subject)
    factory = create_session_factory(db_engine)
    async with session_context(factory) as session:
        owner = await get_or_create_user(session, who)
        item_id = (await service.create_item(session, owner, "acme", ItemCreate(title="Old"))).id
    async with session_context(factory) as session:
        held = await service.items.get(session, scope, item_id)
        assert (held.title, held.version) == ("Old", 1)
        changes = {"title": "New"}
        updated = await service.update_item(session, Cache(None), scope, item_id, changes)
        assert (updated.title, updated.version) == ("New", 2)
