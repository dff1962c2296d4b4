"""The suite's record of the API's truth: a write that lands is recorded, even when the churn
that made it is stopped while it is under way."""

from __future__ import annotations

import asyncio
import ipaddress
import threading

import pytest

from chaos import run
from chaos.history import Truth


def _truth() -> Truth:
    return Truth(cidrs={"east": ipaddress.IPv4Network("198.18.1.0/24")})


async def test_a_write_cancelled_while_under_way_is_recorded_once_it_lands() -> None:
    truth = _truth()
    started, release = threading.Event(), threading.Event()
    landed: list[str] = []

    def change() -> None:
        started.set()
        release.wait(10)
        landed.append("198.18.1.7")

    task = asyncio.create_task(
        run.write_recorded(truth, change, "shop/item", "east", ["198.18.1.7"])
    )
    assert await asyncio.to_thread(started.wait, 10)
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done(), "the cancellation waits for the write under way"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert landed == ["198.18.1.7"]
    assert truth.latest("shop/item", "east") == frozenset({"198.18.1.7"})


async def test_a_write_that_fails_is_not_recorded() -> None:
    truth = _truth()

    def change() -> None:
        raise OSError("connection refused")

    with pytest.raises(OSError):
        await run.write_recorded(truth, change, "shop/item", "east", ["198.18.1.7"])
    assert truth.latest("shop/item", "east") == frozenset()
