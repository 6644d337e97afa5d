"""Shared model building blocks: ids, database-set timestamps, soft delete, naming.

Every table gets a time-ordered UUID primary key and `created_at`/`updated_at`
columns the database fills. `SoftDeleteMixin` adds `deleted_at` with helpers,
`OwnedMixin` the tenant and owner columns every scoped query filters on, and
`VersionedMixin` the row version behind ETags. `ScopedTable` combines them all: the
base of a resource (`class Order(ScopedTable, table=True)`). Decorating a table
model with `@purgeable` lets the purge job hard-delete its rows once they have been
soft-deleted for `SOFT_DELETE_RETENTION_DAYS`. The metadata naming convention keeps
constraint names deterministic, so migrations autogenerate the same names on SQLite
and PostgreSQL.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Self, TypeVar

from sqlalchemy import DateTime, Enum, Index, func
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import class_mapper
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import Field, SQLModel

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION


def uuid7() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): millisecond timestamp first, so new rows append to indexes."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10)) & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)


# SQLite keeps datetimes as text and compares them as text, and its CURRENT_TIMESTAMP
# (what `func.now()` becomes) has whole seconds: values bound from Python are written
# in that same shape, or "12:00:00" and "12:00:00.000000" would compare as different.
_SQLITE_DATETIME = sqlite.DATETIME(  # type: ignore[no-untyped-call]
    storage_format="%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d",
    regexp=r"(\d+)-(\d+)-(\d+) (\d+):(\d+):(\d+)",
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLITE_DATETIME)
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware datetime")
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None, microsecond=0)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def string_enum(enum: type[StrEnum], name: str, length: int = 16) -> Enum:
    """A column type storing `enum`'s values as short strings, checked in Python: no
    native database enum, so adding a member needs no type migration on PostgreSQL."""
    return Enum(
        enum,
        name=name,
        native_enum=False,
        length=length,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


class BaseTable(SQLModel):
    """Id and timestamps for every table model (`class Thing(BaseTable, table=True)`)."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """A detached object holding a row as the database returned it (a Core result,
        by column name), for code that only reads it. The values are trusted as loaded:
        no validation and no change history, which costs a twentieth of `cls(**row)`.
        Adding it to a session would INSERT it again; load through the session for that."""
        # class_mapper configures the mappers first, as constructing an object would.
        instance: Self = class_mapper(cls).class_manager.new_instance()
        vars(instance).update(row)
        object.__setattr__(instance, "__pydantic_fields_set__", set(row))
        return instance

    id: uuid.UUID = Field(default_factory=uuid7, primary_key=True)
    created_at: datetime = Field(
        default=None,
        sa_type=UTCDateTime,
        sa_column_kwargs={"server_default": func.now(), "nullable": False},
    )
    updated_at: datetime = Field(
        default=None,
        sa_type=UTCDateTime,
        sa_column_kwargs={"server_default": func.now(), "onupdate": func.now(), "nullable": False},
    )


class SoftDeleteMixin(SQLModel):
    """A `deleted_at` marker instead of removing the row."""

    deleted_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    def soft_delete(self) -> None:
        if self.deleted_at is None:
            self.deleted_at = utcnow()

    def restore(self) -> None:
        self.deleted_at = None

    @classmethod
    def not_deleted(cls) -> ColumnElement[bool]:
        """A WHERE clause keeping only live rows: `select(X).where(X.not_deleted())`."""
        column: Any = cls.deleted_at
        return column.is_(None)  # type: ignore[no-any-return]

    @classmethod
    def only_deleted(cls) -> ColumnElement[bool]:
        column: Any = cls.deleted_at
        return column.is_not(None)  # type: ignore[no-any-return]


class OwnedMixin(SQLModel):
    """Whose row it is: a tenant's (`tenant_id`), or without a tenant its owner's alone.
    `OwnerScope` (app/resources/scope.py) limits every query to one of the two."""

    tenant_id: str | None = Field(default=None, max_length=255)
    owner_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE")


class VersionedMixin(SQLModel):
    """A row version, raised by one on every change: the `ETag`, checked by `If-Match`."""

    version: int = Field(default=1)


# Listed in reverse so the columns come out id first: pydantic collects fields from
# the last base to the first.
class ScopedTable(VersionedMixin, SoftDeleteMixin, OwnedMixin, BaseTable):
    """Id, timestamps, tenant and owner, soft delete and version: what the resource kit
    (app/resources) needs of a table."""

    # Read database-set columns back in the INSERT itself (RETURNING), not lazily later.
    __mapper_args__: ClassVar[dict[str, object]] = {"eager_defaults": True}


def scope_indexes(table: str, *sort_columns: str) -> tuple[Index, ...]:
    """One index per (scope, sort column, id) path, scope first: a scoped, sorted page
    then reads only its own rows, on SQLite and PostgreSQL alike."""
    return tuple(
        Index(f"ix_{table}_{scope}_{column}_id", scope, column, "id")
        for column in sort_columns
        for scope in ("tenant_id", "owner_id")
    )


SoftDeletable = TypeVar("SoftDeletable", bound=type[SoftDeleteMixin])
_PURGEABLE: dict[str, type[SoftDeleteMixin]] = {}


def purgeable(model: SoftDeletable) -> SoftDeletable:
    """Class decorator: rows of this table model soft-deleted longer ago than the
    retention period are hard-deleted by the purge job. Models without it are never purged."""
    table = getattr(model, "__table__", None)
    if table is None:
        raise TypeError(f"{model.__name__} is not a table model (table=True)")
    if len(table.primary_key.columns) != 1:
        raise TypeError(f"{model.__name__} needs a single-column primary key to be purged")
    _PURGEABLE[f"{model.__module__}.{model.__qualname__}"] = model
    return model


def purgeable_models() -> tuple[type[SoftDeleteMixin], ...]:
    """The models registered with `@purgeable` (import `app.models` first to load them all)."""
    return tuple(_PURGEABLE.values())
