"""Rate strings (`100/minute`, `5/10seconds`) parsed into a count per period.

Kept free of other imports so settings can validate rates without loading the limiter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86_400),
}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` requests per `period` seconds."""

    count: int
    period: float

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


@lru_cache(maxsize=256)
def parse_rate(text: str) -> Rate:
    """Parse `100/minute`, `10/second`, `1000/hour`, `5/10seconds`, `20/day`."""
    match = _RATE.fullmatch(text)
    unit = _UNITS.get(match.group(3).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(
            f"{text!r} is not a rate; use COUNT/[N]UNIT with UNIT second, minute, hour or "
            "day, e.g. 100/minute or 5/10seconds"
        )
    count, multiplier = int(match.group(1)), int(match.group(2) or 1)
    if count < 1 or multiplier < 1:
        raise ValueError(f"{text!r}: the count and the period must be at least 1")
    return Rate(count, float(multiplier * unit))
