"""The `item_attachments` table: files attached to an item, kept in file storage.

A row describes the file; its bytes live in storage under a key made from the item's
and the row's ids (`attachment_key`), never from anything a client sent. Access goes
through the item, so an attachment is visible exactly where its item is.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from sqlalchemy import BigInteger
from sqlmodel import Field

from app.models.base import BaseTable


class ItemAttachment(BaseTable, table=True):
    __tablename__: ClassVar[str] = "item_attachments"

    item_id: uuid.UUID = Field(foreign_key="items.id", ondelete="CASCADE", index=True)
    filename: str = Field(max_length=255)
    content_type: str = Field(max_length=100)
    size_bytes: int = Field(sa_type=BigInteger)


def attachment_key(item_id: uuid.UUID, attachment_id: uuid.UUID) -> str:
    return f"attachments/{item_id.hex}/{attachment_id.hex}"
