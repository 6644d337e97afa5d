"""`AccountStatusCache.refresh_once`: concurrent refreshes of one caller's row coalesce."""

from __future__ import annotations

import asyncio

import pytest

from app.core.accounts import AccountStatusCache


class Refresh:
    """A refresh that counts its runs and finishes when told to."""

    def __init__(self, result: str = "row", error: Exception | None = None) -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.result = result
        self.error = error

    async def __call__(self) -> str:
        self.runs += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.result


async def test_concurrent_refreshes_of_one_identity_run_once_and_share_the_result() -> None:
    accounts = AccountStatusCache(5)
    refresh = Refresh()
    waiters = [
        asyncio.create_task(accounts.refresh_once(("iss", "alice"), refresh)) for _ in range(20)
    ]
    await asyncio.sleep(0)
    refresh.release.set()
    assert await asyncio.gather(*waiters) == ["row"] * 20
    assert refresh.runs == 1


async def test_another_identity_and_a_later_refresh_run_their_own() -> None:
    accounts = AccountStatusCache(5)
    alice, bob = Refresh("a"), Refresh("b")
    alice.release.set()
    bob.release.set()
    first = asyncio.create_task(accounts.refresh_once(("iss", "alice"), alice))
    other = asyncio.create_task(accounts.refresh_once(("iss", "bob"), bob))
    assert (await first, await other) == ("a", "b")
    assert await accounts.refresh_once(("iss", "alice"), alice) == "a"
    assert (alice.runs, bob.runs) == (2, 1)


async def test_a_failed_refresh_fails_every_waiter_and_the_next_one_runs_again() -> None:
    accounts = AccountStatusCache(5)
    failing = Refresh(error=RuntimeError("database down"))
    waiters = [
        asyncio.create_task(accounts.refresh_once(("iss", "alice"), failing)) for _ in range(3)
    ]
    await asyncio.sleep(0)
    failing.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [str(result) for result in results] == ["database down"] * 3
    working = Refresh()
    working.release.set()
    assert await accounts.refresh_once(("iss", "alice"), working) == "row"


async def test_a_cancelled_caller_does_not_cancel_the_refresh_others_wait_for() -> None:
    accounts = AccountStatusCache(5)
    refresh = Refresh()
    leaving = asyncio.create_task(accounts.refresh_once(("iss", "alice"), refresh))
    staying = asyncio.create_task(accounts.refresh_once(("iss", "alice"), refresh))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    refresh.release.set()
    assert await staying == "row"
    assert refresh.runs == 1
