"""Which identities may call the API: a small in-process cache of account status.

A deactivated (soft-deleted) user is refused on every authenticated route. Asking the
database on every request would add a round trip to the hot read path, so each process
remembers, per identity (issuer, subject), whether it is active for
`AUTH_DEACTIVATION_TTL` seconds. A deactivation (setting `users.deleted_at`) therefore
takes effect everywhere within the TTL; code that deactivates in-process can call
`remember(..., active=False)` to make it immediate in that process. A TTL of 0 turns
the cache off (one lookup a request). The cache holds at most `MAX_CACHED_ACCOUNTS`
identities; the oldest entry goes first.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic

MAX_CACHED_ACCOUNTS = 10_000


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

    def __len__(self) -> int:
        return len(self._entries)
