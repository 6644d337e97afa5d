"""Item query and body schemas: what they accept as input."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from app.schemas.item import ItemExportParams, ItemListParams


@pytest.mark.parametrize("value", ["1700000000", "-5", "1700000000.25", 1700000000, 1.5])
@pytest.mark.parametrize("schema", [ItemListParams, ItemExportParams])
def test_a_number_is_not_a_date_time(schema: Any, value: object) -> None:
    with pytest.raises(ValidationError) as raised:
        schema(created_before=value)
    assert raised.value.errors()[0]["type"] == "datetime_format"


def test_an_iso_8601_instant_is_read_in_utc() -> None:
    params = ItemListParams(created_after="2026-01-02T03:04:05+02:00")
    assert params.created_after == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
