"""Which identities may call the API: a small in-process cache of account status.

A deactivated (soft-deleted) user is refused on every authenticated route. Asking the
database on every request would add a round trip to the hot read path, so each process
remembers, per identity (issuer, subject), whether it is active for
`AUTH_DEACTIVATION_TTL` seconds. A deactivation (setting `users.deleted_at`) therefore
takes effect everywhere within the TTL; code that deactivates in-process can call
`remember(..., active=False)` to make it immediate in that process. A TTL of 0 turns
the cache off (one lookup a request). The cache holds at most `MAX_CACHED_ACCOUNTS`
identities; the oldest entry goes first.

`refresh_once` coalesces the writes that keep a caller's row current: when many
requests of one caller find its row stale at the same moment (its `last_seen_at` has
just aged), one of them writes it and the others share that result, instead of every
request in flight queueing on the same row lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from time import monotonic
from typing import Any, TypeVar

MAX_CACHED_ACCOUNTS = 10_000
T = TypeVar("T")


class AccountStatusCache:
    """Active-or-not per identity, each answer kept for `ttl` seconds."""

    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = MAX_CACHED_ACCOUNTS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock or monotonic
        # Insertion order is expiry order (one TTL for all): the first entry is the oldest.
        self._entries: dict[tuple[str, str], tuple[bool, float]] = {}
        self._refreshing: dict[Hashable, asyncio.Future[Any]] = {}

    def get(self, issuer: str, subject: str) -> bool | None:
        """True (active), False (deactivated), or None when this process does not know."""
        entry = self._entries.get((issuer, subject))
        if entry is None or self._clock() >= entry[1]:
            return None
        return entry[0]

    def remember(self, issuer: str, subject: str, *, active: bool) -> None:
        if self.ttl <= 0:
            return
        key = (issuer, subject)
        entries = self._entries
        entries.pop(key, None)
        if len(entries) >= self.max_entries:
            del entries[next(iter(entries))]
        entries[key] = (active, self._clock() + self.ttl)

    async def refresh_once(self, key: Hashable, refresh: Callable[[], Awaitable[T]]) -> T:
        """`refresh()`'s result; while one refresh with the same `key` runs, later
        callers wait for it and share its result (or its exception) instead of running
        their own. The key must name everything the refresh writes (identity and the
        claims copied onto the row), so only callers wanting the same row share it. A
        caller that is cancelled does not cancel the refresh the others wait for."""
        running = self._refreshing.get(key)
        if running is None:
            running = asyncio.ensure_future(refresh())
            self._refreshing[key] = running
            running.add_done_callback(lambda done: self._finished(key, done))
        result: T = await asyncio.shield(running)
        return result

    def _finished(self, key: Hashable, done: asyncio.Future[Any]) -> None:
        if self._refreshing.get(key) is done:
            del self._refreshing[key]
        if not done.cancelled():
            done.exception()  # retrieved: no "never retrieved" warning when all waiters left

    def __len__(self) -> int:
        return len(self._entries)
